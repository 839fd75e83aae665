"""A manager app on a real database (PostgreSQL and SQLite) and a real Redis, with one signed-in client per role."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from adclick.core.db.models import Affiliate, User
from adclick.core.settings import ManagerSettings
from adclick.manager.security import hash_password
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from support.seeding import seed_campaign
from support.servers import RedisServer

PASSWORD = "correct horse battery staple"
TRACKER = "https://go.example"
POSTBACK = "https://pb.example"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Manager:
    app: FastAPI
    sessions: async_sessionmaker[AsyncSession]
    redis: RedisServer
    settings: ManagerSettings
    ids: dict[str, int] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)

    def client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://manager.test")
        self.clients.append(client)
        return client

    async def anonymous(self) -> httpx.AsyncClient:
        """A client with an anonymous session; its CSRF token is `client.csrf`."""
        client = self.client()
        client.csrf = csrf_of((await client.get("/login")).text)  # type: ignore[attr-defined]
        return client

    async def login(self, email: str, password: str = PASSWORD) -> httpx.AsyncClient:
        client = await self.anonymous()
        reply = await client.post(
            "/login",
            data={"email": email, "password": password, "csrf_token": client.csrf},  # type: ignore[attr-defined]
        )
        assert reply.status_code == 303, reply.text
        client.csrf = csrf_of((await client.get("/tokens")).text)  # type: ignore[attr-defined]
        return client

    async def as_role(self, role: str) -> httpx.AsyncClient:
        return await self.login(f"{role}@example.com")

    async def api(self, role: str) -> httpx.AsyncClient:
        """A client that authenticates with an API token of the role's user (no cookie)."""
        browser = await self.as_role(role)
        reply = await browser.post("/api/v1/tokens", json={"name": "tests"}, headers={"X-CSRF-Token": browser.csrf})  # type: ignore[attr-defined]
        assert reply.status_code == 201, reply.text
        client = self.client()
        client.headers["Authorization"] = f"Bearer {reply.json()['token']}"
        return client


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def form(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    """Form fields plus the client's CSRF token."""
    return {"csrf_token": client.csrf, **fields}  # type: ignore[attr-defined]


async def seed(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
    """Two affiliates (the affiliate user is the first's), an advertiser with an offer, and one user per role."""
    async with sessions() as session:
        campaign = await seed_campaign(session, affiliate={"name": "Mine"})
        advertiser, offer, mine = campaign.advertiser, campaign.offer, campaign.affiliate
        assert mine is not None
        other = Affiliate(name="Other")
        session.add(other)
        hashed = hash_password(PASSWORD)
        users = {
            role: User(email=f"{role}@example.com", password_hash=hashed, role=role)
            for role in ("admin", "manager", "affiliate")
        }
        users["affiliate"].affiliate_id = mine.id
        session.add_all(users.values())
        await session.commit()
        ids = {"affiliate": mine.id, "other_affiliate": other.id, "advertiser": advertiser.id, "offer": offer.id}
        ids.update({f"{role}_user": user.id for role, user in users.items()})
        return ids


def manager_settings(database_url: str, redis_url: str, **overrides: Any) -> ManagerSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "manager_reconcile_seconds": 0,
        "manager_tracker_base_url": TRACKER,
        "manager_postback_base_url": POSTBACK,
        "manager_redis_timeout_ms": 300,
        **overrides,
    }
    return ManagerSettings(**values)


@pytest.fixture
async def manager(database_url: str, redis_server: RedisServer) -> AsyncIterator[Manager]:
    """The manager app (lifespan running) on a fresh database and Redis, seeded by `seed`."""
    from adclick.core.db.session import create_engine, session_factory
    from adclick.manager.app import create_app

    engine = create_engine(database_url)
    sessions = session_factory(engine)
    settings = manager_settings(database_url, redis_server.url)
    app = create_app(settings, sessions=sessions)
    running = Manager(app, sessions, redis_server, settings)
    try:
        async with app.router.lifespan_context(app):
            running.ids = await seed(sessions)
            yield running
            for client in running.clients:
                await client.aclose()
    finally:
        await engine.dispose()
