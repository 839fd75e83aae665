"""Helpers for the worker tests: seed offers and links, build click and conversion messages, run consumers
in-process against the real SQS endpoint, Redis and database, and read back what was stored."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from adclick import _native
from adclick.core.db.models import (
    ROLLUP_METRICS,
    Affiliate,
    Click,
    Conversion,
    ConversionRejection,
    FailedJob,
    HourlyRollup,
    Link,
    OfferAffiliateOverride,
)
from adclick.core.publisher import redis_client
from adclick.core.settings import DEFAULT_CLICK_SECRET, WorkerSettings
from adclick.core.sqs import create_client, ensure_queues
from adclick.worker.clicks import ClickHandler
from adclick.worker.consumer import Consumer
from adclick.worker.conversions import ConversionHandler
from adclick.worker.health import Heartbeat, WorkerMetrics
from adclick.worker.messages import encode_conversion, pack_clicks
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from support.procs import ProcessGuard, free_port
from support.roles import CLI, Role, request, settings_env
from support.seeding import seed_campaign

CODEC = _native.ClickIdCodec(1, DEFAULT_CLICK_SECRET.encode())
FORGER = _native.ClickIdCodec(1, b"not-the-secret-at-all-not-the-secret")
UA_A = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148 Safari/604.1"
UA_B = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/124.0.0.0 Safari/537.36"
T0 = 1_764_284_000_000  # 2025-11-27 22:53:20 UTC
HOUR_MS = 3_600_000
_link_ids = itertools.count(1000)


def settings(**overrides: Any) -> WorkerSettings:
    values: dict[str, Any] = {
        "clicks_queue": "clicks",
        "conversions_queue": "conversions",
        "worker_wait_seconds": 1,
        "worker_visibility_timeout": 30,
        "sqs_max_receives": 3,
    }
    values.update(overrides)
    return WorkerSettings(**values)


@dataclass
class Setup:
    """What `seed` created."""

    advertiser_id: int
    offer_id: int
    affiliate_id: int
    link_id: int


async def seed(
    sessions: async_sessionmaker[AsyncSession],
    *,
    override: dict[str, Any] | None = None,
    affiliates: int = 1,
    advertiser_columns: dict[str, Any] | None = None,
    **offer: Any,
) -> list[Setup]:
    """An advertiser (`advertiser_columns`), an offer (`offer` columns), `affiliates` affiliates each with a link."""
    async with sessions() as session, session.begin():
        campaign = await seed_campaign(session, advertiser=advertiser_columns, offer={"name": "Offer", **offer})
        advertiser, row = campaign.advertiser, campaign.offer
        setups = []
        for n in range(affiliates):
            affiliate = Affiliate(name=f"Affiliate {n}")
            session.add(affiliate)
            await session.flush()
            link_id = next(_link_ids)
            session.add(
                Link(
                    id=link_id,
                    slug=f"link-{link_id}",
                    offer_id=row.id,
                    affiliate_id=affiliate.id,
                    template="https://shop.example/?c={click_id}",
                )
            )
            if override is not None:
                session.add(OfferAffiliateOverride(offer_id=row.id, affiliate_id=affiliate.id, **override))
            setups.append(Setup(advertiser.id, row.id, affiliate.id, link_id))
    return setups


def click_event(
    link_id: int,
    ts_ms: int = T0,
    *,
    offer_id: int | None = None,
    affiliate_id: int | None = None,
    ip: str = "203.0.113.9",
    ua: str = UA_A,
    country: str | None = "US",
    device: str = "smartphone",
    bot: bool = False,
    blocked: bool = False,
    capped: bool = False,
    click_id: str | None = None,
) -> dict[str, Any]:
    """A click event as the tracker writes it (docs/contracts.md), with a genuine ClickID."""
    return {
        "v": 1,
        "click_id": click_id or CODEC.generate(link_id, ts_ms),
        "ts": ts_ms,
        "link_id": link_id,
        "offer_id": offer_id,
        "aff_id": affiliate_id,
        "slug": f"link-{link_id}",
        "method": "GET",
        "ip": ip,
        "ua": ua,
        "referer": None,
        "country": country,
        "device": device,
        "os": "iOS",
        "bot": bot,
        "sub1": "s1",
        "sub2": None,
        "sub3": None,
        "sub4": None,
        "sub5": None,
        "params": {"gclid": "g"},
        "dest": 0,
        "fallback": False,
        **({"blocked": True} if blocked else {}),
        **({"capped": True} if capped else {}),
    }


def conversion_body(
    click_id: str,
    txid: str | None = "ORDER-1",
    *,
    received_at: int = T0 + HOUR_MS,
    amount: str | None = None,
    currency: str | None = None,
    status: str | None = None,
    advertiser_id: int | None = None,
    event: str = "sale",
    source: str = "s2s",
    ip: str | None = None,
    origin: str | None = None,
) -> str:
    message: dict[str, Any] = {
        "v": 1,
        "click_id": click_id,
        "txid": txid,
        "event": event,
        "amount": amount,
        "currency": currency,
        "status": status,
        "advertiser_id": advertiser_id,
        "received_at": received_at,
        "source": source,
        "params": {"sub": "x"},
    }
    if ip is not None:
        message["ip"] = ip
    if origin is not None:
        message["origin"] = origin
    return encode_conversion(message)


def metric(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return float(value or 0.0)


class InProcessWorker:
    """The worker's consumers, handlers and SQS client, running as tasks of the test's event loop."""

    def __init__(self, engine: AsyncEngine, redis_url: str, worker_settings: WorkerSettings) -> None:
        from adclick.core.db.session import session_factory

        self.settings = worker_settings
        self.engine = engine
        self.sessions = session_factory(engine)
        self.redis = aioredis.Redis.from_url(redis_url, socket_timeout=5)
        self.metrics = WorkerMetrics(CollectorRegistry())
        self.heartbeat = Heartbeat()
        self.urls: dict[str, str] = {}
        self._client_context: Any = None
        self.client: Any = None
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        window = worker_settings.unique_window_hours * 3600
        self.clicks = ClickHandler(self.sessions, worker_settings.clicks_queue, self.metrics, self.redis, window)
        # As `adclick worker` does: a batch that fills or frees a cap republishes its offer's links here.
        self.links_redis = redis_client(redis_url, 5000)
        self.conversions = ConversionHandler(
            self.sessions, worker_settings.conversions_queue, self.metrics, CODEC, self.links_redis
        )

    async def __aenter__(self) -> InProcessWorker:
        self._client_context = create_client(self.settings, read_timeout=self.settings.worker_wait_seconds + 10)
        self.client = await self._client_context.__aenter__()
        self.urls = await ensure_queues(self.client, self.settings)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        await self._client_context.__aexit__(None, None, None)
        await self.redis.aclose()
        self.links_redis.close()

    def start(self, clicks: int = 1, conversions: int = 1, visibility_timeout: int | None = None) -> None:
        """Start consumer tasks (per queue), as `adclick worker --concurrency N` does."""
        self._stop = asyncio.Event()
        for key, handler, count in (("clicks", self.clicks, clicks), ("conversions", self.conversions, conversions)):
            for n in range(count):
                consumer = Consumer(
                    f"{key}-{n}",
                    self.client,
                    self.urls[key],
                    handler,  # type: ignore[arg-type]
                    self.metrics,
                    self.heartbeat,
                    wait_seconds=self.settings.worker_wait_seconds,
                    visibility_timeout=visibility_timeout or self.settings.worker_visibility_timeout,
                )
                self._tasks.append(asyncio.create_task(consumer.run(self._stop)))

    async def stop(self) -> None:
        self._stop.set()
        tasks, self._tasks = self._tasks, []
        if tasks:
            await asyncio.gather(*tasks)

    async def send(self, key: str, bodies: Iterable[str]) -> None:
        bodies = list(bodies)
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(bodies[start : start + 10])]
            response = await self.client.send_message_batch(QueueUrl=self.urls[key], Entries=entries)
            assert not response.get("Failed"), response

    async def queue_counts(self, key: str) -> tuple[int, int]:
        """(visible, in flight) messages of a queue."""
        attributes = await self.client.get_queue_attributes(
            QueueUrl=self.urls[key],
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
        values = attributes["Attributes"]
        return int(values["ApproximateNumberOfMessages"]), int(values["ApproximateNumberOfMessagesNotVisible"])

    async def drained(self, *keys: str) -> bool:
        for key in keys or ("clicks", "conversions"):
            if await self.queue_counts(key) != (0, 0):
                return False
        return True

    async def run_until_drained(self, *keys: str, within: float = 60.0, **start: Any) -> None:
        """Start consumers, wait until the queues are empty (every message deleted), stop them."""
        self.start(**start)
        await wait_for(lambda: self.drained(*keys), within=within, message=f"queues {keys or 'all'} drained")
        await self.stop()


async def wait_for(
    predicate: Callable[[], Awaitable[object]], within: float = 30.0, message: str = "condition"
) -> object:
    """Poll an async predicate until it is truthy; fail after `within` seconds (a deadline, not a measurement)."""
    deadline = time.monotonic() + within
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {message}")
        await asyncio.sleep(0.05)


async def count(engine: AsyncEngine, model: Any, *where: Any) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(select(func.count()).select_from(model).where(*where))).scalar_one())


async def click_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        return list((await connection.execute(select(Click.click_id).order_by(Click.click_id))).scalars())


async def rollup_totals(engine: AsyncEngine, *where: Any) -> dict[str, Any]:
    columns = ROLLUP_METRICS
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(*(func.coalesce(func.sum(getattr(HourlyRollup, name)), 0) for name in columns)).where(*where)
            )
        ).one()
    totals = dict(zip(columns, row, strict=True))
    for name in ("revenue", "payout"):
        # SUM over the Money type comes back as the column type on PostgreSQL and as an integer of millionths
        # on SQLite: read both as Decimal.
        value = totals[name]
        totals[name] = Decimal(value) if not isinstance(value, int) else Decimal(value).scaleb(-6)
        totals[name] = totals[name].quantize(Decimal("0.000001"))
    return totals


async def totals_of(engine: AsyncEngine, *names: str) -> tuple[Any, ...]:
    """The named columns of `rollup_totals` over every row, in that order (one tuple for one assertion)."""
    totals = await rollup_totals(engine)
    return tuple(totals[name] for name in names)


async def conversions(engine: AsyncEngine) -> list[Conversion]:
    async with AsyncSession(engine) as session:
        return list((await session.execute(select(Conversion).order_by(Conversion.id))).scalars())


async def rejections(engine: AsyncEngine) -> list[tuple[str, str | None]]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(ConversionRejection.reason, ConversionRejection.txid).order_by(ConversionRejection.id)
        )
        return [(row[0], row[1]) for row in rows]


async def failed_jobs(engine: AsyncEngine) -> list[FailedJob]:
    async with AsyncSession(engine) as session:
        return list((await session.execute(select(FailedJob).order_by(FailedJob.id))).scalars())


def packed(events: Sequence[dict[str, Any]], per_message: int = 500) -> list[str]:
    return [pack_clicks(list(events[i : i + per_message])) for i in range(0, len(events), per_message)]


class WorkerProc(Role):
    """`adclick worker` as a real child process on the test's SQS endpoint, Redis and database, started at once."""

    def __init__(self, guard: ProcessGuard, env: Mapping[str, str], database_url: str, **settings: object) -> None:
        port = free_port()
        defaults = {
            "clicks_queue": "clicks",
            "conversions_queue": "conversions",
            "worker_wait_seconds": 1,
            "worker_health_host": "127.0.0.1",
            "worker_health_port": port,
            "sqs_max_receives": 5,
            "log_level": "INFO",
        }
        full = {**os.environ, **env, "PYTHONUNBUFFERED": "1", "ADCLICK_DATABASE_URL": database_url}
        full.update(settings_env({**defaults, **settings}))
        super().__init__(guard, "worker", [*CLI, "worker"], full, port)
        self.spawn()

    def get(self, path: str) -> tuple[int, str] | None:
        """(status, body) of a GET on the health port; None when nothing answers."""
        try:
            reply = request(self.port, "GET", path, timeout=2)
        except OSError:
            return None
        return reply.status, reply.body.decode()
