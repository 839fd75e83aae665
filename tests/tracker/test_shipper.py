"""The Rust shipper through the binding, fed by the real click engine, against a real SQS endpoint (moto server)
and a real redis-server.

Its own cases (outages, spill and replay, refused bodies, the memory bound, a re-created queue) are cargo tests
beside it, in rust/ship/src/tests.rs, where each step can be driven on its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

import pytest
from adclick import _native
from adclick.core.links import publish_link
from adclick.core.settings import TrackerSettings
from adclick.core.sqs import create_client, ensure_queues
from adclick.tracker.app import NativeCollector, build_tracker, start_shipper
from prometheus_client import CollectorRegistry
from support.procs import wait_until
from support.servers import RedisServer, SqsServer
from support.tracker import UA_IPHONE, click_id_from, collect_events, events_in

LINK = {
    "v": 1,
    "id": 42,
    "slug": "summer",
    "offer_id": 7,
    "affiliate_id": 3,
    "status": "active",
    "url": "https://shop.example/landing?cid={click_id}",
}


def settings_for(**overrides: Any) -> TrackerSettings:
    values: dict[str, Any] = {"flush_interval_ms": 20, "sqs_timeout_seconds": 2, "background_nice": 0}
    values.update(overrides)
    return TrackerSettings(**values)


def engine(settings: TrackerSettings, redis_server: RedisServer) -> Any:
    publish_link(redis_server.client(), LINK)
    return build_tracker(settings)


def click(tracker: Any, n: int, tag: str) -> set[str]:
    """`n` clicks on the test link straight into the engine; their ClickIDs."""
    ids = set()
    for i in range(n):
        status, location, _ = tracker.click(
            False, "summer", {"sub1": tag, "sub2": str(i)}, UA_IPHONE, None, None, "192.0.2.1", "DE"
        )
        assert status == 302
        ids.add(click_id_from(location))
    return ids


def metrics(tracker: Any, shipper: Any) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(NativeCollector(tracker, lambda: shipper))
    return {
        f"{s.name}{sorted(s.labels.items()) if s.labels else ''}": s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_clicks_reach_sqs_and_the_metrics_count_them(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for()
    queue = sqs_server.create_queue(settings.clicks_queue)
    tracker = engine(settings, redis_server)
    shipper = start_shipper(tracker, settings)
    try:
        assert shipper.running
        first = click(tracker, 30, "a")
        bodies: list[str] = []
        collect_events(sqs_server, queue, first, bodies=bodies)
        second = click(tracker, 12, "b")
        ids = [str(e["click_id"]) for e in collect_events(sqs_server, queue, second, bodies=bodies)]
        assert sorted(ids) == sorted(first | second), "every click once"
        m = metrics(tracker, shipper)
        assert m["adclick_sqs_messages_sent_total"] == len(bodies)
        assert 1 <= m["adclick_sqs_requests_total"] <= len(bodies)
        assert m["adclick_sqs_failures_total"] == 0
        assert m["adclick_spilled_messages_total"] == 0
        assert m["adclick_spill_backlog"] == 0
        assert m["adclick_dropped_messages_total[('reason', 'rejected')]"] == 0
        tracker.close()
        assert shipper.stop(5) == (0, 0, 0, 0)
        assert not shipper.running
        assert shipper.stop(5) == (0, 0, 0, 0), "a second stop is harmless"
    finally:
        shipper.stop(5)
    with redis_server.client() as client:
        assert client.llen(_native.SPILL_KEY) == 0


def test_stop_ships_every_buffered_click(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(flush_interval_ms=10_000)  # only the final flush can ship these
    queue = sqs_server.create_queue(settings.clicks_queue)
    tracker = engine(settings, redis_server)
    shipper = start_shipper(tracker, settings)
    answered = click(tracker, 37, "last")
    tracker.close()
    sent, spilled, rejected, dropped = shipper.stop(5)
    assert (sent >= 1, spilled, rejected, dropped) == (True, 0, 0, 0)
    assert tracker.buffered() == 0
    assert sorted(str(e["click_id"]) for e in collect_events(sqs_server, queue, answered)) == sorted(answered)


def test_past_high_water_clicks_spill_to_redis_and_are_replayed(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(buffer_max_events=100, spill_high_water=0.5, flush_interval_ms=10_000)
    queue = sqs_server.create_queue(settings.clicks_queue)
    tracker = engine(settings, redis_server)
    answered = click(tracker, 60, "surge")  # 60 of 100 buffered before the shipper starts
    shipper = start_shipper(tracker, settings)
    try:
        wait_until(lambda: shipper.stats()["spilled"] >= 1, timeout=10, message="a spill to Redis")
        assert sorted(str(e["click_id"]) for e in collect_events(sqs_server, queue, answered)) == sorted(answered)
        wait_until(lambda: shipper.stats()["replayed"] >= 1, timeout=10, message="the replay counted")
    finally:
        tracker.close()
        shipper.stop(5)
    with redis_server.client() as client:
        assert client.llen(_native.SPILL_KEY) == 0
        assert not client.exists(_native.SPILL_LOCK_KEY)


def test_shipping_goes_on_while_a_python_thread_holds_the_gil(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    settings = settings_for(flush_interval_ms=500)
    queue = sqs_server.create_queue(settings.clicks_queue)
    tracker = engine(settings, redis_server)
    shipper = start_shipper(tracker, settings)
    try:
        click(tracker, 5, "warm-up")
        # Right after a flush cycle, so that the next one (500 ms on) falls inside the busy loop below.
        wait_until(lambda: shipper.stats()["messages_sent"] >= 1, timeout=10, interval=0.005, message="a first flush")
        answered = click(tracker, 20, "held")

        # A busy loop in a Python thread, with a switch interval long enough that it never hands the GIL over:
        # anything that needed the GIL would wait until the loop ends.
        interval = sys.getswitchinterval()
        sys.setswitchinterval(60)
        window: list[float] = []

        def busy() -> None:
            window.append(time.time())
            end = time.monotonic() + 3.0
            while time.monotonic() < end:
                pass
            window.append(time.time())

        try:
            holder = threading.Thread(target=busy)
            holder.start()
            holder.join()
        finally:
            sys.setswitchinterval(interval)
        started, ended = window
    finally:
        tracker.close()
        shipper.stop(5)

    client = sqs_server.client()
    sent_at: dict[str, float] = {}
    try:
        while True:
            response = client.receive_message(
                QueueUrl=queue, MaxNumberOfMessages=10, AttributeNames=["SentTimestamp"], VisibilityTimeout=60
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for m in messages:
                for event in events_in([m["Body"]]):
                    sent_at[str(event["click_id"])] = int(m["Attributes"]["SentTimestamp"]) / 1000
    finally:
        client.close()
    assert answered <= set(sent_at), "every click arrived"
    # SQS stamped them while the loop held the GIL: the shipper shipped without it.
    assert all(started <= sent_at[cid] <= ended for cid in answered), (started, ended, sorted(sent_at.values()))


def test_bad_settings_are_refused(adclick_env: dict[str, str], redis_server: RedisServer) -> None:
    tracker = engine(settings_for(), redis_server)
    with pytest.raises(_native.ConfigError):
        _native.Shipper(tracker, queue_name="q", region="us-east-1", redis_url=redis_server.url, retry_attempts=0)


def test_the_shipper_creates_queues_exactly_as_core_sqs_does(
    adclick_env: dict[str, str], sqs_server: SqsServer, redis_server: RedisServer
) -> None:
    # Queue creation is spelled twice, in core/sqs.py (worker, postback, dev) and rust/ship/src/sqs.rs (the tracker):
    # whichever creates the queues first, they must come out the same.
    python_side = settings_for(clicks_queue="py-clicks", conversions_queue="py-conversions", sqs_max_receives=7)

    async def create() -> dict[str, str]:
        async with create_client(python_side) as client:
            return await ensure_queues(client, python_side)

    asyncio.run(create())
    rust_side = settings_for(clicks_queue="rs-clicks", sqs_max_receives=7)
    tracker = engine(rust_side, redis_server)
    shipper = start_shipper(tracker, rust_side)  # the queue does not exist: the shipper creates it
    try:
        answered = click(tracker, 3, "create")
        wait_until(lambda: shipper.stats()["messages_sent"] >= 1, timeout=20, message="the first send")
    finally:
        tracker.close()
        shipper.stop(5)
    assert sorted(
        str(e["click_id"]) for e in collect_events(sqs_server, sqs_server.queue_url("rs-clicks"), answered)
    ) == sorted(answered)

    client = sqs_server.client()
    try:

        def attributes(name: str) -> dict[str, Any]:
            url = client.get_queue_url(QueueName=name)["QueueUrl"]
            found = client.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            kept = {k: found[k] for k in ("MaximumMessageSize", "MessageRetentionPeriod") if k in found}
            if "RedrivePolicy" in found:
                policy = json.loads(found["RedrivePolicy"])
                kept["maxReceiveCount"] = str(policy["maxReceiveCount"])
                kept["deadLetterTarget"] = policy["deadLetterTargetArn"].rsplit(":", 1)[1].split("-", 1)[1]
            return kept

        assert attributes("rs-clicks") == attributes("py-clicks")
        assert attributes("rs-clicks")["maxReceiveCount"] == "7"
        assert attributes("rs-clicks")["deadLetterTarget"] == "clicks-dlq"
        assert attributes("rs-clicks-dlq") == attributes("py-clicks-dlq")
    finally:
        client.close()
