"""Sign-in and sign-out, the dashboard, users (admin) and each user's own API tokens: pages."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import APIRouter, Request, Response
from sqlalchemy import func, select

from adclick.core.db.models import Advertiser, Affiliate, Link, Offer, User
from adclick.manager import accounts
from adclick.manager.campaigns import Conflict, Invalid
from adclick.manager.deps import AdminUser, CurrentUser, PageNo, RowId, SessionDep, optional_user
from adclick.manager.forms import form_fields, parse
from adclick.manager.schemas import UserIn, UserPatch
from adclick.manager.security import client_ip, new_csrf_token, password_stamp
from adclick.manager.templating import listing, render, see_other

router = APIRouter(include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a path on this site: never `//evil.example` or `https://evil.example`."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else "/"


@router.get("/login")
async def login_page(request: Request, session: SessionDep, next: str = "/") -> Response:
    if await optional_user(request, session) is not None:
        return see_other(request, _safe_next(next))
    return render(request, "login.html", {"next": _safe_next(next), "email": ""})


@router.post("/login")
async def login(request: Request, session: SessionDep) -> Response:
    fields = await form_fields(request, "email", "password", "next")
    email, password = fields.get("email", "")[:320], fields.get("password", "")[:1024]
    target = _safe_next(fields.get("next"))
    settings = request.app.state.settings
    ip = client_ip(
        request.client.host if request.client else None,
        request.headers.get("x-forwarded-for"),
        settings.manager_trusted_proxies,
    )
    limiter = request.app.state.login_limiter
    wait = await anyio.to_thread.run_sync(limiter.hit, ip, email)
    if wait is not None:
        response = render(
            request,
            "login.html",
            {"next": target, "email": email, "error": "Too many sign-in attempts. Wait a minute and try again."},
            status_code=429,
        )
        response.headers["Retry-After"] = str(int(wait))
        return response
    user = await accounts.authenticate(session, email, password) if email and password else None
    if user is None:
        context = {"next": target, "email": email, "error": "Wrong email or password."}
        return render(request, "login.html", context, status_code=401)
    await anyio.to_thread.run_sync(limiter.reset, ip, email)
    request.session.clear()  # a fresh session (and CSRF token) for the signed-in user
    request.session.update({"uid": user.id, "pw": password_stamp(user.password_hash), "csrf": new_csrf_token()})
    return see_other(request, target)


@router.post("/logout")
async def logout(request: Request) -> Response:
    request.session.clear()
    return see_other(request, "/login")


@router.get("/")
async def dashboard(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    counts: dict[str, int] = {}
    if user.scope is not None:
        query = select(func.count()).select_from(Link).where(Link.affiliate_id == user.scope)
        counts["Links"] = int(await session.scalar(query) or 0)
    else:
        models = (("Advertisers", Advertiser), ("Offers", Offer), ("Affiliates", Affiliate), ("Links", Link))
        for label, model in models:
            counts[label] = int(await session.scalar(select(func.count()).select_from(model)) or 0)
    return render(request, "dashboard.html", {"counts": counts})


# -- users (admin) --


async def _affiliates(session: SessionDep) -> list[Affiliate]:
    return list((await session.scalars(select(Affiliate).order_by(Affiliate.name).limit(1000))).all())


@router.get("/users")
async def users_page(request: Request, session: SessionDep, _admin: AdminUser, page: PageNo = 1) -> Response:
    return await listing(request, session, User, "users", page, affiliates=await _affiliates(session))


@router.post("/users")
async def create_user(request: Request, session: SessionDep, _admin: AdminUser) -> Response:
    fields = await form_fields(request, "email", "password", "role", "affiliate_id")
    data, errors = parse(UserIn, fields)
    if data is not None:
        try:
            user = await accounts.create_user(session, data)
        except (Invalid, Conflict) as error:
            errors = [str(error)]
        else:
            return see_other(request, "/users", f"User {user.email} created.")
    return await listing(
        request, session, User, "users", errors=errors, form=fields, affiliates=await _affiliates(session)
    )


@router.get("/users/{user_id}")
async def user_page(request: Request, user_id: RowId, session: SessionDep, _admin: AdminUser) -> Response:
    user = await accounts.get_user(session, user_id)
    return render(request, "user.html", {"subject": user, "affiliates": await _affiliates(session)})


@router.post("/users/{user_id}")
async def update_user(request: Request, user_id: RowId, session: SessionDep, admin: AdminUser) -> Response:
    fields: dict[str, Any] = await form_fields(request, "email", "password", "role", "affiliate_id")
    form = await request.form()
    fields["is_active"] = form.get("is_active") == "on"
    if "affiliate_id" not in fields:
        fields["affiliate_id"] = None
    data, errors = parse(UserPatch, fields)
    if data is not None:
        try:
            await accounts.update_user(session, user_id, data, acting=admin)
        except (Invalid, Conflict) as error:
            errors = [str(error)]
        else:
            return see_other(request, f"/users/{user_id}", "User saved.")
    await session.rollback()
    user = await accounts.get_user(session, user_id)
    context = {"subject": user, "affiliates": await _affiliates(session), "errors": errors}
    return render(request, "user.html", context, status_code=422)


@router.post("/users/{user_id}/delete")
async def delete_user(request: Request, user_id: RowId, session: SessionDep, admin: AdminUser) -> Response:
    await accounts.delete_user(session, user_id, acting=admin)
    return see_other(request, "/users", "User deleted.")


# -- the signed-in user's API tokens --


@router.get("/tokens")
async def tokens_page(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    return render(request, "tokens.html", {"tokens": await accounts.list_tokens(session, user)})


@router.post("/tokens")
async def create_token(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    fields = await form_fields(request, "name")
    name = fields.get("name", "")
    if not 1 <= len(name) <= 200:
        context = {"tokens": await accounts.list_tokens(session, user), "errors": ["name: 1 to 200 characters"]}
        return render(request, "tokens.html", context, status_code=422)
    _row, token = await accounts.create_token(session, user, name)
    # Rendered directly, not flashed: the token must not travel in the session cookie.
    context = {"tokens": await accounts.list_tokens(session, user), "new_token": token}
    return render(request, "tokens.html", context, status_code=201)


@router.post("/tokens/{token_id}/delete")
async def delete_token(request: Request, token_id: RowId, session: SessionDep, user: CurrentUser) -> Response:
    await accounts.delete_token(session, user, token_id)
    return see_other(request, "/tokens", "Token revoked.")
