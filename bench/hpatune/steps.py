"""A server under load and its steps: the closed-loop peak, one constant-rate step, and the trust check of each."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchkit import delta, histogram_quantile, pinned
from trust import OK, Limits, Recorder, Usage, classify, usage

from .machine import parse_cpus


@dataclass
class Step:
    step: int
    share: float  # of the peak
    offered_rps: float
    rps: float  # answered
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests: int
    failures: int
    error_rate: float | None
    seconds: float
    users: int | None = None  # Locust
    server_cpu_pct: float | None = None
    server_p99_ms: float | None = None  # the server's own histogram
    clicks_per_message: float | None = None  # tracker
    generator_cpu_pct: float | None = None  # its busiest process, % of the cores it may use
    client_cores_pct: float | None = None
    others_before_pct: float | None = None
    others_pct: float | None = None
    trust: str = OK
    why: str = ""
    passed: bool = False
    window: tuple[float, float] = (0.0, 0.0)


@dataclass
class Peak:
    rps: float
    source: str  # "wrk" or "--peak-rps"
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    server_cpu_pct: float | None = None
    generator_cpu_pct: float | None = None
    client_cores_pct: float | None = None
    others_before_pct: float | None = None
    others_pct: float | None = None
    trust: str = OK
    why: str = ""


@dataclass
class ServerResult:
    role: str
    generator: str
    slo_ms: float
    cpu_limit: str = ""
    limit_cores: float = 1.0
    enforced: bool = True
    others_before_pct: float | None = None
    peak: Peak | None = None
    steps: list[Step] = field(default_factory=list)
    capacity_rps: float | None = None
    capacity_step: int | None = None
    complete: bool = False  # a step failed the SLO: the capacity is bounded from above too
    scale: float = 1.0  # a pod's share of the measured capacity (limit not enforced)
    target_rps: int | None = None
    at_target: Step | None = None  # the tracker's step at its target rate
    cpu_at_target_pct: float | None = None  # server CPU (% of one core) at the target rate
    cpu_at_target_from: str = ""
    cpu_request_cores: float | None = None  # the pod's CPU request, what the HPA's Utilization is a share of
    cpu_target_pct: int | None = None  # the HPA's CPU averageUtilization that scales out at the same load
    clicks_per_message: float | None = None
    clicks_per_message_from: str = ""
    accepted: float | None = None  # postback: conversions queued over the run
    rejected: float | None = None
    locust_processes: int = 0
    refusal: str | None = None
    note: str = ""


@dataclass
class Server:
    """A server under load: what the ramp needs to drive and watch it."""

    role: str
    port: int
    recorder: Recorder
    limit_pct: float  # the CPU it may use, in % of one core
    wrk_script: str
    wrk_env: dict[str, str] | None
    loadgen_args: list[str]


def within(args: argparse.Namespace, slo_ms: float) -> Callable[[Step], bool]:
    def passed(s: Step) -> bool:
        kept_up = s.rps >= args.keep_up * s.offered_rps
        return s.p99_ms is not None and s.p99_ms <= slo_ms and (s.error_rate or 0.0) < args.max_error_rate and kept_up

    return passed


def limits_of(args: argparse.Namespace) -> Limits:
    return Limits(busy_pct=args.busy_limit, keep_up=args.keep_up, saturated_pct=args.saturated)


def server_figures(step: Step, m0: Any, m1: Any, role: str) -> None:
    """The server's own p99 and, for the tracker, clicks per SQS message, between two /metrics scrapes."""
    if not m0 or not m1:
        return
    q = histogram_quantile(m0, m1, 0.99)
    step.server_p99_ms = None if q is None else q * 1e3
    if role == "tracker":
        clicks = delta(m0, m1, "adclick_events_buffered_total")
        messages = delta(m0, m1, "adclick_sqs_messages_sent_total")
        if clicks and messages:
            step.clicks_per_message = clicks / messages


