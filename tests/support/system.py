"""The whole system as real processes on 127.0.0.1: tracker, worker, postback and manager on one database, Redis and
SQS endpoint, wired to each other, with an admin to sign in as and the manager's JSON API to drive."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .manager import TEST_PASSWORD_COST, ManagerApi, add_api_token
from .procs import ManagedProcess, ProcessGuard, free_port, wait_until
from .tracker import status_of

ADMIN = "system-admin@example.com"
PASSWORD = "system test password, not a secret"
CLI = [sys.executable, "-m", "adclick.cli"]


@dataclass
class Role:
    """One `adclick <role>` process on its own port; `start()` again after it stopped brings it back on that port."""

    guard: ProcessGuard
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    proc: ManagedProcess | None = None
    starts: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        self.starts += 1
        self.proc = self.guard.spawn(self.argv, name=f"{self.name}-{self.starts}", env=self.env)

    def wait_healthy(self, within: float = 60.0) -> None:
        wait_until(
            lambda: status_of(self.port, "/health") == 200,
            timeout=within,
            interval=0.05,
            message=f"{self.name} /health 200",
            proc=self.proc,
        )

    def start(self, within: float = 60.0) -> None:
        self.spawn()
        self.wait_healthy(within)

    def signal(self, sig: int, within: float = 60.0) -> int:
        """Send `sig` and wait for the exit; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(within)

    def output(self) -> str:
        return self.proc.output() if self.proc else ""


class System:
    """Every role of adclick on `env` (the `adclick_env` fixture's Redis and SQS endpoint) and `database_url`.

    `settings` become ADCLICK_* variables of every role (`clicks_queue="x"` is ADCLICK_CLICKS_QUEUE=x). Nothing runs
    until `start()`.
    """

    def __init__(self, guard: ProcessGuard, env: Mapping[str, str], database_url: str, **settings: object) -> None:
        self.guard = guard
        self.database_url = database_url
        ports = {name: free_port() for name in ("tracker", "postback", "worker", "manager")}
        self.env = {
            **os.environ,
            **env,
            "PYTHONUNBUFFERED": "1",
            "ADCLICK_DATABASE_URL": database_url,
            # Short enough that faults show within a test, long enough that nothing flaps when all is well.
            "ADCLICK_FLUSH_INTERVAL_MS": "50",
            "ADCLICK_DRAIN_SECONDS": "1",
            "ADCLICK_WORKER_WAIT_SECONDS": "1",
            "ADCLICK_MANAGER_TRACKER_BASE_URL": f"http://127.0.0.1:{ports['tracker']}",
            "ADCLICK_MANAGER_POSTBACK_BASE_URL": f"http://127.0.0.1:{ports['postback']}",
            **{f"ADCLICK_{key.upper()}": str(value) for key, value in TEST_PASSWORD_COST.items()},
        }
        for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
            self.env.pop(name, None)
        self.env.update({f"ADCLICK_{key.upper()}": str(value) for key, value in settings.items()})

        def serve(role: str) -> list[str]:
            return [*CLI, role, "--host", "127.0.0.1", "--port", str(ports[role])]

        worker_env = {**self.env, "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1"}
        worker_env["ADCLICK_WORKER_HEALTH_PORT"] = str(ports["worker"])
        self.roles = {
            "worker": Role(guard, "worker", [*CLI, "worker"], worker_env, ports["worker"]),  # creates the queues
            "manager": Role(guard, "manager", serve("manager"), self.env, ports["manager"]),
            "tracker": Role(guard, "tracker", serve("tracker"), self.env, ports["tracker"]),
            "postback": Role(guard, "postback", serve("postback"), self.env, ports["postback"]),
        }
        self.api_token = ""

    @property
    def tracker(self) -> Role:
        return self.roles["tracker"]

    @property
    def worker(self) -> Role:
        return self.roles["worker"]

    @property
    def postback(self) -> Role:
        return self.roles["postback"]

    @property
    def manager(self) -> Role:
        return self.roles["manager"]

    def start(self, *names: str) -> None:
        """Start the named roles (all by default) side by side, make the admin, and wait until each is healthy."""
        started = [self.roles[name] for name in names or self.roles]
        for role in started:
            role.spawn()
        self.create_admin()
        for role in started:
            role.wait_healthy()

    def create_admin(self) -> None:
        """`adclick create-admin`, as an operator runs it, the password on stdin."""
        done = subprocess.run(
            [*CLI, "create-admin", ADMIN, "--password-stdin"],
            input=PASSWORD + "\n",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    def api(self, method: str, path: str, body: object = None) -> Any:
        """The manager's JSON API as the admin, with an API token made on first use."""
        if not self.api_token:
            self.api_token = asyncio.run(add_api_token(self.database_url, ADMIN, "system"))
        return ManagerApi(self.manager.base, self.api_token)(method, path, body)
