"""Measure one pod's capacity and write the autoscaling targets into the prod overlay (`make hpa-tune`).

Tracker: one `adclick tracker` process (one process, as in a pod) pinned with taskset to one core (the pod's CPU
limit), under bench/locust_steps.py's stepped load (`StepShape`, `TrackerUser` only) from Locust pinned to the
other cores. The capacity is the highest step rate reached while every step so far kept its p99 within the SLO
and its errors under the limit; the HPA's per-pod RPS target (the Pods metric's `averageValue`) is a fraction of
it.

Worker: one `adclick worker` process on the same core, against a throwaway database (PostgreSQL, or SQLite), fed
`c1:` click messages at steps of its own drain rate; the capacity is the highest rate it kept up with while the
age of the oldest message it received stayed under a bound. KEDA's `queueLength` (messages per replica) is a
fraction of capacity x bound: a backlog of that size per replica is gone within the bound.

Writes a report (markdown), a PNG chart and JSON under bench/results/hpa-<time>/, and the targets as JSON 6902
patches (guarded by `test` operations, so a reshuffled base fails the build instead of patching the wrong entry)
next to the overlay's kustomization.yaml, which gets one `patches` entry per file.

All load goes to 127.0.0.1 and stops by itself. A benchmark measures; it does not pass or fail.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import datetime as dt
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT_TESTS = Path(__file__).resolve().parent.parent / "tests"
# The worker phase reuses the test suite's throwaway PostgreSQL and its seed and click-event helpers.
sys.path.insert(0, str(ROOT_TESTS))

from benchkit import (  # noqa: E402
    BENCH,
    PROCS,
    ROOT,
    VENV_BIN,
    build_loadgen,
    cpu_busy,
    free_port,
    histogram_quantile,
    http_get,
    pinned,
    proc_tree,
    raise_interrupt,
    scrape,
    server_env,
    start_redis,
    start_sqs,
    tracker_available,
    wait_http,
    write_links,
)

TRACKER_PATCH = "capacity-tracker-patch.yaml"
WORKER_PATCH = "capacity-worker-patch.yaml"
WORKER_CLICKS_QUEUE = "hpa-tune-clicks"
WORKER_CONVERSIONS_QUEUE = "hpa-tune-conversions"
# The tracker ships its buffer every ADCLICK_FLUSH_INTERVAL_MS (100 ms by default): one message per process and flush.
FLUSH_SECONDS = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- tracker


def busy() -> dict[str, float]:
    """Percent busy of every core over a second before a phase: other work on the machine lowers every figure."""
    return cpu_busy([str(c) for c in range(os.cpu_count() or 1)])


@dataclass
class Step:
    step: int
    users: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    requests: int
    failures: int
    error_rate: float | None
    seconds: int
    tracker_cpu_pct: float | None = None
    engine_p99_ms: float | None = None
    passed: bool = False
    window: tuple[float, float] = (0.0, 0.0)


@dataclass
class TrackerResult:
    steps: list[Step] = field(default_factory=list)
    capacity_rps: float | None = None
    capacity_step: int | None = None
    target_rps: int | None = None
    client_bound: bool | None = None
    cpu_ceiling_rps: float | None = None
    locust_processes: int = 1
    cpu_limit: str = ""
    busy_before: dict[str, float] = field(default_factory=dict)
    note: str = ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its descendants, from /proc."""
    total = 0
    for p in proc_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


