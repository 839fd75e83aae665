"""Approving, rejecting and adjusting conversions on PostgreSQL and SQLite: the rollups (and so every report) follow
in the same transaction, daily caps are taken and given back, every change is audited, refusals change nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from adclick.core.db.models import Conversion, ConversionAudit, DailyCap, HourlyRollup, Offer, User
from adclick.manager.conversions import (
    ConversionEditError,
    build_filter,
    edit_conversion,
    get_conversion,
    list_conversions,
)
from adclick.manager.report_queries import build_query, run_report
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from support.rollups import projection_mismatches
from test_reports import seed_campaigns, seed_events

pytestmark = pytest.mark.anyio

D = Decimal
WHEN = datetime(2026, 3, 9, 14, 20, tzinfo=UTC)


async def setup(session: AsyncSession) -> int:
    """Campaigns, a manager user, and conversions: 1 approved, 2 pending, 3 rejected, 4 capped (link 11, offer 1)."""
    await seed_campaigns(session)
    user = User(email="m@example.com", password_hash="x", role="manager")
    session.add(user)
    await session.commit()
    clicks = [{"click_id": f"c{n}", "ts": WHEN - timedelta(hours=1), "link_id": 11, "bot": False, "unique": True}
              for n in range(1, 5)]  # fmt: skip
    conversions = [
        {"txid": f"T{n}", "click_id": f"c{n}", "link_id": 11, "status": status, "amount": D("100"),
         "revenue": D("10.50") if status != "capped" else D(0), "payout": D("7.25") if status != "capped" else D(0),
         "created_at": WHEN + timedelta(minutes=n)}
        for n, status in ((1, "approved"), (2, "pending"), (3, "rejected"), (4, "capped"))
    ]  # fmt: skip
    await seed_events(session, clicks, conversions)
    ids = (await session.execute(select(Conversion.txid, Conversion.id))).all()
    assert {txid: cid for txid, cid in ids} == {"T1": 1, "T2": 2, "T3": 3, "T4": 4}
    return user.id


async def rollup(session: AsyncSession) -> tuple[int, Decimal, Decimal]:
    row = (
        await session.execute(
            select(HourlyRollup).where(
                HourlyRollup.hour == WHEN.replace(minute=0), HourlyRollup.link_id == 11, HourlyRollup.country == ""
            )
        )
    ).scalar_one()
    await session.refresh(row)
    return row.conversions, row.revenue, row.payout


async def counted_sums(session: AsyncSession) -> tuple[int, Decimal, Decimal]:
    """What the rollups must say, straight from the conversions table."""
    rows = (
        await session.execute(
            select(Conversion.revenue, Conversion.payout).where(Conversion.status.in_(("pending", "approved")))
        )
    ).all()
    return len(rows), sum((r.revenue for r in rows), D(0)), sum((r.payout for r in rows), D(0))


async def report_totals(session: AsyncSession, group_by: str = "offer") -> tuple[int, Decimal, Decimal]:
    totals = (await run_report(session, build_query(group_by, "2026-03-09", "2026-03-09", "UTC"))).totals
    return totals.conversions, totals.revenue, totals.payout


async def audits(session: AsyncSession, conversion_id: int) -> list[ConversionAudit]:
    found = await session.execute(
        select(ConversionAudit).where(ConversionAudit.conversion_id == conversion_id).order_by(ConversionAudit.id)
    )
    return list(found.scalars())


async def status_of(session: AsyncSession, conversion_id: int) -> Conversion:
    conversion = await session.get(Conversion, conversion_id)
    assert conversion is not None
    await session.refresh(conversion)
    return conversion


async def test_reject_approve_and_adjust_move_the_rollups_and_are_audited(db_session: AsyncSession) -> None:
    user_id = await setup(db_session)
    assert await rollup(db_session) == (2, D("21.00"), D("14.50"))

    entry = await edit_conversion(db_session, 1, "reject", user_id=user_id, note="fraud: same IP as 200 others")
    assert entry["before"] == {
        "status": "approved",
        "amount": "100.000000",
        "revenue": "10.500000",
        "payout": "7.250000",
    }
    assert entry["after"]["status"] == "rejected" and entry["after"]["note"].startswith("fraud")
    assert await rollup(db_session) == (1, D("10.50"), D("7.25"))
    assert await projection_mismatches(db_session) == {}

    await edit_conversion(db_session, 3, "approve", user_id=user_id)
    assert await rollup(db_session) == (2, D("21.00"), D("14.50"))

    await edit_conversion(db_session, 2, "adjust", user_id=user_id, revenue="12.00", payout=D("8"), amount="120")
    conversion = await status_of(db_session, 2)
    assert (conversion.status, conversion.revenue, conversion.payout, conversion.amount) == (
        "pending", D("12"), D("8"), D("120"))  # fmt: skip
    assert await rollup(db_session) == (2, D("22.50"), D("15.25"))

    await edit_conversion(db_session, 1, "adjust", user_id=user_id, payout="1")  # rejected: counts nothing either way
    assert await rollup(db_session) == (2, D("22.50"), D("15.25"))

    # A capped conversion was stored with 0; approving it with amounts counts it in full.
    await edit_conversion(db_session, 4, "approve", user_id=user_id, revenue="10.50", payout="7.25")
    assert await rollup(db_session) == (3, D("33.00"), D("22.50"))

    assert await rollup(db_session) == await counted_sums(db_session) == await report_totals(db_session)
    # Every rollup table followed: reports by offer (hour x link) and by device (hour x country x device) agree.
    assert await projection_mismatches(db_session) == {}
    assert await report_totals(db_session, "device") == await report_totals(db_session)
    trail = await audits(db_session, 1)
    assert [(a.before["status"], a.after["status"], a.after["action"]) for a in trail] == [
        ("approved", "rejected", "reject"),
        ("rejected", "rejected", "adjust"),
    ]
    assert all(a.user_id == user_id and a.at > WHEN for a in trail)
    shown = await get_conversion(db_session, 1)
    assert [a["after"]["action"] for a in shown["audit"]] == ["reject", "adjust"]
    assert (await status_of(db_session, 1)).updated_at == trail[-1].at


async def test_refused_edits_change_nothing(db_session: AsyncSession) -> None:
    user_id = await setup(db_session)
    refusals: list[tuple[dict[str, Any], int, str]] = [
        ({"conversion_id": 99, "action": "approve"}, 404, "no conversion"),
        ({"conversion_id": 1, "action": "approve"}, 409, "already approved"),
        ({"conversion_id": 3, "action": "reject"}, 409, "already rejected"),
        ({"conversion_id": 2, "action": "adjust"}, 400, "needs a new"),
        ({"conversion_id": 2, "action": "adjust", "revenue": "-1"}, 400, "between 0"),
        ({"conversion_id": 2, "action": "adjust", "revenue": "abc"}, 400, "must be a number"),
        ({"conversion_id": 2, "action": "adjust", "revenue": "1.0000001"}, 400, "6 decimals"),
        ({"conversion_id": 2, "action": "adjust", "revenue": "10.5"}, 409, "nothing to change"),
        ({"conversion_id": 2, "action": "delete"}, 400, "unknown action"),
    ]
    for kwargs, status, message in refusals:
        with pytest.raises(ConversionEditError, match=message) as raised:
            await edit_conversion(db_session, user_id=user_id, **kwargs)
        assert raised.value.status == status
    assert await db_session.scalar(select(func.count()).select_from(ConversionAudit)) == 0
    assert await rollup(db_session) == (2, D("21.00"), D("14.50"))


async def test_approving_takes_a_daily_cap_slot_and_rejecting_gives_it_back(db_session: AsyncSession) -> None:
    user_id = await setup(db_session)
    offer = await db_session.get(Offer, 1)
    assert offer is not None
    offer.daily_cap = 2
    # The two counted conversions (approved and pending) hold both slots of the day, as the worker left them.
    db_session.add(DailyCap(scope="offer", offer_id=1, affiliate_id=0, day=WHEN.date(), used=2))
    await db_session.commit()

    async def used() -> int:
        cap = await db_session.get(DailyCap, ("offer", 1, 0, WHEN.date()))
        assert cap is not None
        await db_session.refresh(cap)
        return cap.used

    with pytest.raises(ConversionEditError, match="daily cap \\(2\\) for 2026-03-09 is full") as raised:
        await edit_conversion(db_session, 3, "approve", user_id=user_id)
    assert raised.value.status == 409
    assert (await status_of(db_session, 3)).status == "rejected"
    assert (await used(), await rollup(db_session)) == (2, (2, D("21.00"), D("14.50")))

    await edit_conversion(db_session, 1, "reject", user_id=user_id)
    assert await used() == 1
    await edit_conversion(db_session, 3, "approve", user_id=user_id)
    assert await used() == 2
    assert (await status_of(db_session, 3)).status == "approved"
    assert await rollup(db_session) == await counted_sums(db_session) == (2, D("21.00"), D("14.50"))
    assert await projection_mismatches(db_session) == {}


async def test_list_filters_pages_and_scopes(db_session: AsyncSession) -> None:
    await setup(db_session)
    everything, following = await list_conversions(db_session, build_filter())
    assert [row["id"] for row in everything] == [4, 3, 2, 1] and following is None
    assert everything[0]["offer_name"] == "Offer 1" and everything[0]["affiliate_name"] == "Alice Media"
    assert everything[3]["revenue"] == "10.500000"
    page, following = await list_conversions(db_session, build_filter(), limit=3)
    assert [row["id"] for row in page] == [4, 3, 2] and following == 2
    rest, following = await list_conversions(db_session, build_filter(), limit=3, before_id=2)
    assert [row["id"] for row in rest] == [1] and following is None
    pending, _ = await list_conversions(db_session, build_filter(status="pending"))
    assert [row["id"] for row in pending] == [2]
    # Link 11 is affiliate 1's: affiliate 2 sees none of it, whatever it asks for.
    other, _ = await list_conversions(db_session, build_filter(affiliate_id=1, scope_affiliate_id=2))
    assert other == []
    with pytest.raises(ConversionEditError):
        await get_conversion(db_session, 1, scope_affiliate_id=2)
    # 14:21 UTC on the 9th is 23:21 in Tokyo on the 9th, and 2026-03-10 there starts at 15:00 UTC on the 9th.
    tokyo_tenth, _ = await list_conversions(db_session, build_filter(date_from="2026-03-10", tz="Asia/Tokyo"))
    assert tokyo_tenth == []
    tokyo_ninth, _ = await list_conversions(
        db_session, build_filter(date_from="2026-03-09", date_to="2026-03-09", tz="Asia/Tokyo")
    )
    assert len(tokyo_ninth) == 4
