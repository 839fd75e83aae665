"""Where a server's tail latency comes from: the same constant rate against variants, p99 read off the wire.

Each variant is started alone (pinned like bench/compare.py: server on one core; generator, tcpdump, Redis and moto
on the other), warmed up with wrk, then driven by bench/loadgen at `--rate` for `--rounds` runs while
bench/wirelat.py captures loopback. Also prints the CPU each thread of the server used during the last round, from
/proc, so a background thread's share shows. Variants are the tracker under extra environment settings
(`--tracker NAME:KEY=VALUE,KEY=VALUE`) and bare Robyn (`--robyn`).

    .venv/bin/python bench/tail.py --rate 3600 --tracker now: \\
        --tracker nice0:ADCLICK_BACKGROUND_NICE=0 --tracker noflush:ADCLICK_FLUSH_INTERVAL_MS=10000 --robyn

A benchmark measures, it does not pass or fail; the figures of 2026-11-28 are in
docs/capacity/2026-11-28-tracker-latency-on-the-wire.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchkit import (
    BENCH,
    PROCS,
    SQS_ENDPOINTS,
    build_loadgen,
    free_port,
    interrupt_on,
    parser,
    pinned,
    run_stamp,
    start_backends,
    wait_http,
)
from compare import server_command
from wirelat import available, capture, quantile, server_latencies


def thread_cpu(pid: int) -> dict[int, tuple[str, int, float]]:
    """(name, nice, CPU seconds) of each thread of `pid`.

    The CPU time is the scheduler's own count in nanoseconds (`schedstat`), not utime + stime: those are clock
    ticks (10 ms) charged to whichever thread a tick finds running, so a thread that runs for a millisecond ten
    times a second is mis-measured by a tick or more in every 10 s window, as much as what is measured.
    """
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        try:
            cpu = int((entry / "schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):  # a kernel without schedstats: ticks it is
            cpu = (int(fields[11]) + int(fields[12])) / tick
        out[int(entry.name)] = (name, int(fields[16]), cpu)
    return out


def engine_buckets(port: int) -> dict[str, float]:
    """The tracker's `adclick_click_seconds` histogram (cumulative count by upper bound); {} for other servers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("adclick_click_seconds_bucket{"):
            bound = line.split('le="')[1].split('"')[0]
            out[bound] = float(line.rsplit(" ", 1)[1])
    return out


def engine_tail(before: dict[str, float], after: dict[str, float]) -> str:
    """How many of the rounds' clicks spent longer than 100 µs, 500 µs and 1 ms in the Rust engine itself: a wire
    tail that the engine does not show comes from outside it (Robyn, the GIL, the scheduler)."""
    total = after.get("+Inf", 0.0) - before.get("+Inf", 0.0)
    if not total:
        return ""
    over = []
    for bound in ("0.0001", "0.0005", "0.001"):
        within = after.get(bound, 0.0) - before.get(bound, 0.0)
        over.append(f"> {float(bound) * 1e6:.0f} µs {(total - within) / total * 100:.3f}%")
    return f"engine time of {total:,.0f} clicks: " + ", ".join(over)


def ms(values: list[float], q: float) -> str:
    v = quantile(values, q)
    return "-" if v is None else f"{v * 1e3:.2f}"


