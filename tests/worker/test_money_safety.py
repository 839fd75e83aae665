"""Who may create, price or change a conversion (issue 14), on PostgreSQL and SQLite.

- The pixel: only where the offer enables it, never a status of its own, one per click, its amount bounded, and
  only from the offer's pages when it lists them.
- Server-to-server postbacks: only from the advertiser's allowlist when it has one, and never a status change
  that takes staff (back from rejected).
- Bots and blocked addresses: never in clicks, CR or EPC, and their conversions never earn.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from adclick import _native
from adclick.manager.report_queries import build_query, run_report
from sqlalchemy.ext.asyncio import AsyncEngine
from workerkit import (
    CODEC,
    HOUR_MS,
    T0,
    InProcessWorker,
    click_event,
    conversion_body,
    conversions,
    packed,
    rejections,
    rollup_totals,
    seed,
    totals_of,
)

pytestmark = pytest.mark.anyio

D = Decimal


def pixel(click_id: str, txid: str | None = None, **fields: object) -> str:
    return conversion_body(click_id, txid, source="pixel", **fields)  # type: ignore[arg-type]


async def run(worker: InProcessWorker, *bodies: str) -> None:
    for body in bodies:  # one at a time: each later message must see what the earlier ones stored
        await worker.send("conversions", [body])
        await worker.run_until_drained("conversions")


# -- the pixel --


async def test_a_pixel_on_an_offer_without_it_records_nothing(worker: InProcessWorker, db_engine: AsyncEngine) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"), default_status="approved")
    click_id = CODEC.generate(setup.link_id, T0)
    await run(worker, pixel(click_id, "ORDER-1", status="approved", amount="100"))

    assert await conversions(db_engine) == []
    assert await rejections(db_engine) == [("pixel_disabled", "pixel:" + click_id)]
    assert (await rollup_totals(db_engine))["payout"] == 0


async def test_a_pixel_takes_the_offers_pixel_status_once_per_click_and_never_changes_a_status(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(
        worker.sessions, payout_amount=D("5"), revenue_amount=D("8"), default_status="approved", pixel_enabled=True
    )
    click_id = CODEC.generate(setup.link_id, T0)
    other_click = CODEC.generate(setup.link_id, T0 + 1)
    await run(
        worker,
        conversion_body(other_click, "S2S-1", status="approved", received_at=T0 + 1000),  # the advertiser's own
        pixel(click_id, "ORDER-1", status="approved", received_at=T0 + 2000),  # asks for approved: gets pending
        pixel(click_id, "ORDER-2", status="approved", received_at=T0 + 3000),  # a second one on the same click
        pixel(click_id, None, status="rejected", received_at=T0 + 4000),  # and one that tries to change it
        pixel(other_click, "S2S-1", status="rejected", received_at=T0 + 5000),  # or the advertiser's conversion
    )

    stored = {(c.click_id, c.txid): c for c in await conversions(db_engine)}
    assert {key: row.status for key, row in stored.items()} == {
        (other_click, "S2S-1"): "approved",  # untouched by the pixel
        (click_id, "pixel:" + click_id): "pending",
        (other_click, "pixel:" + other_click): "pending",
    }
    assert stored[(click_id, "pixel:" + click_id)].params is not None
    assert stored[(click_id, "pixel:" + click_id)].params["txid"] == "ORDER-1"  # the advertiser's txid is kept
    assert sorted(await rejections(db_engine)) == [("duplicate", "pixel:" + click_id)] * 2
    # pending counts as pending, never approved
    assert await totals_of(db_engine, "conversions", "payout") == (3, D("15"))


async def test_an_offer_may_give_pixel_conversions_another_status(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"), pixel_enabled=True, pixel_status="approved")
    await run(worker, pixel(CODEC.generate(setup.link_id, T0), "ORDER-1", status="rejected"))
    assert [c.status for c in await conversions(db_engine)] == ["approved"]


async def test_a_pixels_amount_counts_only_for_revshare_and_never_above_the_maximum(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (cpa,) = await seed(worker.sessions, payout_amount=D("5"), revenue_amount=D("8"), pixel_enabled=True)
    (share,) = await seed(
        worker.sessions,
        revenue_model="revshare",
        revenue_amount=D("10"),
        payout_model="revshare",
        payout_amount=D("5"),
        pixel_enabled=True,
        pixel_max_amount=D("200"),
    )
    cpa_click = CODEC.generate(cpa.link_id, T0)
    share_click = CODEC.generate(share.link_id, T0)
    greedy_click = CODEC.generate(share.link_id, T0 + 1)
    await run(
        worker,
        pixel(cpa_click, "A", amount="99999"),  # ignored: CPA money does not depend on it
        pixel(share_click, "B", amount="150.00"),
        pixel(greedy_click, "C", amount="200.01"),
    )

    stored = {c.click_id: c for c in await conversions(db_engine)}
    assert (stored[cpa_click].amount, stored[cpa_click].revenue, stored[cpa_click].payout) == (None, D("8"), D("5"))
    assert (stored[share_click].revenue, stored[share_click].payout) == (D("15"), D("7.5"))
    assert greedy_click not in stored
    assert await rejections(db_engine) == [("amount_over_max", "pixel:" + greedy_click)]


async def test_a_pixel_from_a_page_off_the_offers_domains_is_refused(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("1"), pixel_enabled=True, pixel_domains="shop.example")
    clicks = [CODEC.generate(setup.link_id, T0 + i) for i in range(4)]
    await run(
        worker,
        pixel(clicks[0], origin="shop.example"),
        pixel(clicks[1], origin="checkout.shop.example"),
        pixel(clicks[2], origin="shop.example.evil.test"),
        pixel(clicks[3]),  # no Origin nor Referer
    )

    assert sorted(c.click_id for c in await conversions(db_engine)) == sorted(clicks[:2])
    assert sorted(await rejections(db_engine)) == sorted(
        [("pixel_origin", "pixel:" + clicks[2]), ("pixel_origin", "pixel:" + clicks[3])]
    )


# -- server-to-server postbacks --


async def test_postbacks_from_outside_the_advertisers_allowlist_neither_create_nor_change(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(
        worker.sessions,
        payout_amount=D("5"),
        default_status="pending",
        advertiser_columns={"postback_ips": "198.51.100.0/24, 2001:db8::/32"},
    )
    first, second = CODEC.generate(setup.link_id, T0), CODEC.generate(setup.link_id, T0 + 1)
    await run(
        worker,
        conversion_body(first, "IN", ip="198.51.100.7", received_at=T0 + 1000),
        conversion_body(second, "V6", ip="2001:db8::9", received_at=T0 + 1000),
        conversion_body(first, "IN", ip="203.0.113.5", status="approved", received_at=T0 + 2000),  # a change
        conversion_body(second, "OUT", ip="203.0.113.5", received_at=T0 + 3000),
        conversion_body(second, "NONE", received_at=T0 + 4000),  # a message with no address (an old intake)
    )

    assert {c.txid: c.status for c in await conversions(db_engine)} == {"IN": "pending", "V6": "pending"}
    assert sorted(await rejections(db_engine)) == [
        ("ip_not_allowed", "IN"),
        ("ip_not_allowed", "NONE"),
        ("ip_not_allowed", "OUT"),
    ]


async def test_another_advertiser_cannot_change_a_stored_conversion(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"), default_status="approved")
    (elsewhere,) = await seed(worker.sessions, payout_amount=D("5"))
    click_id = CODEC.generate(setup.link_id, T0)
    await run(
        worker,
        conversion_body(click_id, "T", advertiser_id=setup.advertiser_id, received_at=T0 + 1000),
        conversion_body(click_id, "T", advertiser_id=elsewhere.advertiser_id, status="rejected", received_at=T0 + 2000),
    )
    assert [c.status for c in await conversions(db_engine)] == ["approved"]
    assert await rejections(db_engine) == [("advertiser_mismatch", "T")]


@pytest.mark.parametrize(
    ("steps", "final", "refused"),
    [
        (["pending", "approved", "rejected"], "rejected", 0),  # approval, then a reversal
        (["pending", "rejected", "approved"], "rejected", 1),  # never back from rejected
        (["pending", "rejected", "pending"], "rejected", 1),
        (["approved", "pending"], "approved", 1),  # nor from approved to pending
    ],
)
async def test_status_changes_through_postbacks_follow_the_documented_rules(
    worker: InProcessWorker, db_engine: AsyncEngine, steps: list[str], final: str, refused: int
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"))
    click_id = CODEC.generate(setup.link_id, T0)
    await run(
        worker,
        *(conversion_body(click_id, "T", status=s, received_at=T0 + 1000 * (i + 1)) for i, s in enumerate(steps)),
    )
    assert [c.status for c in await conversions(db_engine)] == [final]
    assert await rejections(db_engine) == [("status_locked", "T")] * refused


# -- bots and blocked addresses --


async def test_conversions_on_bot_and_blocked_clicks_are_stored_rejected_with_their_reason(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (strict,) = await seed(worker.sessions, payout_amount=D("5"), default_status="approved")
    (lenient,) = await seed(worker.sessions, payout_amount=D("5"), default_status="approved", bot_conversions="accept")
    bot = CODEC.generate(strict.link_id, T0, _native.FLAG_BOT)
    accepted_bot = CODEC.generate(lenient.link_id, T0, _native.FLAG_BOT)
    blocked = CODEC.generate(lenient.link_id, T0 + 1, _native.FLAG_BLOCKED)
    human = CODEC.generate(strict.link_id, T0 + 2)
    await run(
        worker,
        *(conversion_body(c, "T-" + c[-6:]) for c in (bot, accepted_bot, blocked, human)),
        conversion_body(bot, "T-" + bot[-6:], status="approved", received_at=T0 + 2 * HOUR_MS),  # a later approval
    )

    stored = {c.click_id: (c.status, c.reason) for c in await conversions(db_engine)}
    assert stored == {
        bot: ("rejected", "bot"),
        accepted_bot: ("approved", None),
        blocked: ("rejected", "blocked"),  # whatever the offer says of bots
        human: ("approved", None),
    }
    assert [reason for reason, _txid in await rejections(db_engine)] == ["status_locked"]
    assert await totals_of(db_engine, "conversions", "payout") == (2, D("10"))


async def test_bot_and_blocked_clicks_count_apart_and_never_in_clicks_cr_or_epc(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, payout_amount=D("5"), revenue_amount=D("10"), default_status="approved")
    ids = {"offer_id": setup.offer_id, "affiliate_id": setup.affiliate_id}
    events = [
        click_event(setup.link_id, T0, **ids),
        click_event(setup.link_id, T0 + 1, ip="203.0.113.10", **ids),
        click_event(setup.link_id, T0 + 2, bot=True, ip="203.0.113.11", **ids),
        click_event(setup.link_id, T0 + 3, blocked=True, ip="203.0.113.12", **ids),
        click_event(setup.link_id, T0 + 4, bot=True, blocked=True, ip="203.0.113.13", **ids),
    ]
    for body in packed(events):
        await worker.send("clicks", [body])
    await worker.run_until_drained("clicks")
    await run(worker, conversion_body(events[0]["click_id"], "SALE"))

    assert await totals_of(db_engine, "clicks", "unique_clicks", "bot_clicks", "blocked_clicks") == (2, 2, 1, 2)
    async with worker.sessions() as session:
        for group_by in ("offer", "sub1"):  # from the rollups, and from the raw clicks
            report = await run_report(session, build_query(group_by, "2025-11-27", "2025-11-28", "UTC"))
            (row,) = report.rows
            assert (row.totals.clicks, row.totals.bot_clicks, row.totals.blocked_clicks) == (2, 1, 2), group_by
            assert (row.totals.conversion_rate, row.totals.epc) == (D("50"), D("5")), group_by
