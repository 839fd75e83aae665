"""Fixtures of the worker tests: an in-process worker on a fresh database (PostgreSQL and SQLite), and worker
processes on the same database."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from support.procs import ProcessGuard
from support.servers import RedisServer
from workerkit import InProcessWorker, WorkerProc, settings


@pytest.fixture
async def worker(
    adclick_env: dict[str, str], db_engine: AsyncEngine, redis_server: RedisServer
) -> AsyncIterator[InProcessWorker]:
    """Consumers, handlers and an SQS client on the test's database, Redis and SQS endpoint (not started)."""
    async with InProcessWorker(db_engine, redis_server.url, settings()) as running:
        yield running


@pytest.fixture
def start_worker(
    process_guard: ProcessGuard, adclick_env: dict[str, str], database_url: str
) -> Callable[..., WorkerProc]:
    """`start_worker(**settings)`: an `adclick worker` process on the test's database, Redis and SQS endpoint."""
    return functools.partial(WorkerProc, process_guard, adclick_env, database_url)
