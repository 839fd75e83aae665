"""Break the running system under a steady load of clicks and postbacks, one fault at a time, and count.

Each scenario has its own link (so its own rows and rollups), runs the load, injects its fault in the middle,
lets the load run on, waits until nothing is left between a 302 and a database row, and reconciles: every
ClickID answered with a 302 must be a click row, every postback accepted a conversion row, once each, and the
rollups must add up to the raw rows. `make chaos` runs the long form (15-second outages), `make test` a short one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from faultkit import CLICKS_QUEUE, CONVERSIONS_QUEUE, TALLIES, FaultSystem, full, reconcile
from support.load import Load, Postbacks
from support.procs import wait_until
from support.roles import prometheus

pytestmark = pytest.mark.slow  # minutes of load and outages, even in the short form

OUTAGE = 15.0 if full() else 3.0
PHASE = 10.0 if full() else 3.0  # load before and after each fault


def sigterm_tracker(system: FaultSystem) -> None:
    """SIGTERM mid-load: it drains, flushes its buffer and exits 0; a new one takes the same port."""
    code = system.tracker.signal(signal.SIGTERM)
    assert code == 0, system.tracker.output()[-3000:]
    system.tracker.start()


def sigkill_worker(system: FaultSystem) -> None:
    """SIGKILL while it is consuming: whatever batch it held is redelivered after the visibility timeout."""
    taken = f'adclick_worker_messages_total{{queue="{CLICKS_QUEUE}"}}'
    before = prometheus(system.worker.port).get(taken, 0.0)
    wait_until(
        lambda: prometheus(system.worker.port).get(taken, 0.0) > before,
        timeout=30,
        message="the worker taking click batches",
    )
    assert system.worker.signal(signal.SIGKILL) == -signal.SIGKILL
    system.worker.start()


def restart_redis(system: FaultSystem) -> None:
    """Redis goes away and comes back empty (no persistence): the manager's reconciliation rewrites the links."""
    system.redis.stop()
    time.sleep(1.0)
    system.redis.start()
    wait_until(lambda: system.tracker.health() == 200, timeout=30, message="tracker healthy")


def down_for_the_outage(stop: Callable[[], object], start: Callable[[], object]) -> None:
    """`stop()`, wait out the outage, then `start()` whatever happened meanwhile."""
    stop()
    try:
        time.sleep(OUTAGE)
    finally:
        start()


def sqs_outage(system: FaultSystem) -> None:
    """The SQS endpoint hangs (SIGSTOP) for the outage: the tracker spills to Redis, the postback role says 503."""
    down_for_the_outage(system.sqs.pause, system.sqs.resume)


def postgres_outage(system: FaultSystem) -> None:
    """PostgreSQL is down (fast shutdown, connections refused) for the outage, then back on the same port."""
    down_for_the_outage(system.postgres.stop, system.postgres.start)


@dataclass
class Scenario:
    name: str
    fault: Callable[[FaultSystem], None]
    duplicate: bool = False


def nothing(system: FaultSystem) -> None:
    """No fault during the load: the worker is stopped and every message is delivered twice afterwards."""


SCENARIOS = [
    Scenario("tracker-sigterm", sigterm_tracker),
    Scenario("worker-sigkill", sigkill_worker),
    Scenario("redis-restart", restart_redis),
    Scenario("sqs-outage", sqs_outage),
    Scenario("postgres-outage", postgres_outage),
    Scenario("double-delivery", nothing, duplicate=True),
]


def deliver_twice(system: FaultSystem) -> int:
    """Take every message off both queues and send each body back twice; the number of bodies taken."""
    taken = 0
    client = system.sqs.client()
    try:
        for name in (CLICKS_QUEUE, CONVERSIONS_QUEUE):
            url = system.queue_urls[name]
            bodies = system.sqs.drain(url)
            taken += len(bodies)
            copies = [body for body in bodies for _ in range(2)]
            for start in range(0, len(copies), 10):
                entries = [{"Id": str(i), "MessageBody": b} for i, b in enumerate(copies[start : start + 10])]
                assert not client.send_message_batch(QueueUrl=url, Entries=entries).get("Failed")
    finally:
        client.close()
    return taken


@pytest.mark.timeout(600 if full() else 240)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_nothing_lost_nothing_doubled(system: FaultSystem, scenario: Scenario) -> None:
    link_id = system.create_link(scenario.name)
    if scenario.duplicate:
        assert system.worker.signal(signal.SIGTERM) == 0
    clicks = Load(system.tracker.port, scenario.name, connections=2, pause=0.01, timeout=10, backoff=0.05)
    postbacks = Postbacks(system.postback.port, system.token, clicks, prefix=scenario.name)
    clicks.start()
    postbacks.start()
    try:
        time.sleep(PHASE)
        scenario.fault(system)
        time.sleep(PHASE)
    finally:
        clicks.stop()
        postbacks.stop()
    if scenario.duplicate:
        wait_until(lambda: prometheus(system.tracker.port).get("adclick_event_buffer_depth") == 0, timeout=30)
        assert deliver_twice(system) > 0
        system.worker.start()
    system.wait_settled()

    tally = reconcile(system, scenario.name, link_id, clicks, postbacks)
    TALLIES.append(tally)
    print(tally)
    assert clicks.answered and postbacks.accepted, (clicks.statuses, postbacks.statuses)
    assert not postbacks.refused, postbacks.refused[:5]
    assert not postbacks.pending, f"{len(postbacks.pending)} postbacks never accepted"
    assert tally.ok, tally
