"""The shipper against a real SQS endpoint (moto server) and a real redis-server, including their outages."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
from adclick.core.settings import TrackerSettings
from adclick.core.sqs import MAX_BATCH_ENTRIES, batch_bodies, create_client, ensure_queues, send_batches, send_bodies
from adclick.tracker.shipper import LOCK_KEY, SPILL_KEY, Shipper, ShipperMetrics
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support.servers import RedisServer, SqsServer

WAIT_SECONDS = 30.0


class BufferedBodies:
    """The shipper's input: already packed message bodies, as the native tracker hands them over."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self.bodies: list[str] = []
        self.events = 0

    def add(self, bodies: Iterable[str], events_each: int = 1) -> None:
        for body in bodies:
            self.bodies.append(body)
            self.events += events_each

    def take_bodies(self, max_body_bytes: int) -> list[str]:
        assert all(len(body) <= max_body_bytes for body in self.bodies if not body.startswith("oversize"))
        taken, self.bodies, self.events = self.bodies, [], 0
        return taken

    def buffered(self) -> int:
        return self.events


def bodies(prefix: str, n: int, size: int = 64) -> list[str]:
    return [f"c1:{prefix}-{i:05d}-".ljust(size, "x") for i in range(n)]


def settings_for(env: dict[str, str], **overrides: Any) -> TrackerSettings:
    values: dict[str, Any] = {
        "flush_interval_ms": 20,
        "sqs_timeout_seconds": 0.5,
        "sqs_retry_attempts": 2,
        "clicks_queue": "clicks",
        "conversions_queue": "conversions",
    }
    values.update(overrides)
    return TrackerSettings(**values)


def metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


