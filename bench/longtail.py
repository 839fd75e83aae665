"""Long-tail benchmark: the tracker when a network's live links outgrow its link cache.

One tracker process pinned to one core, wrk on the other, 64 connections, as in bench/compare.py. Redis holds
bench-0 .. bench-N-1 for each N in --links (10,000 and 1,000,000 by default; a network of 2,000 offers, each
link pointing at its offer's landing page), and wrk clicks them uniformly or Zipf-distributed (bench/longtail.lua).
Each (links, distribution) pair gets a fresh tracker, a warm-up, then a measured run; the table gives req/s, wrk's
p99, the share of clicks answered from memory over the measured run (cache hits and link-replica hits, from
/metrics), the cache's and the replica's sizes, and RSS, each beside the
all-cached run (the first --links value, uniform). Each link count has a Redis of its own, so `--rounds N` can
interleave every run N times; the table then gives medians, and each ratio is taken within its round.

A benchmark measures, it does not pass or fail: see bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchkit import (
    BENCH,
    PROCS,
    add_load_options,
    busy_text,
    delta,
    http_get,
    idle_check,
    interrupt_on,
    metric_sum,
    parser,
    rss_mb,
    run_stamp,
    scrape,
    server_env,
    start_redis,
    start_sqs,
    start_tracker,
    tracker_available,
    wait_http,
)
from compare import Load, run_wrk

OFFERS = 2000


def tail_config(i: int) -> dict[str, Any]:
    """Link bench-i of a network with OFFERS offers: the link's own ids, its offer's landing page."""
    offer = i % OFFERS
    cfg: dict[str, Any] = {
        "v": 1,
        "id": 1000 + i,
        "slug": f"bench-{i}",
        "offer_id": offer,
        "affiliate_id": 3 + i % 5000,
        "status": "active",
        "url": f"https://offer{offer}.example/lp?cid={{click_id}}&l={{link_id}}&s1={{sub1}}&s2={{sub2}}&c={{country}}",
        "fallback_url": "https://shop.example/",
        "cookie": False,
    }
    if offer % 4 == 0:
        cfg["destinations"] = [
            {"url": f"https://a{offer}.example/?c={{click_id}}&s1={{sub1}}&o={{offer_id}}", "weight": 70},
            {"url": f"https://b{offer}.example/?c={{click_id}}&s1={{sub1}}&a={{aff_id}}", "weight": 30},
        ]
    if offer % 8 == 0:
        cfg["rules"] = [
            {
                "countries": ["US", "CA"],
                "devices": ["mobile"],
                "os": ["iOS"],
                "url": f"https://ios{offer}.example/app?c={{click_id}}&d={{device}}&t={{ts}}",
            }
        ]
    return cfg


def write_tail_links(redis_url: str, start: int, stop: int) -> None:
    """SET bench-start .. bench-(stop-1), in pipelined chunks (1,000,000 take about half a minute)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    for lo in range(start, stop, 20_000):
        pipe = client.pipeline(transaction=False)
        for i in range(lo, min(stop, lo + 20_000)):
            pipe.set(f"adclick:link:bench-{i}", json.dumps(tail_config(i), separators=(",", ":")))
        pipe.execute()
    client.publish("adclick:invalidate", "*")


@dataclass
class Run:
    links: int
    dist: str
    round: int = 1
    rps: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    hit_rate: float | None = None
    cache_entries: float | None = None
    cache_bytes: float | None = None
    rss_mb: float | None = None
    replica_links: float | None = None
    replica_bytes: float | None = None
    replica_load_s: float | None = None
    busy_before: str = ""
    note: str = ""


def wrk(args: argparse.Namespace, port: int, seconds: float, links: int, dist: str) -> Load:
    return run_wrk(args, port, seconds, script="longtail.lua", env={"BENCH_SLUGS": str(links), "BENCH_DIST": dist})


