"""The manager as tests use it: its JSON API over HTTP with an API token, as a script or integration would."""

from __future__ import annotations

import http.client
import json
import secrets
import urllib.parse
from typing import Any

from .tracker import status_of


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
    from adclick.core.db.session import create_engine, session_factory
    from adclick.manager.security import hash_api_token, hash_password
    from sqlalchemy import select

    token = secrets.token_urlsafe(32)
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            if new_user_role is not None:
                session.add(User(email=email, password_hash=hash_password("x" * 16), role=new_user_role))
                await session.flush()
            user = (await session.execute(select(User).where(User.email == email))).scalar_one()
            session.add(ApiToken(user_id=user.id, name=name, token_hash=hash_api_token(token)))
    finally:
        await engine.dispose()
    return token
