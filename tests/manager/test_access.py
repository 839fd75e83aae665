"""Signing in and out, the login rate limit, CSRF, security headers, the session cookie and `adclick create-admin`."""

from __future__ import annotations

import os
import sys

import anyio
import pytest
from adclick.core.db.models import User
from adclick.core.settings import ManagerSettings
from adclick.manager.security import verify_password
from sqlalchemy import select
from support.manager import PASSWORD, Manager, csrf_of, form

pytestmark = pytest.mark.anyio


async def test_sign_in_and_out(manager: Manager) -> None:
    client = await manager.anonymous()
    assert (await client.get("/advertisers")).headers["location"] == "/login?next=/advertisers"
    wrong = await client.post("/login", data=form(client, email="manager@example.com", password="nope"))
    assert wrong.status_code == 401 and "Wrong email or password" in wrong.text
    unknown = await client.post("/login", data=form(client, email="who@example.com", password=PASSWORD))
    assert unknown.status_code == 401 and "Wrong email or password" in unknown.text
    ok = await client.post(
        "/login", data=form(client, email=" Manager@Example.com ", password=PASSWORD, next="/offers")
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/offers"
    # the CSRF token from before signing in no longer works: signing in made a new session
    assert (await client.post("/logout", data=form(client))).status_code == 403
    page = await client.get("/offers")
    assert page.status_code == 200 and "manager@example.com" in page.text
    client.csrf = csrf_of(page.text)  # type: ignore[attr-defined]
    assert (await client.post("/logout", data=form(client))).status_code == 303
    assert (await client.get("/offers")).status_code == 303


async def test_sign_in_never_redirects_off_site(manager: Manager) -> None:
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)"):
        client = await manager.anonymous()
        reply = await client.post(
            "/login", data=form(client, email="admin@example.com", password=PASSWORD, next=target)
        )
        assert reply.status_code == 303 and reply.headers["location"] == "/", target


async def test_login_rate_limit_per_ip_and_email(manager: Manager) -> None:
    client = await manager.anonymous()
    for _ in range(5):
        reply = await client.post("/login", data=form(client, email="admin@example.com", password="wrong"))
        assert reply.status_code == 401
    limited = await client.post("/login", data=form(client, email="admin@example.com", password=PASSWORD))
    assert limited.status_code == 429 and "Too many sign-in attempts" in limited.text
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # another account from the same address is not locked out by someone guessing this one
    other = await client.post("/login", data=form(client, email="manager@example.com", password=PASSWORD))
    assert other.status_code == 303
    keys = manager.redis.client().keys("adclick:manager:login*")
    assert keys and all(0 < manager.redis.client().ttl(key) <= 60 for key in keys)


async def test_login_rate_limit_holds_in_process_when_redis_is_down(manager: Manager) -> None:
    client = await manager.anonymous()
    manager.redis.stop()
    statuses = [
        (await client.post("/login", data=form(client, email="admin@example.com", password="wrong"))).status_code
        for _ in range(6)
    ]
    assert statuses == [401] * 5 + [429]


async def test_every_unsafe_request_needs_the_csrf_token(manager: Manager) -> None:
    client = await manager.as_role("admin")
    attempts = [
        client.post("/advertisers", data={"name": "No token"}),
        client.post("/advertisers", data={"name": "Wrong token", "csrf_token": "x" * 43}),
        client.post("/login", data={"email": "admin@example.com", "password": PASSWORD}),
        client.post("/logout"),
        client.post("/api/v1/advertisers", json={"name": "No header"}),
        client.delete(f"/api/v1/advertisers/{manager.ids['advertiser']}"),
    ]
    for attempt in attempts:
        reply = await attempt
        assert reply.status_code == 403, reply.text
    ok = await client.post("/api/v1/advertisers", json={"name": "Header"}, headers={"X-CSRF-Token": client.csrf})  # type: ignore[attr-defined]
    assert ok.status_code == 201
    listed = (await client.get("/api/v1/advertisers")).json()
    assert [a["name"] for a in listed["items"]] == ["Shop", "Header"]
    # an API token carries no ambient authority, so it needs no CSRF token
    api = await manager.api("admin")
    assert (await api.post("/api/v1/advertisers", json={"name": "Bearer"})).status_code == 201
    # ...and a bearer header cannot smuggle a cookie session past the check
    client.headers["Authorization"] = "Bearer junk"
    assert (await client.post("/api/v1/advertisers", json={"name": "Smuggled"})).status_code == 401


async def test_security_headers_on_every_response(manager: Manager) -> None:
    client = await manager.as_role("manager")
    for path in (
        "/login",
        "/",
        "/advertisers",
        "/nope",
        "/api/v1/me",
        "/api/v1/nope",
        "/health",
        "/static/manager.css",
    ):
        reply = await client.get(path)
        csp = reply.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert reply.headers["x-content-type-options"] == "nosniff", path
        assert reply.headers["referrer-policy"] == "same-origin", path
        assert reply.headers["x-frame-options"] == "DENY", path
    assert (await client.get("/advertisers")).headers["cache-control"] == "no-store"
    html = (await client.get("/advertisers")).text
    assert "<script>" not in html and " style=" not in html and "onclick" not in html  # nothing the CSP would block