async def eventually(predicate: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_SECONDS
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Received:
    """Everything that reached the clicks queue, read off it as the test goes."""

    def __init__(self, sqs_server: SqsServer, queue_url: str) -> None:
        self.sqs_server = sqs_server
        self.queue_url = queue_url
        self.bodies: list[str] = []

    async def poll(self) -> list[str]:
        self.bodies += await asyncio.to_thread(self.sqs_server.drain, self.queue_url)
        return self.bodies

    async def has_all(self, expected: Iterable[str]) -> bool:
        return set(expected) <= set(await self.poll())


async def make_queues(settings: TrackerSettings) -> dict[str, str]:
    async with create_client(settings) as client:
        return await ensure_queues(client, settings)


# -- batching --


def test_batches_hold_at_most_ten_entries_in_order() -> None:
    given_bodies = bodies("b", 25)
    batches = batch_bodies(given_bodies, 262_144)
    assert [len(batch) for batch in batches] == [10, 10, 5]
    assert [body for batch in batches for body in batch] == given_bodies


def test_batches_stay_under_the_total_size() -> None:
    big = bodies("big", 5, size=100_000)
    assert [len(batch) for batch in batch_bodies(big, 262_144)] == [2, 2, 1]


def test_a_body_over_the_limit_goes_alone() -> None:
    mixed = ["a", "x" * 300, "b"]
    assert batch_bodies(mixed, 100) == [["a"], ["x" * 300], ["b"]]


def test_batch_size_counts_utf8_bytes() -> None:
    assert batch_bodies(["é" * 30, "é" * 30], 100) == [["é" * 30], ["é" * 30]]


@given(st.lists(st.integers(min_value=0, max_value=3000), max_size=60), st.integers(min_value=1, max_value=5000))
def test_batching_keeps_every_body_within_limits(sizes: list[int], limit: int) -> None:
    given_bodies = ["x" * size for size in sizes]
    batches = batch_bodies(given_bodies, limit)
    assert [body for batch in batches for body in batch] == given_bodies
    for batch in batches:
        assert 1 <= len(batch) <= MAX_BATCH_ENTRIES
        assert len(batch) == 1 or sum(len(body) for body in batch) <= limit


# -- core.sqs against the endpoint --


def test_ensure_queues_creates_dead_letter_queues_and_is_idempotent(
    adclick_env: dict[str, str], sqs_server: SqsServer
) -> None:
    # Not a timeout test: moto's first calls (creating its backend) can take longer than the 0.5 s default here.
    settings = settings_for(adclick_env, sqs_max_receives=4, sqs_timeout_seconds=10)

    async def scenario() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        async with create_client(settings) as client:
            first = await ensure_queues(client, settings)
            second = await ensure_queues(client, settings)
            attributes = await client.get_queue_attributes(QueueUrl=first["clicks"], AttributeNames=["All"])
            return first, second, attributes["Attributes"]

    first, second, attributes = asyncio.run(scenario())
    assert first == second
    assert set(first) == {"clicks", "clicks-dlq", "conversions", "conversions-dlq"}
    assert first["clicks-dlq"].endswith("/clicks-dlq")
    assert '"maxReceiveCount": 4' in attributes["RedrivePolicy"].replace('"4"', "4")
    assert "clicks-dlq" in attributes["RedrivePolicy"]


def test_send_batches_respects_sqs_limits(adclick_env: dict[str, str], sqs_server: SqsServer) -> None:
    settings = settings_for(adclick_env)
    big = bodies("big", 12, size=60_000)

    async def scenario() -> Any:
        async with create_client(settings) as client:
            url = (await ensure_queues(client, settings))["clicks"]
            return url, await send_batches(client, url, big)

    url, outcome = asyncio.run(scenario())
    assert outcome.requests == 3  # 4 x 60 kB fit in 256 KiB, 5 do not
    assert sorted(outcome.sent) == sorted(big)
    assert sorted(sqs_server.drain(url)) == sorted(big)


def test_one_oversize_body_is_refused_and_the_others_arrive(
    adclick_env: dict[str, str], sqs_server: SqsServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(adclick_env)
    good = bodies("good", 4)
    oversize = "oversize:" + "x" * 300_000

    async def scenario() -> Any:
        async with create_client(settings) as client:
            url = (await ensure_queues(client, settings))["clicks"]
            # A generous batch limit puts the bad body in the same SendMessageBatch as the good ones.
            return url, await send_bodies(client, url, [*good[:2], oversize, *good[2:]], max_total_bytes=1 << 20)

    with caplog.at_level(logging.ERROR, logger="adclick.core.sqs"):
        url, failed = asyncio.run(scenario())
    assert failed == [oversize]
    assert sorted(sqs_server.drain(url)) == sorted(good)
    assert any("refused" in record.getMessage() for record in caplog.records)


# -- the shipper --


def test_bodies_arrive_in_sqs(adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer) -> None:
    settings = settings_for(adclick_env)
    registry = CollectorRegistry()
    source = BufferedBodies()
    expected = bodies("live", 25)

    async def scenario() -> None:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(source, settings, ShipperMetrics(registry))
        task = asyncio.create_task(shipper.run())
        received = Received(sqs_server, url)
        source.add(expected[:12])
        await eventually(lambda: received.has_all(expected[:12]), "the first bodies")
        source.add(expected[12:])
        await eventually(lambda: received.has_all(expected), "every body")
        await shipper.flush(deadline_s=5)
        assert task.done()
        assert sorted(received.bodies) == sorted(expected)

    asyncio.run(scenario())
    assert metric(registry, "adclick_sqs_messages_sent_total") == 25
    assert metric(registry, "adclick_sqs_requests_total") >= 3
    assert metric(registry, "adclick_spilled_messages_total") == 0
    with redis_server.client() as client:
        assert client.llen(SPILL_KEY) == 0


def test_shipper_creates_missing_queues(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env)
    source = BufferedBodies()
    source.add(bodies("fresh", 3))

    async def scenario() -> None:
        shipper = Shipper(source, settings, ShipperMetrics(CollectorRegistry()))
        await shipper.ship_once()
        await shipper.aclose()

    asyncio.run(scenario())
    assert sorted(sqs_server.drain(sqs_server.queue_url("clicks"))) == sorted(bodies("fresh", 3))
    assert sqs_server.queue_url("clicks-dlq").endswith("/clicks-dlq")


def test_sqs_outage_spills_to_redis_and_replays_everything(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env)
    registry = CollectorRegistry()
    source = BufferedBodies()
    before, during, after = bodies("before", 15), bodies("during", 30), bodies("after", 7)
    redis = redis_server.client()

    async def spilled(n: int) -> bool:
        return bool(redis.llen(SPILL_KEY) >= n)

    async def drained() -> bool:
        return redis.llen(SPILL_KEY) == 0

    async def scenario() -> None:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(source, settings, ShipperMetrics(registry))
        task = asyncio.create_task(shipper.run())
        received = Received(sqs_server, url)
        source.add(before)
        await eventually(lambda: received.has_all(before), "bodies sent before the outage")

        sqs_server.pause()
        try:
            source.add(during[:10])
            await eventually(lambda: spilled(1), "a spill to Redis")
            source.add(during[10:])
            await eventually(lambda: spilled(len(during)), "every body of the outage spilled")
            assert shipper.sqs_down
        finally:
            sqs_server.resume()

        source.add(after)
        everything = before + during + after
        await eventually(lambda: received.has_all(everything), "every body after SQS came back")
        await eventually(drained, "an empty spill list")
        await shipper.flush(deadline_s=5)
        await task
        # At least once: a request that timed out may still have been processed after SIGCONT.
        assert set(received.bodies) == set(everything)

    asyncio.run(scenario())
    assert redis.exists(LOCK_KEY) == 0
    assert metric(registry, "adclick_spilled_messages_total") >= len(during)
    assert metric(registry, "adclick_replayed_messages_total") >= len(during)
    assert metric(registry, "adclick_sqs_failures_total") >= 1
    assert metric(registry, "adclick_spill_backlog") == 0
    assert metric(registry, "adclick_dropped_messages_total", reason="overflow") == 0
    redis.close()


def test_high_water_spills_to_redis_without_trying_sqs(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env, spill_high_water=0.5)
    registry = CollectorRegistry()
    source = BufferedBodies(capacity=100)
    backlog = bodies("surge", 6)
    source.add(backlog, events_each=10)  # 60 events buffered out of 100: past the 50% mark

    async def scenario() -> int:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(source, settings, ShipperMetrics(registry))
        await shipper.ship_once()
        with redis_server.client() as client:
            assert client.lrange(SPILL_KEY, 0, -1) == backlog
        assert metric(registry, "adclick_sqs_requests_total") == 0
        assert sqs_server.count(url) == 0
        replayed = await shipper.replay_once()
        assert sorted(sqs_server.drain(url)) == sorted(backlog)
        await shipper.aclose()
        return replayed

    assert asyncio.run(scenario()) == len(backlog)
    with redis_server.client() as client:
        assert client.llen(SPILL_KEY) == 0
        assert client.exists(LOCK_KEY) == 0
    assert metric(registry, "adclick_spill_backlog") == 0


def test_below_high_water_goes_straight_to_sqs(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env, spill_high_water=0.5)
    registry = CollectorRegistry()
    source = BufferedBodies(capacity=100)
    source.add(bodies("calm", 4), events_each=10)  # 40 of 100

    async def scenario() -> None:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(source, settings, ShipperMetrics(registry))
        await shipper.ship_once()
        await shipper.aclose()
        assert sorted(sqs_server.drain(url)) == sorted(bodies("calm", 4))

    asyncio.run(scenario())
    assert metric(registry, "adclick_spilled_messages_total") == 0


def test_replay_waits_for_the_lock_holder(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env)
    spilled = bodies("spilled", 5)
    client = redis_server.client()
    client.rpush(SPILL_KEY, *spilled)
    client.set(LOCK_KEY, "another-process", px=30_000)

    async def scenario() -> tuple[int, int]:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(BufferedBodies(), settings, ShipperMetrics(CollectorRegistry()))
        blocked = await shipper.replay_once()
        assert client.lrange(SPILL_KEY, 0, -1) == spilled
        assert sqs_server.count(url) == 0
        client.delete(LOCK_KEY)
        replayed = await shipper.replay_once()
        await shipper.aclose()
        assert sorted(sqs_server.drain(url)) == sorted(spilled)
        return blocked, replayed

    assert asyncio.run(scenario()) == (0, len(spilled))
    assert client.llen(SPILL_KEY) == 0
    assert client.exists(LOCK_KEY) == 0
    client.close()


def test_replay_keeps_what_sqs_refuses_out_of_the_list_and_counts_it(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env)
    registry = CollectorRegistry()
    oversize = "oversize:" + "y" * 300_000
    good = bodies("ok", 3)
    client = redis_server.client()
    client.rpush(SPILL_KEY, good[0], oversize, *good[1:])

    async def scenario() -> None:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(BufferedBodies(), settings, ShipperMetrics(registry))
        await shipper.replay_once()
        await shipper.aclose()
        assert sorted(sqs_server.drain(url)) == sorted(good)

    asyncio.run(scenario())
    assert client.llen(SPILL_KEY) == 0
    assert metric(registry, "adclick_dropped_messages_total", reason="rejected") == 1
    client.close()


def test_flush_on_shutdown_delivers_everything(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env, flush_interval_ms=10_000)  # only the flush can ship these
    source = BufferedBodies()
    expected = bodies("last", 37)

    async def scenario() -> Any:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(source, settings, ShipperMetrics(CollectorRegistry()))
        task = asyncio.create_task(shipper.run())
        await asyncio.sleep(0)
        source.add(expected)
        result = await shipper.flush(deadline_s=5)
        assert task.done()
        return url, result

    url, result = asyncio.run(scenario())
    assert (result.sent, result.spilled, result.rejected, result.dropped) == (37, 0, 0, 0)
    assert sorted(sqs_server.drain(url)) == sorted(expected)
    assert source.buffered() == 0


def test_flush_spills_what_a_hung_sqs_will_not_take(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env)
    source = BufferedBodies()
    expected = bodies("exit", 12)

    async def scenario() -> Any:
        await make_queues(settings)
        shipper = Shipper(source, settings, ShipperMetrics(CollectorRegistry()))
        source.add(expected)
        sqs_server.pause()
        try:
            return await shipper.flush(deadline_s=3)
        finally:
            sqs_server.resume()

    result = asyncio.run(scenario())
    assert result.spilled + result.sent == len(expected)
    assert result.dropped == 0
    with redis_server.client() as client:
        spilled = client.lrange(SPILL_KEY, 0, -1)
    assert len(spilled) == result.spilled
    # After SIGCONT, moto may still process a request the shipper had given up on: at least once.
    assert set(spilled) | set(sqs_server.drain(sqs_server.queue_url("clicks"))) == set(expected)


def test_oversize_body_in_the_stream_is_counted_logged_and_not_retried(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(adclick_env)
    registry = CollectorRegistry()
    source = BufferedBodies()
    good = bodies("fine", 9)
    oversize = "oversize:" + "z" * 300_000
    source.add([*good[:4], oversize, *good[4:]])

    async def scenario() -> None:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(source, settings, ShipperMetrics(registry))
        await shipper.ship_once()
        requests = metric(registry, "adclick_sqs_requests_total")
        await shipper.ship_once()  # nothing left to send: the refused body is not tried again
        assert metric(registry, "adclick_sqs_requests_total") == requests
        assert shipper.pending == 0
        assert not shipper.sqs_down
        await shipper.aclose()
        assert sorted(sqs_server.drain(url)) == sorted(good)

    with caplog.at_level(logging.ERROR, logger="adclick.tracker.shipper"):
        asyncio.run(scenario())
    assert metric(registry, "adclick_dropped_messages_total", reason="rejected") == 1
    assert metric(registry, "adclick_sqs_messages_sent_total") == len(good)
    assert any("refused" in record.getMessage() for record in caplog.records)
    with redis_server.client() as client:
        assert client.llen(SPILL_KEY) == 0


def test_sqs_and_redis_down_hold_bodies_in_memory_until_one_returns(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(adclick_env)
    source = BufferedBodies()
    held = bodies("held", 8)

    async def scenario() -> None:
        url = (await make_queues(settings))["clicks"]
        shipper = Shipper(source, settings, ShipperMetrics(CollectorRegistry()))
        sqs_server.pause()
        redis_server.stop()
        try:
            source.add(held)
            await shipper.ship_once()
            assert shipper.pending == len(held)
            assert shipper.sqs_down
        finally:
            sqs_server.resume()
        await shipper.flush(deadline_s=5)
        assert set(await asyncio.to_thread(sqs_server.drain, url)) == set(held)

    asyncio.run(scenario())


def test_memory_bound_drops_oldest_and_counts_them(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = settings_for(adclick_env, sqs_retry_attempts=1)
    registry = CollectorRegistry()
    source = BufferedBodies()
    held = bodies("bounded", 10, size=1000)

    async def scenario() -> None:
        await make_queues(settings)
        shipper = Shipper(source, settings, ShipperMetrics(registry), max_pending_bytes=4000)
        sqs_server.pause()
        redis_server.stop()
        try:
            source.add(held)
            with caplog.at_level(logging.ERROR, logger="adclick.tracker.shipper"):
                await shipper.ship_once()
            assert shipper.pending == 4
        finally:
            sqs_server.resume()
        redis_server.start()
        await shipper.flush(deadline_s=5)

    asyncio.run(scenario())
    assert metric(registry, "adclick_dropped_messages_total", reason="overflow") == 6
    assert any("dropped 6 click messages" in record.getMessage() for record in caplog.records)
    url = sqs_server.queue_url("clicks")
    with redis_server.client() as client:
        arrived = set(sqs_server.drain(url)) | set(client.lrange(SPILL_KEY, 0, -1))
    assert arrived == set(held[6:])
