"""Soak: the tracker at half its measured peak for a long run; memory, tail latency and every click accounted for.

1. Starts Redis and the SQS endpoint (pinned with the load generator on core 0), writes the bench links, starts
   `adclick tracker` on core 1.
2. Measures the peak with wrk (closed loop), then warms up at half of it.
3. Empties the clicks queue, then drives bench/loadgen at a constant half-peak rate in windows (default 20 x 30 s),
   reading after each window: the p99 from when each request was due (no coordinated omission), the engine's own
   p99 (/metrics), and the RSS of the tracker and its children.
4. SIGTERMs the tracker (which flushes every buffered event), drains the queue and counts: clicks answered with a
   3xx by the generator, redirects the tracker counted, events in SQS, distinct ClickIDs among them.

A benchmark measures; it does not pass or fail on time. It prints a verdict line on the figures issue 7 names
(RSS growth after warm-up <= 10%, every answered click in SQS) and exits 1 when accounting fails.

    .venv/bin/python bench/soak.py                  # 10 minutes at half peak (make soak)
    .venv/bin/python bench/soak.py --windows 4 --window-seconds 15 --peak-seconds 5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from typing import Any

from benchkit import (
    BENCH,
    PROCS,
    SQS_QUEUE,
    add_load_options,
    build_loadgen,
    drive_loadgen,
    histogram_quantile,
    interrupt_on,
    metric_sum,
    parser,
    rss_mb,
    run_stamp,
    scrape,
    sqs_client,
    start_backends,
    start_tracker,
    tracker_available,
    wait_http,
)
from compare import run_wrk

RESULTS = BENCH / "results"


def parse_args() -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--windows", type=int, default=20, help="measured windows at half peak (default 20)")
    p.add_argument("--window-seconds", type=float, default=30.0, help="length of each window (default 30)")
    p.add_argument("--warmup-seconds", type=float, default=60.0, help="half-peak load before measuring (default 60)")
    p.add_argument("--peak-seconds", type=float, default=10.0, help="wrk run that measures the peak (default 10)")
    p.add_argument("--rate", type=float, help="constant rate instead of half the measured peak")
    add_load_options(p)
    p.add_argument("--server-cpu", default="1", help="core for the tracker (taskset -c); '' for none")
    p.add_argument("--client-cpu", default="0", help="core for the load, Redis and SQS; '' for none")
    args = p.parse_args()
    args.server_cpu = args.server_cpu or None
    args.client_cpu = args.client_cpu or None
    return args


class Drainer:
    """Receives and deletes click messages as they arrive, keeping every ClickID seen.

    Draining all along keeps the queue short: moto scans a queue on every receive, so emptying a backlog of
    thousands of messages at the end would take longer than the soak itself.
    """

    def __init__(self, endpoint: str) -> None:
        self.client = sqs_client(endpoint)
        self.url = self.client.get_queue_url(QueueName=SQS_QUEUE)["QueueUrl"]
        self.messages = self.events = 0
        self.seen: set[str] = set()
        self.counting = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def count_from_now(self) -> None:
        """Empty the queue, then keep what arrives from here on."""
        while self.receive(count=False):
            pass
        self.counting = True

    def finish(self) -> None:
        """Stop the background loop, then take whatever is still on the queue."""
        self._stop.set()
        self._thread.join(120)
        while self.receive(count=True):
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.counting or not self.receive(count=True):
                time.sleep(0.5)

    def receive(self, count: bool) -> int:
        from adclick import _native

        got = self.client.receive_message(
            QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=300
        )
        batch = got.get("Messages", [])
        if not batch:
            return 0
        if count:
            for message in batch:
                self.messages += 1
                for event in _native.unpack_clicks(message["Body"]):
                    self.events += 1
                    self.seen.add(json.loads(event)["click_id"])
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(batch)]
        self.client.delete_message_batch(QueueUrl=self.url, Entries=entries)
        return len(batch)


def redirects(port: int) -> float:
    metrics = scrape(port)
    series = metrics.get("adclick_click_requests_total", {})
    return sum(v for labels, v in series.items() if "redirect" in labels or "fallback" in labels)


def main() -> int:
    args = parse_args()
    interrupt_on(signal.SIGTERM)
    why = tracker_available()
    if why:
        sys.exit(f"tracker unavailable: {why}")
    binary = build_loadgen()
    if binary is None:
        sys.exit("bench/loadgen could not be built (needs cargo)")
    stamp = run_stamp()
    logs = RESULTS / f"soak-logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)

    _, endpoint, env = start_backends(
        args.client_cpu, logs, args.slugs, ADCLICK_LOG_LEVEL="WARNING", ADCLICK_DRAIN_SECONDS="0"
    )
    tracker, port = start_tracker(args.server_cpu, logs / "tracker.log", env)
    wait_http(port, "/health", tracker)

    peak = run_wrk(args, port, args.peak_seconds)
    rate = args.rate or peak.rps / 2
    print(f"peak (wrk, {args.connections} connections, {args.peak_seconds:g} s): {peak.rps:,.0f} req/s", end="")
    print(f"; soak at {rate:,.0f}/s")
    if args.warmup_seconds > 0:
        warm = drive_loadgen(binary, args, port, rate, args.warmup_seconds)
        print(f"warm-up {args.warmup_seconds:g} s: p99 {warm['p99_ms']:.2f} ms, RSS {rss_mb(tracker.pid):.1f} MiB")

    time.sleep(1.0)  # let the last warm-up events ship, then start the count from an empty queue
    drainer = Drainer(endpoint)
    drainer.count_from_now()
    drainer.start()
    counted_before = redirects(port)
    rows: list[dict[str, Any]] = []
    answered = errors = 0
    print("| window | achieved/s | p50 ms | p99 ms | max ms | engine p99 µs | RSS MiB | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for n in range(1, args.windows + 1):
        before = scrape(port)
        out = drive_loadgen(binary, args, port, rate, args.window_seconds)
        engine = histogram_quantile(before, scrape(port), 0.99)
        row = {
            "window": n,
            "achieved_rps": out["achieved_rps"],
            "p50_ms": out["p50_ms"],
            "p99_ms": out["p99_ms"],
            "max_ms": out.get("max_ms"),
            "engine_p99_us": None if engine is None else engine * 1e6,
            "rss_mb": rss_mb(tracker.pid),
            "redirects": out["redirects"],
            "errors": out["errors"] + out.get("other_status", 0),
        }
        answered += out["redirects"]
        errors += row["errors"]
        rows.append(row)
        engine_text = "-" if engine is None else f"{engine * 1e6:.0f}"
        max_text = "-" if row["max_ms"] is None else f"{row['max_ms']:.1f}"
        print(
            f"| {n} | {row['achieved_rps']:,.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {max_text} "
            f"| {engine_text} | {row['rss_mb']:.1f} | {row['errors']} |",
            flush=True,
        )
    counted = redirects(port) - counted_before
    buffered = metric_sum(scrape(port), "adclick_event_buffer_depth")

    PROCS.stop(tracker, grace=60.0)  # SIGTERM: the tracker ships every buffered event before it exits
    drainer.finish()
    messages, events, distinct = drainer.messages, drainer.events, len(drainer.seen)

    first, last = rows[0]["rss_mb"], rows[-1]["rss_mb"]
    growth = (last - first) / first * 100 if first else 0.0
    p99s = [r["p99_ms"] for r in rows]
    lost = max(0, answered - distinct)
    summary = {
        "peak_rps": peak.rps,
        "rate": rate,
        "seconds": args.windows * args.window_seconds,
        "answered_3xx": answered,
        "tracker_redirects": counted,
        "buffered_at_end": buffered,
        "sqs_messages": messages,
        "sqs_events": events,
        "distinct_click_ids": distinct,
        "repeated_in_sqs": events - distinct,
        "lost": lost,
        "generator_errors": errors,
        "rss_first_mb": first,
        "rss_last_mb": last,
        "rss_growth_pct": growth,
        "p99_median_ms": statistics.median(p99s),
        "p99_min_ms": min(p99s),
        "p99_max_ms": max(p99s),
        "exit_code": tracker.returncode,
        "windows": rows,
    }
    (RESULTS / f"soak-{stamp}.json").write_text(json.dumps(summary, indent=2))
    print()
    print(f"clicks answered 3xx (generator): {answered:,}; counted by the tracker: {counted:,.0f}")
    print(f"SQS: {messages:,} messages, {events:,} events, {distinct:,} distinct ClickIDs")
    # SQS delivery is at least once (a send that timed out but landed is sent again); the worker keys clicks by
    # ClickID, so a repeat costs nothing. Lost is what counts: an answered click with no event at all.
    print(f"lost {lost:,}; repeated in SQS {events - distinct:,} (at least once); exit code {tracker.returncode}")
    print(f"RSS {first:.1f} -> {last:.1f} MiB ({growth:+.1f}% after warm-up)")
    print(f"p99 per window: median {summary['p99_median_ms']:.2f} ms, min {min(p99s):.2f}, max {max(p99s):.2f}")
    accounted = lost == 0 and distinct >= counted
    print(
        f"verdict: RSS growth {'<=' if growth <= 10 else '>'} 10%; "
        f"{'every answered click is in SQS' if accounted else 'CLICKS NOT ACCOUNTED FOR'}"
    )
    print(f"results: {RESULTS / f'soak-{stamp}.json'}; logs: {logs}")
    return 0 if accounted else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        PROCS.stop_all()
