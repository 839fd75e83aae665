"""Postbacks out to affiliates, end to end: a real `adclick worker` process and a real HTTP receiver on 127.0.0.1.

The receiver stands for an affiliate's server. Every request carries its outbox row's id in `X-Adclick-Delivery`:
delivery is at least once (a worker killed while a request is in flight sends it again after its lease), and that
id is how a receiver keeps exactly one, as these tests do.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import signal
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from adclick.core.affiliate_postbacks import sample
from adclick.core.db.models import Affiliate, Conversion, PostbackDelivery
from adclick.worker.messages import pack_clicks
from aiohttp import web
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from support.procs import free_port
from workerkit import HOUR_MS, T0, InProcessWorker, WorkerProc, click_event, conversion_body, seed, wait_for

pytestmark = pytest.mark.anyio

SECRET = "affiliate-shared-secret"


@dataclass
class Receiver:
    """An affiliate's postback endpoint: records every request; can fail or hang on purpose."""

    port: int = 0
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    fail_first: int = 0  # answer 500 to each delivery's first N requests
    hang: float = 0.0  # seconds to wait before answering
    seen: dict[str, int] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path_qs, dict(request.headers)))
        delivery = request.headers.get("X-Adclick-Delivery", "")
        self.seen[delivery] = self.seen.get(delivery, 0) + 1
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.seen[delivery] <= self.fail_first:
            return web.Response(status=500, text="try later")
        return web.Response(text="ok")

    def by_delivery(self) -> dict[str, dict[str, str]]:
        """One query per delivery id (a repeat of an id is the same postback)."""
        out: dict[str, dict[str, str]] = {}
        for path_qs, headers in self.requests:
            query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path_qs).query, keep_blank_values=True))
            out.setdefault(headers["X-Adclick-Delivery"], query)
        return out


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    got = Receiver()
    app = web.Application()
    app.router.add_get("/{tail:.*}", got.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    got.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield got
    await runner.cleanup()


def template(port: int) -> str:
    return (
        f"http://127.0.0.1:{port}/pb?cid={{p:clickid}}&tx={{txid}}&payout={{payout}}&cur={{currency}}"
        "&s={status}&e={event}&s1={sub1}&aff={aff_id}"
    )


async def configure(worker: InProcessWorker, affiliate_id: int, url: str | None, triggers: str | None) -> None:
    async with worker.sessions() as session, session.begin():
        await session.execute(
            update(Affiliate)
            .where(Affiliate.id == affiliate_id)
            .values(postback_url=url, postback_triggers=triggers, postback_secret=SECRET)
        )


def clicks_with_params(link_id: int, n: int, start: int = 0) -> tuple[list[str], list[str]]:
    """One click message of `n` clicks whose URLs carried `?clickid=src-<i>`; their ClickIDs."""
    events = []
    for i in range(start, start + n):
        event = click_event(link_id, T0 + i, ip=f"10.1.{i // 250}.{i % 250}")
        event["params"] = {"clickid": f"src-{i}"}
        events.append(event)
    return [pack_clicks(events)], [e["click_id"] for e in events]


async def told_affiliate_with_clicks(worker: InProcessWorker, receiver: Receiver, clicks: int) -> list[str]:
    """An offer paying 1 whose affiliate's postback goes to the receiver, and `clicks` clicks queued on its link."""
    (setup,) = await seed(worker.sessions, payout_amount=Decimal("1"))
    await configure(worker, setup.affiliate_id, template(receiver.port), None)
    bodies, ids = clicks_with_params(setup.link_id, clicks)
    await worker.send("clicks", bodies)
    return ids


async def deliveries(engine: AsyncEngine) -> list[Any]:
    async with engine.connect() as connection:
        found = await connection.execute(select(PostbackDelivery).order_by(PostbackDelivery.id))
        return list(found.all())


def signed(headers: dict[str, str], path_qs: str, port: int) -> bool:
    t, v1 = (part.split("=", 1)[1] for part in headers["X-Adclick-Signature"].split(","))
    url = f"http://127.0.0.1:{port}{path_qs}"
    expected = hmac.new(SECRET.encode(), f"{t}.{url}".encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(v1, expected) and abs(int(t) - time.time()) < 300


def check(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def poll() -> bool:
        return predicate()

    return poll


FAST = {"affiliate_postback_allow_private": "true", "affiliate_postback_first_retry_seconds": "0.3"}


async def test_one_postback_per_conversion_through_a_sigkill_mid_batch_and_one_per_reversal(
    worker: InProcessWorker,
    db_engine: AsyncEngine,
    start_worker: Callable[..., WorkerProc],
    receiver: Receiver,
) -> None:
    told, silent = await seed(worker.sessions, affiliates=2, payout_amount=Decimal("2.5"))
    await configure(worker, told.affiliate_id, template(receiver.port), "approved,reversal")
    await configure(worker, silent.affiliate_id, None, None)  # no postback URL: nothing is sent for it
    bodies, told_ids = clicks_with_params(told.link_id, 300)
    more, silent_ids = clicks_with_params(silent.link_id, 50, start=1000)
    await worker.send("clicks", bodies + more)
    conversions = [
        conversion_body(click_id, f"T-{i}", status="approved", received_at=T0 + HOUR_MS + i)
        for i, click_id in enumerate(told_ids)
    ] + [
        conversion_body(click_id, f"S-{i}", status="approved", received_at=T0 + HOUR_MS + i)
        for i, click_id in enumerate(silent_ids)
    ]
    await worker.send("conversions", conversions)

    settings: dict[str, Any] = {"worker_concurrency": 2, "worker_visibility_timeout": 5, **FAST}
    settings["affiliate_postback_timeout_seconds"] = "2"  # the lease of a request cut by the kill: 16 s
    first = start_worker(**settings)
    # Killed as soon as the first conversions are stored and told: batches, and requests, are in flight.
    await wait_for(check(lambda: len(receiver.requests) >= 1), within=90, message="the first postbacks arrived")
    first.proc.kill()
    assert first.proc.returncode == -signal.SIGKILL
    start_worker(**settings)
    await wait_for(lambda: worker.drained(), within=120, message="both queues drained after the restart")
    await wait_for(
        check(lambda: len(receiver.by_delivery()) >= len(told_ids)), within=90, message="a postback per conversion"
    )
    # A request the kill cut short is sent again once its lease runs out: the row is done only then.
    await wait_for(lambda: _all_delivered(db_engine, 300), within=90, message="every delivery recorded")
    await asyncio.sleep(1.5)  # anything extra would arrive now

    got = receiver.by_delivery()
    assert sorted(q["tx"] for q in got.values()) == sorted(f"T-{i}" for i in range(300))  # once each, none of S-
    assert {q["cid"] for q in got.values()} == {f"src-{i}" for i in range(300)}  # the click's own parameter
    assert {(q["s"], q["e"], q["cur"], q["s1"], q["aff"]) for q in got.values()} == {
        ("approved", "sale", "USD", "s1", str(told.affiliate_id))
    }
    assert {Decimal(q["payout"]) for q in got.values()} == {Decimal("2.5")}
    assert all(signed(headers, path_qs, receiver.port) for path_qs, headers in receiver.requests)
    # A request repeated after the kill is the same delivery (same id, same URL), never a second one.
    assert len(receiver.requests) - len(got) <= 2 * 16
    rows = await deliveries(db_engine)
    assert len(rows) == 300 and {r.state for r in rows} == {"delivered"}
    assert {r.trigger for r in rows} == {"approved"}

    # Chargebacks: a reversal postback for each, once, to the affiliate that opted in.
    receiver.requests.clear()
    chargebacks = [
        conversion_body(told_ids[i], f"T-{i}", status="rejected", received_at=T0 + 2 * HOUR_MS + i) for i in range(5)
    ]
    chargebacks += [
        conversion_body(silent_ids[i], f"S-{i}", status="rejected", received_at=T0 + 2 * HOUR_MS + i) for i in range(5)
    ]
    await worker.send("conversions", chargebacks + chargebacks[:3])  # three delivered twice by SQS
    await wait_for(check(lambda: len(receiver.by_delivery()) >= 5), within=60, message="the reversal postbacks")
    await asyncio.sleep(1.5)
    got = receiver.by_delivery()
    assert sorted(q["tx"] for q in got.values()) == [f"T-{i}" for i in range(5)]
    assert {q["s"] for q in got.values()} == {"rejected"}
    assert len(await deliveries(db_engine)) == 305


async def test_a_failing_server_is_retried_and_a_hanging_one_never_slows_ingestion(
    worker: InProcessWorker,
    db_engine: AsyncEngine,
    start_worker: Callable[..., WorkerProc],
    receiver: Receiver,
) -> None:
    ids = await told_affiliate_with_clicks(worker, receiver, 40)
    receiver.hang = 5.0  # every request hangs past the worker's 1 s timeout
    start_worker(affiliate_postback_timeout_seconds="1", **FAST)
    await wait_for(lambda: worker.drained("clicks"), within=60, message="clicks stored")
    await worker.send(
        "conversions",
        [conversion_body(c, f"H-{i}", status="approved", received_at=T0 + HOUR_MS + i) for i, c in enumerate(ids)],
    )
    started = time.monotonic()
    await wait_for(lambda: worker.drained(), within=60, message="conversions stored while the affiliate hangs")
    assert time.monotonic() - started < 30  # ingestion never waited on the hanging server
    async with db_engine.connect() as connection:
        assert len((await connection.execute(select(Conversion.id))).all()) == 40

    # The server comes back, failing each postback's first two tries: every one is retried until delivered.
    receiver.hang, receiver.fail_first = 0.0, 2
    await wait_for(
        lambda: _all_delivered(db_engine, 40), within=90, message="every postback delivered after its retries"
    )
    rows = await deliveries(db_engine)
    assert all(r.attempts >= 3 for r in rows)  # at least: the hung one(s), then two 500s, then the 200
    assert len(receiver.by_delivery()) == 40


async def _all_delivered(engine: AsyncEngine, n: int) -> bool:
    rows = await deliveries(engine)
    return len(rows) == n and all(r.state == "delivered" for r in rows)


async def test_private_addresses_are_refused_unless_allowed(
    worker: InProcessWorker,
    db_engine: AsyncEngine,
    start_worker: Callable[..., WorkerProc],
    receiver: Receiver,
) -> None:
    ids = await told_affiliate_with_clicks(worker, receiver, 1)
    await worker.send("conversions", [conversion_body(ids[0], "P-1", status="approved")])
    proc = start_worker(affiliate_postback_first_retry_seconds="0.3")  # production's default: no private addresses
    try:
        await wait_for(lambda: _attempted(db_engine), within=60, message="the postback attempted")
    except TimeoutError:
        pytest.fail(proc.proc.output()[-4000:])
    (row,) = await deliveries(db_engine)
    assert row.state == "pending" and "non-public" in (row.last_error or "")
    assert receiver.requests == []


async def _attempted(engine: AsyncEngine) -> bool:
    rows = await deliveries(engine)
    return bool(rows) and rows[0].attempts >= 2


async def test_a_test_postback_carries_sample_values_and_is_tried_once(
    worker: InProcessWorker,
    db_engine: AsyncEngine,
    start_worker: Callable[..., WorkerProc],
    receiver: Receiver,
) -> None:
    (setup,) = await seed(worker.sessions)
    await configure(worker, setup.affiliate_id, template(receiver.port), None)
    nobody = free_port()  # nothing listens there: the request fails at once
    async with worker.sessions() as session, session.begin():
        for key, url in (("t-ok", template(receiver.port)), ("t-down", template(nobody))):
            session.add(
                PostbackDelivery(
                    key=key,
                    kind="test",
                    affiliate_id=setup.affiliate_id,
                    trigger="test",
                    template=url,
                    click_id=None,
                    values={**sample(setup.affiliate_id).values, "trigger": "test"},
                )
            )
    start_worker(**FAST)
    await wait_for(lambda: _states(db_engine, {"delivered", "failed"}), within=60, message="both tests tried")
    rows = {r.key: r for r in await deliveries(db_engine)}
    assert (rows["t-ok"].state, rows["t-ok"].attempts, rows["t-ok"].last_status) == ("delivered", 1, 200)
    assert (rows["t-down"].state, rows["t-down"].attempts) == ("failed", 1)
    assert "Connect" in (rows["t-down"].last_error or "")
    (only,) = receiver.by_delivery().values()
    assert (only["tx"], only["cid"], only["s1"], only["e"]) == ("test", "", "test-sub1", "test")


async def _states(engine: AsyncEngine, wanted: set[str]) -> bool:
    rows = await deliveries(engine)
    return len(rows) == 2 and {r.state for r in rows} == wanted