def one_run(args: argparse.Namespace, env: dict[str, str], logs: Path, links: int, dist: str, round_: int) -> Run:
    run = Run(links, dist, round_)
    busy, quiet = idle_check([args.server_cpu, args.client_cpu], args.wait_idle)
    run.busy_before = busy_text(busy)
    if not quiet:
        run.note = "busy machine"
    name = f"tracker-{links}-{dist}-r{round_}"
    proc, port = start_tracker(args.server_cpu, logs / f"{name}.log", env, name, workers=args.workers or None)
    try:
        wait_http(port, "/health", proc)
        status, _, _ = http_get(port, "/c/bench-1?sub1=x")
        if status != 302:
            run.note = f"GET /c/bench-1 answered {status}"
            return run
        started = time.monotonic()
        while time.monotonic() - started < 180:
            m = scrape(port)
            # Until the replica serves (or is off: disabled, over budget, or a tracker without one).
            state = metric_sum(m, "adclick_replica_state")
            serving = state == 2.0 and (metric_sum(m, "adclick_replica_loads_total") or 0.0) >= 1
            off = state is None or metric_sum(m, "adclick_replica_max_bytes") == 0.0
            if serving or off or metric_sum(m, "adclick_replica_over_budget"):
                break
            time.sleep(0.2)
        run.replica_load_s = time.monotonic() - started
        m = scrape(port)
        print(
            f"  link replica: state {metric_sum(m, 'adclick_replica_state')}, "
            f"{metric_sum(m, 'adclick_replica_links')} links after {run.replica_load_s:.1f} s"
            f"{' (over budget: off)' if metric_sum(m, 'adclick_replica_over_budget') else ''}"
        )
        print(f"  warm-up {args.warmup:g} s")
        wrk(args, port, args.warmup, links, dist)
        time.sleep(0.3)
        before = scrape(port)
        got = wrk(args, port, args.duration, links, dist)
        after = scrape(port)
        run.rps, run.p50_ms, run.p99_ms, run.errors = got.rps, got.p50_ms, got.p99_ms, got.errors
        # Answered from memory: a cache hit, or the link replica (which answers before the cache when it holds
        # every link); a miss is a Redis round trip on the click's thread.
        hits = (delta(before, after, "adclick_cache_hits_total") or 0.0) + (
            delta(before, after, "adclick_replica_hits_total") or 0.0
        )
        misses = delta(before, after, "adclick_cache_misses_total") or 0.0
        run.hit_rate = hits / (hits + misses) if hits + misses else None
        run.replica_links = metric_sum(after, "adclick_replica_links")
        run.replica_bytes = metric_sum(after, "adclick_replica_bytes")
        run.cache_entries = metric_sum(after, "adclick_cache_entries")
        run.cache_bytes = metric_sum(after, "adclick_cache_bytes")
        run.rss_mb = rss_mb(proc.pid)
        hit = "-" if run.hit_rate is None else f"{100 * run.hit_rate:.1f}%"
        print(
            f"  {run.rps:,.0f} req/s  p50 {run.p50_ms} ms  p99 {run.p99_ms} ms  errors {run.errors}  "
            f"from memory {hit}  cache entries {run.cache_entries}  replica links {run.replica_links}"
            f" ({(run.replica_bytes or 0) / 2**20:.0f} MiB)  RSS {run.rss_mb:.0f} MiB"
        )
        if proc.poll() is not None:
            run.note = f"exited with {proc.returncode} during the run"
    finally:
        PROCS.stop(proc, grace=15.0)
    return run


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def table(runs: list[Run]) -> str:
    """One row per (links, distribution): medians over the rounds; ratios are taken within a round, then the median.

    The all-cached run is the first --links value, uniform, of the same round.
    """
    first = runs[0] if runs else None
    base = {r.round: r for r in runs if first and (r.links, r.dist) == (first.links, first.dist)}
    rounds = len(base)
    rows = [
        "| live links | clicks | req/s | vs all-cached | p99 (wrk) | vs all-cached | from memory | cache entries "
        "| replica links | RSS |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key in dict.fromkeys((r.links, r.dist) for r in runs):
        group = [r for r in runs if (r.links, r.dist) == key]
        ok = [r for r in group if r.rps]
        thr = [r.rps / base[r.round].rps for r in ok if r.round in base and base[r.round].rps]
        p99s = [r.p99_ms / b.p99_ms for r in ok if (b := base.get(r.round)) is not None and b.p99_ms and r.p99_ms]
        rps = _median([r.rps for r in ok])
        p99 = _median([r.p99_ms for r in ok if r.p99_ms is not None])
        hits = _median([r.hit_rate for r in ok if r.hit_rate is not None])
        entries = _median([r.cache_entries for r in ok if r.cache_entries is not None])
        replica = _median([r.replica_links for r in ok if r.replica_links is not None])
        rss = max((r.rss_mb for r in ok if r.rss_mb is not None), default=None)
        notes = sorted({r.note for r in group if r.note})
        note = f" ({', '.join(notes)})" if notes else ""
        each = f" [{', '.join(f'{x:.2f}' for x in thr)}]" if rounds > 1 and thr else ""
        cells = [
            f"{key[0]:,}",
            f"{key[1]}{note}",
            "-" if rps is None else f"{rps:,.0f}",
            ("-" if not thr else f"{_median(thr):.2f}x") + each,
            "-" if p99 is None else f"{p99:.2f} ms",
            "-" if not p99s else f"{_median(p99s):.2f}x",
            "-" if hits is None else f"{100 * hits:.1f}%",
            "-" if entries is None else f"{entries:,.0f}",
            "-" if replica is None else f"{replica:,.0f}",
            "-" if rss is None else f"{rss:.0f} MiB (max)",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    if rounds > 1:
        rows.append("")
        rows.append(f"Medians of {rounds} rounds; a ratio is taken within its round, the list gives each round's.")
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--links", default="10000,1000000", help="live link counts, the first is the all-cached run")
    p.add_argument("--dists", default="uniform,zipf", help="click distributions: uniform, zipf")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    p.add_argument("--rounds", type=int, default=1, help="repeat every run this many times, interleaved (default 1)")
    p.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first, to fill the cache (default 5)")
    add_load_options(p, slugs=False)
    p.add_argument("--workers", type=int, default=0, help="tracker --workers (default: the tracker's own default)")
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--wait-idle", type=float, default=60.0, help="seconds to wait for quiet cores before a run")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="extra tracker setting (env)")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    args = p.parse_args()
    args.link_counts = list(dict.fromkeys(int(x) for x in args.links.split(",")))
    args.dist_list = [d.strip() for d in args.dists.split(",") if d.strip()]
    for d in args.dist_list:
        if d not in ("uniform", "zipf"):
            p.error(f"unknown distribution {d!r}")
    return args


def main() -> int:
    args = parse_args()
    interrupt_on(signal.SIGINT, signal.SIGTERM)
    if why := tracker_available():
        print(f"tracker not available: {why}")
        return 2
    stamp = run_stamp()
    logs = args.out / f"logs-longtail-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        sqs = start_sqs(args.client_cpu, logs)
        extra = dict(kv.split("=", 1) for kv in args.set)
        # One Redis per link count, so that rounds can alternate between them: the all-cached run's Redis holds
        # only its own links, whatever ran before it.
        envs: dict[int, dict[str, str]] = {}
        for links in args.link_counts:
            redis_url = start_redis(args.client_cpu, logs / f"redis-{links}")
            print(f"writing links bench-0 .. bench-{links - 1} ...")
            started = time.monotonic()
            write_tail_links(redis_url, 0, links)
            print(f"  {time.monotonic() - started:.0f} s")
            envs[links] = server_env(redis_url, sqs, ADCLICK_DRAIN_SECONDS="0.5", **extra)
        for round_ in range(1, args.rounds + 1):
            for links in args.link_counts:
                for dist in args.dist_list:
                    print(f"\n== round {round_}/{args.rounds}: {links:,} live links, {dist}")
                    runs.append(one_run(args, envs[links], logs, links, dist, round_))
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    finally:
        PROCS.stop_all()
    md = table(runs)
    print("\n" + md)
    out = {"when": stamp, "settings": {k: str(v) for k, v in vars(args).items()}, "runs": [asdict(r) for r in runs]}
    (args.out / f"longtail-{stamp}.json").write_text(json.dumps(out, indent=2) + "\n")
    (args.out / f"longtail-{stamp}.md").write_text(f"# adclick long-tail bench {stamp}\n\n{md}\n")
    print(f"\nwritten: {args.out / f'longtail-{stamp}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
