"""Who is asking (session cookie or API token), what they may do, and the CSRF check every unsafe request passes.

Other manager modules (reports, exports, conversions, jobs) use these too:

    @router.get("/reports")
    async def reports(request: Request, session: SessionDep, user: StaffUser) -> Response: ...

`CurrentUser` is any signed-in user, `StaffUser` admin or manager, `AdminUser` admin only; an affiliate user
has `user.affiliate_id` set and must be shown only rows with that affiliate id.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, HTTPException, Path, Query, Request
from pydantic import BeforeValidator, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick.core.db.models import ApiToken, User
from adclick.core.db.session import default_sessions
from adclick.manager.security import hash_api_token, password_stamp, same_token

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
API_PREFIX = "/api/"
TOKEN_TOUCH_SECONDS = 60


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A database session per request: from `app.state.session_factory` if the app set one, else the default."""
    factory: async_sessionmaker[AsyncSession] = getattr(request.app.state, "session_factory", None) or (
        default_sessions()
    )
    async with factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


STAFF_ROLES = ("admin", "manager")  # see everything; "affiliate" users see their own rows


@dataclass(frozen=True)
class Principal:
    """The signed-in user, copied out of the ORM row so that a rolled-back session cannot expire it mid-request."""

    id: int
    email: str
    role: str
    affiliate_id: int | None
    is_active: bool
    created_at: datetime

    @classmethod
    def of(cls, user: User) -> Principal:
        return cls(user.id, user.email, user.role, user.affiliate_id, user.is_active, user.created_at)

    @property
    def is_staff(self) -> bool:
        return self.role in STAFF_ROLES

    @property
    def scope(self) -> int | None:
        """The affiliate id an affiliate user is confined to; None (everything) for staff only. An affiliate user
        without an affiliate id (a row edited by hand, or older than the check) is confined to id 0, which matches
        nothing: a missing id never widens what an affiliate sees."""
        if self.is_staff:
            return None
        return self.affiliate_id if self.affiliate_id is not None else 0


def own_affiliate(user: Principal, affiliate_id: int) -> None:
    """Staff act for any affiliate, an affiliate user for its own only: 403 for any other id, existing or not."""
    if user.scope is not None and user.scope != affiliate_id:
        raise HTTPException(403, "you may see and test only your own affiliate's postback")


class LoginRequired(Exception):
    """Nobody is signed in: pages redirect to /login, the API answers 401."""


def is_api(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()


async def csrf_protect(request: Request) -> None:
    """Every unsafe request made with the session cookie carries the session's CSRF token (form field or header).

    Requests with an API token (`Authorization: Bearer`, /api only) carry no cookie authority, so need none.
    """
    if request.method in SAFE_METHODS:
        return
    if is_api(request) and bearer_token(request) is not None:
        return
    sent = request.headers.get("x-csrf-token")
    content_type = request.headers.get("content-type", "")
    if sent is None and content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        form = await request.form()
        value = form.get("csrf_token")
        sent = value if isinstance(value, str) else None
    if not same_token(request.session.get("csrf"), sent):
        raise HTTPException(403, "CSRF token missing or wrong: reload the page and try again")


async def optional_user(request: Request, session: SessionDep) -> Principal | None:
    """The signed-in user, by API token on /api or by session cookie; None if nobody (a bad token is a 401)."""
    token = bearer_token(request) if is_api(request) else None
    if token is not None:
        found = (
            await session.execute(
                select(ApiToken, User)
                .join(User, User.id == ApiToken.user_id)
                .where(ApiToken.token_hash == hash_api_token(token))
            )
        ).first()
        if found is None or not found[1].is_active:
            raise HTTPException(401, "invalid API token", headers={"WWW-Authenticate": "Bearer"})
        api_token, user = found
        principal = Principal.of(user)
        request.state.user = principal
        now = datetime.now(UTC)
        if api_token.last_used_at is None or now - api_token.last_used_at > timedelta(seconds=TOKEN_TOUCH_SECONDS):
            api_token.last_used_at = now
            await session.commit()
        return principal
    user_id = request.session.get("uid")
    if not isinstance(user_id, int):
        return None
    row = await session.get(User, user_id)
    if row is None or not row.is_active or request.session.get("pw") != password_stamp(row.password_hash):
        request.session.pop("uid", None)
        return None
    principal = Principal.of(row)
    request.state.user = principal
    return principal


async def current_user(user: Annotated[Principal | None, Depends(optional_user)]) -> Principal:
    if user is None:
        raise LoginRequired()
    return user


def require_roles(*roles: str):  # type: ignore[no-untyped-def]
    """A dependency that lets through signed-in users of these roles and answers 403 to the others."""

    async def check(user: Annotated[Principal, Depends(current_user)]) -> Principal:
        if user.role not in roles:
            raise HTTPException(403, "your role may not do this")
        return user

    return check


CurrentUser = Annotated[Principal, Depends(current_user)]
StaffUser = Annotated[Principal, Depends(require_roles(*STAFF_ROLES))]
AdminUser = Annotated[Principal, Depends(require_roles("admin"))]

# Ids in paths and filters are bounded like the columns they look up (INTEGER; links' 40-bit ids), so an
# out-of-range number is a 422, not a database overflow (a 500). The same for page numbers (an OFFSET).
RowId = Annotated[int, Path(ge=1, le=2**31 - 1)]
LinkId = Annotated[int, Path(ge=1, le=2**40 - 1)]
IdFilter = Annotated[int | None, Query(ge=1, le=2**31 - 1)]
PageNo = Annotated[int, Query(ge=1, le=1_000_000)]
# Conversions' ids are BIGINT.
BigRowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
BigIdFilter = Annotated[int | None, Query(ge=1, le=2**63 - 1)]


def _blank_is_none(value: object) -> object:
    return None if isinstance(value, str) and not value.strip() else value


# Report and conversion filters come from HTML forms too, whose empty choice ("any") is a blank value.
# The bounds sit on the int itself: a blank becomes None before they apply.
FormIdFilter = Annotated[Annotated[int, Field(ge=1, le=2**31 - 1)] | None, BeforeValidator(_blank_is_none), Query()]
FormLinkIdFilter = Annotated[Annotated[int, Field(ge=1, le=2**40 - 1)] | None, BeforeValidator(_blank_is_none), Query()]

__all__ = [
    "AdminUser",
    "BigIdFilter",
    "BigRowId",
    "CurrentUser",
    "FormIdFilter",
    "FormLinkIdFilter",
    "IdFilter",
    "LinkId",
    "PageNo",
    "Principal",
    "RowId",
    "SessionDep",
    "StaffUser",
    "csrf_protect",
    "optional_user",
    "own_affiliate",
]
