"""The worker phase: one `adclick worker` process against a throwaway database, each queue drained and then
stepped at shares of its drain rate; capacity and KEDA queueLength."""

from __future__ import annotations

import argparse
import asyncio
import math
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import PROCS, VENV_BIN, free_port, pinned, scrape, sqs_client, wait_http
from trust import OK, classify, decide, snapshot, usage

from .machine import cpu_limit_text, limit_cpu, parse_cpus, release_cpu, wait_idle
from .messages import ClickMessages, ConversionMessages, backlog, send
from .postback import postback_env
from .steps import fmt, limits_of

WORKER_CLICKS_QUEUE = "hpa-tune-clicks"
WORKER_CONVERSIONS_QUEUE = "hpa-tune-conversions"


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
