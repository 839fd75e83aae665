"""Run the real tracker process and talk to it like a browser or a load generator would."""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

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
        text = request(self.port, "GET", "/metrics").body.decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                out[name] = out.get(name, 0.0) + float(value)
        return out


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


@dataclass
class Load:
    """Steady click load from a few keep-alive connections; remembers every ClickID answered with a 302."""

    port: int
    slug: str
    connections: int = 4
    pause: float = 0.002
    answered: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.connections)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _run(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", click_path(self.slug, sub1=f"c{n}", sub2=str(i)), headers={"User-Agent": UA_IPHONE})
                resp = conn.getresponse()
                resp.read()
                loc = resp.getheader("Location")
                with self._lock:
                    self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                    if resp.status == 302 and loc:
                        self.answered.add(click_id_from(loc))
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.01)
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()


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
