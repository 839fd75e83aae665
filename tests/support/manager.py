"""The manager as tests use it: the app in process with one signed-in client per role (`Manager`), or a running
manager's JSON API over HTTP with an API token, as a script or integration would (`ManagerApi`)."""

from __future__ import annotations

import http.client
import json
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis as redis_lib
from adclick.core.db.models import Affiliate, User
from adclick.core.links import INVALIDATE_CHANNEL
from adclick.core.settings import ManagerSettings
from adclick.manager.security import hash_password
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from .database import engine_on
from .roles import status_of
from .seeding import seed_campaign
from .servers import RedisServer

PASSWORD = "correct horse battery staple"
TRACKER = "https://go.example"
POSTBACK = "https://pb.example"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Manager:
    """The manager app (lifespan running) on a test's database and Redis, with clients that talk to it in process."""

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

    def listen(self) -> redis_lib.client.PubSub:
        """A subscription to the channel on which link changes are announced to trackers (read with `announced`)."""
        pubsub = self.redis.client().pubsub()
        pubsub.subscribe(INVALIDATE_CHANNEL)
        assert pubsub.get_message(timeout=2)["type"] == "subscribe"
        return pubsub

    def link_form(self, client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
        """The link form's fields, to the seeded offer and affiliate unless `fields` say otherwise, and a CSRF token."""
        owners = {"offer_id": str(self.ids["offer"]), "affiliate_id": str(self.ids["affiliate"])}
        return form(client, **{**owners, **fields})

    async def create_link(self, api: httpx.AsyncClient, slug: str, **fields: Any) -> dict[str, Any]:
        """A link made through the JSON API as `api`'s user, to the seeded offer and affiliate unless `fields` say
        otherwise; anything but 201 Created fails the test."""
        payload = {"offer_id": self.ids["offer"], "affiliate_id": self.ids["affiliate"], "slug": slug, **fields}
        reply = await api.post("/api/v1/links", json=payload)
        assert reply.status_code == 201, reply.text
        return dict(reply.json())


def announced(pubsub: redis_lib.client.PubSub) -> list[str]:
    """The slugs announced on `Manager.listen()`'s subscription since the last call, in order."""
    slugs = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        slugs.append(message["data"])
    return slugs


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def form(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    """Form fields plus the client's CSRF token."""
    return {"csrf_token": client.csrf, **fields}  # type: ignore[attr-defined]


async def seed_manager(sessions: async_sessionmaker[AsyncSession]) -> dict[str, int]:
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


TEST_PASSWORD_COST: dict[str, Any] = {"manager_password_time_cost": 1, "manager_password_memory_kib": 1024}


def manager_settings(database_url: str, redis_url: str, **overrides: Any) -> ManagerSettings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "manager_reconcile_seconds": 0,
        "manager_tracker_base_url": TRACKER,
        "manager_postback_base_url": POSTBACK,
        "manager_redis_timeout_ms": 300,
        # Real argon2id at its cheapest: the suite signs in thousands of times (the default cost is ~0.1 s each).
        **TEST_PASSWORD_COST,
        **overrides,
    }
    return ManagerSettings(**values)


class ManagerApi:
    """Calls `/api/v1/...` of a running manager with a bearer token; any answer but a 2xx fails the test."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}
        url = urllib.parse.urlsplit(base)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80

    def __call__(self, method: str, path: str, body: object = None) -> Any:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            headers = {**self.headers, "Content-Type": "application/json"}
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        assert 200 <= response.status < 300, f"{method} {path}: {response.status} {data[:500]!r}"
        return json.loads(data) if data else None

    def healthy(self) -> bool:
        return status_of(self.port, "/health") == 200


async def add_api_token(database_url: str, email: str, name: str = "tests", *, new_user_role: str | None = None) -> str:
    """A new API token for the user `email` (first created with `new_user_role` when given), stored the way the
    manager stores one (its hash); returns the token."""
    from adclick.core.db.models import ApiToken, User
    from adclick.core.db.session import session_factory
    from adclick.manager.security import hash_api_token, hash_password
    from sqlalchemy import select

    token = secrets.token_urlsafe(32)
    async with engine_on(database_url) as engine, session_factory(engine)() as session, session.begin():
        if new_user_role is not None:
            session.add(User(email=email, password_hash=hash_password("x" * 16), role=new_user_role))
            await session.flush()
        user = (await session.execute(select(User).where(User.email == email))).scalar_one()
        session.add(ApiToken(user_id=user.id, name=name, token_hash=hash_api_token(token)))
    return token
