"""Clicks from the queue into the database: idempotent inserts, the unique flag, rollups, bad messages."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from adclick.core.db.models import Click, HourlyRollup
from adclick.core.db.session import session_factory
from adclick.worker.clicks import first_in_window, store_clicks
from adclick.worker.messages import decode_clicks, pack_clicks
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from support.rollups import projection_mismatches
from support.servers import RedisServer
from workerkit import (
    HOUR_MS,
    T0,
    UA_B,
    InProcessWorker,
    click_event,
    click_ids,
    count,
    failed_jobs,
    metric,
    packed,
    rollup_totals,
    seed,
    totals_of,
    wait_for,
)

pytestmark = pytest.mark.anyio


async def test_same_message_three_times_stores_each_click_once(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(worker.sessions)
    events = [click_event(setup.link_id, T0 + i, ip=f"198.51.100.{i % 7}") for i in range(300)]
    bodies = packed(events, per_message=100)
    await worker.send("clicks", bodies * 3)  # three deliveries of every message, as at-least-once allows
    await worker.run_until_drained("clicks")

    assert await click_ids(db_engine) == sorted(event["click_id"] for event in events)
    totals = await rollup_totals(db_engine)
    assert totals["clicks"] == 300
    assert totals["unique_clicks"] == 7  # seven IPs, one link, one User-Agent
    assert await count(db_engine, Click, Click.unique.is_(True)) == 7
    assert metric(worker.metrics, "adclick_worker_processed_total", kind="click") == 300
    assert metric(worker.metrics, "adclick_worker_processed_total", kind="duplicate_click") == 600

    # And once more, later: still nothing new.
    await worker.send("clicks", bodies)
    await worker.run_until_drained("clicks")
    assert await rollup_totals(db_engine) == totals
    assert await count(db_engine, Click) == 300


async def test_unique_flag_per_link_ip_and_user_agent(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    one, two = await seed(worker.sessions, affiliates=2)
    events = [
        click_event(one.link_id, T0, click_id=None),  # first: unique
        click_event(one.link_id, T0 + 1),  # same link, IP, UA: repeat
        click_event(one.link_id, T0 + 2, ua=UA_B),  # other UA: unique
        click_event(one.link_id, T0 + 3, ip="192.0.2.1"),  # other IP: unique
        click_event(two.link_id, T0 + 4),  # other link: unique
        click_event(one.link_id, T0 + 5, ip="192.0.2.77", bot=True),  # bots are never unique
    ]
    await worker.send("clicks", [pack_clicks(events)])
    await worker.run_until_drained("clicks")

    async with db_engine.connect() as connection:
        flags = dict((await connection.execute(select(Click.click_id, Click.unique))).all())
    assert [flags[event["click_id"]] for event in events] == [True, False, True, True, True, False]
    assert await totals_of(db_engine, "clicks", "unique_clicks", "bot_clicks") == (5, 4, 1)  # a bot is no click


async def test_rollups_split_by_hour_link_country_and_device(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(worker.sessions)
    events = [
        click_event(setup.link_id, T0, country="US", device="smartphone", ip="192.0.2.1"),
        click_event(setup.link_id, T0 + 10, country="US", device="smartphone", ip="192.0.2.2"),
        click_event(setup.link_id, T0 + 20, country="BR", device="desktop", ua=UA_B),
        click_event(setup.link_id, T0 + HOUR_MS, country=None, device="smartphone", ip="192.0.2.3"),
    ]
    await worker.send("clicks", [pack_clicks(events)])
    await worker.run_until_drained("clicks")

    async with db_engine.connect() as connection:
        rows = (
            await connection.execute(
                select(HourlyRollup.hour, HourlyRollup.country, HourlyRollup.device, HourlyRollup.clicks).order_by(
                    HourlyRollup.hour, HourlyRollup.country
                )
            )
        ).all()
    hour = datetime.fromtimestamp((T0 - T0 % HOUR_MS) / 1000, UTC)
    next_hour = datetime.fromtimestamp((T0 - T0 % HOUR_MS + HOUR_MS) / 1000, UTC)
    # CHAR(2) pads '' to '  ' on PostgreSQL.
    assert [(row.hour, row.country.strip(), row.device, row.clicks) for row in rows] == [
        (hour, "BR", "desktop", 1),
        (hour, "US", "smartphone", 2),
        (next_hour, "", "smartphone", 1),
    ]
    assert await projection_mismatches(db_engine) == {}


async def test_unique_decision_survives_a_crash_between_redis_and_commit(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions)
    first = click_event(setup.link_id, T0)
    repeat = click_event(setup.link_id, T0 + 1)
    events = decode_clicks(pack_clicks([first, repeat])).events

    # Redis answered and took the key, then the transaction never committed (the worker died).
    sessions = session_factory(db_engine)
    async with sessions() as session:
        await session.begin()
        await store_clicks(session, worker.redis, events, 3600)
        await session.rollback()
    assert await count(db_engine, Click) == 0

    # The redelivery gets the same answer: the first click still holds the key, so it is still the unique one.
    async with sessions() as session, session.begin():
        counts = await store_clicks(session, worker.redis, events, 3600)
    assert (counts.inserted, counts.unique) == (2, 1)
    async with db_engine.connect() as connection:
        flags = dict((await connection.execute(select(Click.click_id, Click.unique))).all())
    assert flags == {first["click_id"]: True, repeat["click_id"]: False}
    assert await first_in_window(worker.redis, events, 3600) == {first["click_id"]}


async def test_bad_event_is_recorded_and_the_rest_of_its_message_stored(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions)
    good = [click_event(setup.link_id, T0 + i, ip=f"192.0.2.{i}") for i in range(3)]
    bad = click_event(setup.link_id, T0 + 9)
    bad["click_id"] = "x" * 60  # the unpacker takes any text; a ClickID has at most 40 characters
    await worker.send("clicks", [pack_clicks([good[0], bad, good[1], good[2]])])
    await worker.run_until_drained("clicks")

    assert await click_ids(db_engine) == sorted(event["click_id"] for event in good)
    (job,) = await failed_jobs(db_engine)
    assert job.queue == "clicks"
    assert job.message_id.endswith("#0")
    assert "bad click_id" in job.error
    assert '"x' in job.body
    assert metric(worker.metrics, "adclick_worker_failed_total", queue="clicks") == 1


async def test_undecodable_message_is_recorded_each_time_then_dead_lettered(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions)
    good = [click_event(setup.link_id, T0 + i, ip=f"192.0.2.{i}") for i in range(5)]
    await worker.send("clicks", ["c1:not base64 at all!", pack_clicks(good), "c9:some future format"])
    # A short visibility timeout, so that SQS redelivers the undecodable ones quickly (maxReceiveCount is 3).
    worker.start(visibility_timeout=1)
    await wait_dead_lettered(worker, 2)
    await worker.stop()

    assert await click_ids(db_engine) == sorted(event["click_id"] for event in good)
    jobs = await failed_jobs(db_engine)
    assert len(jobs) == 2
    assert {job.body for job in jobs} == {"c1:not base64 at all!", "c9:some future format"}
    assert all(job.error.startswith("undecodable") for job in jobs)
    assert all(job.receive_count == 3 for job in jobs)  # recorded at every receive, the last one was the 3rd
    assert await worker.queue_counts("clicks") == (0, 0)


async def wait_dead_lettered(worker: InProcessWorker, expected: int) -> None:
    async def moved() -> bool:
        visible, in_flight = await worker.queue_counts("clicks-dlq")
        return visible + in_flight >= expected

    await wait_for(moved, within=60, message=f"{expected} messages in the dead-letter queue")


async def test_nul_bytes_from_a_query_string_do_not_poison_the_message(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions)
    dirty = click_event(setup.link_id, T0, ua="Mozilla\x00/5.0")
    dirty["sub1"] = "a\x00b"
    dirty["params"] = {"k\x00": "v\x00"}
    clean = click_event(setup.link_id, T0 + 1, ip="192.0.2.1")
    await worker.send("clicks", [pack_clicks([dirty, clean])])
    await worker.run_until_drained("clicks")

    async with db_engine.connect() as connection:
        row = (
            await connection.execute(
                select(Click.ua, Click.sub1, Click.params).where(Click.click_id == dirty["click_id"])
            )
        ).one()
    assert tuple(row) == ("Mozilla/5.0", "ab", {"k": "v"})
    assert await count(db_engine, Click) == 2
    assert await failed_jobs(db_engine) == []


async def test_redis_down_holds_the_batch_until_it_returns(
    worker: InProcessWorker, db_engine: AsyncEngine, redis_server: RedisServer
) -> None:
    (setup,) = await seed(worker.sessions)
    events = [click_event(setup.link_id, T0 + i, ip=f"192.0.2.{i}") for i in range(20)]
    redis_server.stop()
    await worker.send("clicks", [pack_clicks(events)])
    worker.start()

    async def retried() -> bool:
        return metric(worker.metrics, "adclick_worker_batch_retries_total", queue="clicks") >= 2

    await wait_for(retried, message="the batch retried while Redis is down")
    assert await count(db_engine, Click) == 0  # nothing half-done: no clicks without their unique flags
    assert await worker.queue_counts("clicks") == (0, 1)  # held by the worker, not redelivered
    redis_server.start()
    await wait_for(lambda: worker.drained("clicks"), message="the batch stored once Redis is back")
    await worker.stop()
    assert await click_ids(db_engine) == sorted(event["click_id"] for event in events)
    assert (await rollup_totals(db_engine))["unique_clicks"] == 20
    assert await failed_jobs(db_engine) == []
