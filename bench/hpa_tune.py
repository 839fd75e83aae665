"""Measure one pod of each role and write the autoscaling targets into the prod overlay (`make hpa-tune`).

Tracker: one `adclick tracker` process pinned with taskset to one core (the pod's CPU limit). First a short
closed-loop peak (wrk, bench/clicks.lua), then constant-rate steps from 10% to 100% of that peak (bench/loadgen,
latency measured from when each request was due; or Locust's StepShape with `--generator locust`). The capacity is
the highest step rate reached while every step so far kept its p99 within the SLO, its errors under the limit and
the offered rate; the HPA's per-pod RPS target (the Pods metric's `averageValue`) is a fraction of it. A last step
at that target rate measures the clicks the tracker packs per SQS message there (its /metrics counters).

Postback: one `adclick postback` process on the same core, held to the pod's CPU limit, sending every valid
postback to the bench SQS endpoint; the same peak and steps with valid tokens and ClickIDs give its HPA target.

Worker: one `adclick worker` process on that core against a throwaway database, fed click messages packed as the
tracker packs them at its target rate, then conversion messages, each at steps of its own drain rate; the capacity
is the highest rate it kept up with while the oldest message it received stayed under a bound. KEDA's
`queueLength` (messages per replica) of each queue is a fraction of capacity x bound.

Every step is checked before it counts (bench/trust.py): a step during which other processes used more than a
tenth of a core is "busy", one whose load generator fell behind or saturated its core is "generator-bound". Such
a step is never the capacity, and when a capacity would depend on one, the tuner writes nothing and exits with 3.

Writes a report (markdown), a PNG chart and JSON under bench/results/hpa-<time>/, and the targets as JSON 6902
patches (guarded by `test` operations, so a reshuffled base fails the build instead of patching the wrong entry)
next to the overlay's kustomization.yaml, which gets one `patches` entry per file. Each patch's comment names the
run: its date, machine and command.

All load goes to 127.0.0.1 and stops by itself. A benchmark measures; it does not pass or fail on time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import itertools
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT_TESTS = Path(__file__).resolve().parent.parent / "tests"
# The worker phase reuses the test suite's throwaway PostgreSQL and its seed and message helpers.
sys.path.insert(0, str(ROOT_TESTS))

from benchkit import (  # noqa: E402
    BENCH,
    PROCS,
    ROOT,
    VENV_BIN,
    add_load_options,
    build_loadgen,
    cpu_model,
    delta,
    free_port,
    histogram_quantile,
    http_get,
    interrupt_on,
    parser,
    pinned,
    run_stamp,
    scrape,
    sqs_client,
    start_backends,
    start_tracker,
    tracker_available,
    wait_http,
)
from trust import OK, Decision, Limits, Recorder, Usage, classify, decide, snapshot, usage  # noqa: E402

TRACKER_PATCH = "capacity-tracker-patch.yaml"
POSTBACK_PATCH = "capacity-postback-patch.yaml"
WORKER_PATCH = "capacity-worker-patch.yaml"
WORKER_CLICKS_QUEUE = "hpa-tune-clicks"
WORKER_CONVERSIONS_QUEUE = "hpa-tune-conversions"
POSTBACK_QUEUE = "hpa-tune-postbacks"  # apart from the worker's, so the worker phase never drains postbacks
# One set of secrets for every role of the run, so the ClickIDs and tokens made here verify wherever they go.
BENCH_CLICK_SECRET = "hpa-tune-click-secret-0123456789abcdef"
BENCH_POSTBACK_SECRET = "hpa-tune-postback-secret-0123456789abcdef"
BENCH_ADVERTISER = 1
REFUSED = 3  # exit code of a run whose targets cannot be trusted


# ---------------------------------------------------------------- the machine


def parse_cpus(spec: str | None) -> list[str]:
    """Core numbers of a taskset list ("0", "0-2", "0,2"), as /proc/stat names them."""
    cores: list[str] = []
    for part in (spec or "").split(","):
        if part.strip():
            lo, _, hi = part.partition("-")
            cores += [str(c) for c in range(int(lo), int(hi or lo) + 1)]
    return cores


def machine() -> str:
    return f"{platform.node()} ({cpu_model() or '?'}, {os.cpu_count()} cores)"


def sample_others(seconds: float) -> Usage:
    a = snapshot()
    time.sleep(seconds)
    return usage(a, snapshot())


def wait_idle(args: argparse.Namespace) -> Usage:
    """Wait up to --wait-idle seconds for other processes to leave the machine alone; the last sample."""
    u = sample_others(1.0)
    deadline = time.monotonic() + args.wait_idle
    while u.others_pct > args.busy_limit and time.monotonic() < deadline:
        u = sample_others(2.0)
    who = ", ".join(f"{n} {p:.0f}%" for n, p in u.top_others)
    print(
        f"  idle check: other processes {u.others_pct:.0f}% of a core"
        + (
            f" ({who})  <- other work is running: its steps will be marked busy"
            if u.others_pct > args.busy_limit
            else ""
        )
    )
    return u


def pod_cpu(objects: list[dict[str, Any]], role: str, kind: str = "limits") -> float | None:
    """The CPU `limits` or `requests` (in cores) of the role's Deployment in the overlay, if it sets one."""
    for obj in objects:
        if obj.get("kind") == "Deployment" and role in _name(obj):
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                value = str(container.get("resources", {}).get(kind, {}).get("cpu", ""))
                if value:
                    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)
    return None


def limit_cpu(pid: int, cores: float) -> str | None:
    """Hold a process to `cores` of CPU time with a CFS quota, as a pod's limit does; None where cgroups are shut."""
    period = 100_000
    quota = max(1000, int(cores * period))
    for root, files in (
        (Path("/sys/fs/cgroup/cpu"), {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}),
        (Path("/sys/fs/cgroup"), {"cpu.max": f"{quota} {period}"}),
    ):
        group = root / f"adclick-hpa-tune-{pid}"
        try:
            if not (root / next(iter(files))).exists() and not (root / "cgroup.procs").exists():
                continue
            group.mkdir(exist_ok=True)
            for name, value in files.items():
                (group / name).write_text(value)
            (group / "cgroup.procs").write_text(str(pid))
            return str(group)
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
    return None


def release_cpu(group: str | None) -> None:
    if group:
        with contextlib.suppress(OSError):
            Path(group).rmdir()


def cpu_limit_text(cores: float, group: str | None) -> str:
    if cores >= 1:
        return f"{cores:g} core (its pinned core)"
    return f"{cores:g} core" + (" (CFS quota)" if group else " (not enforced: no writable cgroup; scaled, see below)")


# ---------------------------------------------------------------- steps


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


def ramp(args: argparse.Namespace, srv: Server, res: ServerResult, given_peak: float | None) -> None:
    """Peak, then steps from 1/N to N/N of it, then the decision: capacity, target, or a refusal."""
    res.peak = peak = run_peak(args, srv, given_peak)
    print(
        f"  {srv.role} peak: {peak.rps:,.0f} req/s ({peak.source}"
        + (
            f", p99 {fmt(peak.p99_ms, ' ms')}, server CPU {fmt(peak.server_cpu_pct, '%', 0)}"
            if peak.source == "wrk"
            else ""
        )
        + ")"
        + ("" if peak.trust == OK else f"  <- {peak.trust}: {peak.why}")
    )
    if peak.rps <= 0:
        raise RuntimeError(f"the {srv.role} answered nothing at its peak")
    passed = within(args, res.slo_ms)
    shares = [k / args.steps for k in range(1, args.steps + 1)]
    if res.generator == "locust":
        res.steps = locust_steps(args, srv, peak.rps, shares, res)
        for s in res.steps:
            print(show(srv.role, s))
    else:
        binary = build_loadgen()
        if binary is None:
            raise RuntimeError("bench/loadgen is needed for the constant-rate steps, and it needs cargo to build")
        for n, share in enumerate(shares):
            step = loadgen_step(args, binary, srv, n, share, share * peak.rps)
            res.steps.append(step)
            print(show(srv.role, step))
            if step.trust != OK or not passed(step):
                break  # nothing after it can be chosen
    verdict = decide(res.steps, passed, "rps", lambda s: f"step {s.step} ({s.offered_rps:,.0f} req/s offered)")
    conclude(args, res, verdict)
    if peak.trust == "busy" and not res.refusal:
        # A generator-bound peak only caps the steps (the capacity found is then a lower bound); a busy one was
        # taken while other work ran, and what it scaled is no measurement of this server.
        res.refusal = f"the peak that scales the steps was busy ({peak.why})"
        res.target_rps = None


def conclude(args: argparse.Namespace, res: ServerResult, verdict: Decision) -> None:
    if verdict.refusal:
        res.refusal = verdict.refusal
        if res.generator == "locust" and any(s.trust == "generator-bound" for s in res.steps):
            res.refusal += (
                f"; Locust was the bottleneck with {res.locust_processes} process(es): give it more "
                "(--locust-processes N on more client cores) or run it distributed (README, Load tests)"
            )
        return
    best = verdict.best
    res.complete = verdict.complete
    if best is None:
        res.note = "no step kept p99 within the SLO with errors under the limit"
        return
    res.capacity_rps, res.capacity_step = best.rps, best.step
    if res.limit_cores < 1 and not res.enforced and best.server_cpu_pct:
        # The pod's limit could not be enforced here: a pod gets its share of the CPU this rate took.
        res.scale = min(1.0, res.limit_cores * 100 / best.server_cpu_pct)
    res.target_rps = max(1, math.floor(args.fraction * best.rps * res.scale))
    if not verdict.complete:
        res.note = "every step kept the SLO: the capacity is at least the last step's rate" + (
            " (the peak was generator-bound: a lower bound)" if res.peak and res.peak.trust != OK else ""
        )


