"""Manager benchmark: report latency per grouping and a 1-million-row CSV export's peak memory, on big data.

Starts a throwaway PostgreSQL cluster with the test suite's helper (tests/support), migrates a fresh database and
generates, in SQL (generate_series, nothing crosses the wire):

- 50 affiliates, 20 offers, 200 links;
- 30 days of hourly rollups for ~10 million clicks (hour x link x 8 countries x 3 devices, about a third of the
  combinations present each hour, 1-15 clicks each);
- a representative raw click sample (default 1,000,000 clicks, 10%) with sub1-sub5 of realistic cardinality
  (sub1: 5,000 publishers, sub2: 50 creatives, sub3: mostly empty, sub4: 20,000 keywords, sub5: unique per click);
- 100,000 conversions on sampled clicks (approved, pending, rejected), added to the rollups as the worker does;
- the rollups' projections by hour x link and by hour x country x device, summed from them as the worker keeps them.

Then it runs `adclick manager` (uvicorn, one process) on that database and, over HTTP with an API token:

1. GET /api/v1/reports for every grouping over the 30 days (sub-id groupings too, from the raw sample),
   `--runs` times each after a warm-up, and prints p50 / p95 / max; each grouping is served by the smallest rollup
   table that holds it (see adclick.manager.report_queries.choose_rollup), and the summary names that table;
2. GET /api/v1/exports/report.csv?group_by=hour,link,country,device over the 30 days (one row per rollup row, more
   than a million), streamed and discarded by the client, and prints the rows, bytes, time and the manager
   process's peak RSS (VmHWM) before and after.

A benchmark measures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import asyncpg  # noqa: E402
import httpx  # noqa: E402
from adclick.core.db.migrate import upgrade  # noqa: E402
from adclick.manager.report_queries import (  # noqa: E402
    ROLLUP_DIMENSIONS,
    SUB_DIMENSIONS,
    build_query,
    choose_rollup,
)
from adclick.manager.security import hash_api_token, new_api_token  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from support.database import PostgresServer, unique_name  # noqa: E402
from support.procs import ProcessGuard, free_port, wait_until  # noqa: E402

START = datetime(2026, 2, 1, tzinfo=UTC)
DAYS = 30
LINKS = 200
OFFERS = 20
AFFILIATES = 50
COUNTRIES = ["US", "BR", "DE", "GB", "FR", "IN", "MX", ""]
DEVICES = ["desktop", "smartphone", "tablet"]
GROUPINGS = [
    *ROLLUP_DIMENSIONS,
    "day,offer",
    "country,device",
    "hour,link",  # 144,000 groups, the first 1,000 returned
    "offer,country",  # needs hourly_rollups itself, the biggest table
    *SUB_DIMENSIONS,
]
EXPORT_GROUPING = "hour,link,country,device"


def log(message: str) -> None:
    print(message, flush=True)


async def generate(url: str, *, clicks: int, raw_clicks: int, conversions: int) -> dict[str, int]:
    """Fill the database; returns what was made."""
    u = make_url(url)
    conn = await asyncpg.connect(host=u.host, port=u.port, user=u.username, database=u.database)
    try:
        await conn.execute("SET timezone = 'UTC'")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        await conn.execute("SET work_mem = '256MB'")
        await conn.execute("INSERT INTO advertisers (id, name, created_at) VALUES (1, 'Bench advertiser', now())")
        await conn.execute(
            "INSERT INTO affiliates (id, name, created_at) SELECT g, 'Affiliate ' || g, now() "
            f"FROM generate_series(1, {AFFILIATES}) g"
        )
        await conn.execute(
            "INSERT INTO offers (id, advertiser_id, name, created_at) SELECT g, 1, 'Offer ' || g, now() "
            f"FROM generate_series(1, {OFFERS}) g"
        )
        await conn.execute(
            "INSERT INTO links (id, slug, offer_id, affiliate_id, template, config, created_at, updated_at) "
            f"SELECT g, 'l' || g, (g % {OFFERS}) + 1, (g % {AFFILIATES}) + 1, 'https://shop.example/?c={{click_id}}', "
            f"'{{}}'::jsonb, now(), now() FROM generate_series(1, {LINKS}) g"
        )
        # Mean clicks per present combination is 8; pick the share of combinations that makes `clicks` in all.
        combinations = DAYS * 24 * LINKS * len(COUNTRIES) * len(DEVICES)
        share = min(1.0, clicks / 8 / combinations)
        started = time.monotonic()
        await conn.execute(
            f"""
            INSERT INTO hourly_rollups (hour, link_id, country, device, offer_id, affiliate_id,
                                        clicks, unique_clicks, bot_clicks, conversions, revenue, payout)
            SELECT h, l, c, d, (l % {OFFERS}) + 1, (l % {AFFILIATES}) + 1, n, (n * 7) / 10, n / 10, 0, 0, 0
            FROM (
                SELECT h, l, c, d, 1 + floor(random() * 15)::int AS n
                FROM generate_series($1::timestamptz, $1::timestamptz + interval '{DAYS * 24 - 1} hours',
                                     interval '1 hour') h,
                     generate_series(1, {LINKS}) l,
                     unnest($2::text[]) c,
                     unnest($3::text[]) d
                WHERE random() < {share}
            ) s
            """,
            START,
            COUNTRIES,
            DEVICES,
        )
        log(f"  rollups in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        seconds = DAYS * 86_400
        await conn.execute(
            f"""
            INSERT INTO clicks (click_id, ts, link_id, offer_id, affiliate_id, ip, ua, country, device, os,
                                bot, "unique", sub1, sub2, sub3, sub4, sub5, fallback)
            SELECT 'b' || lpad(g::text, 10, '0'),
                   $1::timestamptz + (g::float8 * {seconds} / {raw_clicks}) * interval '1 second',
                   l, (l % {OFFERS}) + 1, (l % {AFFILIATES}) + 1, '203.0.113.' || (g % 250),
                   'Mozilla/5.0 (bench)', ($2::text[])[1 + g % 8], ($3::text[])[1 + g % 3], 'Android',
                   g % 10 = 0, g % 10 BETWEEN 1 AND 6,
                   'pub' || ((g * 31) % 5000), 'creative' || (g % 50),
                   CASE WHEN g % 10 < 3 THEN 'ab' || (g % 3) END,
                   'kw' || ((g * 13) % 20000), 'gclid-' || g, false
            FROM (SELECT g, 1 + (g * 7919) % {LINKS} AS l FROM generate_series(1::bigint, {raw_clicks}) g) s
            """,
            START,
            COUNTRIES,
            DEVICES,
        )
        log(f"  raw clicks in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        step = max(1, raw_clicks // conversions)
        await conn.execute(
            f"""
            INSERT INTO conversions (offer_id, txid, click_id, link_id, affiliate_id, advertiser_id, event, status,
                                     amount, currency, revenue, payout, created_at, updated_at)
            SELECT c.offer_id, 'tx' || g, c.click_id, c.link_id, c.affiliate_id, 1, 'conversion',
                   (ARRAY['approved', 'approved', 'pending', 'rejected'])[1 + g % 4], 50, 'USD',
                   10 + g % 7, 6 + g % 5, c.ts + interval '7 minutes', c.ts + interval '7 minutes'
            FROM generate_series(1, {conversions}) g
            JOIN clicks c ON c.click_id = 'b' || lpad((g * {step})::text, 10, '0')
            """
        )
        await conn.execute(
            """
            INSERT INTO hourly_rollups AS r (hour, link_id, country, device, offer_id, affiliate_id,
                                             clicks, unique_clicks, bot_clicks, conversions, revenue, payout)
            SELECT date_trunc('hour', created_at), link_id, '', '', offer_id, affiliate_id, 0, 0, 0,
                   count(*), sum(revenue), sum(payout)
            FROM conversions WHERE status IN ('pending', 'approved')
            GROUP BY 1, 2, 5, 6
            ON CONFLICT (hour, link_id, country, device) DO UPDATE
            SET conversions = r.conversions + excluded.conversions,
                revenue = r.revenue + excluded.revenue, payout = r.payout + excluded.payout
            """
        )
        log(f"  conversions in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        # The worker adds every event to hourly_rollups and to its projections (adclick.core.counting), whose rows
        # are sums of hourly_rollups rows: the same sums, made in one pass here.
        counters = "clicks, unique_clicks, bot_clicks, conversions, revenue, payout"
        sums = "sum(clicks), sum(unique_clicks), sum(bot_clicks), sum(conversions), sum(revenue), sum(payout)"
        await conn.execute(
            f"INSERT INTO hourly_link_rollups (hour, link_id, offer_id, affiliate_id, {counters}) "
            f"SELECT hour, link_id, coalesce(offer_id, 0), coalesce(affiliate_id, 0), {sums} "
            "FROM hourly_rollups GROUP BY 1, 2, 3, 4"
        )
        await conn.execute(
            f"INSERT INTO hourly_country_device_rollups (hour, country, device, {counters}) "
            f"SELECT hour, country, device, {sums} FROM hourly_rollups GROUP BY 1, 2, 3"
        )
        log(f"  rollup projections in {time.monotonic() - started:.1f} s")
        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE")
        log(f"  vacuum analyze in {time.monotonic() - started:.1f} s")
        made = await conn.fetchrow(
            "SELECT (SELECT sum(clicks) FROM hourly_rollups) AS clicks, (SELECT count(*) FROM hourly_rollups) AS "
            "rollup_rows, (SELECT count(*) FROM hourly_link_rollups) AS link_rollup_rows, "
            "(SELECT count(*) FROM hourly_country_device_rollups) AS country_device_rollup_rows, "
            "(SELECT count(*) FROM clicks) AS raw_clicks, (SELECT count(*) FROM conversions) AS "
            "conversions, pg_database_size(current_database()) AS bytes"
        )
        return {key: int(value) for key, value in dict(made).items()}
    finally:
        await conn.close()


async def make_token(url: str) -> str:
    u = make_url(url)
    conn = await asyncpg.connect(host=u.host, port=u.port, user=u.username, database=u.database)
    try:
        token = new_api_token()
        user_id = await conn.fetchval(
            "INSERT INTO users (email, password_hash, role, is_active, created_at) "
            "VALUES ('bench@example.com', 'x', 'admin', true, now()) RETURNING id"
        )
        await conn.execute(
            "INSERT INTO api_tokens (user_id, token_hash, name, created_at) VALUES ($1, $2, 'bench', now())",
            user_id,
            hash_api_token(token),
        )
        return token
    finally:
        await conn.close()


def vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of the process so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def source_of(group_by: str) -> str:
    """The table a report by `group_by` reads."""
    q = build_query(group_by, START.date().isoformat(), START.date().isoformat(), "UTC")
    return "clicks, conversions" if q.is_sub else choose_rollup(q).table.name


def measure_reports(base: str, token: str, runs: int) -> list[tuple[str, float, float, float, int]]:
    last = START + timedelta(days=DAYS - 1)
    params = {"from": START.date().isoformat(), "to": last.date().isoformat(), "tz": "America/Sao_Paulo"}
    results = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        for group_by in GROUPINGS:
            # Sub-id reports cover at most 31 days; 30 local days in São Paulo fit.
            reply = client.get("/api/v1/reports", params={**params, "group_by": group_by})
            reply.raise_for_status()
            rows = len(reply.json()["rows"])
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                reply = client.get("/api/v1/reports", params={**params, "group_by": group_by})
                times.append((time.perf_counter() - started) * 1000)
                reply.raise_for_status()
            results.append((group_by, statistics.median(times), percentile(times, 0.95), max(times), rows))
            log(f"  {group_by:<15} p50 {results[-1][1]:7.1f} ms  p95 {results[-1][2]:7.1f} ms  rows {rows}")
    return results


def measure_export(base: str, token: str, pid: int) -> dict[str, float]:
    last = START + timedelta(days=DAYS - 1)
    params = {"from": START.date().isoformat(), "to": last.date().isoformat(), "tz": "UTC", "group_by": EXPORT_GROUPING}
    before_hwm, before_rss = vm_hwm_mb(pid), vm_rss_mb(pid)
    lines = 0
    size = 0
    started = time.perf_counter()
    with (
        httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=600) as client,
        client.stream("GET", "/api/v1/exports/report.csv", params=params) as reply,
    ):
        reply.raise_for_status()
        for chunk in reply.iter_bytes():
            lines += chunk.count(b"\n")
            size += len(chunk)
    seconds = time.perf_counter() - started
    return {
        "rows": lines - 1,
        "mb": size / 1e6,
        "seconds": seconds,
        "hwm_before": before_hwm,
        "rss_before": before_rss,
        "hwm_after": vm_hwm_mb(pid),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=10_000_000, help="clicks in the rollups (default 10M)")
    parser.add_argument("--raw-clicks", type=int, default=1_000_000, help="raw click sample (default 1M)")
    parser.add_argument("--conversions", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20, help="timed requests per grouping (default 20)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="adclick-manager-bench-") as tmp, ProcessGuard(Path(tmp)) as guard:
        log("starting PostgreSQL")
        server = PostgresServer(guard)
        server.start()
        try:
            name = unique_name("adclick_bench")
            url = server.create_database(name)
            upgrade(url)
            log(f"generating {args.clicks:,} clicks over {DAYS} days, {args.raw_clicks:,} raw, "
                f"{args.conversions:,} conversions")  # fmt: skip
            made = asyncio.run(
                generate(url, clicks=args.clicks, raw_clicks=args.raw_clicks, conversions=args.conversions)
            )
            log(
                f"  rollups: {made['clicks']:,} clicks in {made['rollup_rows']:,} rows (by link"
                f" {made['link_rollup_rows']:,}, by country and device {made['country_device_rollup_rows']:,});"
                f" raw clicks {made['raw_clicks']:,}; conversions {made['conversions']:,};"
                f" database {made['bytes'] / 1e9:.2f} GB"
            )
            token = asyncio.run(make_token(url))
            port = free_port("127.0.0.1")
            env: dict[str, Any] = {
                **os.environ,
                "ADCLICK_DATABASE_URL": url,
                "ADCLICK_MANAGER_RECONCILE_SECONDS": "0",
                "ADCLICK_REDIS_URL": f"redis://127.0.0.1:{free_port('127.0.0.1')}/0",  # not used by reports
                "ADCLICK_LOG_LEVEL": "WARNING",
            }
            argv_manager = [sys.executable, "-m", "adclick.cli", "manager", "--host", "127.0.0.1", "--port", str(port)]
            proc = guard.spawn(argv_manager, name="manager", env=env)
            base = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                try:
                    return httpx.get(f"{base}/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_until(healthy, timeout=60, message="manager /health", proc=proc)
            pid = proc.pid
            log(f"reports over {DAYS} days (tz America/Sao_Paulo), {args.runs} runs each after one warm-up:")
            results = measure_reports(base, token, args.runs)
            log(f"CSV export group_by={EXPORT_GROUPING} over {DAYS} days:")
            export = measure_export(base, token, pid)
            log(
                f"  {export['rows']:,} rows, {export['mb']:.0f} MB in {export['seconds']:.1f} s; manager peak RSS "
                f"{export['hwm_before']:.0f} MB before, {export['hwm_after']:.0f} MB after the export "
                f"(RSS before {export['rss_before']:.0f} MB)"
            )
            log("\nsummary (target: report p95 < 300 ms over the rollups; export peak RSS < 200 MB)")
            log(f"{'grouping':<15} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'rows':>8}  read from")
            for group_by, p50, p95, worst, rows in results:
                log(f"{group_by:<15} {p50:8.1f} {p95:8.1f} {worst:8.1f} {rows:8d}  {source_of(group_by)}")
            log(f"export: {export['rows']:,} rows, peak RSS {export['hwm_after']:.0f} MB")
            proc.stop()
        finally:
            server.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
