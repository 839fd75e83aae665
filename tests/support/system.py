"""The whole system as real processes on 127.0.0.1: tracker, worker, postback and manager on one database, Redis and
SQS endpoint, wired to each other, with an admin to sign in as and the manager's JSON API to drive."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Mapping
from typing import Any

from .manager import TEST_PASSWORD_COST, ManagerApi, add_api_token
from .procs import ProcessGuard, free_port
from .roles import CLI, Role, serve, settings_env

ADMIN = "system-admin@example.com"
PASSWORD = "system test password, not a secret"


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
            **settings_env(TEST_PASSWORD_COST),
        }
        for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
            self.env.pop(name, None)
        self.env.update(settings_env(settings))

        worker_env = {**self.env, "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1"}
        worker_env["ADCLICK_WORKER_HEALTH_PORT"] = str(ports["worker"])
        self.worker = Role(guard, "worker", [*CLI, "worker"], worker_env, ports["worker"])
        self.manager = Role(guard, "manager", serve("manager", ports["manager"]), self.env, ports["manager"])
        self.tracker = Role(guard, "tracker", serve("tracker", ports["tracker"]), self.env, ports["tracker"])
        self.postback = Role(guard, "postback", serve("postback", ports["postback"]), self.env, ports["postback"])
        # The worker first: it creates the queues.
        self.roles = {role.name: role for role in (self.worker, self.manager, self.tracker, self.postback)}
        self.api_token = ""

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