# ---------------------------------------------------------------- Locust


def locust_plan(args: argparse.Namespace, peak: float, shares: list[float]) -> tuple[int, int]:
    """(users added per step, users in the last step): the steps' rates in users x --user-rps."""
    per_step = max(1, math.ceil(peak * shares[0] / args.user_rps))
    return per_step, per_step * len(shares)


def locust_steps(
    args: argparse.Namespace, srv: Server, peak: float, shares: list[float], res: ServerResult
) -> list[Step]:
    """bench/locust_steps.py's StepShape of bench/locustfile.py's TrackerUser (one master and
    --locust-processes workers when more than one), headless, its per-step CSV read back."""
    per_step, top = locust_plan(args, peak, shares)
    res.locust_processes = args.locust_processes
    prefix = args.out_dir / "locust"
    cmd = [str(VENV_BIN / "locust"), "-f", f"{BENCH / 'locustfile.py'},{BENCH / 'locust_steps.py'}"]
    cmd += ["--headless", "--only-summary", "--host", f"http://127.0.0.1:{srv.port}", "--csv", str(prefix)]
    cmd += ["--csv-full-history", "--step-start-users", str(per_step), "--step-users", str(per_step)]
    cmd += ["--step-seconds", f"{args.step_seconds:g}", "--step-max-users", str(top)]
    cmd += ["--step-settle-seconds", f"{args.settle_seconds:g}", "--user-rps", f"{args.user_rps:g}"]
    cmd += ["--slugs", str(args.slugs), "--stop-timeout", "2"]
    if args.locust_processes > 1:
        cmd += ["--processes", str(args.locust_processes)]
    cmd.append("TrackerUser")
    print(
        f"  locust: {per_step} users more every {args.step_seconds:g} s up to {top}, {args.user_rps:g} req/s each, "
        f"{args.locust_processes} process(es) on core(s) {args.client_cpu}"
    )
    budget = len(shares) * args.step_seconds + 90
    logs = args.out_dir / "logs"
    proc = PROCS.start("locust", pinned(args.client_cpu, cmd), logs / "locust.log")
    srv.recorder.add_role("generator", proc.pid)
    try:
        proc.wait(budget)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"locust still running after {budget:.0f} s, see {logs / 'locust.log'}") from None
    finally:
        PROCS.stop(proc)
    path = Path(f"{prefix}_steps.csv")
    if proc.returncode not in (0, 1) or not path.exists():
        # Locust exits 1 when any request failed; that is a figure, not a crash.
        raise RuntimeError(f"locust exited with {proc.returncode} and no {path.name}; see {logs / 'locust.log'}")
    steps = []
    with path.open() as f:
        for row in csv.DictReader(f):
            n, users = int(row["step"]), int(row["users"])
            start, end = float(row["start"]), float(row["end"])
            step = Step(
                step=n,
                share=shares[min(n, len(shares) - 1)],
                offered_rps=users * args.user_rps,
                rps=float(row["rps"]),
                p50_ms=_num(row["p50_ms"]),
                p95_ms=_num(row["p95_ms"]),
                p99_ms=_num(row["p99_ms"]),
                requests=int(row["requests"]),
                failures=int(row["failures"]),
                error_rate=_num(row["error_rate"]),
                seconds=int(row["seconds"]),
                users=users,
                window=(start, end),
            )
            during = srv.recorder.usage(start, end)
            before = srv.recorder.usage(start - args.settle_seconds, start)
            pair = srv.recorder.window(start, end, with_extra=True)
            if during is not None:
                # Each Locust process runs its users on one thread: a process at its core's full is saturated.
                step.generator_cpu_pct = during.role_max_proc.get("generator")
                judge(args, srv, step, before, during)
            else:
                step.trust, step.why = "busy", "no CPU samples over the step: the machine could not be watched"
            if pair is not None:
                server_figures(step, pair[0][1], pair[1][1], srv.role)
            steps.append(step)
    return steps


def _num(v: str) -> float | None:
    return None if v in ("", "None") else float(v)


# ---------------------------------------------------------------- tracker


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """y at x on the polyline through `points` (x, y), held flat beyond its ends."""
    pts = sorted(points)
    if not pts:
        return None
    if x <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y1
    return pts[-1][1]


def cpu_at_target(args: argparse.Namespace, res: ServerResult) -> None:
    """The CPU utilization target that scales out at the same load as the RPS target.

    The HPA scales on whichever metric asks for more pods. A CPU target below what a pod uses at its RPS target
    makes the measured RPS target dead letter (e.g. 60% of a postback pod's 250m request is reached at a third of
    its measured target); so the CPU target is what the server used at the target rate, as a share of the request.
    """
    request = getattr(args, f"{res.role}_cpu_request", None)
    if res.target_rps is None or not request:
        return
    at = res.at_target
    if at is not None and at.trust == OK and at.server_cpu_pct:
        cpu, res.cpu_at_target_from = at.server_cpu_pct, "measured at the target rate"
    else:
        points = [(s.rps, s.server_cpu_pct) for s in res.steps if s.server_cpu_pct and s.trust == OK]
        value = interpolate(points, float(res.target_rps))
        if value is None:
            return
        cpu, res.cpu_at_target_from = value, f"interpolated between the steps around {res.target_rps:,} req/s"
    res.cpu_at_target_pct, res.cpu_request_cores = cpu, request
    res.cpu_target_pct = max(1, math.ceil(cpu / request))


def tune_tracker(args: argparse.Namespace, env: dict[str, str]) -> ServerResult:
    res = ServerResult(role="tracker", generator=args.generator, slo_ms=args.slo_ms)
    res.others_before_pct = wait_idle(args).others_pct
    why = tracker_available()
    if why:
        raise RuntimeError(f"the tracker cannot run: {why}")
    logs = args.out_dir / "logs"
    proc, port = start_tracker(args.tracker_cpu, logs / "tracker.log", env)
    group = limit_cpu(proc.pid, args.tracker_cpu_limit) if args.tracker_cpu_limit < 1 else None
    res.limit_cores, res.enforced = args.tracker_cpu_limit, group is not None or args.tracker_cpu_limit >= 1
    res.cpu_limit = cpu_limit_text(args.tracker_cpu_limit, group)
    # Locust's step windows are only known afterwards: scrape once a second then; loadgen's edges are marked.
    every = 1.0 if args.generator == "locust" else None
    recorder = Recorder({"server": proc.pid}, extra=lambda: scrape(port), extra_every=every)
    try:
        wait_http(port, "/health", proc)
        status, headers, _ = http_get(port, "/c/bench-1?sub1=hpa-tune")
        if status != 302:
            raise RuntimeError(f"GET /c/bench-1 answered {status}, not 302; see {logs / 'tracker.log'}")
        print(f"  tracker on 127.0.0.1:{port} (core {args.tracker_cpu}); /c/bench-1 -> 302 {headers.get('location')}")
        if args.generator == "locust":
            recorder.start()  # Locust's steps are known afterwards: sample all along; loadgen's edges are marked
        limit_pct = 100 * min(1.0, args.tracker_cpu_limit) if group else 100.0
        srv = Server("tracker", port, recorder, limit_pct, "clicks.lua", None, ["--slugs", str(args.slugs)])
        try:
            ramp(args, srv, res, args.peak_rps)
            if res.target_rps is not None and res.refusal is None and (binary := build_loadgen()):
                # Clicks per message at the rate the HPA holds each pod to: what the worker's trigger counts in.
                share = res.target_rps / res.peak.rps
                res.at_target = at = loadgen_step(args, binary, srv, len(res.steps), share, float(res.target_rps))
                print(show("tracker", at) + f", {fmt(at.clicks_per_message, ' clicks per message', 0)} (the target)")
        finally:
            recorder.stop()
        if proc.poll() is not None:
            raise RuntimeError(f"the tracker exited with {proc.returncode} during the load")
    finally:
        PROCS.stop(proc, grace=15.0)
        release_cpu(group)
    at = res.at_target
    if at is not None and at.clicks_per_message:
        res.clicks_per_message, res.clicks_per_message_from = at.clicks_per_message, "measured at the target rate"
        if at.trust != OK:
            res.refusal = f"the step at the target rate (it measures the clicks per message) was {at.trust} ({at.why})"
    else:
        points = [(s.rps, s.clicks_per_message) for s in res.steps if s.clicks_per_message]
        rate = res.target_rps or args.fraction * (res.capacity_rps or max((s.rps for s in res.steps), default=0))
        value = interpolate(points, rate) if rate else None
        if value:
            res.clicks_per_message = value
            res.clicks_per_message_from = f"interpolated between the steps around {rate:,.0f} req/s"
    cpu_at_target(args, res)
    return res