def run_variant(
    args: argparse.Namespace, name: str, target: str, extra: dict[str, str], base_env: dict[str, str]
) -> None:
    logs = args.out
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"adclick-tail-{name}-") as tmp:
        spec = server_command(target, port, Path(tmp))
        if isinstance(spec, str):
            print(f"{name}: {spec}")
            return
        cmd, ready = spec
        env = {**base_env, "ADCLICK_DRAIN_SECONDS": "0.5", **extra}
        proc = PROCS.start(name, pinned(args.server_cpu, cmd), logs / f"{name}.log", env=env)
        try:
            wait_http(port, ready, proc)
            warm = ["wrk", "-t2", "-c64", "-d3s", f"-s{BENCH / 'clicks.lua'}", f"http://127.0.0.1:{port}"]
            subprocess.run(
                pinned(args.client_cpu, warm),
                capture_output=True,
                timeout=60,
                check=False,
            )
            load = ["--port", str(port), "--rate", f"{args.rate:.0f}", "--seconds", f"{args.seconds:g}"]
            before, measured, answered = thread_cpu(proc.pid), 0.0, 0
            engine_before = engine_buckets(port)
            for r in range(args.rounds):
                pcap = logs / f"{name}-{r}.pcap"
                started = time.monotonic()
                with capture(port, pcap, cpu=args.client_cpu):
                    gen = subprocess.run(
                        pinned(args.client_cpu, [args.loadgen, *load]),
                        capture_output=True,
                        text=True,
                        timeout=args.seconds + 60,
                        check=True,
                    ).stdout
                measured += time.monotonic() - started
                answered += int(gen.split('"responses": ')[1].split(",")[0])
                lat = sorted(server_latencies(pcap, port))
                pcap.unlink(missing_ok=True)
                p99_gen = float(gen.split('"p99_ms": ')[1].split(",")[0])

                print(
                    f"{name:>12} round {r + 1}: wire p50 {ms(lat, 0.5)} p99 {ms(lat, 0.99)} p99.9 {ms(lat, 0.999)} ms "
                    f"({len(lat):,} requests); generator p99 {p99_gen:.2f} ms"
                )
            # Between rounds the server idles for the capture's start and stop only: what threads use then is
            # counted, and the share is of the rounds' time, so it errs high by that much.
            threads = []
            for tid, (tname, nice, cpu) in thread_cpu(proc.pid).items():
                spent = cpu - before.get(tid, (tname, nice, 0.0))[2]
                if spent / measured >= 0.001:
                    per_click = f", {spent / max(1, answered) * 1e6:.2f} µs a click" if tname == "adclick-ship" else ""
                    threads.append(f"{tname} (nice {nice}) {spent / measured * 100:.2f}%{per_click}")
            print(f"{'':>12} threads over all rounds ({answered:,} clicks): {', '.join(threads)}")
            if engine := engine_tail(engine_before, engine_buckets(port)):
                print(f"{'':>12} {engine}")
        finally:
            PROCS.stop(proc, grace=15.0)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--rate", type=float, default=3600, help="requests/s, constant (default 3600)")
    p.add_argument("--seconds", type=float, default=10, help="seconds per round (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="rounds per variant (default 2)")
    p.add_argument(
        "--tracker",
        action="append",
        default=[],
        metavar="NAME:K=V,...",
        help="a tracker variant with these extra environment settings (repeatable; 'now:' for the defaults)",
    )
    p.add_argument("--robyn", action="store_true", help="also bare Robyn (bench/baseline_robyn_dict.py)")
    p.add_argument("--sqs", choices=SQS_ENDPOINTS, default="lite", help="SQS endpoint: sqs_lite (default) or moto")
    p.add_argument("--server-cpu", default="1")
    p.add_argument("--client-cpu", default="0")
    p.add_argument("--out", type=Path, default=BENCH / "results" / f"tail-{run_stamp()}")
    args = p.parse_args()
    interrupt_on(signal.SIGINT, signal.SIGTERM)
    if why := available():
        print(f"cannot capture: {why}")
        return 2
    args.loadgen = build_loadgen()
    if args.loadgen is None:
        print("bench/loadgen could not be built (needs cargo)")
        return 2
    variants: list[tuple[str, str, dict[str, str]]] = []
    for spec in args.tracker or ["now:"]:
        name, _, pairs = spec.partition(":")
        extra = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
        variants.append((name or "tracker", "tracker", extra))
    if args.robyn:
        variants.append(("bare-robyn", "robyn", {}))
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        _, _, env = start_backends(args.client_cpu, args.out, 64, args.sqs)
        print(f"{args.rate:,.0f} req/s, {args.rounds} rounds of {args.seconds:g} s per variant; logs in {args.out}")
        for name, target, extra in variants:
            run_variant(args, name, target, extra, env)
    except KeyboardInterrupt:
        return 130
    finally:
        PROCS.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
