"""Worker benchmark: one `adclick worker` process draining a seeded queue into PostgreSQL, beside a naive
per-row ORM baseline doing the same work in the same run.

Starts its own PostgreSQL (a throwaway cluster) and redis-server with the test suite's helpers (tests/support)
and an in-memory SQS endpoint (bench/sqs_lite.py: moto's cost per call grows with the backlog, so it would be
what this measured), migrates two fresh databases, seeds offers and links, then:

1. worker, clicks: N click events packed into `c1:` messages are queued; the worker is started and the clock
   runs from its first healthy /health to the moment its /metrics count every click stored.
2. worker, conversions: M conversion messages (`v1:`), same measure.
3. baseline: a sample of the same events through a straightforward per-row ORM loop (one transaction per event:
   look it up, add it, read-modify-write its rollup row, commit), the way a per-message job would do it.

It prints events per second for each and the ratio. A benchmark measures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from adclick import _native  # noqa: E402
from adclick.core.settings import DEFAULT_CLICK_SECRET  # noqa: E402
from sqlalchemy.ext.asyncio import AsyncSession  # noqa: E402
from support.database import PostgresServer, unique_name  # noqa: E402
from support.procs import ProcessGuard, free_port, wait_until  # noqa: E402
from support.servers import DUMMY_AWS_ENV, RedisServer  # noqa: E402

T0 = int(datetime(2026, 3, 2, 9, tzinfo=UTC).timestamp() * 1000)
LINKS = 200
AFFILIATES = 20
CODEC = _native.ClickIdCodec(1, DEFAULT_CLICK_SECRET.encode())
UAS = [
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 Chrome/124.0.0.0 Mobile Safari/537.36",
]
COUNTRIES = ["US", "BR", "DE", "JP", "IN", "GB", None]
DEVICES = ["smartphone", "desktop", "tablet"]


def click_event(n: int) -> dict[str, Any]:
    link_id = 1 + n % LINKS
    ts = T0 + n * 7
    return {
        "v": 1,
        "click_id": CODEC.generate(link_id, ts),
        "ts": ts,
        "link_id": link_id,
        "offer_id": 1 + link_id % 4,
        "aff_id": 1 + link_id % AFFILIATES,
        "slug": f"link-{link_id}",
        "method": "GET",
        "ip": f"10.{n % 251}.{(n // 251) % 251}.{n % 7}",
        "ua": UAS[n % len(UAS)],
        "referer": "https://news.example/article" if n % 3 == 0 else None,
        "country": COUNTRIES[n % len(COUNTRIES)],
        "device": DEVICES[n % len(DEVICES)],
        "os": "iOS",
        "bot": n % 50 == 0,
        "sub1": f"campaign-{n % 13}",
        "sub2": None,
        "sub3": None,
        "sub4": None,
        "sub5": None,
        "params": {"gclid": f"g{n}"},
        "dest": 0,
        "fallback": False,
    }


def conversion(n: int) -> dict[str, Any]:
    link_id = 1 + n % LINKS
    return {
        "v": 1,
        "click_id": CODEC.generate(link_id, T0 + n),
        "txid": f"ORDER-{n}",
        "event": "sale",
        "amount": f"{10 + n % 200}.{n % 100:02d}",
        "currency": "USD",
        "status": "approved" if n % 5 else None,
        "advertiser_id": None,
        "received_at": T0 + 3_600_000 + n,
        "source": "s2s",
        "params": {"sku": f"S{n % 97}"},
    }


# ---------------------------------------------------------------- database


async def seed_offers(url: str) -> None:
    from adclick.core.db.models import Advertiser, Affiliate, Link, Offer, OfferAffiliateOverride
    from adclick.core.db.session import create_engine, session_factory

    engine = create_engine(url)
    async with session_factory(engine)() as session, session.begin():
        session.add(Advertiser(id=1, name="Shop"))
        await session.flush()
        for offer_id in range(1, 5):
            session.add(
                Offer(
                    id=offer_id,
                    advertiser_id=1,
                    name=f"Offer {offer_id}",
                    currency="USD",
                    revenue_model="revshare",
                    revenue_amount=Decimal("12.5"),
                    payout_model="cpa",
                    payout_amount=Decimal("4.00"),
                    default_status="pending",
                    daily_cap=1_000_000 if offer_id == 1 else None,
                )
            )
        for affiliate_id in range(1, AFFILIATES + 1):
            session.add(Affiliate(id=affiliate_id, name=f"Affiliate {affiliate_id}"))
        await session.flush()
        for link_id in range(1, LINKS + 1):
            offer_id, affiliate_id = 1 + link_id % 4, 1 + link_id % AFFILIATES
            session.add(
                Link(
                    id=link_id,
                    slug=f"link-{link_id}",
                    offer_id=offer_id,
                    affiliate_id=affiliate_id,
                    template="https://shop.example/?c={click_id}",
                )
            )
        await session.flush()
        for affiliate_id in range(1, 4):
            session.add(
                OfferAffiliateOverride(
                    offer_id=2, affiliate_id=affiliate_id, payout_model="revshare", payout_amount=Decimal("8")
                )
            )
    await engine.dispose()


async def count_rows(url: str, table: str) -> int:
    from adclick.core.db.session import create_engine
    from sqlalchemy import text

    engine = create_engine(url)
    async with engine.connect() as connection:
        value = (await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
    await engine.dispose()
    return int(value)


# ---------------------------------------------------------------- baseline

Step = Callable[[AsyncSession, dict[str, Any]], Awaitable[None]]
# The click event's fields that a click row keeps as they are, under the same name (ts and aff_id it converts).
CLICK_COLUMNS = "click_id link_id offer_id ip ua referer country device os bot sub1 params dest".split()


async def per_event(url: str, events: list[dict[str, Any]], step: Step) -> float:
    """Events per second through `step`, one ORM transaction per event, the way a per-message job would do it."""
    from adclick.core.db.session import create_engine, session_factory

    engine = create_engine(url)
    sessions = session_factory(engine)
    started = time.perf_counter()
    for event in events:
        async with sessions() as session, session.begin():
            await step(session, event)
    elapsed = time.perf_counter() - started
    await engine.dispose()
    return len(events) / elapsed


async def rollup_row(
    session: AsyncSession, hour: datetime, link_id: int, country: str, device: str, offer_id: int, affiliate_id: int
) -> Any:
    """The hourly rollup row of this hour, link, country and device, locked for update; a new one at zero if none."""
    from adclick.core.db.models import HourlyRollup

    rollup = await session.get(HourlyRollup, (hour, link_id, country, device), with_for_update=True)
    if rollup is None:
        rollup = HourlyRollup(
            hour=hour,
            link_id=link_id,
            country=country,
            device=device,
            offer_id=offer_id,
            affiliate_id=affiliate_id,
            clicks=0,
            unique_clicks=0,
            bot_clicks=0,
            conversions=0,
            revenue=Decimal(0),
            payout=Decimal(0),
        )
        session.add(rollup)
    return rollup


async def naive_clicks(url: str, events: list[dict[str, Any]]) -> float:
    """One ORM transaction per click: skip if stored, add it, read-modify-write its rollup row."""
    from adclick.core.db.models import Click

    async def step(session: AsyncSession, event: dict[str, Any]) -> None:
        if await session.get(Click, event["click_id"]) is not None:
            return
        ts = datetime.fromtimestamp(event["ts"] / 1000, UTC)
        session.add(Click(ts=ts, affiliate_id=event["aff_id"], **{name: event[name] for name in CLICK_COLUMNS}))
        hour = ts.replace(minute=0, second=0, microsecond=0)
        country, device = event["country"] or "", event["device"] or ""
        rollup = await rollup_row(session, hour, event["link_id"], country, device, event["offer_id"], event["aff_id"])
        rollup.clicks += 0 if event["bot"] else 1
        rollup.bot_clicks += 1 if event["bot"] else 0

    return await per_event(url, events, step)


async def naive_conversions(url: str, events: list[dict[str, Any]]) -> float:
    """One ORM transaction per postback: verify, look up link and offer, skip a known txid, insert, roll up."""
    from adclick.core.db.models import Conversion, Link, Offer
    from adclick.worker.commissions import Rule, commission, parse_amount
    from sqlalchemy import select

    async def step(session: AsyncSession, event: dict[str, Any]) -> None:
        _, _, _, link_id, _ = CODEC.verify(event["click_id"])
        link = await session.get(Link, link_id)
        assert link is not None
        offer = await session.get(Offer, link.offer_id)
        assert offer is not None
        found = await session.execute(
            select(Conversion.id).where(Conversion.offer_id == offer.id, Conversion.txid == event["txid"])
        )
        if found.first() is not None:
            return
        amount = parse_amount(event["amount"])
        revenue = commission(Rule(offer.revenue_model, offer.revenue_amount), amount, "USD", offer.currency)  # type: ignore[arg-type]
        payout = commission(Rule(offer.payout_model, offer.payout_amount), amount, "USD", offer.currency)  # type: ignore[arg-type]
        when = datetime.fromtimestamp(event["received_at"] / 1000, UTC)
        session.add(
            Conversion(
                offer_id=offer.id,
                txid=event["txid"],
                click_id=event["click_id"],
                link_id=link_id,
                affiliate_id=link.affiliate_id,
                advertiser_id=offer.advertiser_id,
                event=event["event"],
                status=event["status"] or offer.default_status,
                amount=amount,
                currency=offer.currency,
                revenue=revenue,
                payout=payout,
                created_at=when,
                updated_at=when,
            )
        )
        hour = when.replace(minute=0, second=0, microsecond=0)
        rollup = await rollup_row(session, hour, link_id, "", "", offer.id, link.affiliate_id)
        rollup.conversions += 1
        rollup.revenue += revenue
        rollup.payout += payout

    return await per_event(url, events, step)


# ---------------------------------------------------------------- worker


class LiteSqs:
    """bench/sqs_lite.py on a free port."""

    region = "us-east-1"

    def __init__(self, guard: ProcessGuard) -> None:
        port = free_port()
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.proc = guard.spawn([sys.executable, str(ROOT / "bench" / "sqs_lite.py"), "--port", str(port)], name="sqs")
        from support.procs import wait_for_port

        wait_for_port(port, proc=self.proc)

    def client(self) -> Any:
        import botocore.config
        import botocore.session

        return botocore.session.get_session().create_client(
            "sqs",
            region_name=self.region,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            config=botocore.config.Config(read_timeout=120, retries={"total_max_attempts": 3}),
        )

    def create_queue(self, name: str) -> str:
        return str(self.client().create_queue(QueueName=name)["QueueUrl"])


def send_all(sqs: LiteSqs, queue_url: str, bodies: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    batches = [bodies[i : i + 10] for i in range(0, len(bodies), 10)]

    def send(chunk: list[list[str]]) -> None:
        client = sqs.client()
        try:
            for batch in chunk:
                entries = [{"Id": str(i), "MessageBody": body} for i, body in enumerate(batch)]
                response = client.send_message_batch(QueueUrl=queue_url, Entries=entries)
                if response.get("Failed"):
                    raise RuntimeError(f"SQS refused messages: {response['Failed'][:1]}")
        finally:
            client.close()

    threads = 4
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, [batches[i::threads] for i in range(threads)]))


def scrape(port: int) -> dict[str, float]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode()
    finally:
        connection.close()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def healthy(port: int) -> bool:
    import http.client

    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", "/health")
        return connection.getresponse().status == 200
    except OSError:
        return False


def run_worker(
    guard: ProcessGuard, env: dict[str, str], args: argparse.Namespace, kind: str, expected: int
) -> tuple[float, float]:
    """Start a worker on a filled queue; (events/s from healthy to all processed, seconds)."""
    port = free_port()
    full = {**env, "ADCLICK_WORKER_HEALTH_PORT": str(port), "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1"}
    cmd = [sys.executable, "-m", "adclick.cli", "worker", "--concurrency", str(args.concurrency)]
    if args.worker_cpu:
        cmd = ["taskset", "-c", args.worker_cpu, *cmd]
    proc = guard.spawn(cmd, name=f"worker-{kind}", env=full)
    wait_until(lambda: healthy(port), timeout=60, interval=0.005, message="worker healthy", proc=proc)
    started = time.perf_counter()
    metric = f'adclick_worker_processed_total{{kind="{kind}"}}'
    wait_until(
        lambda: scrape(port).get(metric, 0) >= expected,
        timeout=args.timeout,
        interval=0.05,
        message=f"{expected} {kind} events processed",
        proc=proc,
    )
    elapsed = time.perf_counter() - started
    proc.stop(timeout=60, sig=signal.SIGTERM)
    return expected / elapsed, elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=200_000, help="click events for the worker (200,000)")
    parser.add_argument("--conversions", type=int, default=20_000, help="conversion messages for the worker (20,000)")
    parser.add_argument("--per-message", type=int, default=1000, help="click events packed per message (1000)")
    parser.add_argument("--baseline-clicks", type=int, default=5_000, help="clicks through the naive loop (5,000)")
    parser.add_argument("--baseline-conversions", type=int, default=2_000, help="conversions, naive loop (2,000)")
    parser.add_argument("--concurrency", type=int, default=4, help="worker --concurrency (4)")
    parser.add_argument("--worker-cpu", help="pin the worker with taskset -c (e.g. 1)")
    parser.add_argument("--timeout", type=float, default=900.0, help="give up on a phase after this many seconds")
    parser.add_argument("--json", dest="json_out", help="also write the figures to this JSON file")
    args = parser.parse_args()

    from adclick.core.db.migrate import upgrade
    from adclick.worker.messages import encode_conversion, pack_clicks

    with ProcessGuard(Path(tempfile.mkdtemp(prefix="adclick-worker-bench-"))) as guard:
        print("starting PostgreSQL, Redis and the SQS endpoint ...", flush=True)
        postgres = PostgresServer(guard, os.environ.get("ADCLICK_BENCH_DATABASE_URL") or None)
        if not postgres.external:
            postgres.start()
        redis_dir = Path(tempfile.mkdtemp(prefix="adclick-bench-redis-"))
        redis = RedisServer(guard, redis_dir)
        redis.start()
        sqs = LiteSqs(guard)
        worker_db = postgres.create_database(unique_name("bench_worker"))
        naive_db = postgres.create_database(unique_name("bench_naive"))
        for url in (worker_db, naive_db):
            upgrade(url)
            asyncio.run(seed_offers(url))

        env = {
            **os.environ,
            **DUMMY_AWS_ENV,
            "ADCLICK_DATABASE_URL": worker_db,
            "ADCLICK_DATABASE_POOL_SIZE": str(max(10, 2 * args.concurrency)),
            "ADCLICK_REDIS_URL": redis.url,
            "ADCLICK_SQS_ENDPOINT_URL": sqs.endpoint_url,
            "ADCLICK_CLICKS_QUEUE": "bench-clicks",
            "ADCLICK_CONVERSIONS_QUEUE": "bench-conversions",
            "ADCLICK_WORKER_WAIT_SECONDS": "5",
            "ADCLICK_LOG_LEVEL": "WARNING",
        }
        clicks_url = sqs.create_queue("bench-clicks")
        conversions_url = sqs.create_queue("bench-conversions")

        print(f"packing and queueing {args.clicks:,} clicks ...", flush=True)
        events = [click_event(n) for n in range(args.clicks)]
        bodies = [pack_clicks(events[i : i + args.per_message]) for i in range(0, len(events), args.per_message)]
        send_all(sqs, clicks_url, bodies)
        print(f"worker: draining {len(bodies):,} click messages ...", flush=True)
        clicks_rate, clicks_seconds = run_worker(guard, env, args, "click", args.clicks)
        stored_clicks = asyncio.run(count_rows(worker_db, "clicks"))

        print(f"queueing {args.conversions:,} conversions ...", flush=True)
        postbacks = [conversion(n) for n in range(args.conversions)]
        queued = time.perf_counter()
        send_all(sqs, conversions_url, [encode_conversion(p) for p in postbacks])
        print(f"  queued in {time.perf_counter() - queued:.1f} s", flush=True)
        print("worker: draining the conversions ...", flush=True)
        conversions_rate, conversions_seconds = run_worker(guard, env, args, "conversion", args.conversions)
        stored_conversions = asyncio.run(count_rows(worker_db, "conversions"))

        print("baseline: naive per-row ORM loop ...", flush=True)
        naive_click_rate = asyncio.run(naive_clicks(naive_db, events[: args.baseline_clicks]))
        naive_conversion_rate = asyncio.run(naive_conversions(naive_db, postbacks[: args.baseline_conversions]))
        postgres.close()

    rows = [
        ("clicks/s", clicks_rate, naive_click_rate),
        ("conversions/s", conversions_rate, naive_conversion_rate),
    ]
    print()
    print(f"one worker process, --concurrency {args.concurrency}, PostgreSQL on 127.0.0.1, {os.cpu_count()} CPUs")
    print(f"worker: {args.clicks:,} clicks in {clicks_seconds:.1f} s ({stored_clicks:,} rows), ", end="")
    print(f"{args.conversions:,} conversions in {conversions_seconds:.1f} s ({stored_conversions:,} rows)")
    print()
    print(f"{'':<16}{'worker':>12}{'naive ORM':>12}{'ratio':>9}")
    for name, ours, naive in rows:
        print(f"{name:<16}{ours:>12,.0f}{naive:>12,.0f}{ours / naive:>8.1f}x")
    if args.json_out:
        Path(args.json_out).write_text(
            json.dumps(
                {
                    "at": datetime.now(UTC).isoformat(),
                    "cpus": os.cpu_count(),
                    "concurrency": args.concurrency,
                    "clicks": args.clicks,
                    "conversions": args.conversions,
                    "worker_clicks_per_s": clicks_rate,
                    "worker_conversions_per_s": conversions_rate,
                    "naive_clicks_per_s": naive_click_rate,
                    "naive_conversions_per_s": naive_conversion_rate,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
