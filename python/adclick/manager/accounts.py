"""Users, their passwords and API tokens."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.db.models import Affiliate, ApiToken, User
from adclick.manager.campaigns import Conflict, Invalid, NotFound, _commit, get_row
from adclick.manager.deps import Principal
from adclick.manager.schemas import UserIn, UserPatch
from adclick.manager.security import (
    check_new_password,
    hash_api_token,
    hash_password,
    needs_rehash,
    new_api_token,
    verify_password,
)


async def authenticate(session: AsyncSession, email: str, password: str) -> User | None:
    """The active user with this email and password, else None (in about the same time either way)."""
    user = await session.scalar(select(User).where(User.email == email.strip().lower()))
    ok = verify_password(user.password_hash if user is not None else None, password)
    if user is None or not ok or not user.is_active:
        return None
    if needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        await session.commit()
    return user


async def get_user(session: AsyncSession, user_id: int) -> User:
    return await get_row(session, User, user_id, "user")


async def _check_affiliate(session: AsyncSession, role: str, affiliate_id: int | None) -> None:
    if (role == "affiliate") != (affiliate_id is not None):
        raise Invalid("an affiliate user needs an affiliate_id, and only an affiliate user has one")
    if affiliate_id is not None and await session.get(Affiliate, affiliate_id) is None:
        raise Invalid(f"affiliate {affiliate_id} does not exist")


async def create_user(session: AsyncSession, data: UserIn) -> User:
    try:
        check_new_password(data.password)
    except ValueError as error:
        raise Invalid(str(error)) from error
    await _check_affiliate(session, data.role, data.affiliate_id)
    if await session.scalar(select(User.id).where(User.email == data.email)) is not None:
        raise Conflict(f"a user with email {data.email} exists")
    user = User(
        email=data.email, password_hash=hash_password(data.password), role=data.role, affiliate_id=data.affiliate_id
    )
    session.add(user)
    await _commit(session, f"a user with email {data.email} exists")
    return user


async def _other_active_admins(session: AsyncSession, user_id: int) -> int:
    query = select(func.count()).where(User.role == "admin", User.is_active.is_(True), User.id != user_id)
    return int(await session.scalar(query) or 0)


async def update_user(session: AsyncSession, user_id: int, data: UserPatch, *, acting: Principal) -> User:
    user = await get_user(session, user_id)
    changes = data.model_dump(exclude_unset=True)
    role = changes.get("role") or user.role
    affiliate_id = changes["affiliate_id"] if "affiliate_id" in changes else user.affiliate_id
    if role != "affiliate" and "affiliate_id" not in changes:
        affiliate_id = None
    await _check_affiliate(session, role, affiliate_id)
    losing_admin = user.role == "admin" and (role != "admin" or changes.get("is_active") is False)
    if losing_admin and await _other_active_admins(session, user.id) == 0:
        raise Conflict("this is the last active admin")
    if changes.get("email") and changes["email"] != user.email:
        if await session.scalar(select(User.id).where(User.email == changes["email"])) is not None:
            raise Conflict(f"a user with email {changes['email']} exists")
        user.email = changes["email"]
    if changes.get("password"):
        try:
            user.password_hash = hash_password(check_new_password(changes["password"]))
        except ValueError as error:
            raise Invalid(str(error)) from error
    if changes.get("is_active") is not None:
        user.is_active = changes["is_active"]
    user.role = role
    user.affiliate_id = affiliate_id
    await _commit(session, "the change clashes with another user")
    return user


async def delete_user(session: AsyncSession, user_id: int, *, acting: Principal) -> None:
    user = await get_user(session, user_id)
    if user.id == acting.id:
        raise Conflict("you cannot delete yourself")
    if user.role == "admin" and await _other_active_admins(session, user.id) == 0:
        raise Conflict("this is the last active admin")
    await session.delete(user)
    await _commit(session, "the user is still referenced")


async def list_tokens(session: AsyncSession, user: Principal) -> list[ApiToken]:
    query = select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)
    return list((await session.scalars(query)).all())


async def create_token(session: AsyncSession, user: Principal, name: str) -> tuple[ApiToken, str]:
    """A new token for `user`: the row, and the token itself (shown once, never stored)."""
    token = new_api_token()
    row = ApiToken(user_id=user.id, name=name, token_hash=hash_api_token(token))
    session.add(row)
    await session.commit()
    return row, token


async def delete_token(session: AsyncSession, user: Principal, token_id: int) -> None:
    row = await session.get(ApiToken, token_id)
    if row is None or row.user_id != user.id:
        raise NotFound(f"token {token_id} not found")
    await session.delete(row)
    await session.commit()
