"""schemathesis against the real manager process's OpenAPI (/api/v1/openapi.json), authenticated with an admin's
API token: whatever it generates from the schema, never a 5xx and every response matches the schema.

ADCLICK_FUZZ_EXAMPLES sets the examples per operation (default 150 for the other fuzzers, a tenth of it here).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from support.manager import ManagerApi, add_api_token
from support.procs import ProcessGuard, free_port, wait_until
from support.seeding import seed_campaign_api
from support.servers import RedisServer

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = max(5, int(os.environ.get("ADCLICK_FUZZ_EXAMPLES", "150")) // 10)


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path) -> Iterator[ManagerApi]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    database = tmp / "manager.db"
    shutil.copyfile(_sqlite_template, database)
    database_url = f"sqlite+aiosqlite:///{database}"
    with ProcessGuard(tmp) as guard:
        (tmp / "redis").mkdir()
        redis = RedisServer(guard, tmp / "redis")
        redis.start()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ADCLICK_")},
            "ADCLICK_DATABASE_URL": database_url,
            "ADCLICK_REDIS_URL": redis.url,
            "ADCLICK_MANAGER_RECONCILE_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
        }
        email = "fuzz-admin@example.com"
        cli = [sys.executable, "-m", "adclick.cli"]
        done = subprocess.run(
            [*cli, "create-admin", email, "--password", "schemathesis only, not secret"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        token = asyncio.run(add_api_token(database_url, email, "schemathesis"))
        port = free_port()
        proc = guard.spawn([*cli, "manager", "--host", "127.0.0.1", "--port", str(port)], name="manager", env=env)
        running = ManagerApi(f"http://127.0.0.1:{port}", token)
        wait_until(running.healthy, timeout=60, message="manager /health", proc=proc)
        # Some rows for the generated ids to find: one of each, linked together.
        link = {"url": "https://shop.example/?c={click_id}"}
        seed_campaign_api(running, affiliate={"name": "Aff"}, offer={"name": "Offer"}, link=link)
        yield running
        assert proc.alive(), proc.output()[-3000:]


def test_manager_api_conforms_to_its_schema(manager: ManagerApi) -> None:
    """Every operation in turn (schemathesis' pytest plugin does not run on pytest 9, so its strategies drive
    Hypothesis here directly); failures are collected so one run reports all of them."""
    schema = schemathesis.openapi.from_url(f"{manager.base}/api/v1/openapi.json")
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=manager.base, headers=manager.headers, timeout=30)
            case.validate_response(response, checks=CHECKS)

        try:
            check()
        except (Exception, BaseExceptionGroup) as error:  # every operation gets its turn; report them together
            failures.append(f"{operation.method.upper()} {operation.path}: {error}")
    assert operations >= 30, f"only {operations} operations in the schema"
    assert not failures, "\n\n".join(failures)[:20000]
