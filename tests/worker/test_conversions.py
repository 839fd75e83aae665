"""Conversions from the queue into the database: attribution, forged/expired/duplicate postbacks, status
changes, commissions and daily caps that hold with consumers racing, on PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from adclick.core.db.models import Click, ConversionAudit, DailyCap, OfferAffiliateOverride
from adclick.manager.conversions import edit_conversion
from adclick.manager.report_queries import build_query, run_report
from adclick.worker.messages import pack_clicks
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from support.rollups import projection_mismatches
from workerkit import (
    CODEC,
    FORGER,
    HOUR_MS,
    T0,
    InProcessWorker,
    click_event,
    conversion_body,
    conversions,
    count,
    failed_jobs,
    metric,
    packed,
    rejections,
    rollup_totals,
    seed,
    totals_of,
    wait_for,
)

pytestmark = pytest.mark.anyio

D = Decimal


async def test_conversion_before_its_click_is_attributed_and_the_click_counts_later(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("4.50"), revenue_amount=D("6.00"), default_status="approved")
    click = click_event(setup.link_id, T0, offer_id=setup.offer_id, affiliate_id=setup.affiliate_id)
    await worker.send("conversions", [conversion_body(click["click_id"], "T-1", advertiser_id=setup.advertiser_id)])
    await worker.run_until_drained("conversions")

    (conversion,) = await conversions(db_engine)
    assert (conversion.link_id, conversion.offer_id, conversion.affiliate_id) == (
        setup.link_id,
        setup.offer_id,
        setup.affiliate_id,
    )
    assert (conversion.status, conversion.payout, conversion.revenue) == ("approved", D("4.50"), D("6.00"))
    assert await count(db_engine, Click) == 0

    await worker.send("clicks", [pack_clicks([click])])
    await worker.run_until_drained("clicks")
    assert await count(db_engine, Click) == 1
    totals = await rollup_totals(db_engine)
    assert (totals["clicks"], totals["unique_clicks"], totals["conversions"]) == (1, 1, 1)
    assert (totals["revenue"], totals["payout"]) == (D("6.00"), D("4.50"))


async def test_same_conversion_message_three_times_counts_once(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("2"), revenue_amount=D("3"))
    bodies = [conversion_body(CODEC.generate(setup.link_id, T0 + i), f"T-{i}") for i in range(5)]
    await worker.send("conversions", bodies * 3)
    await worker.run_until_drained("conversions")
    await worker.send("conversions", bodies)  # and again after they were committed
    await worker.run_until_drained("conversions")

    assert len(await conversions(db_engine)) == 5
    assert await rejections(db_engine) == []  # a redelivery is not a duplicate postback
    assert await totals_of(db_engine, "conversions", "revenue", "payout") == (5, D("15"), D("10"))
    assert metric(worker.metrics, "adclick_worker_processed_total", kind="conversion") == 5
    assert metric(worker.metrics, "adclick_worker_processed_total", kind="redelivered") == 15


async def test_forged_clickid_is_rejected_once_and_never_retried(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("2"))
    genuine = CODEC.generate(setup.link_id, T0)
    tampered = genuine[:-1] + ("A" if genuine[-1] != "A" else "B")
    bodies = [
        conversion_body(FORGER.generate(setup.link_id, T0), "F-1"),  # signed with another secret
        conversion_body(tampered, "F-2"),
        conversion_body("not-a-click-id", "F-3"),
        conversion_body(genuine, "OK-1"),
    ]
    await worker.send("conversions", bodies + bodies[:1])  # the first one delivered twice
    await worker.run_until_drained("conversions")

    assert [c.txid for c in await conversions(db_engine)] == ["OK-1"]
    assert sorted(await rejections(db_engine)) == [("forged", "F-1"), ("forged", "F-2"), ("forged", "F-3")]
    assert await failed_jobs(db_engine) == []
    assert metric(worker.metrics, "adclick_worker_conversions_rejected_total", reason="forged") == 3
    assert await totals_of(db_engine, "conversions", "payout") == (1, D("2"))


async def test_conversion_outside_the_attribution_window_is_expired(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, attribution_window_hours=24, payout_amount=D("1"))
    click_id = CODEC.generate(setup.link_id, T0)
    bodies = [
        conversion_body(click_id, "IN", received_at=T0 + 24 * HOUR_MS),  # exactly at the edge: still in
        conversion_body(click_id, "OUT", received_at=T0 + 24 * HOUR_MS + 1),
    ]
    await worker.send("conversions", bodies)
    await worker.run_until_drained("conversions")

    assert [c.txid for c in await conversions(db_engine)] == ["IN"]
    assert await rejections(db_engine) == [("expired", "OUT")]


async def test_repeated_txid_is_one_conversion_and_a_duplicate_rejection(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"), default_status="pending")
    click_id = CODEC.generate(setup.link_id, T0)
    first = conversion_body(click_id, "ORDER-9", received_at=T0 + 1000)
    again = conversion_body(click_id, "ORDER-9", received_at=T0 + 2000)  # the advertiser fired twice
    no_txid = conversion_body(click_id, None, received_at=T0 + 3000)  # the ClickID is the txid
    no_txid_again = conversion_body(click_id, None, received_at=T0 + 4000)
    await worker.send("conversions", [first])
    await worker.run_until_drained("conversions")
    await worker.send("conversions", [again, again, no_txid, no_txid_again])
    await worker.run_until_drained("conversions")

    assert sorted(c.txid for c in await conversions(db_engine)) == sorted(["ORDER-9", click_id])
    assert sorted(await rejections(db_engine)) == sorted([("duplicate", "ORDER-9"), ("duplicate", click_id)])
    assert await totals_of(db_engine, "conversions", "payout") == (2, D("10"))


async def test_later_postback_changes_status_and_moves_the_rollups(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"), revenue_amount=D("8"), default_status="pending")
    click_id = CODEC.generate(setup.link_id, T0)
    steps = [
        (None, T0 + 1000, (1, D("8"), D("5"))),  # pending (the offer's default) counts
        ("approved", T0 + 2000, (1, D("8"), D("5"))),  # approval: same money, new status
        ("rejected", T0 + 3000, (0, D("0"), D("0"))),  # chargeback: taken back out
        ("approved", T0 + 4000, (0, D("0"), D("0"))),  # a postback never brings back a rejected one (staff can)
    ]
    for status, received_at, expected in steps:
        await worker.send("conversions", [conversion_body(click_id, "TX", received_at=received_at, status=status)])
        await worker.run_until_drained("conversions")
        assert await totals_of(db_engine, "conversions", "revenue", "payout") == expected, status
        assert await projection_mismatches(db_engine) == {}, status
    # A stale postback (older than the last change) does not roll the status back.
    await worker.send("conversions", [conversion_body(click_id, "TX", received_at=T0 + 2500, status="approved")])
    await worker.run_until_drained("conversions")

    (conversion,) = await conversions(db_engine)
    assert (conversion.status, conversion.payout) == ("rejected", D("5"))
    assert await rejections(db_engine) == [("status_locked", "TX"), ("duplicate", "TX")]
    async with db_engine.connect() as connection:
        audit = (await connection.execute(select(ConversionAudit.before, ConversionAudit.after))).all()
    assert [(before["status"], after["status"]) for before, after in audit] == [
        ("pending", "approved"),
        ("approved", "rejected"),
    ]


async def test_revenue_and_payout_follow_the_most_specific_rule(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    # Revenue: 10 % of the sale; payout: the offer's 5 % for one affiliate, a CPA override of 3.33 for the other.
    plain, special = await seed(
        worker.sessions,
        affiliates=2,
        revenue_model="revshare",
        revenue_amount=D("10"),
        payout_model="revshare",
        payout_amount=D("5"),
    )
    async with worker.sessions() as session, session.begin():
        session.add(
            OfferAffiliateOverride(
                offer_id=special.offer_id,
                affiliate_id=special.affiliate_id,
                payout_model="cpa",
                payout_amount=D("3.33"),
            )
        )
    bodies = [
        conversion_body(CODEC.generate(plain.link_id, T0), "A", amount="52.50", currency="USD"),  # 5 % = 2.625
        conversion_body(CODEC.generate(special.link_id, T0), "B", amount="52.70"),  # currency: the offer's
        conversion_body(CODEC.generate(plain.link_id, T0), "C", amount="-1.00"),
        conversion_body(CODEC.generate(plain.link_id, T0), "D", amount=None),
        conversion_body(CODEC.generate(plain.link_id, T0), "E", amount="10", currency="EUR"),
        conversion_body(CODEC.generate(plain.link_id, T0), "F", amount="ten"),
    ]
    await worker.send("conversions", bodies)
    await worker.run_until_drained("conversions")

    stored = {c.txid: (c.revenue, c.payout, c.amount, c.currency) for c in await conversions(db_engine)}
    assert stored == {
        "A": (D("5.25"), D("2.62"), D("52.50"), "USD"),  # half-even: 2.625 -> 2.62
        "B": (D("5.27"), D("3.33"), D("52.70"), "USD"),
    }
    assert sorted(await rejections(db_engine)) == [
        ("currency_mismatch", "E"),
        ("invalid_amount", "F"),
        ("missing_amount", "D"),
        ("negative_amount", "C"),
    ]
    assert await totals_of(db_engine, "conversions", "revenue", "payout") == (2, D("10.52"), D("5.95"))


async def test_yen_offer_rounds_to_whole_yen(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(
        worker.sessions, currency="JPY", revenue_model="revshare", revenue_amount=D("10"), payout_amount=D("300")
    )
    bodies = [
        conversion_body(CODEC.generate(setup.link_id, T0), "Y1", amount="1005", currency="JPY"),  # 100.5 -> 100
        conversion_body(CODEC.generate(setup.link_id, T0), "Y2", amount="1015"),  # 101.5 -> 102
    ]
    await worker.send("conversions", bodies)
    await worker.run_until_drained("conversions")
    stored = {c.txid: (c.revenue, c.payout, c.currency) for c in await conversions(db_engine)}
    assert stored == {"Y1": (D("100"), D("300"), "JPY"), "Y2": (D("102"), D("300"), "JPY")}


@pytest.mark.parametrize("consumers", [2])
async def test_daily_caps_hold_with_consumers_racing(
    worker: InProcessWorker, db_engine: AsyncEngine, consumers: int
) -> None:
    # Offer cap 7 a day; affiliate 0 also has its own cap of 3 on it.
    capped_one, other = await seed(
        worker.sessions, affiliates=2, daily_cap=7, payout_amount=D("2"), revenue_amount=D("3"), override=None
    )
    async with worker.sessions() as session, session.begin():
        session.add(
            OfferAffiliateOverride(offer_id=capped_one.offer_id, affiliate_id=capped_one.affiliate_id, daily_cap=3)
        )
    day = T0 + HOUR_MS
    # Enough postbacks that both consumers hold a batch at once (a batch takes up to 100 messages).
    bodies = [
        conversion_body(CODEC.generate(capped_one.link_id, T0), f"A-{i}", received_at=day + i) for i in range(150)
    ]
    bodies += [conversion_body(CODEC.generate(other.link_id, T0), f"B-{i}", received_at=day + i) for i in range(150)]
    # The next UTC day has fresh slots.
    next_day = T0 + 26 * HOUR_MS
    bodies += [conversion_body(CODEC.generate(other.link_id, T0), f"N-{i}", received_at=next_day + i) for i in range(2)]
    await worker.send("conversions", bodies)
    await worker.run_until_drained("conversions", conversions=consumers)

    stored = await conversions(db_engine)
    paid = [c for c in stored if c.status != "capped"]
    capped = [c for c in stored if c.status == "capped"]
    assert len(stored) == 302
    assert len([c for c in paid if not c.txid.startswith("N-")]) == 7  # exactly the offer cap
    assert len([c for c in paid if c.txid.startswith("A-")]) == 3  # exactly the affiliate cap
    assert len([c for c in paid if c.txid.startswith("N-")]) == 2
    assert all((c.payout, c.revenue) == (D("0"), D("0")) for c in capped)
    assert all(c.payout == D("2") for c in paid)
    assert await totals_of(db_engine, "conversions", "payout", "revenue") == (9, D("18"), D("27"))
    assert await projection_mismatches(db_engine) == {}
    async with db_engine.connect() as connection:
        used = dict(
            ((row.scope, str(row.day)), row.used)
            for row in (await connection.execute(select(DailyCap.scope, DailyCap.day, DailyCap.used))).all()
        )
    assert sorted(used.values()) == [2, 3, 7]


async def test_chargeback_gives_back_its_cap_slot(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(worker.sessions, daily_cap=1, payout_amount=D("2"), default_status="approved")
    day = T0 + HOUR_MS
    first = CODEC.generate(setup.link_id, T0)
    await worker.send("conversions", [conversion_body(first, "A", received_at=day)])
    await worker.run_until_drained("conversions")
    await worker.send("conversions", [conversion_body(first, "A", received_at=day + 10, status="rejected")])
    await worker.run_until_drained("conversions")
    await worker.send("conversions", [conversion_body(first, "B", received_at=day + 20)])
    await worker.run_until_drained("conversions")
    await worker.send("conversions", [conversion_body(first, "C", received_at=day + 30)])
    await worker.run_until_drained("conversions")

    assert {c.txid: c.status for c in await conversions(db_engine)} == {"A": "rejected", "B": "approved", "C": "capped"}
    assert await totals_of(db_engine, "conversions", "payout") == (1, D("2"))


async def test_other_advertisers_postback_is_rejected(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("2"))
    (elsewhere,) = await seed(worker.sessions, payout_amount=D("2"))
    click_id = CODEC.generate(setup.link_id, T0)
    await worker.send("conversions", [conversion_body(click_id, "X", advertiser_id=elsewhere.advertiser_id)])
    await worker.run_until_drained("conversions")
    assert await conversions(db_engine) == []
    assert await rejections(db_engine) == [("advertiser_mismatch", "X")]


async def test_unknown_link_is_recorded_and_left_on_the_queue(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("2"))
    stray = CODEC.generate(987_654, T0)  # genuine, but no such link in the database
    await worker.send("conversions", [conversion_body(stray, "S"), conversion_body(CODEC.generate(setup.link_id, T0))])
    worker.start()

    async def recorded() -> bool:
        return bool(await failed_jobs(db_engine)) and len(await conversions(db_engine)) == 1

    await wait_for(recorded, message="the good conversion stored and the stray one recorded")
    await worker.stop()
    (job,) = await failed_jobs(db_engine)
    assert (job.queue, job.receive_count) == ("conversions", 1)
    assert "link 987654" in job.error
    assert await worker.queue_counts("conversions") == (0, 1)  # in flight: SQS will redeliver it


async def test_one_poison_message_does_not_block_the_rest_of_its_batch(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, revenue_model="revshare", revenue_amount=D("10"), payout_amount=D("1"))
    click_id = CODEC.generate(setup.link_id, T0)
    # 10 % of 50 trillion does not fit the money columns (NUMERIC(18,6)): the insert fails, not the decoding.
    poison = conversion_body(click_id, "HUGE", amount="50000000000000")
    good = [conversion_body(click_id, f"OK-{i}", amount="100") for i in range(9)]
    await worker.send("conversions", [*good[:4], poison, *good[4:]])
    worker.start()

    async def settled() -> bool:
        return len(await conversions(db_engine)) == 9 and bool(await failed_jobs(db_engine))

    await wait_for(settled, message="the nine good conversions stored and the poison one recorded")
    await worker.stop()
    assert sorted(c.txid for c in await conversions(db_engine)) == [f"OK-{i}" for i in range(9)]
    (job,) = await failed_jobs(db_engine)
    assert job.body == poison and "out of range" in job.error
    assert await worker.queue_counts("conversions") == (0, 1)  # left for SQS to redeliver, then dead-letter
    assert await totals_of(db_engine, "conversions", "revenue") == (9, D("90"))


async def test_rollup_projections_sum_like_hourly_rollups_after_clicks_conversions_and_status_changes(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    first, second = await seed(
        worker.sessions, affiliates=2, daily_cap=3, payout_amount=D("2.5"), revenue_amount=D("4"), override=None
    )
    # Clicks over three hours and two links, some naming no offer (a link config without one), some bots.
    clicks = [
        click_event(setup.link_id, T0 + n * 700_000, country=country, device=device, bot=n % 5 == 0,
                    ip=f"192.0.2.{n}", offer_id=setup.offer_id if n % 3 else None,
                    affiliate_id=setup.affiliate_id if n % 3 else None)
        for n, (setup, country, device) in enumerate(
            [(first, "US", "smartphone"), (second, "BR", "desktop"), (first, None, "tablet")] * 6
        )
    ]  # fmt: skip
    await worker.send("clicks", packed(clicks, per_message=5))
    bodies = [
        conversion_body(clicks[n]["click_id"], f"T{n}", received_at=T0 + HOUR_MS + n * 1000, status=status)
        for n, status in enumerate(["approved", None, "pending", "rejected", "approved", "approved"])
    ]
    await worker.send("conversions", bodies)
    # One conversions consumer: two would split the six postbacks between them in an order that varies from run
    # to run, and the daily cap of 3 would then fall on different ones. T0 must be counted, not capped, for its
    # chargeback below to store a "rejected" row (a capped conversion takes no later status).
    await worker.run_until_drained(clicks=2, conversions=1)
    assert await projection_mismatches(db_engine) == {}
    assert {c.txid: c.status for c in await conversions(db_engine)}["T0"] == "approved"

    # Approvals, chargebacks, approvals over the full cap (which store the conversion capped).
    later = T0 + 2 * HOUR_MS
    changes = ["T2:approved", "T0:rejected", "T3:approved", "T4:rejected", "T4:approved", "T1:approved"]
    for n, change in enumerate(changes):
        txid, status = change.split(":")
        body = conversion_body(clicks[int(txid[1:])]["click_id"], txid, received_at=later + n * 1000, status=status)
        await worker.send("conversions", [body])
        await worker.run_until_drained("conversions")
        assert await projection_mismatches(db_engine) == {}, change
    stored = await conversions(db_engine)
    assert {"approved", "rejected", "capped"} <= {c.status for c in stored}
    counted = [c for c in stored if c.status in ("pending", "approved")]
    totals = await rollup_totals(db_engine)
    humans = sum(1 for click in clicks if not click["bot"])  # bots count apart, in bot_clicks
    assert (totals["clicks"], totals["bot_clicks"]) == (humans, 18 - humans)
    assert (totals["conversions"], totals["revenue"]) == (len(counted), D(4) * len(counted))


async def places(worker: InProcessWorker) -> dict[tuple[str, str], tuple[int, int, Decimal, Decimal]]:
    """The manager's report by country x device over T0's day: (clicks, conversions, revenue, payout) per place."""
    async with worker.sessions() as session:
        report = await run_report(session, build_query("country,device", "2025-11-27", "2025-11-28", "UTC"))
    return {
        (row.keys["country"], row.keys["device"]): (t.clicks, t.conversions, t.revenue, t.payout)
        for row in report.rows
        for t in (row.totals,)
    }


async def test_conversions_count_under_their_clicks_country_and_device_through_every_status_change(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"), revenue_amount=D("8"), default_status="pending")
    us = click_event(setup.link_id, T0, offer_id=setup.offer_id, affiliate_id=setup.affiliate_id)
    de = click_event(setup.link_id, T0 + 1, country="DE", device="desktop", ip="198.51.100.7")
    await worker.send("clicks", [pack_clicks([us])])
    await worker.run_until_drained("clicks")
    await worker.send("conversions", [conversion_body(us["click_id"], "TX-US", received_at=T0 + 1000)])
    await worker.run_until_drained("conversions")
    assert await places(worker) == {("US", "smartphone"): (1, 1, D("8"), D("5"))}

    # A conversion before its click counts under '' and '' (unknown), and stays there once the click is stored.
    await worker.send("conversions", [conversion_body(de["click_id"], "TX-DE", received_at=T0 + 2000)])
    await worker.run_until_drained("conversions")
    await worker.send("clicks", [pack_clicks([de])])
    await worker.run_until_drained("clicks")
    unknown_and_de = {("", ""): (0, 1, D("8"), D("5")), ("DE", "desktop"): (1, 0, D("0"), D("0"))}
    assert await places(worker) == {("US", "smartphone"): (1, 1, D("8"), D("5")), **unknown_and_de}
    assert await projection_mismatches(db_engine) == {}

    # Later postbacks move the rows the conversion was first counted in.
    await worker.send(
        "conversions",
        [
            conversion_body(us["click_id"], "TX-US", received_at=T0 + 3000, status="rejected"),
            conversion_body(de["click_id"], "TX-DE", received_at=T0 + 3000, status="rejected"),
        ],
    )
    await worker.run_until_drained("conversions")
    assert await places(worker) == {
        ("US", "smartphone"): (1, 0, D("0"), D("0")),
        ("", ""): (0, 0, D("0"), D("0")),
        ("DE", "desktop"): (1, 0, D("0"), D("0")),
    }
    assert await projection_mismatches(db_engine) == {}

    # So do the manager's edits.
    ids = {c.txid: c.id for c in await conversions(db_engine)}
    async with worker.sessions() as session:
        await edit_conversion(session, ids["TX-US"], "approve", user_id=None, payout="6")
    async with worker.sessions() as session:
        await edit_conversion(session, ids["TX-DE"], "approve", user_id=None)
    assert await places(worker) == {("US", "smartphone"): (1, 1, D("8"), D("6")), **unknown_and_de}
    assert await projection_mismatches(db_engine) == {}
    async with worker.sessions() as session:
        await edit_conversion(session, ids["TX-US"], "reject", user_id=None)
    assert (await places(worker))[("US", "smartphone")] == (1, 0, D("0"), D("0"))
    assert await projection_mismatches(db_engine) == {}


async def test_monthly_and_lifetime_caps_count_in_the_offers_time_zone(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    # Monthly cap 3 and lifetime cap 5, in New York: the month turns at 05:00 UTC on the 1st.
    (setup,) = await seed(
        worker.sessions, monthly_cap=3, lifetime_cap=5, cap_timezone="America/New_York", payout_amount=D("1")
    )
    november_end = int(datetime(2026, 12, 1, 4, 0, tzinfo=UTC).timestamp() * 1000)  # 30 Nov, 23:00 in New York
    december = int(datetime(2026, 12, 1, 6, 0, tzinfo=UTC).timestamp() * 1000)
    click = CODEC.generate(setup.link_id, november_end - HOUR_MS)
    # November's postbacks first, then December's (within a batch the order is the txids').
    await worker.send("conversions", [conversion_body(click, f"N-{i}", received_at=november_end + i) for i in range(4)])
    await worker.run_until_drained("conversions")
    await worker.send("conversions", [conversion_body(click, f"D-{i}", received_at=december + i) for i in range(4)])
    await worker.run_until_drained("conversions")

    stored = {c.txid: c.status for c in await conversions(db_engine)}
    paid = sorted(txid for txid, status in stored.items() if status != "capped")
    # November: 3 (the monthly cap); December: 2 more, where the lifetime cap (5) stops it before the monthly one.
    assert paid == ["D-0", "D-1", "N-0", "N-1", "N-2"]
    async with db_engine.connect() as connection:
        used = {
            (row.scope, str(row.day)): row.used
            for row in (await connection.execute(select(DailyCap.scope, DailyCap.day, DailyCap.used))).all()
        }
    assert used == {
        ("offer_month", "2026-11-01"): 3,
        ("offer_month", "2026-12-01"): 2,
        ("offer_total", "1970-01-01"): 5,
    }