async def test_session_cookie_flags(manager: Manager, database_url: str) -> None:
    reply = await manager.client().get("/login")
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie

    from adclick.manager.app import create_app

    settings = ManagerSettings(
        database_url=database_url, env="production", manager_secret="s" * 40, click_secret="c" * 40,
        postback_secret="p" * 40, manager_reconcile_seconds=0, redis_url=manager.redis.url,
    )  # fmt: skip
    app = create_app(settings, sessions=manager.sessions)
    import httpx

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://manager.test") as client:
        reply = await client.get("/login")
    assert "secure" in reply.headers["set-cookie"].lower()
    assert reply.headers["strict-transport-security"].startswith("max-age=")


def test_production_refuses_the_default_manager_secret() -> None:
    secrets = {"click_secret": "c" * 40, "postback_secret": "p" * 40}
    with pytest.raises(ValueError, match="ADCLICK_MANAGER_SECRET"):
        ManagerSettings(env="production", **secrets)
    with pytest.raises(ValueError, match="ADCLICK_MANAGER_SECRET"):
        ManagerSettings(env="production", manager_secret="short", **secrets)
    assert ManagerSettings(env="production", manager_secret="m" * 40, **secrets).secure_cookie


def test_passwords_cost_rfc_9106s_profile_unless_set_and_production_refuses_less_than_owasps_floor() -> None:
    secrets = {"click_secret": "c" * 40, "postback_secret": "p" * 40, "manager_secret": "m" * 40}
    settings = ManagerSettings(**secrets)
    assert (settings.manager_password_time_cost, settings.manager_password_memory_kib) == (3, 65536)
    for weak in ({"manager_password_time_cost": 1}, {"manager_password_memory_kib": 19455}):
        with pytest.raises(ValueError, match="OWASP"):
            ManagerSettings(env="production", **secrets, **weak)
        assert ManagerSettings(**secrets, **weak)  # development: the test suite's cheap hashes
    ManagerSettings(env="production", manager_password_time_cost=2, manager_password_memory_kib=19456, **secrets)


async def test_a_hash_of_another_cost_signs_in_and_is_rehashed_at_the_configured_cost(manager: Manager) -> None:
    from argon2 import PasswordHasher, extract_parameters
    from argon2.low_level import Type
    from argon2.profiles import RFC_9106_LOW_MEMORY

    async with manager.sessions() as session:
        user = await session.get(User, manager.ids["manager_user"])
        assert user is not None
        user.password_hash = PasswordHasher.from_parameters(RFC_9106_LOW_MEMORY).hash(PASSWORD)
        await session.commit()
    await manager.login("manager@example.com")
    async with manager.sessions() as session:
        user = await session.get(User, manager.ids["manager_user"])
        assert user is not None
        stored = extract_parameters(user.password_hash)
    assert stored.type is Type.ID
    assert (stored.time_cost, stored.memory_cost) == (
        manager.settings.manager_password_time_cost,
        manager.settings.manager_password_memory_kib,
    )


async def test_health_answers_select_1(manager: Manager) -> None:
    reply = await manager.client().get("/health")
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


async def test_health_is_503_when_the_database_is_gone() -> None:
    import httpx
    from adclick.manager.app import create_app

    settings = ManagerSettings(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none", manager_reconcile_seconds=0)
    app = create_app(settings)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://m") as client:
        reply = await client.get("/health")
    assert reply.status_code == 503 and reply.json()["status"] == "unavailable"


async def test_create_admin_command(manager: Manager, database_url: str) -> None:
    env = {**os.environ, "ADCLICK_DATABASE_URL": database_url}
    argv = [sys.executable, "-m", "adclick.cli", "create-admin", "Boss@Example.com", "--password-stdin"]
    with anyio.fail_after(60):
        done = await anyio.run_process(argv, input=b"a very long password\n", env=env, check=False)
        assert done.returncode == 0, done.stderr.decode()
        again = await anyio.run_process(argv, input=b"a very long password\n", env=env, check=False)
        assert again.returncode == 1 and b"exists" in again.stderr
        short = await anyio.run_process(
            [*argv[:4], "x@example.com", "--password-stdin"], input=b"short\n", env=env, check=False
        )
        assert short.returncode == 1
    async with manager.sessions() as session:
        boss = await session.scalar(select(User).where(User.email == "boss@example.com"))
    assert boss is not None and boss.role == "admin" and boss.password_hash.startswith("$argon2")
    assert verify_password(boss.password_hash, "a very long password")
    client = await manager.login("boss@example.com", "a very long password")
    assert (await client.get("/users")).status_code == 200
