"""Load on the running roles: clicks from a few keep-alive connections, and an advertiser's postbacks for them."""

from __future__ import annotations

import http.client
import random
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

from .roles import request
from .tracker import UA_IPHONE, click_id_from, click_path


@dataclass
class Load:
    """Steady click load on one slug from a few keep-alive connections; remembers every ClickID answered with a 302.

    `with Load(...)` or `start()` / `stop()`. `pause` is the wait between one connection's clicks, `backoff` the
    wait after a failed one (a refused connection, a timeout) before it connects again.
    """

    port: int
    slug: str
    connections: int = 4
    pause: float = 0.002
    timeout: float = 5.0
    backoff: float = 0.01
    answered: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.connections)]

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def snapshot(self) -> list[str]:
        """The ClickIDs answered so far (safe to call while the load runs)."""
        with self._lock:
            return list(self.answered)

    def _run(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                conn.request("GET", click_path(self.slug, sub1=f"c{n}", sub2=str(i)), headers={"User-Agent": UA_IPHONE})
                response = conn.getresponse()
                response.read()
                location = response.getheader("Location")
                with self._lock:
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                    if response.status == 302 and location:
                        self.answered.add(click_id_from(location))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(self.backoff)
            if self.pause:
                time.sleep(self.pause)
        if conn is not None:
            conn.close()


@dataclass
class Postbacks:
    """An advertiser sending a postback for clicks it saw, retrying (same txid) until one is accepted with a 2xx."""

    port: int
    token: str
    clicks: Load
    prefix: str
    pause: float = 0.05
    accepted: dict[str, str] = field(default_factory=dict)  # txid -> click id
    pending: dict[str, str] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)
    refused: list[tuple[int, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._rng = random.Random(self.prefix)
        self._n = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, retry_for: float = 60.0) -> None:
        """Stop making new postbacks, then retry the unaccepted ones, as an advertiser would, for a while."""
        self._stop.set()
        self._thread.join(30)
        deadline = time.monotonic() + retry_for
        while self.pending and time.monotonic() < deadline:
            for txid, click_id in list(self.pending.items()):
                self._send(txid, click_id)
            time.sleep(0.2)

    def _run(self) -> None:
        while not self._stop.is_set():
            known = self.clicks.snapshot()
            if known:
                self._n += 1
                txid = f"{self.prefix}-{self._n}"
                self.pending[txid] = self._rng.choice(known)
            for txid, click_id in list(self.pending.items()):
                self._send(txid, click_id)
            time.sleep(self.pause)

    def _send(self, txid: str, click_id: str) -> None:
        query = urllib.parse.urlencode(
            {"token": self.token, "click_id": click_id, "txid": txid, "amount": "10.00", "currency": "USD"}
        )
        try:
            reply = request(self.port, "GET", f"/postback?{query}", timeout=10)
        except (OSError, http.client.HTTPException):
            return
        self.statuses[reply.status] = self.statuses.get(reply.status, 0) + 1
        if 200 <= reply.status < 300:
            self.accepted[txid] = self.pending.pop(txid)
        elif reply.status != 503:  # 503 is "try again later"; anything else for a good postback is a bug
            self.pending.pop(txid)
            self.refused.append((reply.status, reply.body[:300]))
