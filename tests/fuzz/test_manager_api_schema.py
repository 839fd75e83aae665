"""schemathesis against the real manager process's OpenAPI (/api/v1/openapi.json), authenticated with an admin's
API token: whatever it generates from the schema, never a 5xx and every response matches the schema.

ADCLICK_FUZZ_EXAMPLES sets the examples per operation (default 150 for the other fuzzers, a tenth of it here).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from support.procs import ProcessGuard, free_port, wait_until
from support.servers import RedisServer

CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]
EXAMPLES = max(5, int(os.environ.get("ADCLICK_FUZZ_EXAMPLES", "150")) // 10)


class Manager:
    def __init__(self, port: int, token: str) -> None:
        self.port = port
        self.token = token
        self.base = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {token}"}

    def api(self, method: str, path: str, body: Any = None) -> Any:
        request = urllib.request.Request(
            self.base + path,
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={**self.headers, "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")


async def _api_token(database_url: str, email: str, token: str) -> None:
    from adclick.core.db.models import ApiToken, User
    from adclick.core.db.session import create_engine, session_factory
    from adclick.manager.security import hash_api_token
    from sqlalchemy import select

    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            user = (await session.execute(select(User).where(User.email == email))).scalar_one()
            session.add(ApiToken(user_id=user.id, name="schemathesis", token_hash=hash_api_token(token)))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory, _sqlite_template: Path) -> Iterator[Manager]:
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
        token = secrets.token_urlsafe(32)
        asyncio.run(_api_token(database_url, email, token))
        port = free_port()
        proc = guard.spawn([*cli, "manager", "--host", "127.0.0.1", "--port", str(port)], name="manager", env=env)
        running = Manager(port, token)
        wait_until(lambda: _health(running) == 200, timeout=60, message="manager /health", proc=proc)
        # Some rows for the generated ids to find: one of each, linked together.
        advertiser = running.api("POST", "/api/v1/advertisers", {"name": "Shop"})["id"]
        affiliate = running.api("POST", "/api/v1/affiliates", {"name": "Aff"})["id"]
        offer = running.api("POST", "/api/v1/offers", {"advertiser_id": advertiser, "name": "Offer"})["id"]
        link = {"offer_id": offer, "affiliate_id": affiliate, "url": "https://shop.example/?c={click_id}"}
        running.api("POST", "/api/v1/links", link)
        yield running
        assert proc.alive(), proc.output()[-3000:]


def _health(manager: Manager) -> int | None:
    try:
        with urllib.request.urlopen(f"{manager.base}/health", timeout=2) as response:
            return int(response.status)
    except OSError:
        return None


def test_manager_api_conforms_to_its_schema(manager: Manager) -> None:
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
