"""Fixtures of the worker tests: an in-process worker on a fresh database (PostgreSQL and SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.servers import RedisServer
from workerkit import InProcessWorker, settings


@pytest.fixture
async def worker(
    adclick_env: dict[str, str], db_engine: AsyncEngine, redis_server: RedisServer
) -> AsyncIterator[InProcessWorker]:
    """Consumers, handlers and an SQS client on the test's database, Redis and SQS endpoint (not started)."""
    async with InProcessWorker(db_engine, redis_server.url, settings()) as running:
        yield running