class Sampler(threading.Thread):
    """Once a second: wall time, the server's CPU seconds and its /metrics, to lay over Locust's steps."""

    def __init__(self, pid: int, port: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.port, self.interval = pid, port, interval
        self.samples: list[tuple[float, float, dict[str, dict[str, float]]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            with contextlib.suppress(OSError, RuntimeError):
                self.samples.append((time.time(), cpu_seconds(self.pid), scrape(self.port)))
            self.done.wait(self.interval)

    def window(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(CPU % of one core, engine p99 in ms) between the samples nearest inside [start, end]."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2:
            return None, None
        (t0, c0, m0), (t1, c1, m1) = inside[0], inside[-1]
        q = histogram_quantile(m0, m1, 0.99)
        return 100 * (c1 - c0) / (t1 - t0), None if q is None else q * 1e3


def pod_cpu_limit(objects: list[dict[str, Any]], role: str) -> float | None:
    """The CPU limit (in cores) of the role's Deployment in the overlay, if it sets one."""
    for obj in objects:
        if obj.get("kind") == "Deployment" and role in _name(obj):
            for container in obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                limit = str(container.get("resources", {}).get("limits", {}).get("cpu", ""))
                if limit:
                    return float(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
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


def default_locust_processes(client_cpu: str | None) -> int:
    """One Locust process per core left to the client (Locust's own client saturates long before the tracker)."""
    if client_cpu is None:
        return 1
    count = 0
    for part in client_cpu.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return max(1, count)


def run_locust(args: argparse.Namespace, port: int, out: Path, logs: Path) -> Path:
    """bench/locust_steps.py's StepShape of bench/locustfile.py's TrackerUser, headless, with CSV history; its
    per-step CSV."""
    prefix = out / "locust"
    cmd = [
        str(VENV_BIN / "locust"),
        "-f",
        f"{BENCH / 'locustfile.py'},{BENCH / 'locust_steps.py'}",  # the step load is opt in
        "--headless",
        "--only-summary",
        "--host",
        f"http://127.0.0.1:{port}",
        "--csv",
        str(prefix),
        "--csv-full-history",
        "--step-start-users",
        str(args.start_users),
        "--step-users",
        str(args.step_users),
        "--step-seconds",
        str(args.step_seconds),
        "--step-max-users",
        str(args.max_users),
        "--step-settle-seconds",
        str(args.settle_seconds),
        "--user-rps",
        str(args.user_rps),
        "--slugs",
        str(args.slugs),
        "--stop-timeout",
        "2",
    ]
    if args.locust_processes > 1:
        cmd += ["--processes", str(args.locust_processes)]
    cmd.append("TrackerUser")
    steps = (max(0, args.max_users - args.start_users) // args.step_users + 1) if args.step_users > 0 else 1
    budget = steps * args.step_seconds + 90
    proc = PROCS.start("locust", pinned(args.client_cpu, cmd), logs / "locust.log")
    try:
        proc.wait(budget)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"locust still running after {budget:.0f} s, see {logs / 'locust.log'}") from None
    finally:
        PROCS.stop(proc)
    steps_csv = Path(f"{prefix}_steps.csv")
    if proc.returncode not in (0, 1) or not steps_csv.exists():
        # Locust exits 1 when any request failed; that is a figure, not a crash.
        raise RuntimeError(f"locust exited with {proc.returncode} and no {steps_csv.name}; see {logs / 'locust.log'}")
    return steps_csv


def read_steps(path: Path) -> list[Step]:
    def num(v: str) -> float | None:
        return None if v in ("", "None") else float(v)

    steps = []
    with path.open() as f:
        for row in csv.DictReader(f):
            steps.append(
                Step(
                    step=int(row["step"]),
                    users=int(row["users"]),
                    rps=float(row["rps"]),
                    p50_ms=num(row["p50_ms"]),
                    p95_ms=num(row["p95_ms"]),
                    p99_ms=num(row["p99_ms"]),
                    requests=int(row["requests"]),
                    failures=int(row["failures"]),
                    error_rate=num(row["error_rate"]),
                    seconds=int(row["seconds"]),
                    window=(float(row["start"]), float(row["end"])),
                )
            )
    return steps


def run_loadgen_steps(args: argparse.Namespace, port: int, passed: Any) -> list[Step]:
    """The same steps as Locust's StepShape (users x user_rps), offered at a constant rate by bench/loadgen.

    For machines where Locust cannot load one tracker core: one Python process of Locust spends far more CPU per
    request than the tracker, so on a small machine its own queueing is what its p99 measures. loadgen sends on
    a fixed schedule and measures from when each request was due (no coordinated omission). Each step runs
    `settle_seconds` unmeasured, then the rest of the step measured; the ramp stops after the first step that
    fails the SLO, as nothing after it can be chosen.
    """
    binary = build_loadgen()
    if binary is None:
        raise RuntimeError("--generator=loadgen needs bench/loadgen, which needs cargo to build")
    steps: list[Step] = []
    users, n = args.start_users, 0
    while users <= args.max_users:
        rate = users * args.user_rps
        base = [binary, "--port", str(port), "--rate", f"{rate:g}", "--connections", str(args.connections)]
        base += ["--slugs", str(args.slugs)]
        subprocess.run(pinned(args.client_cpu, [*base, "--seconds", f"{args.settle_seconds:g}"]), capture_output=True)
        measured = args.step_seconds - args.settle_seconds
        start = time.time()
        out = subprocess.run(
            pinned(args.client_cpu, [*base, "--seconds", f"{measured:g}"]), capture_output=True, text=True
        )
        end = time.time()
        if out.returncode != 0:
            raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr.strip()[-300:]}")
        r = json.loads(out.stdout)
        failures = int(r["errors"]) + int(r["other_status"])
        requests = int(r["responses"]) + int(r["errors"])
        step = Step(
            step=n,
            users=users,
            rps=float(r["achieved_rps"]),
            p50_ms=float(r["p50_ms"]),
            p95_ms=float(r["p95_ms"]),
            p99_ms=float(r["p99_ms"]),
            requests=requests,
            failures=failures,
            error_rate=failures / requests if requests else None,
            seconds=round(measured),
            window=(start, end),
        )
        steps.append(step)
        print(
            f"  step {n}: {rate:,.0f} req/s offered, {step.rps:,.0f} answered, p50 {step.p50_ms:.2f} ms, "
            f"p99 {step.p99_ms:.2f} ms, {failures} errors"
        )
        if not passed(step):
            break
        users += args.step_users
        n += 1
    return steps


def choose(steps: list[Any], rate: str, passed: Any) -> Any | None:
    """The step with the highest `rate` among the steps before the first one that fails `passed`."""
    for s in steps:
        s.passed = bool(passed(s))
    best = None
    for s in steps:
        if not s.passed:
            break
        if best is None or getattr(s, rate) > getattr(best, rate):
            best = s
    return best


def tune_tracker(args: argparse.Namespace, env: dict[str, str], out: Path, logs: Path) -> TrackerResult:
    res = TrackerResult(locust_processes=args.locust_processes, busy_before=busy())
    why = tracker_available()
    if why:
        raise RuntimeError(f"the tracker cannot run: {why}")
    port = free_port()

    def within_slo(s: Step) -> bool:
        return s.p99_ms is not None and s.p99_ms <= args.slo_ms and (s.error_rate or 0.0) < args.max_error_rate

    cmd = [str(VENV_BIN / "adclick"), "tracker", "--host", "127.0.0.1", "--port", str(port), "--processes", "1"]
    cmd += ["--workers", "1"]
    proc = PROCS.start("tracker", pinned(args.tracker_cpu, cmd), logs / "tracker.log", env=env)
    group = limit_cpu(proc.pid, args.tracker_cpu_limit) if args.tracker_cpu_limit < 1 else None
    res.cpu_limit = f"{args.tracker_cpu_limit:g} core" + (" (CFS quota)" if group else "")
    try:
        wait_http(port, "/health", proc)
        status, headers, _ = http_get(port, "/c/bench-1?sub1=hpa-tune")
        if status != 302:
            raise RuntimeError(f"GET /c/bench-1 answered {status}, not 302; see {logs / 'tracker.log'}")
        print(f"  tracker on 127.0.0.1:{port} (core {args.tracker_cpu}); /c/bench-1 -> 302 {headers.get('location')}")
        sampler = Sampler(proc.pid, port)
        sampler.start()
        print(
            f"  {args.generator}: {args.start_users} users + {args.step_users} every {args.step_seconds:g} s up to "
            f"{args.max_users}, {args.user_rps:g} req/s each, "
            + (
                f"{args.locust_processes} process(es)"
                if args.generator == "locust"
                else f"{args.connections} connections"
            )
            + f" on core(s) {args.client_cpu}"
        )
        try:
            if args.generator == "locust":
                res.steps = read_steps(run_locust(args, port, out, logs))
            else:
                res.steps = run_loadgen_steps(args, port, within_slo)
        finally:
            sampler.done.set()
            sampler.join(5)
        if proc.poll() is not None:
            raise RuntimeError(f"the tracker exited with {proc.returncode} during the load")
    finally:
        PROCS.stop(proc, grace=15.0)
        release_cpu(group)
    for s in res.steps:
        s.tracker_cpu_pct, s.engine_p99_ms = sampler.window(*s.window)
    best = choose(res.steps, "rps", within_slo)
    if best is None:
        res.note = "no step kept p99 within the SLO with errors under the limit: no target written"
        return res
    res.capacity_rps, res.capacity_step = best.rps, best.step
    res.target_rps = max(1, math.floor(args.fraction * best.rps))
    if best.tracker_cpu_pct:
        res.cpu_ceiling_rps = best.rps * 100 / best.tracker_cpu_pct
        # Locust runs out of client CPU long before the tracker; loadgen holds its rate, so there the step that
        # failed failed on the tracker's (and the machine's) latency, not on the client.
        res.client_bound = best.tracker_cpu_pct < 85 if args.generator == "locust" else False
    return res


# ---------------------------------------------------------------- worker


@dataclass
class WorkerStep:
    fraction: float
    offered: float
    processed: float
    max_age_s: float | None
    backlog: int | None
    seconds: float
    passed: bool = False


@dataclass
class WorkerResult:
    database: str = ""
    events_per_message: int = 0
    drain_rate: float | None = None
    drain_messages: int = 0
    steps: list[WorkerStep] = field(default_factory=list)
    capacity: float | None = None
    queue_length: int | None = None
    cpu_limit: str = ""
    busy_before: dict[str, float] = field(default_factory=dict)
    note: str = ""


class ClickMessages:
    """Fresh `c1:` bodies of `per_message` click events each, over the seeded links, with genuine ClickIDs."""

    def __init__(self, per_message: int, links: list[tuple[int, int, int]]) -> None:
        from adclick.worker.messages import pack_clicks
        from worker.workerkit import T0, UA_A, UA_B, click_event

        self.per_message, self.links, self.next = per_message, links, 0
        self._event, self._pack, self._t0, self._uas = click_event, pack_clicks, T0, (UA_A, UA_B)

    def event(self, n: int) -> dict[str, Any]:
        link_id, offer_id, affiliate_id = self.links[n % len(self.links)]
        # Spread over visitors, countries and hours, so unique-click keys and rollup rows vary as in production.
        return self._event(
            link_id,
            self._t0 + n * 7,
            offer_id=offer_id,
            affiliate_id=affiliate_id,
            ip=f"10.{n % 251}.{(n // 251) % 251}.{n % 7}",
            ua=self._uas[n % 2],
            country=("US", "BR", "DE", "IN", "GB", None)[n % 6],
            device=("smartphone", "desktop", "tablet")[n % 3],
            bot=n % 50 == 0,
        )

    def take(self, count: int) -> list[str]:
        bodies = []
        for _ in range(count):
            bodies.append(self._pack([self.event(n) for n in range(self.next, self.next + self.per_message)]))
            self.next += self.per_message
        return bodies


def sqs_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "sqs", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    )


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


def make_database(args: argparse.Namespace, work: Path) -> tuple[str, Any, list[tuple[int, int, int]]]:
    """(URL, closer, links as (id, offer, affiliate)) of a fresh database, migrated, with an offer and its links."""
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


async def seed_links(url: str) -> list[tuple[int, int, int]]:
    from adclick.core.db.session import create_engine, session_factory
    from worker.workerkit import seed

    engine = create_engine(url)
    try:
        setups = await seed(session_factory(engine), affiliates=20)
    finally:
        await engine.dispose()
    return [(s.link_id, s.offer_id, s.affiliate_id) for s in setups]


def tune_worker(
    args: argparse.Namespace, env: dict[str, str], sqs_endpoint: str, per_message: int, logs: Path
) -> WorkerResult:
    res = WorkerResult(database=args.database, events_per_message=per_message, busy_before=busy())
    work = Path(tempfile.mkdtemp(prefix="adclick-hpa-tune-"))
    url, close_db, links = make_database(args, work)
    health = free_port()
    wenv = {
        **env,
        "ADCLICK_DATABASE_URL": url,
        "ADCLICK_CLICKS_QUEUE": WORKER_CLICKS_QUEUE,
        "ADCLICK_CONVERSIONS_QUEUE": WORKER_CONVERSIONS_QUEUE,
        "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1",
        "ADCLICK_WORKER_HEALTH_PORT": str(health),
        "ADCLICK_WORKER_WAIT_SECONDS": "1",
        "ADCLICK_LOG_LEVEL": "WARNING",
    }
    cmd = [str(VENV_BIN / "adclick"), "worker", "--concurrency", str(args.worker_concurrency)]
    proc = PROCS.start("worker", pinned(args.tracker_cpu, cmd), logs / "worker.log", env=wenv)
    # The pod's CPU limit may be below the one core it is pinned to: hold it there as the kubelet would.
    group = limit_cpu(proc.pid, args.worker_cpu_limit) if args.worker_cpu_limit < 1 else None
    res.cpu_limit = f"{args.worker_cpu_limit:g} core" + (
        " (CFS quota)" if group else " (not enforced: no writable cgroup)" if args.worker_cpu_limit < 1 else ""
    )
    client = sqs_client(sqs_endpoint)
    messages = ClickMessages(per_message, links)
    try:
        wait_http(health, "/health", proc, timeout=60)
        queue_url = client.get_queue_url(QueueName=WORKER_CLICKS_QUEUE)["QueueUrl"]
        counter = "adclick_worker_messages_total"

        def processed() -> float:
            return worker_metric(scrape(health), counter, WORKER_CLICKS_QUEUE)

        # Drain: a backlog handed over at once; the worker's best rate sets the scale of the steps.
        count = max(10, math.ceil(args.worker_drain_events / per_message))
        bodies = messages.take(count)
        base = processed()
        started = time.monotonic()
        send(client, queue_url, bodies)
        deadline = started + args.worker_timeout
        while processed() - base < count:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not drain {count} messages; see {logs / 'worker.log'}")
            time.sleep(0.05)
        res.drain_messages, res.drain_rate = count, count / (time.monotonic() - started)
        print(f"  drain: {count} messages of {per_message} clicks in {count / res.drain_rate:.1f} s")

        for fraction in args.worker_fractions:
            step = run_worker_step(args, client, queue_url, messages, fraction * res.drain_rate, health, proc)
            step.fraction = fraction
            res.steps.append(step)
            print(
                f"  {fraction:.0%} of drain: offered {step.offered:.1f}/s, processed {step.processed:.1f}/s, oldest "
                f"message {step.max_age_s if step.max_age_s is not None else '-'} s, backlog {step.backlog}"
            )
            if step.processed < 0.9 * step.offered or (step.max_age_s or 0) > args.max_age_seconds:
                break
    finally:
        PROCS.stop(proc, grace=20.0)
        release_cpu(group)
        if close_db is not None:
            close_db()
        shutil.rmtree(work, ignore_errors=True)
    best = choose(
        res.steps,
        "processed",
        lambda s: s.processed >= 0.9 * s.offered and (s.max_age_s or 0.0) <= args.max_age_seconds,
    )
    if best is None:
        res.note = "the worker kept up with no step: no target written"
        return res
    res.capacity = best.processed
    res.queue_length = max(1, math.floor(args.fraction * best.processed * args.max_age_seconds))
    return res


def run_worker_step(
    args: argparse.Namespace,
    client: Any,
    queue_url: str,
    messages: ClickMessages,
    rate: float,
    health: int,
    proc: subprocess.Popen[bytes],
) -> WorkerStep:
    """Offer `rate` messages a second for a step: what the worker took off the queue, the oldest message it saw."""
    seconds = args.worker_step_seconds
    batch = max(1, min(10, math.floor(rate)))  # one SendMessageBatch per tick, like the tracker's flushes
    interval = batch / rate
    waiting = backlog(client, queue_url)
    start = time.monotonic()
    settle_at = start + min(args.settle_seconds, seconds / 2)
    sent, ages = 0, []
    next_send = start
    while (now := time.monotonic()) < start + seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with {proc.returncode}")
        if now >= next_send:
            send(client, queue_url, messages.take(batch))
            sent += batch
            next_send += interval
        if now >= settle_at:
            ages.append(worker_metric(scrape(health), "adclick_worker_oldest_message_age_seconds"))
        time.sleep(max(0.0, min(next_send - time.monotonic(), 0.25)))
    end = time.monotonic()
    left = backlog(client, queue_url)
    return WorkerStep(
        fraction=0.0,
        offered=sent / (end - start),
        # What the worker took off the queue: what was sent, less what the backlog grew by (in flight included).
        processed=(sent - (left - waiting)) / (end - start),
        max_age_s=round(max(ages), 2) if ages else None,
        backlog=left,
        seconds=round(end - start, 1),
    )


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


def locate_tracker_hpa(objects: list[dict[str, Any]]) -> Target:
    hpas = [o for o in objects if o.get("kind") == "HorizontalPodAutoscaler"]
    hpa = next((h for h in hpas if "tracker" in _names(h)), None)
    if hpa is None:
        raise RuntimeError(f"no tracker HorizontalPodAutoscaler in the overlay (found {[_name(h) for h in hpas]})")
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
    raise RuntimeError(f"HorizontalPodAutoscaler {_name(hpa)} has no Pods metric to set")


def locate_worker_trigger(objects: list[dict[str, Any]]) -> Target:
    scaled = [o for o in objects if o.get("kind") == "ScaledObject"]
    obj = next((s for s in scaled if "worker" in _names(s)), None)
    if obj is None:
        raise RuntimeError(f"no worker ScaledObject in the overlay (found {[_name(s) for s in scaled]})")
    triggers = [
        (i, t) for i, t in enumerate(obj.get("spec", {}).get("triggers", [])) if t.get("type") == "aws-sqs-queue"
    ]
    if not triggers:
        raise RuntimeError(f"ScaledObject {_name(obj)} has no aws-sqs-queue trigger")
    # The measured messages are click messages: prefer the trigger on the clicks queue when there are several.
    i, trigger = next(((i, t) for i, t in triggers if "click" in json.dumps(t.get("metadata", {}))), triggers[0])
    # Guard on the trigger's name when it has one: two queue triggers share the type.
    guard = ("name", trigger["name"]) if trigger.get("name") else ("type", "aws-sqs-queue")
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


def patch_text(target: Target, value: int, why: list[str]) -> str:
    comment = "".join(f"# {line}\n" for line in why)
    ops = [
        {"op": "test", "path": target.guard_path, "value": target.guard_value},
        {"op": "replace", "path": target.path, "value": str(value)},
    ]
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
        indent, at = "  ", len(lines)
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


def write_overlay(
    args: argparse.Namespace, tracker: TrackerResult | None, worker: WorkerResult | None, report: Path
) -> list[str]:
    """Write the patches that have a measured value and list them in the overlay; what was written, for the report."""
    overlay = args.overlay
    kfile = overlay / "kustomization.yaml"
    if not kfile.exists():
        raise RuntimeError(f"{kfile} not found: nothing to patch")
    objects = render(overlay)
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    try:
        shown = report.relative_to(ROOT)
    except ValueError:
        shown = report
    written, entries = [], []
    if tracker is not None and tracker.target_rps is not None:
        t = locate_tracker_hpa(objects)
        bound = " (the load generator, not the tracker, ran out first: a lower bound)" if tracker.client_bound else ""
        why = [
            f"Written by `make hpa-tune` ({when}); the run: {shown}",
            f"One tracker process on one core kept p99 <= {args.slo_ms:g} ms with errors < {args.max_error_rate:.1%}",
            f"up to {tracker.capacity_rps:,.0f} req/s{bound};",
            f"target per pod = {args.fraction:.0%} of that = {tracker.target_rps} req/s ({t.guard_value}).",
        ]
        (overlay / TRACKER_PATCH).write_text(patch_text(t, tracker.target_rps, why))
        entries.append((TRACKER_PATCH, t))
        written.append(f"{overlay / TRACKER_PATCH}: {t.kind}/{t.name} {t.path} {t.current} -> {tracker.target_rps}")
    if worker is not None and worker.queue_length is not None:
        t = locate_worker_trigger(objects)
        why = [
            f"Written by `make hpa-tune` ({when}); the run: {shown}",
            f"One worker process ({worker.cpu_limit}) kept up with {worker.capacity:.1f} click messages/s",
            f"({worker.events_per_message} clicks each, {worker.database}) with the oldest message under "
            f"{args.max_age_seconds:g} s;",
            f"queueLength = {args.fraction:.0%} of {worker.capacity:.1f}/s x {args.max_age_seconds:g} s = "
            f"{worker.queue_length} messages per replica.",
        ]
        (overlay / WORKER_PATCH).write_text(patch_text(t, worker.queue_length, why))
        entries.append((WORKER_PATCH, t))
        written.append(f"{overlay / WORKER_PATCH}: {t.kind}/{t.name} {t.path} {t.current} -> {worker.queue_length}")
    if entries and add_to_kustomization(kfile, entries):
        written.append(f"{kfile}: added {', '.join(f for f, _ in entries)} to patches")
    if entries and shutil.which("kubectl"):
        render(overlay)  # the test operations and paths hold, or this raises
    return written


# ---------------------------------------------------------------- report


def busy_note(before: dict[str, float]) -> list[str]:
    if not any(v > 10 for v in before.values()):
        return []
    cores = ", ".join(f"core {c} {v:.0f}%" for c, v in before.items())
    return [f"**The machine was busy before this phase** ({cores}): other work lowers every figure here.", ""]


def fmt(v: float | None, unit: str = "", digits: int = 2) -> str:
    return "-" if v is None else f"{v:,.{digits}f}{unit}"


def write_report(
    args: argparse.Namespace,
    out: Path,
    tracker: TrackerResult | None,
    worker: WorkerResult | None,
    written: list[str],
) -> Path:
    lines = [f"# adclick capacity, {dt.datetime.now():%Y-%m-%d %H:%M}", ""]
    cpu = next((ln.split(":", 1)[1].strip() for ln in _cpuinfo() if ln.startswith("model name")), "?")
    lines += [f"{cpu}, {os.cpu_count()} cores. SLO: p99 <= {args.slo_ms:g} ms, errors < {args.max_error_rate:.1%}; "
              f"targets at {args.fraction:.0%} of the measured capacity.", ""]  # fmt: skip
    if tracker is not None:
        lines += [
            "## Tracker: one process, one core",
            "",
            f"`adclick tracker --processes 1 --workers 1` pinned to core {args.tracker_cpu}, CPU limit "
            f"{tracker.cpu_limit}; "
            + (
                f"Locust (bench/locustfile.py, `TrackerUser`, {args.user_rps:g} req/s per user) with "
                f"{tracker.locust_processes} process(es)"
                if args.generator == "locust"
                else f"bench/loadgen at a constant rate of users x {args.user_rps:g} req/s over {args.connections} "
                "keep-alive connections (latency measured from when each request was due), bench/clicks' slugs"
            )
            + f" on core(s) {args.client_cpu}, as are Redis and the SQS endpoint. Each row covers a step's "
            f"last {args.step_seconds - args.settle_seconds:g} s; latencies are the load generator's, measured at "
            "the client. Engine p99 is the tracker's own `adclick_click_seconds` (inside the Rust engine, no HTTP).",
            "",
            *busy_note(tracker.busy_before),
            "| step | users | RPS | p50 | p95 | p99 | errors | tracker CPU | engine p99 | within SLO |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s in tracker.steps:
            err = "-" if s.error_rate is None else f"{s.failures} ({s.error_rate:.2%})"
            lines.append(
                f"| {s.step} | {s.users} | {s.rps:,.0f} | {fmt(s.p50_ms, ' ms')} | {fmt(s.p95_ms, ' ms')} | "
                f"{fmt(s.p99_ms, ' ms')} | {err} | {fmt(s.tracker_cpu_pct, '%', 0)} | {fmt(s.engine_p99_ms, ' ms', 3)} "
                f"| {'yes' if s.passed else 'no'} |"
            )
        lines.append("")
        if tracker.capacity_rps is None:
            lines.append(f"**No capacity**: {tracker.note}.")
        else:
            lines.append(
                f"**Capacity: {tracker.capacity_rps:,.0f} req/s** (step {tracker.capacity_step}); "
                f"**HPA target: {tracker.target_rps:,} req/s per pod** ({args.fraction:.0%})."
            )
        if args.generator == "loadgen":
            about = (
                "The load came from bench/loadgen because Locust could not load one tracker core from the client "
                "cores here (`make hpa-tune HPA_ARGS=--generator=loadgen`). Its p99 still includes the machine's "
                "own loopback and scheduling delay: compare it with `bench/compare.py`'s nginx floor at the same rate."
            )
        else:
            about = (
                "Locust's client saturates long before the tracker: Python and gevent spend far more CPU per request "
                f"than the tracker's Rust path does, and here Locust has {tracker.locust_processes} process(es) on "
                f"core(s) {args.client_cpu}, shared with Redis and the SQS endpoint. Where the tracker's core is far "
                "from busy at the chosen step, the figure is the load generator's ceiling and a lower bound for the "
                "tracker: the target it sets is safe, not tight. Run Locust with more worker processes "
                "(`--locust-processes`, on cores away from the tracker's), or distributed (README, Load tests), to "
                "push further; or use `--generator=loadgen`."
            )
        lines += ["", about]
        if tracker.cpu_ceiling_rps is not None:
            busy = next((s.tracker_cpu_pct for s in tracker.steps if s.step == tracker.capacity_step), None)
            lines += [
                "",
                f"At the chosen step the tracker's core was {fmt(busy, '%', 0)} busy"
                + (" (client-bound)" if tracker.client_bound else "")
                + f"; scaled to a full core that is about {tracker.cpu_ceiling_rps:,.0f} req/s, a rough ceiling "
                "(not used for the target: latency near a full core is not measured here).",
            ]
        lines.append("")
    if worker is not None:
        lines += [
            "## Worker: one process, one pod's CPU",
            "",
            f"`adclick worker --concurrency {args.worker_concurrency}` pinned to core {args.tracker_cpu}, CPU limit "
            f"{worker.cpu_limit}, on "
            f"{worker.database}; click messages of {worker.events_per_message} events (what one tracker process "
            f"packs per {FLUSH_SECONDS * 1000:.0f} ms flush at the tracker's target rate). Drain of "
            f"{worker.drain_messages} queued messages: {fmt(worker.drain_rate, ' messages/s', 1)}. Then each step "
            f"offers a share of that rate for {args.worker_step_seconds:g} s; the oldest-message age is the worker's "
            "`adclick_worker_oldest_message_age_seconds`.",
            "",
            *busy_note(worker.busy_before),
            "| share of drain | offered msg/s | processed msg/s | oldest message | backlog at end | kept up |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for w in worker.steps:
            lines.append(
                f"| {w.fraction:.0%} | {w.offered:.1f} | {w.processed:.1f} | {fmt(w.max_age_s, ' s', 1)} | "
                f"{w.backlog} | {'yes' if w.passed else 'no'} |"
            )
        lines.append("")
        if worker.capacity is None:
            lines.append(f"**No capacity**: {worker.note}.")
        else:
            lines.append(
                f"**Capacity: {worker.capacity:.1f} messages/s** ({worker.capacity * worker.events_per_message:,.0f} "
                f"clicks/s); **KEDA queueLength: {worker.queue_length}** = {args.fraction:.0%} x capacity x "
                f"{args.max_age_seconds:g} s: KEDA runs backlog / queueLength replicas, so each replica's share of "
                f"the backlog is gone within about {args.max_age_seconds:g} s."
            )
        lines.append("")
    lines += ["## Written", ""] + ([f"- {w}" for w in written] or ["- nothing (--no-write, or no target)"]) + [""]
    lines += ["![RPS against latency](chart.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def _cpuinfo() -> list[str]:
    with contextlib.suppress(OSError):
        return Path("/proc/cpuinfo").read_text().splitlines()
    return []


def write_chart(
    args: argparse.Namespace, out: Path, tracker: TrackerResult | None, worker: WorkerResult | None
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in (tracker, worker) if p is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.8), squeeze=False)
    col = 0
    if tracker is not None:
        ax = axes[0][col]
        col += 1
        pts = [s for s in tracker.steps if s.p99_ms is not None]
        ax.plot([s.rps for s in pts], [s.p50_ms for s in pts], "o-", label="p50")
        ax.plot([s.rps for s in pts], [s.p99_ms for s in pts], "s-", label="p99")
        ax.axhline(args.slo_ms, color="grey", linestyle=":", label=f"SLO {args.slo_ms:g} ms")
        if tracker.capacity_rps is not None:
            ax.axvline(tracker.capacity_rps, color="tab:green", linestyle="--", label="capacity")
        if tracker.target_rps is not None:
            ax.axvline(tracker.target_rps, color="tab:red", label=f"HPA target {tracker.target_rps:,}/s")
        ax.set_xlabel("requests per second (one tracker process)")
        ax.set_ylabel("latency at the client (ms)")
        ax.set_title("tracker: RPS against p50 and p99")
        ax.legend()
        ax.grid(alpha=0.3)
    if worker is not None:
        ax = axes[0][col]
        ax.plot([w.offered for w in worker.steps], [w.processed for w in worker.steps], "o-", label="processed")
        ax.plot(
            [w.offered for w in worker.steps], [w.offered for w in worker.steps], ":", color="grey", label="offered"
        )
        if worker.capacity is not None:
            ax.axhline(worker.capacity, color="tab:green", linestyle="--", label=f"capacity {worker.capacity:.1f}/s")
        ax.set_xlabel("click messages offered per second")
        ax.set_ylabel("messages processed per second (one worker)")
        title = "worker"
        if worker.queue_length is not None:
            title += f": KEDA queueLength {worker.queue_length}"
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "chart.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slo-ms", type=float, default=5.0, help="p99 objective in ms (default 5)")
    p.add_argument("--max-error-rate", type=float, default=0.001, help="errors allowed per request (default 0.001)")
    p.add_argument("--fraction", type=float, default=0.7, help="share of the capacity to target (default 0.7)")
    p.add_argument("--start-users", type=int, default=10, help="Locust users in the first step (default 10)")
    p.add_argument("--step-users", type=int, default=10, help="users added per step (default 10)")
    p.add_argument("--step-seconds", type=float, default=20.0, help="length of a step (default 20)")
    p.add_argument("--max-users", type=int, default=120, help="users in the last step (default 120)")
    p.add_argument("--settle-seconds", type=float, default=5.0, help="start of each step left out (default 5)")
    p.add_argument("--user-rps", type=float, default=50.0, help="requests per second per user (default 50)")
    p.add_argument("--slugs", type=int, default=64, help="bench links to spread clicks over (default 64)")
    p.add_argument(
        "--generator",
        choices=("locust", "loadgen"),
        default="locust",
        help="tracker load: bench/locustfile.py, or bench/loadgen at the same step rates where Locust cannot load "
        "one tracker core from the client cores (default locust)",
    )
    p.add_argument("--connections", type=int, default=64, help="loadgen's keep-alive connections (default 64)")
    p.add_argument("--locust-processes", type=int, help="Locust worker processes (default: one per client core)")
    p.add_argument("--tracker-cpu", default="1", help="the pod's core: tracker and worker run here (default 1)")
    p.add_argument("--client-cpu", default="0", help="cores for Locust, Redis, SQS, PostgreSQL (default 0)")
    p.add_argument("--tracker-cpu-limit", type=float, help="tracker pod's CPU limit (default: from the overlay)")
    p.add_argument("--worker-cpu-limit", type=float, help="worker pod's CPU limit (default: from the overlay)")
    p.add_argument("--max-age-seconds", type=float, default=60.0, help="bound on the oldest message's age (60)")
    p.add_argument(
        "--events-per-message",
        type=int,
        default=0,
        help="clicks per SQS message (default: what one tracker packs per flush at its target rate)",
    )
    p.add_argument("--worker-drain-events", type=int, default=30_000, help="clicks queued for the drain (30,000)")
    p.add_argument("--worker-fractions", default="0.5,0.75,0.9,1.1", help="step rates as shares of the drain rate")
    p.add_argument("--worker-step-seconds", type=float, default=20.0, help="length of a worker step (default 20)")
    p.add_argument("--worker-concurrency", type=int, default=2, help="adclick worker --concurrency (default 2)")
    p.add_argument("--worker-timeout", type=float, default=300.0, help="give up on the drain after this (300 s)")
    p.add_argument("--database", choices=("postgres", "sqlite"), default="postgres", help="worker's database")
    p.add_argument("--skip-tracker", action="store_true", help="measure the worker only")
    p.add_argument("--skip-worker", action="store_true", help="measure the tracker only")
    p.add_argument("--overlay", type=Path, default=ROOT / "k8s" / "overlays" / "prod", help="kustomize overlay")
    p.add_argument("--no-write", action="store_true", help="report only; leave the overlay alone")
    p.add_argument("--out", type=Path, help="report directory (default bench/results/hpa-<time>)")
    args = p.parse_args(argv)
    if not shutil.which("taskset"):
        print("warning: taskset not found (util-linux): nothing is pinned, figures are not one core's")
        args.tracker_cpu = args.client_cpu = None
    if args.locust_processes is None:
        args.locust_processes = default_locust_processes(args.client_cpu)
    args.worker_fractions = [float(x) for x in args.worker_fractions.split(",") if x.strip()]
    if args.step_seconds <= args.settle_seconds:
        p.error("--step-seconds must be longer than --settle-seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, raise_interrupt)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or BENCH / "results" / f"hpa-{stamp}"
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    objects: list[dict[str, Any]] = []
    with contextlib.suppress(RuntimeError, OSError, yaml.YAMLError):
        objects = render(args.overlay)
    for role in ("tracker", "worker"):
        if getattr(args, f"{role}_cpu_limit") is None:
            setattr(args, f"{role}_cpu_limit", min(1.0, pod_cpu_limit(objects, role) or 1.0))
    tracker = worker = None
    try:
        print("starting Redis and the SQS endpoint (moto) ...")
        redis_url = start_redis(args.client_cpu, logs)
        sqs = start_sqs(args.client_cpu, logs)
        write_links(redis_url, args.slugs)
        env = server_env(redis_url, sqs, ADCLICK_DRAIN_SECONDS="0.5")
        if not args.skip_tracker:
            print("\n== tracker")
            tracker = tune_tracker(args, env, out, logs)
            print(
                f"  capacity {fmt(tracker.capacity_rps, ' req/s', 0)}, target {tracker.target_rps or '-'} req/s"
                + (f" ({tracker.note})" if tracker.note else "")
            )
        if not args.skip_worker:
            print("\n== worker")
            per_message = args.events_per_message or (
                max(
                    1,
                    min(2000, round((tracker.target_rps if tracker and tracker.target_rps else 1000) * FLUSH_SECONDS)),
                )
            )
            worker = tune_worker(args, env, sqs, per_message, logs)
            print(
                f"  capacity {fmt(worker.capacity, ' messages/s', 1)}, queueLength {worker.queue_length or '-'}"
                + (f" ({worker.note})" if worker.note else "")
            )
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process this run started")
        return 130
    finally:
        PROCS.stop_all()

    report = out / "report.md"
    written = [] if args.no_write else write_overlay(args, tracker, worker, report)
    write_chart(args, out, tracker, worker)
    write_report(args, out, tracker, worker, written)
    data = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tracker": asdict(tracker) if tracker else None,
        "worker": asdict(worker) if worker else None,
        "written": written,
    }
    (out / "result.json").write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nreport: {report}\nchart:  {out / 'chart.png'}")
    for w in written:
        print(f"wrote:  {w}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
