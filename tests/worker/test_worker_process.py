"""`adclick worker` as a real process: health and metrics, SIGTERM, SIGKILL mid-backlog, the database going away."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from adclick.core.db.models import Click, Conversion, FailedJob
from adclick.worker.messages import pack_clicks
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from support.database import PostgresServer
from support.procs import wait_until
from support.roles import prometheus
from workerkit import (
    CODEC,
    HOUR_MS,
    T0,
    InProcessWorker,
    WorkerProc,
    click_event,
    click_ids,
    conversion_body,
    count,
    rollup_totals,
    seed,
    wait_for,
)

pytestmark = pytest.mark.anyio

D = Decimal


def backlog(link_id: int, messages: int, per_message: int, start: int = 0) -> tuple[list[str], list[list[str]]]:
    """Packed click messages, and the ClickIDs in each (distinct IPs: every click is unique)."""
    bodies, ids = [], []
    for m in range(messages):
        events = [
            click_event(link_id, T0 + (start + m) * per_message + i, ip=f"10.{m % 250}.{i // 250}.{i % 250}")
            for i in range(per_message)
        ]
        bodies.append(pack_clicks(events))
        ids.append([event["click_id"] for event in events])
    return bodies, ids


async def deleted(worker: WorkerProc, queue: str, at_least: int) -> bool:
    """Whether the worker process has committed and deleted that many messages (asked over /metrics, not the
    database: on SQLite a reader would queue behind the worker's write transactions)."""
    metrics = await asyncio.to_thread(prometheus, worker.port)
    return metrics.get(f'adclick_worker_messages_total{{queue="{queue}"}}', 0.0) >= at_least


async def stored_ids(engine: AsyncEngine) -> set[str]:
    return set(await click_ids(engine))


async def test_health_and_metrics(
    worker: InProcessWorker, db_engine: AsyncEngine, start_worker: Callable[..., WorkerProc]
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("1"))
    await worker.send("clicks", backlog(setup.link_id, 2, 10)[0])
    await worker.send("conversions", [conversion_body(CODEC.generate(setup.link_id, T0), "M-1")])
    proc = start_worker()
    proc.wait_healthy()
    await wait_for(lambda: worker.drained(), message="queues drained by the worker process")

    status, body = proc.get("/health") or (0, "")
    assert status == 200 and json.loads(body)["status"] == "ok"
    metrics = proc.metrics()
    assert metrics['adclick_worker_processed_total{kind="click"}'] == 20
    assert metrics['adclick_worker_processed_total{kind="conversion"}'] == 1
    assert metrics['adclick_worker_messages_total{queue="clicks"}'] == 2
    assert metrics['adclick_worker_batch_seconds_count{queue="conversions"}'] >= 1
    assert metrics['adclick_worker_oldest_message_age_seconds{queue="clicks"}'] >= 0
    assert proc.get("/nope") == (404, "404: Not Found")

    # A heartbeat older than the limit is a dead worker to the liveness probe.
    stale = start_worker(worker_heartbeat_stale_seconds="0.000001")
    wait_until(lambda: stale.get("/health") is not None, timeout=30, message="stale worker answers", proc=stale.proc)
    reply = stale.get("/health")
    assert reply is not None and reply[0] == 503


async def test_sigterm_finishes_the_batch_in_flight_and_exits_zero(
    worker: InProcessWorker, db_engine: AsyncEngine, start_worker: Callable[..., WorkerProc]
) -> None:
    (setup,) = await seed(worker.sessions)
    bodies, ids = backlog(setup.link_id, 120, 200)
    await worker.send("clicks", bodies)
    proc = start_worker(worker_concurrency=2)
    await wait_for(lambda: deleted(proc, "clicks", 1), within=60, message="the first click messages done")
    proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, 60) == 0, proc.proc.output()

    stored = await stored_ids(db_engine)
    complete = [message for message in ids if set(message) <= stored]
    untouched = [message for message in ids if not set(message) & stored]
    assert len(complete) + len(untouched) == len(ids)  # no message half stored
    assert 0 < len(complete) < len(ids)
    # Everything it took was finished and deleted; everything else is still there for the next worker.
    assert await worker.queue_counts("clicks") == (len(untouched), 0)
    assert (await rollup_totals(db_engine))["clicks"] == len(stored)
    assert "worker stopped" in proc.proc.output()


