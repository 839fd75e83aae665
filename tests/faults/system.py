"""The whole system as real processes on 127.0.0.1: Redis, the SQS endpoint, PostgreSQL, tracker, worker, postback
and manager, with the controls a fault test needs (signals, restarts on the same port, outages) and the counts it
reconciles (ClickIDs answered, postbacks accepted, rows and rollups stored)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import random
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
from adclick import _native
from adclick.core.settings import DEFAULT_POSTBACK_SECRET
from adclick.core.tokens import make_token
from sqlalchemy.engine import make_url
from support.database import PostgresServer
from support.procs import ManagedProcess, ProcessGuard, free_port, wait_until
from support.servers import DUMMY_AWS_ENV, RedisServer, SqsServer
from support.tracker import UA_IPHONE

CLICKS_QUEUE = "chaos-clicks"
CONVERSIONS_QUEUE = "chaos-conversions"
ADMIN = "chaos-admin@example.com"
PASSWORD = "chaos password, not a secret"


def get(port: int, path: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def status_of(port: int, path: str, method: str = "GET") -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2.0)
        try:
            conn.request(method, path)
            return conn.getresponse().status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None


def prometheus(port: int, path: str = "/metrics") -> dict[str, float]:
    """Samples summed by name and labels (`name{labels}`); empty when the process does not answer."""
    try:
        status, body = get(port, path, timeout=3.0)
    except (OSError, http.client.HTTPException):
        return {}
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


@dataclass
class Role:
    """One `adclick <role>` process; `start()` again after it stopped brings it back on the same port."""

    guard: ProcessGuard
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    health: str = "/health"
    proc: ManagedProcess | None = None
    starts: int = 0

    def start(self, within: float = 60.0) -> None:
        self.starts += 1
        self.proc = self.guard.spawn(self.argv, name=f"{self.name}-{self.starts}", env=self.env)
        wait_until(
            lambda: status_of(self.port, self.health) == 200,
            timeout=within,
            message=f"{self.name} {self.health} 200",
            proc=self.proc,
        )

    def signal(self, sig: int, within: float = 60.0) -> int:
        """Send `sig` and wait for the exit; return the exit code."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return self.proc.wait(within)

    def output(self) -> str:
        return self.proc.output() if self.proc else ""


