"""Caps at the click (adclick.core.capping): the conversion that fills a cap moves its offer's links to the cap
fallback, in the configs the trackers read, until the reset; freeing the cap moves them back."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from adclick import _native
from adclick.core.capping import FOREVER
from adclick.core.db.models import Offer, OfferAffiliateOverride
from adclick.core.publisher import rebuild, redis_client
from adclick.manager.conversions import edit_conversion
from adclick.manager.report_queries import build_query, run_report
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from support.procs import free_port
from workerkit import CODEC, T0, InProcessWorker, click_event, conversion_body, conversions, packed, seed, totals_of

pytestmark = pytest.mark.anyio

FALLBACK = "https://fallback.example/lp?c={click_id}&s={sub1}"


def now_ms() -> int:
    return int(time.time() * 1000)


def tomorrow_utc() -> int:
    """Unix seconds of the next UTC midnight: when a daily cap in UTC resets."""
    today = datetime.now(UTC).date()
    return int(datetime.combine(today + timedelta(days=1), datetime.min.time(), tzinfo=UTC).timestamp())


def config(worker: InProcessWorker, link_id: int) -> dict[str, Any]:
    raw = worker.links_redis.get(f"adclick:link:link-{link_id}")
    assert raw is not None
    _native.validate_link(raw.encode() if isinstance(raw, str) else raw)  # the tracker takes it
    return dict(json.loads(raw))


async def convert(worker: InProcessWorker, link_id: int, *txids: str) -> None:
    click = CODEC.generate(link_id, now_ms() - 60_000)
    await worker.send("conversions", [conversion_body(click, txid, received_at=now_ms()) for txid in txids])
    await worker.run_until_drained("conversions")


async def capped_until(engine: AsyncEngine, offer_id: int) -> datetime | None:
    async with engine.connect() as connection:
        return (await connection.execute(select(Offer.capped_until).where(Offer.id == offer_id))).scalar_one()


async def test_the_conversion_that_fills_the_daily_cap_sends_every_link_of_the_offer_to_the_cap_fallback(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    setups = await seed(worker.sessions, affiliates=2, daily_cap=2, cap_fallback_url=FALLBACK, payout_amount=Decimal(1))
    offer_id = setups[0].offer_id
    await rebuild(worker.sessions, worker.links_redis)
    assert "capped_until" not in config(worker, setups[0].link_id)

    await convert(worker, setups[0].link_id, "TX-1")
    assert await capped_until(db_engine, offer_id) is None  # 1 of 2: still open
    assert "capped_until" not in config(worker, setups[1].link_id)

    await convert(worker, setups[1].link_id, "TX-2")  # the second fills it
    until = tomorrow_utc()
    assert await capped_until(db_engine, offer_id) == datetime.fromtimestamp(until, UTC)
    for setup in setups:
        published = config(worker, setup.link_id)
        assert (published["capped_until"], published["cap_url"]) == (until, FALLBACK)

    # Staff reject one: a slot is free again, and the links serve the offer again.
    stored = {c.txid: c.id for c in await conversions(db_engine)}
    async with worker.sessions() as session:
        await edit_conversion(session, stored["TX-2"], "reject", user_id=None, links_redis=worker.links_redis)
    assert await capped_until(db_engine, offer_id) is None
    for setup in setups:
        assert "capped_until" not in config(worker, setup.link_id)
        assert "cap_url" not in config(worker, setup.link_id)


async def test_an_affiliates_daily_cap_holds_only_its_own_links(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    first, second = await seed(worker.sessions, affiliates=2, override={"daily_cap": 1}, cap_fallback_url=FALLBACK)
    await rebuild(worker.sessions, worker.links_redis)
    await convert(worker, first.link_id, "TX-A")
    assert config(worker, first.link_id)["capped_until"] == tomorrow_utc()
    assert "capped_until" not in config(worker, second.link_id)
    assert await capped_until(db_engine, first.offer_id) is None  # the offer itself is open
    async with db_engine.connect() as connection:
        rows = (
            await connection.execute(select(OfferAffiliateOverride.affiliate_id, OfferAffiliateOverride.capped_until))
        ).all()
    assert {affiliate: until is not None for affiliate, until in rows} == {
        first.affiliate_id: True,
        second.affiliate_id: False,
    }


async def test_a_full_lifetime_cap_holds_until_someone_raises_it_and_without_a_fallback_url_the_config_says_so(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, lifetime_cap=1)
    await rebuild(worker.sessions, worker.links_redis)
    await convert(worker, setup.link_id, "TX-1", "TX-2")
    assert sorted(c.status for c in await conversions(db_engine)) == ["capped", "pending"]
    assert await capped_until(db_engine, setup.offer_id) == FOREVER
    published = config(worker, setup.link_id)
    assert published["capped_until"] == int(FOREVER.timestamp())
    assert "cap_url" not in published  # the link's own fallback, else the offer: the tracker decides


async def test_capped_clicks_count_apart_from_clicks_in_the_rollups_and_in_reports_from_raw_clicks(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions)
    ids = {"offer_id": setup.offer_id, "affiliate_id": setup.affiliate_id}
    events = [
        click_event(setup.link_id, T0, **ids),
        click_event(setup.link_id, T0 + 1, capped=True, ip="203.0.113.20", **ids),
        click_event(setup.link_id, T0 + 2, capped=True, ip="203.0.113.21", **ids),
        click_event(setup.link_id, T0 + 3, capped=True, bot=True, ip="203.0.113.22", **ids),  # a bot first
    ]
    for body in packed(events):
        await worker.send("clicks", [body])
    await worker.run_until_drained("clicks")
    assert await totals_of(db_engine, "clicks", "unique_clicks", "bot_clicks", "capped_clicks") == (1, 1, 1, 2)
    async with worker.sessions() as session:
        for group_by in ("offer", "sub1"):  # from the rollups, and from the raw clicks
            report = await run_report(session, build_query(group_by, "2025-11-27", "2025-11-28", "UTC"))
            (row,) = report.rows
            assert (row.totals.clicks, row.totals.bot_clicks, row.totals.capped_clicks) == (1, 1, 2), group_by
            assert row.as_dict()["capped_clicks"] == 2


async def test_with_redis_down_the_cap_is_stored_and_the_reconciler_publishes_it_later(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, daily_cap=1, cap_fallback_url=FALLBACK)
    await rebuild(worker.sessions, worker.links_redis)
    # Nothing listens there: the republish after the commit fails (logged); the messages are done all the same.
    worker.conversions.links_redis = redis_client(f"redis://127.0.0.1:{free_port()}/0", 200)
    await convert(worker, setup.link_id, "TX-1")
    assert [c.status for c in await conversions(db_engine)] == ["pending"]
    assert await capped_until(db_engine, setup.offer_id) is not None
    assert "capped_until" not in config(worker, setup.link_id)  # not published yet
    # The manager's reconciler (adclick cache-rebuild, and its loop) publishes what the database holds.
    result = await rebuild(worker.sessions, worker.links_redis)
    assert result.written == 1
    assert config(worker, setup.link_id)["capped_until"] == tomorrow_utc()
