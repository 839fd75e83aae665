"""Fixtures for every suite: a real redis-server, a real SQS endpoint (moto server), and the env pointing at them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.procs import ProcessGuard
from support.servers import DUMMY_AWS_ENV, RedisServer, SqsServer


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