class System:
    """Every role and backing server of adclick, started and wired to each other."""

    def __init__(
        self,
        guard: ProcessGuard,
        redis: RedisServer,
        sqs: SqsServer,
        postgres: PostgresServer,
        database_url: str,
        **settings: object,
    ) -> None:
        self.guard = guard
        self.redis = redis
        self.sqs = sqs
        self.postgres = postgres
        self.database_url = database_url
        self.env = {
            **os.environ,
            **DUMMY_AWS_ENV,
            "PYTHONUNBUFFERED": "1",
            "ADCLICK_REDIS_URL": redis.url,
            "ADCLICK_SQS_ENDPOINT_URL": sqs.endpoint_url,
            "ADCLICK_AWS_REGION": sqs.region,
            "ADCLICK_CLICKS_QUEUE": CLICKS_QUEUE,
            "ADCLICK_CONVERSIONS_QUEUE": CONVERSIONS_QUEUE,
            "ADCLICK_DATABASE_URL": database_url,
            "ADCLICK_LOG_LEVEL": "INFO",
            # Short enough that faults show within a test, long enough that nothing flaps when all is well.
            "ADCLICK_DRAIN_SECONDS": "1",
            "ADCLICK_FLUSH_INTERVAL_MS": "50",
            "ADCLICK_WORKER_WAIT_SECONDS": "1",
            "ADCLICK_WORKER_VISIBILITY_TIMEOUT": "10",
            "ADCLICK_MANAGER_RECONCILE_SECONDS": "1",
        }
        for name in ("AWS_PROFILE", "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL"):
            self.env.pop(name, None)
        self.env.update({f"ADCLICK_{k.upper()}": str(v) for k, v in settings.items()})
        cli = [sys.executable, "-m", "adclick.cli"]
        tracker_port, postback_port, worker_port, manager_port = (free_port() for _ in range(4))
        self.tracker = Role(guard, "tracker", [*cli, "tracker", "--host", "127.0.0.1", "--port", str(tracker_port)],
                            self.env, tracker_port)  # fmt: skip
        self.postback = Role(guard, "postback", [*cli, "postback", "--host", "127.0.0.1", "--port", str(postback_port)],
                             self.env, postback_port)  # fmt: skip
        worker_env = {**self.env, "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1"}
        worker_env["ADCLICK_WORKER_HEALTH_PORT"] = str(worker_port)
        self.worker = Role(guard, "worker", [*cli, "worker"], worker_env, worker_port)
        self.manager = Role(guard, "manager", [*cli, "manager", "--host", "127.0.0.1", "--port", str(manager_port)],
                            self.env, manager_port)  # fmt: skip
        self.api_token = ""
        self.token = ""  # the advertiser's postback token
        self.advertiser_id = self.offer_id = self.affiliate_id = 0
        self.links: dict[str, int] = {}  # slug -> link id
        self.queue_urls: dict[str, str] = {}

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        """Start the manager, create an advertiser, offer and affiliate through its API, then the other roles."""
        self.manager.start()
        self._admin_token()
        self.advertiser_id = self.api("POST", "/api/v1/advertisers", {"name": "Chaos Shop"})["id"]
        self.affiliate_id = self.api("POST", "/api/v1/affiliates", {"name": "Chaos Affiliate"})["id"]
        offer = {
            "advertiser_id": self.advertiser_id,
            "name": "Chaos Offer",
            "revenue_amount": "2.50",
            "payout_amount": "1.25",
            "default_status": "approved",
        }
        self.offer_id = self.api("POST", "/api/v1/offers", offer)["id"]
        self.token = make_token(DEFAULT_POSTBACK_SECRET, self.advertiser_id, 1)
        self.worker.start()  # creates the queues and their dead-letter queues
        self.tracker.start()
        self.postback.start()
        self.queue_urls = {name: self.sqs.queue_url(name) for name in (CLICKS_QUEUE, CONVERSIONS_QUEUE)}
        self.queue_urls.update({f"{name}-dlq": self.sqs.queue_url(f"{name}-dlq") for name in list(self.queue_urls)})

    def _admin_token(self) -> None:
        """`adclick create-admin`, then an API token for it written the way the manager stores one (its hash)."""
        import subprocess

        from adclick.manager.security import hash_api_token

        done = subprocess.run(
            [sys.executable, "-m", "adclick.cli", "create-admin", ADMIN, "--password", PASSWORD],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        self.api_token = secrets.token_urlsafe(32)
        self.sql(
            "INSERT INTO api_tokens (user_id, token_hash, name, created_at) "
            "SELECT id, $1, 'chaos', now() FROM users WHERE email = $2",
            hash_api_token(self.api_token),
            ADMIN,
        )

    def api(self, method: str, path: str, body: object = None) -> Any:
        conn = http.client.HTTPConnection("127.0.0.1", self.manager.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {self.api_token}", "Content-Type": "application/json"}
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        assert 200 <= response.status < 300, f"{method} {path}: {response.status} {data[:500]!r}"
        return json.loads(data) if data else None

    def create_link(self, slug: str) -> int:
        """A link made through the manager; it is served once the tracker finds it in Redis."""
        link = {
            "offer_id": self.offer_id,
            "affiliate_id": self.affiliate_id,
            "slug": slug,
            "url": "https://shop.example/lp?cid={click_id}&s1={sub1}",
        }
        self.links[slug] = link_id = int(self.api("POST", "/api/v1/links", link)["id"])
        # HEAD redirects without counting a click, so the probe leaves no row to explain.
        served = lambda: status_of(self.tracker.port, f"/c/{slug}", "HEAD") == 302  # noqa: E731
        wait_until(served, timeout=30, message=f"HEAD /c/{slug} 302")
        return link_id

    # ------------------------------------------------------------------ database

    def sql(self, query: str, *args: object) -> list[asyncpg.Record]:
        url = make_url(self.database_url)

        async def run() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(
                host=url.host, port=url.port, user=url.username, database=url.database, timeout=10
            )
            try:
                return list(await conn.fetch(query, *args, timeout=60))
            finally:
                await conn.close()

        return asyncio.run(run())

    # ------------------------------------------------------------------ quiescence

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        client = self.sqs.client()
        try:
            out = {}
            for name, url in self.queue_urls.items():
                attrs = client.get_queue_attributes(
                    QueueUrl=url,
                    AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
                )["Attributes"]
                visible, hidden = attrs["ApproximateNumberOfMessages"], attrs["ApproximateNumberOfMessagesNotVisible"]
                out[name] = (int(visible), int(hidden))
            return out
        finally:
            client.close()

    def settled(self) -> bool:
        """Nothing left anywhere between a 302 and a row: tracker buffer, Redis spill list, both queues."""
        metrics = prometheus(self.tracker.port)
        if metrics.get("adclick_event_buffer_depth", 1) != 0:
            return False
        with self.redis.client() as client:
            if client.llen(_native.SPILL_KEY):
                return False
        depths = self.queue_depths()
        return all(depths[name] == (0, 0) for name in (CLICKS_QUEUE, CONVERSIONS_QUEUE))

    def wait_settled(self, within: float = 180.0) -> None:
        # Twice in a row, a second apart: a batch can be between the queue and the commit.
        def twice() -> bool:
            if not self.settled():
                return False
            time.sleep(1.0)
            return self.settled()

        wait_until(twice, timeout=within, interval=0.5, message="every click and conversion stored")

    def dead_letters(self) -> dict[str, int]:
        depths = self.queue_depths()
        return {name: sum(depths[name]) for name in depths if name.endswith("-dlq")}


# ---------------------------------------------------------------------- load


@dataclass
class Clicks:
    """A steady, bounded click load on one slug; every ClickID answered with a 302 is kept."""

    port: int
    slug: str
    connections: int = 2
    pause: float = 0.01
    answered: set[str] = field(default_factory=set)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(self.connections)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def snapshot(self) -> list[str]:
        with self._lock:
            return list(self.answered)

    def _run(self, n: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", f"/c/{self.slug}?sub1={self.slug}&sub2=c{n}-{i}", headers={"User-Agent": UA_IPHONE})
                response = conn.getresponse()
                response.read()
                location = response.getheader("Location") or ""
                with self._lock:
                    self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
                    if response.status == 302:
                        self.answered.add(click_id_of(location))
                if response.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with self._lock:
                    self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
            time.sleep(self.pause)
        if conn is not None:
            conn.close()


def click_id_of(location: str) -> str:
    """The ClickID the chaos links put in `cid` (a 302 without one would be a bug: fail loudly)."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["cid"][0]


@dataclass
class Postbacks:
    """An advertiser sending a postback for clicks it saw, retrying (same txid) until one is accepted with a 2xx."""

    port: int
    token: str
    clicks: Clicks
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
            status, body = get(self.port, f"/postback?{query}", timeout=10)
        except (OSError, http.client.HTTPException):
            return
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if 200 <= status < 300:
            self.accepted[txid] = self.pending.pop(txid)
        elif status != 503:  # 503 is "try again later"; anything else for a good postback is a bug
            self.pending.pop(txid)
            self.refused.append((status, body[:300]))


# ---------------------------------------------------------------------- reconciliation


@dataclass
class Tally:
    scenario: str
    clicks_answered: int
    click_rows: int
    clicks_lost: int
    clicks_duplicated: int
    click_rows_unanswered: int
    postbacks_accepted: int
    conversion_rows: int
    conversions_lost: int
    conversions_duplicated: int
    rollup_clicks: int
    rollup_conversions: int
    counted_conversions: int
    rollup_revenue: Decimal
    raw_revenue: Decimal
    dead_letters: int

    @property
    def ok(self) -> bool:
        return (
            self.clicks_lost == 0
            and self.clicks_duplicated == 0
            and self.conversions_lost == 0
            and self.conversions_duplicated == 0
            and self.rollup_clicks == self.click_rows
            and self.rollup_conversions == self.counted_conversions
            and self.rollup_revenue == self.raw_revenue
            and self.dead_letters == 0
        )


def reconcile(system: System, scenario: str, link_id: int, clicks: Clicks, postbacks: Postbacks) -> Tally:
    """Count what reached PostgreSQL for one scenario's link against what the load was told."""
    answered = set(clicks.answered)
    stored = {row["click_id"] for row in system.sql("SELECT click_id FROM clicks WHERE link_id = $1", link_id)}
    conversions = system.sql(
        "SELECT txid, status, revenue FROM conversions WHERE link_id = $1 AND offer_id = $2", link_id, system.offer_id
    )
    by_txid: dict[str, int] = {}
    for row in conversions:
        by_txid[row["txid"]] = by_txid.get(row["txid"], 0) + 1
    counted = [row for row in conversions if row["status"] in ("pending", "approved")]
    (rollup,) = system.sql(
        "SELECT COALESCE(SUM(clicks), 0) AS clicks, COALESCE(SUM(conversions), 0) AS conversions, "
        "COALESCE(SUM(revenue), 0) AS revenue FROM hourly_rollups WHERE link_id = $1",
        link_id,
    )
    return Tally(
        scenario=scenario,
        clicks_answered=len(answered),
        click_rows=len(stored),
        clicks_lost=len(answered - stored),
        # The primary key makes a duplicate row impossible; a click applied twice shows in the rollups instead.
        clicks_duplicated=max(0, int(rollup["clicks"]) - len(stored)),
        click_rows_unanswered=len(stored - answered),
        postbacks_accepted=len(postbacks.accepted),
        conversion_rows=len(conversions),
        conversions_lost=len(set(postbacks.accepted) - set(by_txid)),
        conversions_duplicated=sum(n - 1 for n in by_txid.values()) + max(0, int(rollup["conversions"]) - len(counted)),
        rollup_clicks=int(rollup["clicks"]),
        rollup_conversions=int(rollup["conversions"]),
        counted_conversions=len(counted),
        rollup_revenue=Decimal(rollup["revenue"]),
        raw_revenue=sum((Decimal(row["revenue"]) for row in counted), Decimal(0)),
        dead_letters=sum(system.dead_letters().values()),
    )


COLUMNS = [
    ("scenario", "scenario"),
    ("302s", "clicks_answered"),
    ("click rows", "click_rows"),
    ("lost", "clicks_lost"),
    ("dup", "clicks_duplicated"),
    ("rows w/o 302", "click_rows_unanswered"),
    ("postbacks ok", "postbacks_accepted"),
    ("conv rows", "conversion_rows"),
    ("lost", "conversions_lost"),
    ("dup", "conversions_duplicated"),
    ("rollup clicks", "rollup_clicks"),
    ("rollup conv/counted", "rollup_conversions"),
    ("rollup/raw revenue", "rollup_revenue"),
    ("DLQ", "dead_letters"),
]


def table(tallies: list[Tally]) -> str:
    rows = [[title for title, _ in COLUMNS] + ["ok"]]
    for t in tallies:
        row = [str(getattr(t, attr)) for _, attr in COLUMNS]
        row[11] = f"{t.rollup_conversions}/{t.counted_conversions}"
        row[12] = f"{t.rollup_revenue:.2f}/{t.raw_revenue:.2f}"
        rows.append([*row, "yes" if t.ok else "NO"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [" | ".join(cell.rjust(widths[i]) for i, cell in enumerate(r)) for r in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def unpack_click_ids(bodies: list[str]) -> list[str]:
    return [json.loads(event)["click_id"] for body in bodies for event in _native.unpack_clicks(body)]
