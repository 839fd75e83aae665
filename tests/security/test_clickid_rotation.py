"""Rotating the ClickID secret never breaks ClickIDs already in flight, and a second rotation retires the old key.

Real processes throughout: the tracker issues ClickID A with key A; after the rotation (B current, A previous)
the postback role accepts a postback for it and the worker stores the conversion; after a third rotation
(C current, B previous) the postback role refuses it and the worker, which trusts nothing on a queue, records it
as forged, while ClickIDs issued under B still convert.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.parse
from decimal import Decimal

import pytest
from adclick.core.db.models import Conversion, ConversionRejection
from adclick.core.db.session import session_factory
from adclick.core.tokens import make_token
from adclick.worker.messages import encode_conversion
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from support.procs import ProcessGuard, free_port, wait_until
from support.roles import request
from support.seeding import seed_campaign
from support.servers import RedisServer, SqsServer
from support.tracker import TrackerProc

pytestmark = pytest.mark.anyio

KEYS = {"A": ("1", "a" * 40), "B": ("2", "b" * 40), "C": ("3", "c" * 40)}
POSTBACK_SECRET = "p" * 40
LINK_ID = 4242


def keys(current: str, previous: str | None) -> dict[str, str]:
    env = {"ADCLICK_CLICK_KEY_ID": KEYS[current][0], "ADCLICK_CLICK_SECRET": KEYS[current][1]}
    if previous:
        env["ADCLICK_CLICK_PREVIOUS_KEY_ID"] = KEYS[previous][0]
        env["ADCLICK_CLICK_PREVIOUS_SECRET"] = KEYS[previous][1]
    return env


class Postback:
    def __init__(self, guard: ProcessGuard, env: dict[str, str]) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "adclick.cli", "postback", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = guard.spawn(argv, name=f"postback-{self.port}", env={**os.environ, **env})
        wait_until(lambda: self.status("/health") == 200, timeout=60, message="postback /health", proc=self.proc)

    def status(self, path: str) -> int | None:
        try:
            return request(self.port, "GET", path, timeout=5).status
        except OSError:
            return None

    def convert(self, click_id: str, txid: str) -> int | None:
        query = urllib.parse.urlencode({"token": make_token(POSTBACK_SECRET, 1), "click_id": click_id, "txid": txid})
        return self.status(f"/postback?{query}")


async def seed(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session, session.begin():
        await seed_campaign(
            session,
            advertiser={"id": 1},
            affiliate={"name": "Aff"},
            offer={"name": "Offer", "payout_amount": Decimal("1"), "default_status": "approved"},
            link={"id": LINK_ID, "slug": "rot", "template": "https://s.example/"},
        )


def issue(tracker: TrackerProc) -> str:
    reply = request(tracker.port, "GET", "/c/rot")
    assert reply.status == 302, reply
    return urllib.parse.parse_qs(urllib.parse.urlsplit(reply.location or "").query)["cid"][0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_rotation_keeps_clicks_in_flight_and_a_second_one_retires_the_old_key(
    adclick_env: dict[str, str],
    redis_server: RedisServer,
    sqs_server: SqsServer,
    database_url: str,
    db_engine: AsyncEngine,
    process_guard: ProcessGuard,
) -> None:
    await seed(db_engine)
    with redis_server.client() as client:
        link = {"v": 1, "id": LINK_ID, "slug": "rot", "offer_id": 1, "url": "https://s.example/?cid={click_id}"}
        client.set("adclick:link:rot", json.dumps(link))
    base = {**adclick_env, "ADCLICK_POSTBACK_SECRET": POSTBACK_SECRET, "ADCLICK_DATABASE_URL": database_url}
    base |= {"ADCLICK_CONVERSIONS_QUEUE": "rot-conversions", "ADCLICK_CLICKS_QUEUE": "rot-clicks"}

    # Before: key A only.
    tracker_a = TrackerProc(process_guard, {**base, **keys("A", None)})
    clicked_a = issue(tracker_a)
    tracker_a.proc.stop()

    # First rotation: B signs, A still verifies, in the tracker, the postback role and the worker.
    rotated = {**base, **keys("B", "A")}
    tracker_b = TrackerProc(process_guard, rotated)
    clicked_b = issue(tracker_b)
    assert clicked_b != clicked_a
    postback = Postback(process_guard, rotated)
    assert postback.convert(clicked_a, "in-flight-A") == 200
    assert postback.convert(clicked_b, "new-B") == 200
    worker = start_worker(process_guard, rotated)
    await wait_for_rows(db_engine, Conversion, 2)
    worker.stop()
    postback.proc.stop()

    # Second rotation: C signs, B verifies, A is gone everywhere.
    retired = {**base, **keys("C", "B")}
    postback = Postback(process_guard, retired)
    assert postback.convert(clicked_a, "late-A") == 400
    assert postback.convert(clicked_b, "late-B") == 200
    # The worker checks again, whatever is on the queue: a message carrying ClickID A is recorded as refused.
    queue = sqs_server.queue_url("rot-conversions")
    forged = {
        "v": 1, "click_id": clicked_a, "txid": "queued-A", "event": "sale", "amount": None, "currency": None,
        "status": None, "advertiser_id": 1, "received_at": int(time.time() * 1000), "source": "s2s", "params": {},
    }  # fmt: skip
    client = sqs_server.client()
    try:
        client.send_message(QueueUrl=queue, MessageBody=encode_conversion(forged))
    finally:
        client.close()
    worker = start_worker(process_guard, retired)
    await wait_for_rows(db_engine, Conversion, 3)
    await wait_for_rows(db_engine, ConversionRejection, 1)
    worker.stop()

    async with db_engine.connect() as connection:
        stored = dict((await connection.execute(select(Conversion.txid, Conversion.click_id))).all())
        refused = (await connection.execute(select(ConversionRejection.reason, ConversionRejection.txid))).all()
    assert stored == {"in-flight-A": clicked_a, "new-B": clicked_b, "late-B": clicked_b}
    assert [txid for _, txid in refused] == ["queued-A"], refused


def start_worker(guard: ProcessGuard, env: dict[str, str]):  # type: ignore[no-untyped-def]
    port = free_port()
    full = {**os.environ, **env, "ADCLICK_WORKER_HEALTH_HOST": "127.0.0.1", "ADCLICK_WORKER_HEALTH_PORT": str(port)}
    full |= {"ADCLICK_WORKER_WAIT_SECONDS": "1", "PYTHONUNBUFFERED": "1"}
    return guard.spawn([sys.executable, "-m", "adclick.cli", "worker"], name=f"worker-{port}", env=full)


async def wait_for_rows(engine: AsyncEngine, model: type, at_least: int, within: float = 60.0) -> None:
    from sqlalchemy import func

    deadline = time.monotonic() + within
    while True:
        async with engine.connect() as connection:
            n = (await connection.execute(select(func.count()).select_from(model))).scalar_one()
        if n >= at_least:
            return
        assert time.monotonic() < deadline, f"{model.__name__}: {n} rows, waited for {at_least}"
        await asyncio.sleep(0.2)
