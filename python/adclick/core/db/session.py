"""Async engines and sessions for PostgreSQL (asyncpg) and SQLite (aiosqlite), and the FastAPI session dependency."""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from adclick.core.settings import Settings, get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
MIN_SQLITE_VERSION = (3, 35, 0)  # INSERT ... RETURNING


def database_url(settings_or_url: Settings | str | URL) -> URL:
    """The SQLAlchemy URL, with the async driver filled in for bare `postgresql://` and `sqlite://` URLs."""
    raw = settings_or_url.database_url if isinstance(settings_or_url, Settings) else settings_or_url
    url = make_url(raw)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+asyncpg")
    elif url.drivername == "sqlite":
        url = url.set(drivername="sqlite+aiosqlite")
    if url.drivername not in ("postgresql+asyncpg", "sqlite+aiosqlite"):
        raise ValueError(
            f"unsupported database URL {url.render_as_string()!r}: use postgresql+asyncpg or sqlite+aiosqlite"
        )
    return url


def is_sqlite_memory(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def create_engine(settings_or_url: Settings | str | URL, **kwargs: Any) -> AsyncEngine:
    """An async engine for `settings.database_url` (or a URL); extra keyword arguments go to SQLAlchemy."""
    url = database_url(settings_or_url)
    if url.get_backend_name() == "postgresql":
        if "poolclass" not in kwargs:
            pool_size = settings_or_url.database_pool_size if isinstance(settings_or_url, Settings) else 10
            kwargs.setdefault("pool_size", pool_size)
            kwargs.setdefault("max_overflow", pool_size)
        # A connection that died with the server (restart, failover) is replaced instead of failing a request.
        kwargs.setdefault("pool_pre_ping", True)
        kwargs.setdefault("connect_args", {"server_settings": {"application_name": "adclick", "timezone": "UTC"}})
        return create_async_engine(url, **kwargs)
    return _create_sqlite_engine(url, **kwargs)


def _create_sqlite_engine(url: URL, **kwargs: Any) -> AsyncEngine:
    if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
        raise RuntimeError(f"SQLite {sqlite3.sqlite_version} is too old: adclick needs 3.35 or later (RETURNING)")
    memory = is_sqlite_memory(url)
    if memory:
        kwargs.setdefault("poolclass", StaticPool)
    kwargs.setdefault("connect_args", {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
    engine = create_async_engine(url, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Leave transactions to SQLAlchemy (the driver's implicit BEGIN breaks savepoints and transactional DDL).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front: a read-then-write transaction (a cap check, an upsert) waits
        # for the busy timeout instead of failing with SQLITE_BUSY when another process wrote in between.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions whose objects stay readable after commit (no lazy reload on attribute access in async code)."""
    return async_sessionmaker(engine, expire_on_commit=False)


@lru_cache
def get_engine() -> AsyncEngine:
    """The process's engine for ADCLICK_DATABASE_URL, created on first use (never at import time)."""
    return create_engine(get_settings())


@lru_cache
def default_sessions() -> async_sessionmaker[AsyncSession]:
    """Sessions on the process's engine (get_engine)."""
    return session_factory(get_engine())