# ---------------------------------------------------------------- postback


def postback_env(env: dict[str, str]) -> dict[str, str]:
    out = {k: v for k, v in env.items() if k != "ADCLICK_CLICK_PREVIOUS_SECRET"}
    return {
        **out,
        "ADCLICK_CLICK_SECRET": BENCH_CLICK_SECRET,
        "ADCLICK_CLICK_KEY_ID": "1",
        "ADCLICK_POSTBACK_SECRET": BENCH_POSTBACK_SECRET,
        "ADCLICK_CONVERSIONS_QUEUE": POSTBACK_QUEUE,
        "ADCLICK_LOG_LEVEL": "WARNING",  # every refused postback is logged at INFO
    }


def write_postback_paths(path: Path, slugs: int, count: int = 1024) -> None:
    """`count` valid GET postbacks: a token of the bench advertiser, a ClickID of a bench link each, unique txids."""
    from adclick import _native
    from adclick.core.tokens import make_token

    codec = _native.ClickIdCodec(1, BENCH_CLICK_SECRET.encode())
    token = make_token(BENCH_POSTBACK_SECRET, BENCH_ADVERTISER)
    now = int(time.time() * 1000)
    lines = []
    for k in range(count):
        click_id = codec.generate(1000 + k % slugs, now - 1000 * k)
        amount = f"{10 + k % 90}.{k % 100:02d}"
        lines.append(
            f"/postback?click_id={click_id}&txid=HT-{k}&amount={amount}&currency=USD&status=approved&token={token}"
        )
    path.write_text("\n".join(lines) + "\n")