async def test_sigkill_mid_backlog_then_restart_stores_everything_once(
    worker: InProcessWorker, db_engine: AsyncEngine, start_worker: Callable[..., WorkerProc]
) -> None:
    one, two = await seed(worker.sessions, affiliates=2, payout_amount=D("2"), revenue_amount=D("3"), daily_cap=25)
    bodies, ids = backlog(one.link_id, 250, 200)
    day = T0 + HOUR_MS
    postbacks = [
        conversion_body(CODEC.generate(link, T0), f"K-{link}-{i}", received_at=day + i)
        for i in range(20)
        for link in (one.link_id, two.link_id)
    ]
    await worker.send("clicks", bodies)
    await worker.send("conversions", postbacks)
    settings: dict[str, Any] = {"worker_concurrency": 2, "worker_visibility_timeout": 5}
    first = start_worker(**settings)

    await wait_for(lambda: deleted(first, "clicks", 10), within=90, message="part of the backlog stored")
    first.proc.kill()  # SIGKILL: no chance to finish anything
    assert first.proc.returncode == -signal.SIGKILL
    assert len(await stored_ids(db_engine)) < 250 * 200

    start_worker(**settings)
    await wait_for(lambda: worker.drained(), within=180, message="the backlog drained after the restart")

    every = {click_id for message in ids for click_id in message}
    assert await stored_ids(db_engine) == every
    totals = await rollup_totals(db_engine)
    assert (totals["clicks"], totals["unique_clicks"]) == (len(every), len(every))
    assert await count(db_engine, Click, Click.unique.is_(True)) == len(every)
    stored = await worker_conversions(db_engine)
    assert len(stored) == 40
    paid = [c for c in stored if c[1] != "capped"]
    assert len(paid) == 25  # the daily cap, exactly, even across the kill
    assert (totals["conversions"], totals["payout"], totals["revenue"]) == (25, D("50"), D("75"))
    assert await count(db_engine, FailedJob) == 0


async def worker_conversions(engine: AsyncEngine) -> list[tuple[str, str]]:
    async with engine.connect() as connection:
        return [tuple(row) for row in (await connection.execute(select(Conversion.txid, Conversion.status))).all()]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_database_down_for_ten_seconds_under_load_loses_nothing(
    worker: InProcessWorker,
    db_engine: AsyncEngine,
    start_worker: Callable[..., WorkerProc],
    postgres_server: PostgresServer,
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("2"))
    proc = start_worker(worker_concurrency=2, sqs_max_receives=3)
    proc.wait_healthy()
    sent: list[list[str]] = []
    postbacks = 0
    stop_load = asyncio.Event()

    async def load() -> None:
        nonlocal postbacks
        n = 0
        while not stop_load.is_set():
            bodies, ids = backlog(setup.link_id, 2, 50, start=n)
            await worker.send("clicks", bodies)
            await worker.send("conversions", [conversion_body(CODEC.generate(setup.link_id, T0), f"L-{n}")])
            sent.extend(ids)
            postbacks += 1
            n += 2
            await asyncio.sleep(0.1)

    loader = asyncio.create_task(load())
    await wait_for(lambda: count(db_engine, Click), message="clicks flowing")
    await db_engine.dispose()
    await asyncio.to_thread(postgres_server.stop)
    await asyncio.sleep(10)  # the outage itself, not a measurement
    health = proc.get("/health")
    assert health is not None and health[0] == 200  # liveness does not depend on the database
    await asyncio.to_thread(postgres_server.start)  # its readiness probe runs an event loop of its own
    stop_load.set()
    await loader

    await wait_for(lambda: worker.drained(), within=120, message="the backlog drained after the database came back")
    assert proc.proc.alive(), proc.proc.output()
    every = {click_id for message in sent for click_id in message}
    assert await stored_ids(db_engine) == every
    assert (await rollup_totals(db_engine))["clicks"] == len(every)
    assert await count(db_engine, Conversion) == postbacks
    assert await count(db_engine, FailedJob) == 0
    assert await worker.queue_counts("clicks-dlq") == (0, 0)
    assert await worker.queue_counts("conversions-dlq") == (0, 0)
    assert proc.metrics()['adclick_worker_batch_retries_total{queue="clicks"}'] > 0