def judge(args: argparse.Namespace, srv: Server, item: Step | Peak, before: Usage | None, during: Usage) -> None:
    """Fill in what the machine did during a step and whether the step measured the server."""
    client = parse_cpus(args.client_cpu)
    item.others_before_pct = None if before is None else before.others_pct
    item.others_pct = during.others_pct
    item.server_cpu_pct = during.roles.get("server")
    item.client_cores_pct = during.cores_pct(client)
    offered = item.offered_rps if isinstance(item, Step) else None
    achieved = item.rps if isinstance(item, Step) else None
    verdict = classify(
        limits_of(args),
        others_pct=[item.others_before_pct, item.others_pct],
        top_others=(before.top_others if before and before.others_pct > during.others_pct else during.top_others),
        offered=offered,
        achieved=achieved,
        generator_cores_pct=item.client_cores_pct,
        generator_proc_pct=item.generator_cpu_pct,
        server_pct=item.server_cpu_pct,
        server_limit_pct=srv.limit_pct,
    )
    item.trust, item.why = verdict.trust, verdict.why


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_peak(args: argparse.Namespace, srv: Server, given: float | None) -> Peak:
    """The closed-loop peak (wrk) that scales the steps, with its own trust check; or the rate given."""
    if given:
        return Peak(rps=given, source="--peak-rps")
    if not shutil.which("wrk"):
        raise RuntimeError("wrk not found (sudo apt-get install -y wrk): it measures the peak; or pass --peak-rps")
    from compare import run_wrk

    a = srv.recorder.mark()
    time.sleep(1.0)  # a second of the machine before the load
    b = srv.recorder.mark()
    threads = max(1, min(args.threads, len(parse_cpus(args.client_cpu)) or args.threads))
    cpu0, t0 = children_cpu(), time.time()
    wrk = argparse.Namespace(client_cpu=args.client_cpu, threads=args.threads, connections=args.connections)
    wrk.slugs = args.slugs
    load = run_wrk(wrk, srv.port, args.peak_seconds, srv.wrk_script, srv.wrk_env)
    cpu1, t1 = children_cpu(), time.time()
    c = srv.recorder.mark()
    peak = Peak(
        rps=load.rps,
        source="wrk",
        p50_ms=load.p50_ms,
        p99_ms=load.p99_ms,
        requests=load.requests,
        errors=load.errors,
        seconds=round(t1 - t0, 1),
        generator_cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0) / threads,
    )
    judge(args, srv, peak, usage(a[0], b[0]), usage(b[0], c[0]))
    return peak


def loadgen_step(args: argparse.Namespace, binary: str, srv: Server, n: int, share: float, rate: float) -> Step:
    """One constant-rate step from one loadgen process: `settle_seconds` of warm-up on the same connections, then
    the rest of the step measured; the machine sampled in both, the server's /metrics read before and after."""
    measured = args.step_seconds - args.settle_seconds
    cmd = [binary, "--port", str(srv.port), "--rate", f"{rate:.3f}", "--connections", str(args.connections)]
    cmd += [*srv.loadgen_args, "--warmup", f"{args.settle_seconds:g}", "--seconds", f"{measured:g}"]
    a = srv.recorder.mark()
    cpu0, t0 = children_cpu(), time.time()
    proc = subprocess.Popen(pinned(args.client_cpu, cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(max(0.0, t0 + args.settle_seconds - time.time()))
        # No scrape while the load runs: the server would answer it on the thread that serves the load.
        b = srv.recorder.mark(with_extra=False)
        out, err = proc.communicate(timeout=args.step_seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cpu1, t1 = children_cpu(), time.time()
    c = srv.recorder.mark()
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed ({proc.returncode}): {err.strip()[-300:]}")
    r = json.loads(out)
    failures = int(r["errors"]) + int(r["other_status"])
    requests = int(r["responses"]) + int(r["errors"])
    step = Step(
        step=n,
        share=share,
        offered_rps=rate,
        rps=float(r["achieved_rps"]),
        p50_ms=float(r["p50_ms"]),
        p95_ms=float(r["p95_ms"]),
        p99_ms=float(r["p99_ms"]),
        requests=requests,
        failures=failures,
        error_rate=failures / requests if requests else None,
        seconds=round(measured, 1),
        generator_cpu_pct=100 * (cpu1 - cpu0) / (t1 - t0),  # loadgen is one thread
        window=(b[0].t, c[0].t),
    )
    judge(args, srv, step, usage(a[0], b[0]), usage(b[0], c[0]))
    server_figures(step, a[1], c[1], srv.role)
    return step


def show(role: str, s: Step) -> str:
    mark = "" if s.trust == OK else f"  <- {s.trust}: {s.why}"
    return (
        f"  {role} step {s.step} ({s.share:.0%}): {s.offered_rps:,.0f} req/s offered, {s.rps:,.0f} answered, "
        f"p50 {fmt(s.p50_ms, ' ms')}, p99 {fmt(s.p99_ms, ' ms')}, {s.failures} errors, server CPU "
        f"{fmt(s.server_cpu_pct, '%', 0)}, others {fmt(s.others_pct, '%', 0)}{mark}"
    )


def fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}{unit}"