def tune_postback(args: argparse.Namespace, env: dict[str, str]) -> ServerResult:
    res = ServerResult(role="postback", generator="loadgen", slo_ms=args.postback_slo_ms)
    res.others_before_pct = wait_idle(args).others_pct
    port = free_port()
    logs = args.out_dir / "logs"
    paths = args.out_dir / "postback-paths.txt"
    write_postback_paths(paths, args.slugs)
    cmd = [str(VENV_BIN / "adclick"), "postback", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = PROCS.start("postback", pinned(args.tracker_cpu, cmd), logs / "postback.log", env=postback_env(env))
    group = limit_cpu(proc.pid, args.postback_cpu_limit) if args.postback_cpu_limit < 1 else None
    res.limit_cores, res.enforced = args.postback_cpu_limit, group is not None or args.postback_cpu_limit >= 1
    res.cpu_limit = cpu_limit_text(args.postback_cpu_limit, group)
    recorder = Recorder({"server": proc.pid}, extra=lambda: scrape(port))
    try:
        wait_http(port, "/health", proc)
        first = paths.read_text().splitlines()[0]
        status, _, body = http_get(port, first)
        if status != 200:
            raise RuntimeError(f"a valid postback answered {status}: {body[:300]!r}; see {logs / 'postback.log'}")
        print(f"  postback on 127.0.0.1:{port} (core {args.tracker_cpu}, {res.cpu_limit}); a valid postback -> 200")
        before = scrape(port)
        limit_pct = 100 * args.postback_cpu_limit if group else 100.0
        loadgen_args = ["--paths", str(paths), "--ok", "2"]
        srv = Server("postback", port, recorder, limit_pct, "paths.lua", {"BENCH_PATHS": str(paths)}, loadgen_args)
        try:
            ramp(args, srv, res, args.postback_peak_rps)
        finally:
            recorder.stop()
        after = scrape(port)
        res.accepted = delta(before, after, "adclick_postbacks_accepted_total")
        # A labelled counter shows no series before its first refusal.
        res.rejected = delta(before, after, "adclick_postbacks_rejected_total") or 0.0
        if proc.poll() is not None:
            raise RuntimeError(f"the postback role exited with {proc.returncode} during the load")
    finally:
        PROCS.stop(proc, grace=15.0)
        release_cpu(group)
    cpu_at_target(args, res)
    return res


# ---------------------------------------------------------------- worker


@dataclass
class WorkerStep:
    fraction: float
    intended: float  # messages/s the step meant to send
    offered: float  # messages/s it sent
    processed: float
    max_age_s: float | None
    backlog: int | None
    seconds: float
    worker_cpu_pct: float | None = None
    client_cores_pct: float | None = None
    others_before_pct: float | None = None
    others_pct: float | None = None
    trust: str = OK
    why: str = ""
    passed: bool = False


@dataclass
class QueueResult:
    queue: str  # clicks or conversions
    events_per_message: int
    drain_rate: float | None = None
    drain_messages: int = 0
    drain_cpu_pct: float | None = None
    drain_others_pct: float | None = None
    drain_trust: str = OK
    drain_why: str = ""
    steps: list[WorkerStep] = field(default_factory=list)
    capacity: float | None = None
    scale: float = 1.0
    queue_length: int | None = None
    refusal: str | None = None
    note: str = ""


@dataclass
class WorkerResult:
    database: str = ""
    cpu_limit: str = ""
    limit_cores: float = 1.0
    enforced: bool = True
    others_before_pct: float | None = None
    events_per_message_from: str = ""
    clicks: QueueResult | None = None
    conversions: QueueResult | None = None

    def queues(self) -> list[QueueResult]:
        return [q for q in (self.clicks, self.conversions) if q is not None]


class ClickMessages:
    """Fresh `c1:` bodies of `per_message` click events each, over the seeded links, with genuine ClickIDs."""

    def __init__(self, per_message: int, links: list[tuple[int, int, int, int]]) -> None:
        from adclick import _native
        from adclick.worker.messages import pack_clicks
        from worker.workerkit import T0, UA_A, UA_B, click_event

        self.per_message, self.links, self.next = per_message, links, 0
        self._event, self._pack, self._t0, self._uas = click_event, pack_clicks, T0, (UA_A, UA_B)
        self._codec = _native.ClickIdCodec(1, BENCH_CLICK_SECRET.encode())

    def event(self, n: int) -> dict[str, Any]:
        link_id, offer_id, affiliate_id, _ = self.links[n % len(self.links)]
        ts = self._t0 + n * 7
        # Spread over visitors, countries and hours, so unique-click keys and rollup rows vary as in production.
        return self._event(
            link_id,
            ts,
            offer_id=offer_id,
            affiliate_id=affiliate_id,
            ip=f"10.{n % 251}.{(n // 251) % 251}.{n % 7}",
            ua=self._uas[n % 2],
            country=("US", "BR", "DE", "IN", "GB", None)[n % 6],
            device=("smartphone", "desktop", "tablet")[n % 3],
            bot=n % 50 == 0,
            click_id=self._codec.generate(link_id, ts),
        )

    def take(self, count: int) -> list[str]:
        bodies = []
        for _ in range(count):
            bodies.append(self._pack([self.event(n) for n in range(self.next, self.next + self.per_message)]))
            self.next += self.per_message
        return bodies


class ConversionMessages:
    """Fresh `v1:` bodies, one conversion each (as the postback role queues them), new txids, genuine ClickIDs."""

    per_message = 1

    def __init__(self, links: list[tuple[int, int, int, int]]) -> None:
        from adclick import _native
        from worker.workerkit import HOUR_MS, T0, conversion_body

        self.links, self.next = links, 0
        self._body, self._t0, self._hour = conversion_body, T0, HOUR_MS
        self._codec = _native.ClickIdCodec(1, BENCH_CLICK_SECRET.encode())

    def take(self, count: int) -> list[str]:
        bodies = []
        for n in range(self.next, self.next + count):
            link_id, _, _, advertiser_id = self.links[n % len(self.links)]
            ts = self._t0 + n * 11
            bodies.append(
                self._body(
                    self._codec.generate(link_id, ts),
                    f"HT-{n}",
                    received_at=ts + self._hour,
                    amount=f"{10 + n % 90}.{n % 100:02d}",
                    currency="USD",
                    status="approved" if n % 4 else None,
                    advertiser_id=advertiser_id,
                    ip=f"198.51.100.{n % 250 + 1}",
                )
            )
        self.next += count
        return bodies


def send(client: Any, queue_url: str, bodies: list[str]) -> None:
    for i in range(0, len(bodies), 10):
        entries = [{"Id": str(n), "MessageBody": b} for n, b in enumerate(bodies[i : i + 10])]
        failed = client.send_message_batch(QueueUrl=queue_url, Entries=entries).get("Failed")
        if failed:
            raise RuntimeError(f"SQS refused messages: {failed[:1]}")


def backlog(client: Any, queue_url: str) -> int:
    attrs = client.get_queue_attributes(
        QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def worker_metric(metrics: dict[str, dict[str, float]], name: str, label: str = "") -> float:
    return sum(v for k, v in metrics.get(name, {}).items() if label in k)


def make_database(args: argparse.Namespace, work: Path) -> tuple[str, Any, list[tuple[int, int, int, int]]]:
    """(URL, closer, links as (id, offer, affiliate, advertiser)) of a fresh migrated database with an offer."""
    from adclick.core.db.migrate import upgrade

    closer: Any = None
    if args.database == "postgres":
        from support.database import PostgresServer, unique_name
        from support.procs import ProcessGuard

        guard = ProcessGuard(work)
        guard.__enter__()
        server = PostgresServer(guard)
        server.start()
        url = server.create_database(unique_name("hpa_tune"))

        def closer() -> None:
            server.close()
            guard.__exit__(None, None, None)

    else:
        url = f"sqlite+aiosqlite:///{work / 'hpa-tune.db'}"
    upgrade(url)
    return url, closer, asyncio.run(seed_links(url))


async def seed_links(url: str) -> list[tuple[int, int, int, int]]:
    from adclick.core.db.session import create_engine, session_factory
    from worker.workerkit import seed

    engine = create_engine(url)
    try:
        setups = await seed(session_factory(engine), affiliates=20)
    finally:
        await engine.dispose()
    return [(s.link_id, s.offer_id, s.affiliate_id, s.advertiser_id) for s in setups]


def tune_worker(args: argparse.Namespace, env: dict[str, str], sqs_endpoint: str, per_message: int) -> WorkerResult:
    res = WorkerResult(database=args.database)
    res.others_before_pct = wait_idle(args).others_pct
    logs = args.out_dir / "logs"
    work = Path(tempfile.mkdtemp(prefix="adclick-hpa-tune-"))
    url, close_db, links = make_database(args, work)
    health = free_port()
    wenv = {
        **postback_env(env),
        "ADCLICK_DATABASE_URL": url,
        "ADCLICK_CLICKS_QUEUE": WORKER_CLICKS_QUEUE,
        "ADCLICK_CONVERSIONS_QUEUE": WORKER_CONVERSIONS_QUEUE,
        "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1",
        "ADCLICK_WORKER_HEALTH_PORT": str(health),
        "ADCLICK_WORKER_WAIT_SECONDS": "1",
    }
    cmd = [str(VENV_BIN / "adclick"), "worker", "--concurrency", str(args.worker_concurrency)]
    proc = PROCS.start("worker", pinned(args.tracker_cpu, cmd), logs / "worker.log", env=wenv)
    # The pod's CPU limit may be below the one core it is pinned to: hold it there as the kubelet would.
    group = limit_cpu(proc.pid, args.worker_cpu_limit) if args.worker_cpu_limit < 1 else None
    res.limit_cores, res.enforced = args.worker_cpu_limit, group is not None or args.worker_cpu_limit >= 1
    res.cpu_limit = cpu_limit_text(args.worker_cpu_limit, group)
    client = sqs_client(sqs_endpoint)
    try:
        wait_http(health, "/health", proc, timeout=60)
        for queue, source in (
            (WORKER_CLICKS_QUEUE, ClickMessages(per_message, links)),
            (WORKER_CONVERSIONS_QUEUE, ConversionMessages(links)),
        ):
            kind = "clicks" if queue == WORKER_CLICKS_QUEUE else "conversions"
            q = QueueResult(queue=kind, events_per_message=source.per_message)
            setattr(res, kind, q)
            measure_queue(args, res, q, client, queue, source, health, proc)
    finally:
        PROCS.stop(proc, grace=20.0)
        release_cpu(group)
        if close_db is not None:
            close_db()
        shutil.rmtree(work, ignore_errors=True)
    return res


def measure_queue(
    args: argparse.Namespace,
    res: WorkerResult,
    q: QueueResult,
    client: Any,
    queue: str,
    source: Any,
    health: int,
    proc: subprocess.Popen[bytes],
) -> None:
    """Drain a backlog (its rate scales the steps), then steps at shares of that rate; capacity and queueLength."""
    queue_url = client.get_queue_url(QueueName=queue)["QueueUrl"]
    roles = {"server": proc.pid}

    def processed() -> float:
        return worker_metric(scrape(health), "adclick_worker_messages_total", queue)

    wanted = args.worker_drain_events if q.queue == "clicks" else args.worker_drain_conversions
    count = max(10, math.ceil(wanted / source.per_message))
    bodies = source.take(count)
    base = processed()
    a = snapshot(roles)
    started = time.monotonic()
    send(client, queue_url, bodies)
    # Many small messages take a while to send: where most are still queued then, time the drain from there, so
    # the rate is the worker's and not the sender's.
    sent_at, done_then = time.monotonic(), processed() - base
    deadline = started + args.worker_timeout
    while processed() - base < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not drain {count} {q.queue} messages; see worker.log")
        time.sleep(0.05)
    finished = time.monotonic()
    if count - done_then >= count / 2 and finished > sent_at:
        q.drain_rate = (count - done_then) / (finished - sent_at)
    else:
        q.drain_rate = count / (finished - started)
    q.drain_messages = count
    drain = usage(a, snapshot(roles))
    q.drain_cpu_pct, q.drain_others_pct = drain.roles.get("server"), drain.others_pct
    verdict = classify(limits_of(args), others_pct=[drain.others_pct], top_others=drain.top_others)
    q.drain_trust, q.drain_why = verdict.trust, verdict.why
    print(
        f"  {q.queue}: drained {count} messages of {source.per_message} in {finished - started:.1f} s "
        f"({q.drain_rate:.1f}/s)" + ("" if verdict.trust == OK else f"  <- {verdict.trust}: {verdict.why}")
    )

    def passed(s: WorkerStep) -> bool:
        return s.processed >= 0.9 * s.offered and (s.max_age_s or 0.0) <= args.max_age_seconds

    for fraction in args.worker_fractions:
        step = worker_step(args, client, queue_url, queue, source, fraction * q.drain_rate, health, proc)
        step.fraction = fraction
        q.steps.append(step)
        print(
            f"  {q.queue} {fraction:.0%} of drain: offered {step.offered:.1f}/s, processed {step.processed:.1f}/s, "
            f"oldest message {fmt(step.max_age_s, ' s', 1)}, backlog {step.backlog}, worker CPU "
            f"{fmt(step.worker_cpu_pct, '%', 0)}" + ("" if step.trust == OK else f"  <- {step.trust}: {step.why}")
        )
        if step.trust != OK or not passed(step):
            break
    verdict_ = decide(q.steps, passed, "processed", lambda s: f"the {s.fraction:.0%} step")
    if verdict_.refusal:
        q.refusal = verdict_.refusal
    elif q.drain_trust != OK:
        q.refusal = f"the drain that scales the steps was {q.drain_trust} ({q.drain_why})"
    best = verdict_.best
    if q.refusal or best is None:
        q.note = "" if q.refusal else "the worker kept up with no step"
        return
    q.capacity = best.processed
    if res.limit_cores < 1 and not res.enforced and best.worker_cpu_pct:
        q.scale = min(1.0, res.limit_cores * 100 / best.worker_cpu_pct)
    q.queue_length = max(1, math.floor(args.fraction * best.processed * q.scale * args.max_age_seconds))
    if not verdict_.complete:
        q.note = "the worker kept up with every step: the capacity is at least the last step's rate"


def worker_step(
    args: argparse.Namespace,
    client: Any,
    queue_url: str,
    queue: str,
    source: Any,
    rate: float,
    health: int,
    proc: subprocess.Popen[bytes],
) -> WorkerStep:
    """Offer `rate` messages a second for a step: what the worker took off the queue, the oldest message it saw.

    Rates count from the end of the step's settle seconds: a step starts from an empty queue, and the messages the
    worker holds in flight then would count against it; in the steady state after, they come and go alike.
    """
    seconds = args.worker_step_seconds
    batch = max(1, min(10, math.floor(rate)))  # one SendMessageBatch per tick, like the tracker's flushes
    interval = batch / rate
    roles = {"server": proc.pid}

    def done() -> float:
        return worker_metric(scrape(health), "adclick_worker_messages_total", queue)

    a = snapshot(roles)
    start = time.monotonic()
    settle_at = start + min(args.settle_seconds, seconds / 2)
    b: Any = None
    sent, ages = 0, []
    sent_b = done_b = t_b = 0.0
    next_send = next_age = start
    while (now := time.monotonic()) < start + seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        if b is None and now >= settle_at:
            b, sent_b, done_b, t_b = snapshot(roles), sent, done(), now
        if b is not None and now >= next_age:
            ages.append(worker_metric(scrape(health), "adclick_worker_oldest_message_age_seconds", queue))
            next_age = now + 0.25
        if now >= next_send:
            send(client, queue_url, source.take(batch))
            sent += batch
            next_send += interval
            continue  # catch up with the schedule before sleeping
        time.sleep(max(0.0, min(next_send, next_age if b is not None else settle_at) - time.monotonic()))
    end = time.monotonic()
    c = snapshot(roles)
    done_c = done()
    if b is None:  # a step shorter than a tick: count it all
        b, t_b = a, start
    span = max(1e-6, end - t_b)
    step = WorkerStep(
        fraction=0.0,
        intended=rate,
        offered=(sent - sent_b) / span,
        # What the worker finished (its batches committed, its messages deleted) over the same seconds.
        processed=(done_c - done_b) / span,
        max_age_s=round(max(ages), 2) if ages else None,
        backlog=backlog(client, queue_url),
        seconds=round(span, 1),
    )
    before = usage(a, b) if b is not a else None
    during = usage(b, c)
    step.worker_cpu_pct = during.roles.get("server")
    step.client_cores_pct = during.cores_pct(parse_cpus(args.client_cpu))
    step.others_before_pct = None if before is None else before.others_pct
    step.others_pct = during.others_pct
    verdict = classify(
        limits_of(args),
        others_pct=[step.others_before_pct, step.others_pct],
        top_others=during.top_others,
        # The sender is this process, and SQS holds what the worker has not taken yet: when it sent less than its
        # schedule had due by the end (one batch of slack: the last may fall due as the step ends), it fell behind
        # by itself, however busy the worker was.
        offered=max(1, math.ceil((end - start) / interval) - 1) * batch,
        achieved=sent,
        generator_cores_pct=step.client_cores_pct,
    )
    step.trust, step.why = verdict.trust, verdict.why
    return step


# ---------------------------------------------------------------- the overlay


def render(overlay: Path) -> list[dict[str, Any]]:
    """The overlay's objects: `kubectl kustomize` (or `kustomize build`), else its and its bases' YAML files."""
    for cmd in (["kubectl", "kustomize", str(overlay)], ["kustomize", "build", str(overlay)]):
        if shutil.which(cmd[0]):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if out.returncode == 0:
                return [d for d in yaml.safe_load_all(out.stdout) if isinstance(d, dict)]
            raise RuntimeError(f"`{' '.join(cmd)}` failed: {out.stderr.strip()[-500:]}")
    return list(_files_of(overlay))


def _files_of(path: Path) -> Any:
    """Objects of a kustomization's resources, followed through bases, patches not applied (no kustomize here)."""
    if path.is_dir():
        kfile = next((path / n for n in ("kustomization.yaml", "kustomization.yml", "Kustomization")), None)
        if kfile is None or not kfile.exists():
            return
        k = yaml.safe_load(kfile.read_text()) or {}
        for res in k.get("resources", []) + k.get("bases", []):
            yield from _files_of((path / res).resolve())
    elif path.exists():
        yield from (d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict))


@dataclass
class Target:
    kind: str
    name: str
    index: int
    guard_path: str
    guard_value: Any
    path: str
    current: Any


def locate_hpa(objects: list[dict[str, Any]], role: str) -> Target:
    """The Pods metric (requests per second per pod) of the role's HorizontalPodAutoscaler."""
    hpas = [o for o in objects if o.get("kind") == "HorizontalPodAutoscaler"]
    hpa = next((h for h in hpas if role in _names(h)), None)
    if hpa is None:
        raise RuntimeError(f"no {role} HorizontalPodAutoscaler in the overlay (found {[_name(h) for h in hpas]})")
    for i, metric in enumerate(hpa.get("spec", {}).get("metrics", [])):
        if metric.get("type") == "Pods":
            name = metric["pods"]["metric"]["name"]
            return Target(
                "HorizontalPodAutoscaler",
                _name(hpa),
                i,
                f"/spec/metrics/{i}/pods/metric/name",
                name,
                f"/spec/metrics/{i}/pods/target/averageValue",
                metric["pods"].get("target", {}).get("averageValue"),
            )
    raise RuntimeError(f"HorizontalPodAutoscaler {_name(hpa)} has no Pods metric (requests per second) to set")


def locate_cpu_metric(objects: list[dict[str, Any]], role: str) -> Target | None:
    """The CPU Utilization metric of the role's HorizontalPodAutoscaler, if it has one."""
    hpa = next((o for o in objects if o.get("kind") == "HorizontalPodAutoscaler" and role in _names(o)), None)
    for i, metric in enumerate((hpa or {}).get("spec", {}).get("metrics", [])):
        resource = metric.get("resource", {})
        if metric.get("type") == "Resource" and resource.get("name") == "cpu":
            target = resource.get("target", {})
            if target.get("type") == "Utilization":
                return Target(
                    "HorizontalPodAutoscaler",
                    _name(hpa or {}),
                    i,
                    f"/spec/metrics/{i}/resource/name",
                    "cpu",
                    f"/spec/metrics/{i}/resource/target/averageUtilization",
                    target.get("averageUtilization"),
                )
    return None


def locate_tracker_hpa(objects: list[dict[str, Any]]) -> Target:
    return locate_hpa(objects, "tracker")


def locate_worker_trigger(objects: list[dict[str, Any]], queue: str = "clicks") -> Target:
    """The worker ScaledObject's aws-sqs-queue trigger on the `clicks` or `conversions` queue."""
    scaled = [o for o in objects if o.get("kind") == "ScaledObject"]
    obj = next((s for s in scaled if "worker" in _names(s)), None)
    if obj is None:
        raise RuntimeError(f"no worker ScaledObject in the overlay (found {[_name(s) for s in scaled]})")
    triggers = [
        (i, t) for i, t in enumerate(obj.get("spec", {}).get("triggers", [])) if t.get("type") == "aws-sqs-queue"
    ]
    word = queue.rstrip("s")  # click, conversion
    found = next(((i, t) for i, t in triggers if word in json.dumps(t.get("metadata", {}))), None)
    if found is None:
        raise RuntimeError(f"ScaledObject {_name(obj)} has no aws-sqs-queue trigger on the {queue} queue")
    i, trigger = found
    # Guard on the trigger's name when it has one: two queue triggers share the type.
    guard = ("name", trigger["name"]) if trigger.get("name") else ("metadata/queueURL", trigger["metadata"]["queueURL"])
    return Target(
        "ScaledObject",
        _name(obj),
        i,
        f"/spec/triggers/{i}/{guard[0]}",
        guard[1],
        f"/spec/triggers/{i}/metadata/queueLength",
        trigger.get("metadata", {}).get("queueLength"),
    )


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _names(obj: dict[str, Any]) -> str:
    return f"{_name(obj)} {obj.get('spec', {}).get('scaleTargetRef', {}).get('name', '')}"


def locate_targets(args: argparse.Namespace, objects: list[dict[str, Any]]) -> dict[str, list[Target]]:
    """Every entry this run will set, found before anything is measured: a base without one fails in seconds."""
    found: dict[str, list[Target]] = {}
    for role in ("tracker", "postback"):
        if not getattr(args, f"skip_{role}"):
            cpu = locate_cpu_metric(objects, role)
            found[role] = [locate_hpa(objects, role)] + ([cpu] if cpu else [])
    if not args.skip_worker:
        found["worker"] = [locate_worker_trigger(objects, "clicks"), locate_worker_trigger(objects, "conversions")]
    return found


def patch_text(changes: list[tuple[Target, int]], why: list[str]) -> str:
    comment = "".join(f"# {line}\n" if line else "#\n" for line in why)
    ops: list[dict[str, Any]] = []
    for target, value in changes:
        ops.append({"op": "test", "path": target.guard_path, "value": target.guard_value})
        # averageUtilization is an integer in the HPA's schema; averageValue and queueLength are strings.
        ops.append(
            {"op": "replace", "path": target.path, "value": value if "Utilization" in target.path else str(value)}
        )
    return comment + yaml.safe_dump(ops, sort_keys=False, default_flow_style=False)


def add_to_kustomization(kfile: Path, entries: list[tuple[str, Target]]) -> bool:
    """Add a `patches` entry per file, keeping the rest of the file as it is; False when all are there already."""
    text = kfile.read_text()
    listed = {p.get("path") for p in (yaml.safe_load(text) or {}).get("patches", []) or [] if isinstance(p, dict)}
    missing = [(f, t) for f, t in entries if f not in listed]
    if not missing:
        return False
    lines = text.splitlines()
    head = next((i for i, line in enumerate(lines) if line.rstrip() == "patches:"), None)
    if head is None:
        indent = "  "
        lines.append("patches:")
        at = len(lines)
    else:
        at = head + 1
        while at < len(lines) and (not lines[at].strip() or lines[at][0] in " -#"):
            at += 1
        while at > head + 1 and not lines[at - 1].strip():
            at -= 1
        first = next((ln for ln in lines[head + 1 : at] if ln.lstrip().startswith("-")), "  -")
        indent = first[: len(first) - len(first.lstrip())]
    new = []
    for f, t in missing:
        new += [
            f"{indent}- path: {f}",
            f"{indent}  target:",
            f"{indent}    kind: {t.kind}",
            f"{indent}    name: {t.name}",
        ]
    lines[at:at] = new
    updated = "\n".join(lines) + "\n"
    parsed = yaml.safe_load(updated) or {}
    if not {f for f, _ in entries} <= {p.get("path") for p in parsed.get("patches", []) if isinstance(p, dict)}:
        raise RuntimeError(f"could not add the patches to {kfile} safely; add them by hand: {[f for f, _ in missing]}")
    kfile.write_text(updated)
    return True


def run_lines(args: argparse.Namespace, report: Path) -> list[str]:
    """The head of every patch's comment: the run it came from (date, machine, command) and its report."""
    try:
        shown = report.relative_to(ROOT)
    except ValueError:
        shown = report
    return [
        f"Written by `make hpa-tune` on {args.started:%Y-%m-%d %H:%M} from a run on {args.machine}:",
        f"  {args.command}",
        f"The run's report: {shown}",
    ]


def write_overlay(
    args: argparse.Namespace,
    targets: dict[str, list[Target]],
    tracker: ServerResult | None,
    postback: ServerResult | None,
    worker: WorkerResult | None,
    report: Path,
) -> list[str]:
    """Write the patches that have a measured value and list them in the overlay; what was written, for the report."""
    overlay = args.overlay
    kfile = overlay / "kustomization.yaml"
    head = run_lines(args, report)
    written, entries = [], []

    def put(file: str, changes: list[tuple[Target, int]], why: list[str]) -> None:
        (overlay / file).write_text(patch_text(changes, head + why))
        entries.append((file, changes[0][0]))
        for t, value in changes:
            written.append(f"{overlay / file}: {t.kind}/{t.name} {t.path} {t.current} -> {value}")

    for res, file in ((tracker, TRACKER_PATCH), (postback, POSTBACK_PATCH)):
        if res is None or res.target_rps is None or res.capacity_rps is None:
            continue
        t = targets[res.role][0]
        peak = res.peak.rps if res.peak else 0.0
        slo = f"p99 <= {res.slo_ms:g} ms, errors < {args.max_error_rate:.1%}"
        what = "One tracker process on one core" if res.role == "tracker" else f"One postback process ({res.cpu_limit})"
        why = [
            f"{what} kept {slo} up to {res.capacity_rps:,.0f} req/s"
            + (" (SQS included)" if res.role == "postback" else "")
            + " at constant rates; "
            + (
                f"its closed-loop peak was {peak:,.0f} req/s"
                if res.peak and res.peak.source == "wrk"
                else f"the peak given ({res.peak.source if res.peak else '-'}) was {peak:,.0f} req/s"
            )
            + (f" ({res.capacity_rps / peak:.0%})." if peak else "."),
        ]
        if res.scale < 1:
            why.append(f"A pod's {res.limit_cores:g} core gets {res.scale:.0%} of that (its limit was not enforced).")
        why.append(f"Target per pod = {args.fraction:.0%} of that = {res.target_rps} req/s ({t.guard_value}).")
        changes = [(t, res.target_rps)]
        cpu = targets[res.role][1] if len(targets[res.role]) > 1 else None
        if cpu is not None and res.cpu_target_pct is not None and res.cpu_at_target_pct is not None:
            why.append(
                f"At that rate the server used {res.cpu_at_target_pct:.0f}% of a core ({res.cpu_at_target_from}), "
                f"{res.cpu_target_pct}% of the pod's {res.cpu_request_cores:g} core request: the CPU target, so"
            )
            why.append("that CPU and requests per second scale out at the same load.")
            changes.append((cpu, res.cpu_target_pct))
        put(file, changes, why)
    if worker is not None and worker.clicks and worker.conversions:
        clicks, conversions = worker.clicks, worker.conversions
        if clicks.queue_length is not None and conversions.queue_length is not None:
            t_clicks, t_conversions = targets["worker"]
            why = [
                f"One worker process ({worker.cpu_limit}, {worker.database}) kept up with {clicks.capacity:.1f} click "
                f"messages/s of {clicks.events_per_message} clicks each",
                f"({worker.events_per_message_from}) and {conversions.capacity:.1f} conversions/s, the oldest message "
                f"under {args.max_age_seconds:g} s.",
            ]
            for q in (clicks, conversions):
                if q.scale < 1:
                    why.append(f"A pod's {worker.limit_cores:g} core gets {q.scale:.0%} of the {q.queue} rate.")
            why.append(
                f"queueLength = {args.fraction:.0%} x capacity x {args.max_age_seconds:g} s: clicks "
                f"{clicks.queue_length}, conversions {conversions.queue_length} messages per replica."
            )
            put(WORKER_PATCH, [(t_clicks, clicks.queue_length), (t_conversions, conversions.queue_length)], why)
    if entries and add_to_kustomization(kfile, entries):
        written.append(f"{kfile}: added {', '.join(f for f, _ in entries)} to patches")
    if entries and shutil.which("kubectl"):
        render(overlay)  # the test operations and paths hold, or this raises
    return written


# ---------------------------------------------------------------- report


def fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}{unit}"


