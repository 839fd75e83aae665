"""The whole system for the fault tests, started once for all of them, and a table of what each scenario counted."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from faultkit import TALLIES, FaultSystem, table
from support.database import PostgresServer, unique_name
from support.procs import ProcessGuard
from support.servers import RedisServer, SqsServer


@pytest.fixture(scope="package")
def system(
    tmp_path_factory: pytest.TempPathFactory,
    _sqs_server_session: SqsServer,
    _postgres_server_session: PostgresServer,
    _postgres_template: str,
) -> Iterator[FaultSystem]:
    postgres = _postgres_server_session
    if postgres.external:
        pytest.skip("the fault tests stop PostgreSQL, which they cannot do to ADCLICK_TEST_DATABASE_URL")
    name = unique_name("adclick_chaos")
    url = postgres.create_database(name, template=_postgres_template)
    tmp = tmp_path_factory.mktemp("chaos")
    with ProcessGuard(tmp) as guard:
        (tmp / "redis").mkdir()
        redis = RedisServer(guard, tmp / "redis")
        redis.start()
        running = FaultSystem(guard, redis, _sqs_server_session, postgres, url)
        try:
            running.start()
            yield running
        finally:
            _sqs_server_session.resume()
            if postgres.proc is None:
                postgres.start()
            for role in (running.tracker, running.worker, running.postback, running.manager):
                if role.proc is not None:
                    role.proc.stop()
            postgres.drop_database(name)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TALLIES:
        terminalreporter.section("chaos: what each scenario counted")
        terminalreporter.write_line(table(TALLIES))
