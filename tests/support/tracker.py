"""Run the real tracker process and talk to it like a browser or a load generator would."""

from __future__ import annotations

import http.client
import json
import os
import sys
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from adclick import _native

from support.procs import ManagedProcess, ProcessGuard, free_port, wait_until
from support.servers import SqsServer


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def location(self) -> str | None:
        return self.headers.get("location")


class TrackerProc:
    """`adclick tracker` as a child process on a free port."""

    def __init__(
        self,
        guard: ProcessGuard,
        env: Mapping[str, str],
        processes: int = 1,
        wait: bool = True,
        port: int | None = None,
        **settings: object,
    ) -> None:
        self.port = port or free_port()
        full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        full.setdefault("ADCLICK_DRAIN_SECONDS", "1")
        full.setdefault("ADCLICK_FLUSH_INTERVAL_MS", "50")
        for key, value in settings.items():
            full[f"ADCLICK_{key.upper()}"] = str(value)
        argv = [sys.executable, "-m", "adclick.cli", "tracker", "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--processes", str(processes)]
        self.proc: ManagedProcess = guard.spawn(argv, name=f"tracker-{self.port}", env=full)
        if wait:
            self.wait_healthy()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_until(lambda: self.health() == 200, timeout=timeout, message="tracker /health 200", proc=self.proc)

    def health(self) -> int | None:
        try:
            return request(self.port, "GET", "/health", timeout=1.0).status
        except OSError:
            return None

    def metrics(self) -> dict[str, float]:
        """Prometheus samples summed by name and labels, e.g. 'adclick_click_requests_total{outcome="redirect"}'."""
        return samples(request(self.port, "GET", "/metrics").body.decode())


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


def click_path(slug: str, **params: str) -> str:
    return f"/c/{slug}" + (("?" + urllib.parse.urlencode(params)) if params else "")


def collect_events(
    sqs: SqsServer, queue: str, want: set[str], timeout: float = 30.0, bodies: list[str] | None = None
) -> list[dict[str, object]]:
    """Read the queue until every ClickID in `want` has arrived; return every event read. Each body read is also
    appended to `bodies` when given (pass the same list again to wait for more on top of what was read)."""
    kept = [] if bodies is None else bodies

    def arrived() -> bool:
        kept.extend(sqs.drain(queue))
        return want <= {str(e["click_id"]) for e in events_in(kept)}

    wait_until(arrived, timeout=timeout, interval=0.2, message=f"{len(want)} click events in SQS")
    return events_in(kept)


def events_in(bodies: Iterable[str]) -> list[dict[str, object]]:
    """Every click event packed in these SQS message bodies."""
    return [json.loads(e) for body in bodies for e in _native.unpack_clicks(body)]


def click_id_from(location: str) -> str:
    """The ClickID a test link template puts in the `cid` query parameter."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    return query["cid"][0]


UA_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
UA_DESKTOP = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36"
)
UA_SLACKBOT = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"
