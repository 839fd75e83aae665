"""The manager app on a real database (PostgreSQL and SQLite) and a real Redis, with one signed-in client per role;
the harness itself is tests/support/manager.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from support.manager import Manager, manager_settings, seed_manager
from support.servers import RedisServer


@pytest.fixture
async def manager(database_url: str, redis_server: RedisServer) -> AsyncIterator[Manager]:
    """The manager app (lifespan running) on a fresh database and Redis, seeded by `seed_manager`."""
    from adclick.core.db.session import create_engine, session_factory
    from adclick.manager.app import create_app

    engine = create_engine(database_url)
    sessions = session_factory(engine)
    settings = manager_settings(database_url, redis_server.url)
    app = create_app(settings, sessions=sessions)
    running = Manager(app, sessions, redis_server, settings)
    try:
        async with app.router.lifespan_context(app):
            running.ids = await seed_manager(sessions)
            yield running
            for client in running.clients:
                await client.aclose()
    finally:
        await engine.dispose()