def trust_cell(trust: str, why: str) -> str:
    return "ok" if trust == OK else f"**{trust}**: {why}"


def no_target(what: str, refusal: str | None, capacity: float | None, note: str) -> str | None:
    """The verdict of a phase or queue (`what`) that gets no target, or None when it has a capacity."""
    if refusal:
        return f"**No target: {what} cannot be trusted.** {refusal}."
    if capacity is None:
        return f"**No capacity**: {note}."
    return None


def pod_share(scale: float) -> str:
    """Where a pod's CPU limit could not be enforced, the share of the pinned core its capacity was scaled to."""
    return f"a pod's share {scale:.0%} (its CPU limit could not be enforced here); " if scale < 1 else ""


TRUST_TEXT = (
    "Every step is checked before it counts. **busy**: processes this run did not start used more than "
    "{busy:g}% of a core before (the step's settle seconds) or during it (the *others* column; interrupt time "
    "excluded): the step measured the machine. **generator-bound**: the load generator's cores were at least "
    "{sat:g}% busy, one of its processes used that much of its core, or it answered less than {keep:.0%} of the "
    "offered rate while the server's core had room: the step measured the generator. Neither is ever the capacity, "
    "and a run whose capacity would depend on one writes no target."
)


def server_section(args: argparse.Namespace, res: ServerResult) -> list[str]:
    role = res.role
    if role == "tracker":
        title = "## Tracker: one process, one core"
        what = (
            f"`adclick tracker --processes 1 --workers 1` pinned to core {args.tracker_cpu}, CPU limit "
            f"{res.cpu_limit}. "
            "Server p99 is the tracker's own `adclick_click_seconds` (inside the Rust engine, no HTTP); clicks per "
            "message are its `adclick_events_buffered_total` over `adclick_sqs_messages_sent_total`."
        )
    else:
        title = "## Postback: one process, SQS included"
        what = (
            f"`adclick postback --workers 1` pinned to core {args.tracker_cpu}, CPU limit {res.cpu_limit}, every "
            "request a valid postback (an advertiser token, a ClickID of a bench link, a new txid) that it sends to "
            "the bench SQS endpoint before answering 200. Server p99 is its own `adclick_postback_latency_seconds`."
        )
    if res.generator == "locust":
        gen = (
            f"Locust (bench/locustfile.py `TrackerUser` with bench/locust_steps.py, {args.user_rps:g} req/s per user, "
            f"{res.locust_processes} process(es)"
            + (", one master and its workers" if res.locust_processes > 1 else "")
            + ")"
        )
    else:
        gen = (
            f"bench/loadgen at a constant rate over {args.connections} keep-alive connections, latency measured from "
            "when each request was due"
        )
    lines = [title, "", what, ""]
    if res.peak is not None and res.peak.source != "wrk":
        first = f"Load: the peak given with {res.peak.source} ({res.peak.rps:,.0f} req/s), then"
    else:
        first = (
            f"Load: first wrk in a closed loop ({args.connections} connections, {args.threads} threads, "
            f"{args.peak_seconds:g} s) for the peak, then"
        )
    lines += [
        f"{first} {gen}, from 1/{args.steps} to all of the peak, each step "
        f"{args.step_seconds:g} s of which the last {args.step_seconds - args.settle_seconds:g} s are measured; "
        f"generators, Redis and the SQS endpoint on core(s) {args.client_cpu}. SLO: p99 <= {res.slo_ms:g} ms at the "
        f"client, errors < {args.max_error_rate:.1%}, and at least {args.keep_up:.0%} of the offered rate answered.",
        "",
        f"Other processes before the phase: {fmt(res.others_before_pct, '% of a core', 0)}.",
        "",
    ]
    p = res.peak
    if p is not None:
        lines += [
            "| peak | req/s | p50 | p99 | errors | server CPU | generator CPU | client cores | others before | others "
            "| trust |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {p.source} | {p.rps:,.0f} | {fmt(p.p50_ms, ' ms')} | {fmt(p.p99_ms, ' ms')} | {p.errors} | "
            f"{fmt(p.server_cpu_pct, '%', 0)} | {fmt(p.generator_cpu_pct, '%', 0)} | {fmt(p.client_cores_pct, '%', 0)} "
            f"| {fmt(p.others_before_pct, '%', 0)} | {fmt(p.others_pct, '%', 0)} | {trust_cell(p.trust, p.why)} |",
            "",
        ]
    head = "| step | share | " + ("users | " if res.generator == "locust" else "") + "offered | answered | p50 | p95 "
    head += "| p99 | errors | server CPU | server p99 | " + ("clicks/msg | " if role == "tracker" else "")
    head += "generator CPU | client cores | others before | others | within SLO | trust |"
    lines += [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    rows = list(res.steps) + ([res.at_target] if res.at_target else [])
    for s in rows:
        name = "target" if s is res.at_target else str(s.step)
        err = "-" if s.error_rate is None else f"{s.failures} ({s.error_rate:.2%})"
        cells = [name, f"{s.share:.0%}"] + ([fmt(s.users, "", 0)] if res.generator == "locust" else [])
        cells += [f"{s.offered_rps:,.0f}", f"{s.rps:,.0f}", fmt(s.p50_ms, " ms"), fmt(s.p95_ms, " ms")]
        cells += [fmt(s.p99_ms, " ms"), err, fmt(s.server_cpu_pct, "%", 0), fmt(s.server_p99_ms, " ms", 3)]
        cells += [fmt(s.clicks_per_message, "", 0)] if role == "tracker" else []
        cells += [fmt(s.generator_cpu_pct, "%", 0), fmt(s.client_cores_pct, "%", 0), fmt(s.others_before_pct, "%", 0)]
        ok = within(args, res.slo_ms)(s)
        cells += [fmt(s.others_pct, "%", 0), "yes" if ok else "no", trust_cell(s.trust, s.why)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if missing := no_target("this phase", res.refusal, res.capacity_rps, res.note):
        lines.append(missing)
    else:
        peak = res.peak.rps if res.peak else 0
        lines.append(
            f"**Peak {peak:,.0f} req/s** ({p.source if p else '-'}); **capacity at the SLO {res.capacity_rps:,.0f} "
            f"req/s** (step {res.capacity_step}), **{res.capacity_rps / peak:.0%} of the peak**; "
            + pod_share(res.scale)
            + f"**HPA target: {res.target_rps:,} req/s per pod** ({args.fraction:.0%})."
        )
        if res.note:
            lines += ["", res.note[0].upper() + res.note[1:] + "."]
    if role == "tracker" and res.clicks_per_message and not res.refusal:
        lines += ["", f"Clicks per SQS message at the target rate: **{res.clicks_per_message:,.0f}** "
                      f"({res.clicks_per_message_from}); the worker's click messages hold that many."]  # fmt: skip
    if res.at_target is not None and not within(args, res.slo_ms)(res.at_target):
        lines += ["", "At the target rate the SLO did not hold: the capacity step was close; a longer "
                      "`--step-seconds` gives steadier steps."]  # fmt: skip
    if res.cpu_target_pct is not None and res.cpu_at_target_pct is not None and not res.refusal:
        lines += ["", f"CPU at the target rate: {res.cpu_at_target_pct:.0f}% of a core ({res.cpu_at_target_from}), "
                      f"so **HPA CPU target: {res.cpu_target_pct}%** of the pod's {res.cpu_request_cores:g} core "
                      "request: CPU and requests per second scale out at the same load (the HPA follows whichever "
                      "asks for more pods)."]  # fmt: skip
    if role == "postback" and res.accepted is not None:
        lines += ["", f"Postbacks queued over the phase: {res.accepted:,.0f}; refused: {res.rejected or 0:,.0f}."]
    if res.generator == "locust":
        lines += [
            "",
            "Locust is the user-facing load tool: Python spends far more CPU per request than the tracker's Rust path, "
            "so a step where a Locust process filled its core, or where Locust sent less than it offered, is marked "
            "generator-bound. Give it more processes (`--locust-processes N`, one master and N workers, on more "
            "client cores) or run it distributed (README, Load tests); `--generator loadgen` needs one core.",
        ]
    lines.append("")
    return lines


def worker_section(args: argparse.Namespace, worker: WorkerResult) -> list[str]:
    lines = [
        "## Worker: one process, one pod's CPU",
        "",
        f"`adclick worker --concurrency {args.worker_concurrency}` pinned to core {args.tracker_cpu}, CPU limit "
        f"{worker.cpu_limit}, on {worker.database}. Each queue first gets a backlog to drain; its rate scales the "
        f"steps, which offer a share of it for {args.worker_step_seconds:g} s each. The oldest-message age is the "
        "worker's `adclick_worker_oldest_message_age_seconds`. A step keeps up when it processed at least 90% of "
        f"what it was offered with the oldest message under {args.max_age_seconds:g} s. Other processes before the "
        f"phase: {fmt(worker.others_before_pct, '% of a core', 0)}.",
        "",
    ]
    for q in worker.queues():
        if q.queue == "clicks":
            lines += [f"### Clicks: messages of {q.events_per_message} clicks ({worker.events_per_message_from})", ""]
        else:
            lines += ["### Conversions: one conversion per message (as the postback role queues them)", ""]
        lines += [
            f"Drain of {q.drain_messages} messages: {fmt(q.drain_rate, ' messages/s', 1)}, worker CPU "
            f"{fmt(q.drain_cpu_pct, '%', 0)}, others {fmt(q.drain_others_pct, '%', 0)}; "
            f"{trust_cell(q.drain_trust, q.drain_why)}.",
            "",
            "| share of drain | offered msg/s | processed msg/s | oldest message | backlog at end | worker CPU | "
            "client cores | others before | others | kept up | trust |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for w in q.steps:
            lines.append(
                f"| {w.fraction:.0%} | {w.offered:.1f} | {w.processed:.1f} | {fmt(w.max_age_s, ' s', 1)} | {w.backlog} "
                f"| {fmt(w.worker_cpu_pct, '%', 0)} | {fmt(w.client_cores_pct, '%', 0)} | "
                f"{fmt(w.others_before_pct, '%', 0)} | {fmt(w.others_pct, '%', 0)} | {'yes' if w.passed else 'no'} | "
                f"{trust_cell(w.trust, w.why)} |"
            )
        lines.append("")
        if missing := no_target("this queue's figures", q.refusal, q.capacity, q.note):
            lines.append(missing)
        else:
            per = f" ({q.capacity * q.events_per_message:,.0f} clicks/s)" if q.queue == "clicks" else ""
            lines.append(
                f"**Capacity: {q.capacity:.1f} messages/s**{per}; "
                + pod_share(q.scale)
                + f"**KEDA queueLength ({q.queue}): {q.queue_length}** = {args.fraction:.0%} x capacity x "
                f"{args.max_age_seconds:g} s: KEDA runs backlog / queueLength replicas, so each replica's share of "
                f"the backlog is gone within about {args.max_age_seconds:g} s."
                + (f" {q.note[0].upper() + q.note[1:]}." if q.note else "")
            )
        lines.append("")
    return lines


def write_report(
    args: argparse.Namespace,
    tracker: ServerResult | None,
    postback: ServerResult | None,
    worker: WorkerResult | None,
    refusals: list[str],
    written: list[str],
) -> Path:
    lines = [f"# adclick capacity, {args.started:%Y-%m-%d %H:%M}", ""]
    lines += [
        f"Machine: {args.machine}. Command: `{args.command}`. Targets at {args.fraction:.0%} of each measured "
        "capacity.",
        "",
        TRUST_TEXT.format(busy=args.busy_limit, sat=args.saturated, keep=args.keep_up),
        "",
    ]
    if refusals:
        lines += ["**Refused: no target written.** This run cannot be trusted:", ""]
        lines += [f"- {r}" for r in refusals] + [
            "",
            "Run it again on a quiet machine (no tests, builds or other load).",
            "",
        ]
    for res in (tracker, postback):
        if res is not None:
            lines += server_section(args, res)
    if worker is not None:
        lines += worker_section(args, worker)
    lines += ["## Written", ""] + ([f"- {w}" for w in written] or ["- nothing (--no-write, a refusal, or no target)"])
    lines += ["", "![RPS against latency](chart.png)", ""]
    path = args.out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def write_chart(
    args: argparse.Namespace, tracker: ServerResult | None, postback: ServerResult | None, worker: WorkerResult | None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    servers = [r for r in (tracker, postback) if r is not None]
    queues = worker.queues() if worker is not None else []
    panels = len(servers) + len(queues)
    fig, axes = plt.subplots(1, max(1, panels), figsize=(6.5 * max(1, panels), 4.8), squeeze=False)
    col = 0
    for res in servers:
        ax = axes[0][col]
        col += 1
        pts = [s for s in res.steps if s.p99_ms is not None]
        bad = [s for s in pts if s.trust != OK]
        ax.plot([s.rps for s in pts], [s.p50_ms for s in pts], "o-", label="p50")
        ax.plot([s.rps for s in pts], [s.p99_ms for s in pts], "s-", label="p99")
        if bad:
            ax.plot([s.rps for s in bad], [s.p99_ms for s in bad], "rx", markersize=12, label="busy or generator-bound")
        ax.axhline(res.slo_ms, color="grey", linestyle=":", label=f"SLO {res.slo_ms:g} ms")
        if res.peak is not None:
            ax.axvline(res.peak.rps, color="tab:purple", linestyle="-.", label=f"peak {res.peak.rps:,.0f}/s")
        if res.capacity_rps is not None:
            ax.axvline(res.capacity_rps, color="tab:green", linestyle="--", label="capacity")
        if res.target_rps is not None:
            ax.axvline(res.target_rps, color="tab:red", label=f"HPA target {res.target_rps:,}/s")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel(f"requests per second (one {res.role} process)")
        ax.set_ylabel("latency at the client (ms)")
        ax.set_title(f"{res.role}: RPS against p50 and p99")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    for q in queues:
        ax = axes[0][col]
        col += 1
        ax.plot([w.offered for w in q.steps], [w.processed for w in q.steps], "o-", label="processed")
        ax.plot([w.offered for w in q.steps], [w.offered for w in q.steps], ":", color="grey", label="offered")
        if q.capacity is not None:
            ax.axhline(q.capacity, color="tab:green", linestyle="--", label=f"capacity {q.capacity:.1f}/s")
        ax.set_xlabel(f"{q.queue} messages offered per second")
        ax.set_ylabel("messages processed per second (one worker)")
        ax.set_title(f"worker, {q.queue}" + (f": KEDA queueLength {q.queue_length}" if q.queue_length else ""))
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = args.out_dir / "chart.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--slo-ms", type=float, default=5.0, help="the tracker's p99 objective in ms (default 5)")
    p.add_argument(
        "--postback-slo-ms",
        type=float,
        default=50.0,
        help="the postback role's p99 objective in ms (default 50: an advertiser's server waits on it, no browser)",
    )
    p.add_argument("--max-error-rate", type=float, default=0.001, help="errors allowed per request (default 0.001)")
    p.add_argument("--fraction", type=float, default=0.7, help="share of the capacity to target (default 0.7)")
    p.add_argument("--peak-seconds", type=float, default=5.0, help="length of the closed-loop wrk peak (default 5)")
    p.add_argument("--peak-rps", type=float, help="the tracker's peak, given instead of measured with wrk")
    p.add_argument("--postback-peak-rps", type=float, help="the postback role's peak, given instead of measured")
    p.add_argument("--steps", type=int, default=10, help="constant-rate steps, 1/N to N/N of the peak (default 10)")
    p.add_argument("--step-seconds", type=float, default=20.0, help="length of a step (default 20)")
    p.add_argument("--settle-seconds", type=float, default=5.0, help="start of each step left out (default 5)")
    p.add_argument(
        "--generator",
        choices=("loadgen", "locust"),
        default="loadgen",
        help="the tracker's steps: bench/loadgen at constant rates (default), or Locust's StepShape (the postback "
        "role's steps are loadgen's either way)",
    )
    p.add_argument("--user-rps", type=float, default=50.0, help="Locust: requests per second per user (default 50)")
    p.add_argument(
        "--locust-processes",
        type=int,
        help="Locust: worker processes under one master (default: one per client core)",
    )
    add_load_options(p)
    p.add_argument("--tracker-cpu", default="1", help="the pod's core: every role runs here in turn (default 1)")
    p.add_argument("--client-cpu", default="0", help="cores for the generators, Redis, SQS, PostgreSQL (default 0)")
    p.add_argument("--tracker-cpu-limit", type=float, help="tracker pod's CPU limit (default: from the overlay)")
    p.add_argument("--postback-cpu-limit", type=float, help="postback pod's CPU limit (default: from the overlay)")
    p.add_argument("--worker-cpu-limit", type=float, help="worker pod's CPU limit (default: from the overlay)")
    p.add_argument("--max-age-seconds", type=float, default=60.0, help="bound on the oldest message's age (60)")
    p.add_argument(
        "--events-per-message",
        type=int,
        default=0,
        help="clicks per SQS message (default: what the tracker packed at its target rate in this run)",
    )
    p.add_argument("--worker-drain-events", type=int, default=30_000, help="clicks queued for the drain (30,000)")
    p.add_argument("--worker-drain-conversions", type=int, default=3_000, help="conversions for the drain (3,000)")
    p.add_argument("--worker-fractions", default="0.5,0.75,0.9,1.1", help="step rates as shares of the drain rate")
    p.add_argument("--worker-step-seconds", type=float, default=20.0, help="length of a worker step (default 20)")
    p.add_argument("--worker-concurrency", type=int, default=2, help="adclick worker --concurrency (default 2)")
    p.add_argument("--worker-timeout", type=float, default=300.0, help="give up on a drain after this (300 s)")
    p.add_argument("--database", choices=("postgres", "sqlite"), default="postgres", help="worker's database")
    p.add_argument("--skip-tracker", action="store_true", help="leave the tracker out (needs --events-per-message)")
    p.add_argument("--skip-postback", action="store_true", help="leave the postback role out")
    p.add_argument("--skip-worker", action="store_true", help="leave the worker out")
    p.add_argument(
        "--busy-limit",
        type=float,
        default=10.0,
        help="CPU of processes this run did not start, in %% of a core, above which a step is busy (default 10)",
    )
    p.add_argument(
        "--keep-up",
        type=float,
        default=0.95,
        help="share of the offered rate a step must answer, below which (with the server's core not saturated) it "
        "is generator-bound (default 0.95)",
    )
    p.add_argument(
        "--saturated",
        type=float,
        default=95.0,
        help="%% busy at which the generator's core or process is saturated: generator-bound (default 95)",
    )
    p.add_argument("--wait-idle", type=float, default=30.0, help="wait this long for a quiet machine per phase (30)")
    p.add_argument("--overlay", type=Path, default=ROOT / "k8s" / "overlays" / "prod", help="kustomize overlay")
    p.add_argument("--no-write", action="store_true", help="report only; leave the overlay alone")
    p.add_argument("--out", type=Path, help="report directory (default bench/results/hpa-<time>)")
    args = p.parse_args(argv)
    if not shutil.which("taskset"):
        print("warning: taskset not found (util-linux): nothing is pinned, figures are not one core's")
        args.tracker_cpu = args.client_cpu = None
    if args.locust_processes is None:
        args.locust_processes = max(1, len(parse_cpus(args.client_cpu)))
    args.worker_fractions = [float(x) for x in args.worker_fractions.split(",") if x.strip()]
    if args.step_seconds <= args.settle_seconds:
        p.error("--step-seconds must be longer than --settle-seconds")
    if args.steps < 1:
        p.error("--steps must be at least 1")
    if args.skip_tracker and not args.skip_worker and not args.events_per_message:
        p.error("the worker's click messages hold what the tracker packs: measure it, or give --events-per-message")
    args.started = dt.datetime.now()
    args.machine = machine()
    args.command = shlex.join(["bench/hpa_tune.py", *(sys.argv[1:] if argv is None else argv)])
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    args.out_dir = args.out or BENCH / "results" / f"hpa-{run_stamp(args.started)}"
    (args.out_dir / "logs").mkdir(parents=True, exist_ok=True)
    client = parse_cpus(args.client_cpu)
    if client:
        # This process, and whatever it starts unpinned (PostgreSQL, the tuner's own sends), stay off the pod's core.
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, {int(c) for c in client})
    objects: list[dict[str, Any]] = []
    with contextlib.suppress(RuntimeError, OSError, yaml.YAMLError):
        objects = render(args.overlay)
    for role in ("tracker", "postback", "worker"):
        if getattr(args, f"{role}_cpu_limit") is None:
            setattr(args, f"{role}_cpu_limit", min(1.0, pod_cpu(objects, role) or 1.0))
        setattr(args, f"{role}_cpu_request", pod_cpu(objects, role, "requests"))
    targets: dict[str, list[Target]] = {}
    if not args.no_write:
        if not (args.overlay / "kustomization.yaml").exists():
            print(f"error: {args.overlay / 'kustomization.yaml'} not found: nothing to patch (or --no-write)")
            return 2
        try:
            targets = locate_targets(args, render(args.overlay))
        except RuntimeError as error:
            print(f"error: {error} (or --no-write)")
            return 2
    tracker = postback = worker = None
    try:
        print("starting Redis and the SQS endpoint ...")
        logs = args.out_dir / "logs"
        _, sqs, env = start_backends(args.client_cpu, logs, args.slugs, ADCLICK_DRAIN_SECONDS="0.5")
        if not args.skip_tracker:
            print("\n== tracker")
            tracker = tune_tracker(args, env)
        if not args.skip_postback:
            print("\n== postback")
            postback = tune_postback(args, env)
        if not args.skip_worker:
            print("\n== worker")
            if args.events_per_message:
                per_message, source = args.events_per_message, "--events-per-message"
            elif tracker is not None and tracker.clicks_per_message:
                per_message = max(1, round(tracker.clicks_per_message))
                source = f"what the tracker packed, {tracker.clicks_per_message_from}"
            else:
                raise RuntimeError("the tracker phase measured no clicks per message: give --events-per-message")
            worker = tune_worker(args, env, sqs, per_message)
            worker.events_per_message_from = source
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this run started")
        return 130
    finally:
        PROCS.stop_all()

    refusals = [f"{r.role}: {r.refusal}" for r in (tracker, postback) if r is not None and r.refusal]
    if worker is not None:
        refusals += [f"worker, {q.queue}: {q.refusal}" for q in worker.queues() if q.refusal]
    report = args.out_dir / "report.md"
    written = []
    if not args.no_write and not refusals:
        written = write_overlay(args, targets, tracker, postback, worker, report)
    write_chart(args, tracker, postback, worker)
    write_report(args, tracker, postback, worker, refusals, written)
    data = {
        "settings": {k: (str(v) if isinstance(v, Path | dt.datetime) else v) for k, v in vars(args).items()},
        "refusals": refusals,
        "tracker": asdict(tracker) if tracker else None,
        "postback": asdict(postback) if postback else None,
        "worker": asdict(worker) if worker else None,
        "written": written,
    }
    (args.out_dir / "result.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nreport: {report}\nchart:  {args.out_dir / 'chart.png'}")
    for w in written:
        print(f"wrote:  {w}")
    if refusals:
        print("\nrefusing to write targets: this run cannot be trusted (nothing was written):")
        for r in refusals:
            print(f"  - {r}")
        print("run it again on a quiet machine: no tests, builds or other load at the same time")
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
