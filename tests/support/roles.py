"""An `adclick <role>` as a child process on its own port, and plain HTTP to it: health, metrics, any request."""

from __future__ import annotations

import http.client
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from .procs import ManagedProcess, ProcessGuard, wait_until

CLI = [sys.executable, "-m", "adclick.cli"]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def location(self) -> str | None:
        return self.headers.get("location")


def request(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 5.0,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def status_of(port: int, path: str, method: str = "GET") -> int | None:
    """The status of one request, or None when nothing answers within two seconds."""
    try:
        return request(port, method, path, timeout=2.0).status
    except (OSError, http.client.HTTPException):
        return None


def samples(text: str) -> dict[str, float]:
    """Prometheus text as samples summed by name and labels (`name{labels}`)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def prometheus(port: int, path: str = "/metrics") -> dict[str, float]:
    """A role's samples (see `samples`); empty when the process does not answer."""
    try:
        reply = request(port, "GET", path, timeout=3.0)
    except (OSError, http.client.HTTPException):
        return {}
    return samples(reply.body.decode()) if reply.status == 200 else {}


def settings_env(settings: Mapping[str, object]) -> dict[str, str]:
    """Settings as the ADCLICK_* variables a role reads (`clicks_queue="x"` is ADCLICK_CLICKS_QUEUE=x)."""
    return {f"ADCLICK_{key.upper()}": str(value) for key, value in settings.items()}


def serve(role: str, port: int) -> list[str]:
    """The command line of an HTTP role (tracker, postback, manager) on 127.0.0.1:`port`."""
    return [*CLI, role, "--host", "127.0.0.1", "--port", str(port)]


@dataclass(eq=False, repr=False)
class Role:
    """One `adclick <role>` process on its own port; `start()` again after it stopped brings it back on that port."""

    guard: ProcessGuard
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    proc: ManagedProcess | None = None
    starts: int = 0

    def __repr__(self) -> str:
        # Not the dataclass's: a failed assertion would print the whole environment.
        return f"{type(self).__name__}({self.name!r}, port={self.port})"

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        self.starts += 1
        self.proc = self.guard.spawn(self.argv, name=f"{self.name}-{self.starts}", env=self.env)

    def wait_healthy(self, within: float = 60.0) -> None:
        wait_until(
            lambda: self.health() == 200,
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

    def health(self) -> int | None:
        """The status of GET /health, None while nothing answers."""
        return status_of(self.port, "/health")

    def metrics(self) -> dict[str, float]:
        """Prometheus samples summed by name and labels, e.g. 'adclick_click_requests_total{outcome="redirect"}'."""
        reply = request(self.port, "GET", "/metrics")
        assert reply.status == 200, (reply.status, reply.body[:200])
        return samples(reply.body.decode())
