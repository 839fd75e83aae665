"""What the browser tests drive: the roles as real processes, a landing page, Chromium, and step screenshots."""

from __future__ import annotations

import http.client
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, sync_playwright
from support.procs import ManagedProcess, ProcessGuard, free_port, wait_until
from support.tracker import UA_DESKTOP

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Debian's Chromium, not a browser build of Playwright's own (which would need a download).
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",  # root in CI, and no user namespaces in containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
]
ADMIN = "browser-admin@example.com"
PASSWORD = "browser test password, not a secret"


def chromium_path() -> str:
    """ADCLICK_TEST_CHROMIUM (a path or a name on PATH), else Debian's /usr/bin/chromium; a missing browser fails
    the test, in CI and out of it, and says what to install."""
    configured = os.environ.get("ADCLICK_TEST_CHROMIUM") or CHROMIUM
    path = shutil.which(configured) or configured
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(
            f"the browser tests need Chromium at {path}: install Debian's package (apt-get install chromium) "
            "or point ADCLICK_TEST_CHROMIUM at another Chromium executable",
            pytrace=False,
        )
    return path


def artifacts_root() -> Path:
    """Where screenshots go: ADCLICK_TEST_ARTIFACTS, else test-artifacts/browser/ in the repository (gitignored)."""
    configured = os.environ.get("ADCLICK_TEST_ARTIFACTS")
    return Path(configured).resolve() if configured else REPO / "test-artifacts" / "browser"


class Shots:
    """Numbered full-page screenshots of each step in one directory per test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.taken: list[Path] = []

    def __call__(self, page: Page, step: str) -> Path:
        path = self.directory / f"{len(self.taken) + 1:02d}-{re.sub(r'[^a-z0-9]+', '-', step.lower()).strip('-')}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)
        return path


@dataclass
class Tab:
    """One browser tab in a fresh context, with what it showed that a person would notice."""

    page: Page
    dialogs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@contextmanager
def chromium_tab() -> Iterator[Tab]:
    """Debian's Chromium, headless, with one tab that looks like a person's desktop browser (not a bot) in UTC."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, timeout=60_000)
        try:
            context = browser.new_context(
                user_agent=UA_DESKTOP,  # HeadlessChrome is (rightly) classified as a bot by the tracker
                timezone_id="UTC",
                locale="en-US",
                viewport={"width": 1280, "height": 900},
            )
            context.set_default_timeout(15_000)
            tab = Tab(context.new_page())

            def dialog_opened(dialog: Dialog) -> None:
                tab.dialogs.append(dialog.message)
                dialog.dismiss()

            tab.page.on("dialog", dialog_opened)
            tab.page.on("pageerror", lambda error: tab.errors.append(str(error)))
            yield tab
            context.close()
        finally:
            browser.close()


class Landing:
    """The advertiser's landing page: a tiny HTTP server that remembers every path it was asked for."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                paths.append(self.path)
                body = b"<!doctype html><title>Spring sale</title><h1>Welcome to the spring sale</h1>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def status_of(port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None


@dataclass
class Role:
    """One `adclick <role>` process on its own port."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    proc: ManagedProcess | None = None

    def spawn(self, guard: ProcessGuard) -> None:
        self.proc = guard.spawn(self.argv, name=self.name, env=self.env)

    def wait_healthy(self, within: float = 60.0) -> None:
        wait_until(
            lambda: status_of(self.port, "/health") == 200,
            timeout=within,
            interval=0.1,
            message=f"{self.name} /health 200",
            proc=self.proc,
        )

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Stack:
    """The roles of adclick on one PostgreSQL database, wired to each other, and an admin to sign in as."""

    def __init__(self, guard: ProcessGuard, env: Mapping[str, str], database_url: str) -> None:
        self.guard = guard
        cli = [sys.executable, "-m", "adclick.cli"]
        ports = {name: free_port() for name in ("tracker", "postback", "worker", "manager")}
        self.env = {
            **os.environ,
            **env,
            "PYTHONUNBUFFERED": "1",
            "ADCLICK_DATABASE_URL": database_url,
            "ADCLICK_FLUSH_INTERVAL_MS": "50",
            "ADCLICK_DRAIN_SECONDS": "1",
            "ADCLICK_WORKER_WAIT_SECONDS": "1",
            "ADCLICK_MANAGER_TRACKER_BASE_URL": f"http://127.0.0.1:{ports['tracker']}",
            "ADCLICK_MANAGER_POSTBACK_BASE_URL": f"http://127.0.0.1:{ports['postback']}",
        }

        def serve(role: str) -> list[str]:
            return [*cli, role, "--host", "127.0.0.1", "--port", str(ports[role])]

        worker_env = {**self.env, "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1"}
        worker_env["ADCLICK_WORKER_HEALTH_PORT"] = str(ports["worker"])
        self.roles = {
            "worker": Role("worker", [*cli, "worker"], worker_env, ports["worker"]),  # creates the queues
            "manager": Role("manager", serve("manager"), self.env, ports["manager"]),
            "tracker": Role("tracker", serve("tracker"), self.env, ports["tracker"]),
            "postback": Role("postback", serve("postback"), self.env, ports["postback"]),
        }

    @property
    def manager(self) -> Role:
        return self.roles["manager"]

    def start(self, *names: str) -> None:
        """Start the named roles (all by default) side by side, make the admin, and wait until each is healthy."""
        started = [self.roles[name] for name in names or self.roles]
        for role in started:
            role.spawn(self.guard)
        self.create_admin()
        for role in started:
            role.wait_healthy()

    def create_admin(self) -> None:
        """`adclick create-admin`, as an operator runs it, the password on stdin."""
        done = subprocess.run(
            [sys.executable, "-m", "adclick.cli", "create-admin", ADMIN, "--password-stdin"],
            input=PASSWORD + "\n",
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr


def fill_macros(template: str, **values: str) -> str:
    """An advertiser's side of a postback URL: each `{macro}` replaced by its value, percent-encoded."""
    return re.sub(r"\{(\w+)\}", lambda m: urllib.parse.quote(values[m.group(1)], safe=""), template)
