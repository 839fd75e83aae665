"""The whole system (tests/support/system.py) with the controls a fault test needs (its Redis, SQS endpoint and
PostgreSQL to stop, pause or restart on the same port) and the counts it reconciles (ClickIDs answered, postbacks
accepted, rows and rollups stored)."""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from decimal import Decimal

import asyncpg
from adclick import _native
from adclick.core.settings import DEFAULT_POSTBACK_SECRET
from adclick.core.tokens import make_token
from sqlalchemy.engine import make_url
from support.database import PostgresServer
from support.load import Load, Postbacks
from support.procs import ProcessGuard, wait_until
from support.roles import prometheus, status_of
from support.seeding import seed_campaign_api
from support.servers import DUMMY_AWS_ENV, RedisServer, SqsServer
from support.system import System

CLICKS_QUEUE = "chaos-clicks"
CONVERSIONS_QUEUE = "chaos-conversions"


def full() -> bool:
    """`make chaos` sets ADCLICK_CHAOS=full: 15-second outages and longer load; `make test` runs the short form."""
    return os.environ.get("ADCLICK_CHAOS", "short") == "full"


class FaultSystem(System):
    """Every role and backing server of adclick, started and wired to each other, with a campaign to click on."""

    def __init__(
        self,
        guard: ProcessGuard,
        redis: RedisServer,
        sqs: SqsServer,
        postgres: PostgresServer,
        database_url: str,
        **settings: object,
    ) -> None:
        env = {"ADCLICK_REDIS_URL": redis.url, "ADCLICK_SQS_ENDPOINT_URL": sqs.endpoint_url}
        env["ADCLICK_AWS_REGION"] = sqs.region
        settings = {
            "clicks_queue": CLICKS_QUEUE,
            "conversions_queue": CONVERSIONS_QUEUE,
            "log_level": "INFO",
            "worker_visibility_timeout": 10,
            "manager_reconcile_seconds": 1,
            **settings,
        }
        super().__init__(guard, {**DUMMY_AWS_ENV, **env}, database_url, **settings)
        self.redis = redis
        self.sqs = sqs
        self.postgres = postgres
        self.token = ""  # the advertiser's postback token
        self.advertiser_id = self.offer_id = self.affiliate_id = 0
        self.links: dict[str, int] = {}  # slug -> link id
        self.queue_urls: dict[str, str] = {}

    # ------------------------------------------------------------------ set-up

    def start(self, *names: str) -> None:
        """Start every role, then create an advertiser, offer and affiliate through the manager's API."""
        super().start(*names)
        offer = {"name": "Chaos Offer", "revenue_amount": "2.50", "payout_amount": "1.25", "default_status": "approved"}
        campaign = seed_campaign_api(
            self.api, advertiser={"name": "Chaos Shop"}, affiliate={"name": "Chaos Affiliate"}, offer=offer
        )
        self.advertiser_id, self.affiliate_id = campaign.advertiser_id, campaign.affiliate_id
        self.offer_id = campaign.offer_id
        self.token = make_token(DEFAULT_POSTBACK_SECRET, self.advertiser_id, 1)
        self.queue_urls = {name: self.sqs.queue_url(name) for name in (CLICKS_QUEUE, CONVERSIONS_QUEUE)}
        self.queue_urls.update({f"{name}-dlq": self.sqs.queue_url(f"{name}-dlq") for name in list(self.queue_urls)})

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


# ---------------------------------------------------------------------- reconciliation


TALLIES: list[Tally] = []  # what each chaos scenario counted, printed at the end of the run


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


def reconcile(system: System, scenario: str, link_id: int, clicks: Load, postbacks: Postbacks) -> Tally:
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
