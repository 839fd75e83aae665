"""Fixtures for every suite (a pytest plugin, loaded by tests/conftest.py): a real redis-server, a real SQS endpoint
(moto server) with the tracker's clicks queue on request, the env pointing at them and trackers started on it; real
PostgreSQL and SQLite databases, migrated to head (tests taking `database_url` run on both)."""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from .database import PostgresServer, engine_on, migrated_postgres_template, migrated_sqlite_template, unique_name
from .procs import ProcessGuard
from .servers import DUMMY_AWS_ENV, RedisServer, SqsServer
from .tracker import TrackerProc


@pytest.fixture
def process_guard(tmp_path: Path) -> Iterator[ProcessGuard]:
    """Start real processes with `process_guard.spawn(argv)`; all are killed when the test ends."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with ProcessGuard(logs) as guard:
        yield guard


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A fresh redis-server for this test (starts in a few ms): `.url`, `.port`, `.client()`, `.stop()`, `.start()`."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    with ProcessGuard(tmp_path) as guard:
        server = RedisServer(guard, workdir)
        server.start()
        yield server


@pytest.fixture(scope="session")
def _sqs_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqsServer]:
    # moto's server takes about a second to import, so one per session, reset per test.
    with ProcessGuard(tmp_path_factory.mktemp("moto")) as guard:
        server = SqsServer(guard)
        server.start()
        yield server


@pytest.fixture
def sqs_server(_sqs_server_session: SqsServer) -> Iterator[SqsServer]:
    """The SQS endpoint, emptied for this test: `.endpoint_url`, `.pause()`, `.resume()`, `.drain(url)`."""
    server = _sqs_server_session
    server.reset()
    try:
        yield server
    finally:
        server.resume()  # a test that failed while the endpoint was paused must not hang the next one


@pytest.fixture
def clicks_queue(sqs_server: SqsServer) -> str:
    """The URL of the tracker's clicks queue (`adclick-clicks`), created on the test's SQS endpoint."""
    return sqs_server.create_queue("adclick-clicks")


@pytest.fixture
def adclick_env(monkeypatch: pytest.MonkeyPatch, redis_server: RedisServer, sqs_server: SqsServer) -> dict[str, str]:
    """Set ADCLICK_* and dummy AWS variables for this test; return them to pass on to subprocesses."""
    env = {
        "ADCLICK_REDIS_URL": redis_server.url,
        "ADCLICK_SQS_ENDPOINT_URL": sqs_server.endpoint_url,
        "ADCLICK_AWS_REGION": sqs_server.region,
        **DUMMY_AWS_ENV,
        "AWS_DEFAULT_REGION": sqs_server.region,
    }
    for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def start_tracker(process_guard: ProcessGuard, adclick_env: dict[str, str]) -> Callable[..., TrackerProc]:
    """`start_tracker(**settings)`: `adclick tracker` on the test's Redis and SQS endpoint (see `TrackerProc`)."""
    return functools.partial(TrackerProc, process_guard, adclick_env)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    """Async tests (`@pytest.mark.anyio`) and async fixtures run on asyncio."""
    return "asyncio"


@pytest.fixture(scope="session")
def _postgres_server_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    # ADCLICK_TEST_DATABASE_URL (a server we may not stop), else a private cluster for the whole session.
    with ProcessGuard(tmp_path_factory.mktemp("postgres")) as guard:
        server = PostgresServer(guard, os.environ.get("ADCLICK_TEST_DATABASE_URL") or None)
        try:
            if not server.external:
                server.start()
            yield server
        finally:
            server.close()


@pytest.fixture
def postgres_server(_postgres_server_session: PostgresServer) -> Iterator[PostgresServer]:
    """The session's PostgreSQL: `.url(db)`, `.create_database(db)`, `.stop()`, `.start()` (same port, data kept)."""
    server = _postgres_server_session
    yield server
    if not server.external:
        if server.proc is not None:
            server.resume()  # a test that failed while the server was paused must not hang the next one
        server.start()  # nor leave it stopped


@pytest.fixture(scope="session")
def _postgres_template(_postgres_server_session: PostgresServer) -> Iterator[str]:
    name = migrated_postgres_template(_postgres_server_session)
    yield name
    _postgres_server_session.drop_database(name)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return migrated_sqlite_template(tmp_path_factory.mktemp("sqlite-template"))


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database migrated to head, as a SQLAlchemy URL; every test using it runs on PostgreSQL and SQLite."""
    if request.param == "postgresql":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        name = unique_name("adclick_test")
        url = server.create_database(name, template=request.getfixturevalue("_postgres_template"))
        yield url
        server.drop_database(name)
    else:
        path = tmp_path / "adclick.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite+aiosqlite:///{path}"


@pytest.fixture
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on `database_url` (async tests only: mark them `@pytest.mark.anyio`)."""
    async with engine_on(database_url) as engine:
        yield engine


@pytest.fixture
async def db_session(db_engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session on `database_url`'s fresh database; commit explicitly, like production code does."""
    from adclick.core.db.session import session_factory

    async with session_factory(db_engine)() as session:
        yield session
