"""Sub-id rollups (adclick.core.subs): the worker counts each stored click once per sub key, in the transaction that
stores it, with a bounded number of distinct values per link, UTC day and key."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from adclick.core.db.models import HourlySubRollup, SubValue
from adclick.manager.conversions import edit_conversion
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine
from workerkit import (
    CODEC,
    T0,
    InProcessWorker,
    click_event,
    conversion_body,
    conversions,
    packed,
    rollup_totals,
    seed,
)

pytestmark = pytest.mark.anyio

COUNTS = ("clicks", "unique_clicks", "bot_clicks", "blocked_clicks", "capped_clicks")


def with_subs(event: dict[str, Any], *subs: str | None) -> dict[str, Any]:
    return {**event, **{f"sub{n}": value for n, value in enumerate(subs, start=1)}}


async def send(worker: InProcessWorker, events: list[dict[str, Any]]) -> None:
    for body in packed(events):
        await worker.send("clicks", [body])
    await worker.run_until_drained("clicks")


async def by_value(engine: AsyncEngine, key: int) -> dict[tuple[bool, str], tuple[int, ...]]:
    t = HourlySubRollup
    columns = [func.sum(getattr(t, name)) for name in COUNTS]
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(t.other, t.sub_value, *columns).where(t.sub_key == key).group_by(t.other, t.sub_value)
            )
        ).all()
    return {(row[0], row[1]): tuple(int(n) for n in row[2:]) for row in rows}


async def test_each_click_counts_once_per_sub_key_and_every_key_sums_to_the_hourly_rollups(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions)
    ids = {"offer_id": setup.offer_id, "affiliate_id": setup.affiliate_id}
    events = [
        with_subs(click_event(setup.link_id, T0, **ids), "pub-a", "ad 1"),
        with_subs(click_event(setup.link_id, T0 + 1, ip="203.0.113.30", **ids), "pub-a", None),
        with_subs(click_event(setup.link_id, T0 + 2, ip="203.0.113.31", bot=True, **ids), "pub-b", "ad 1"),
        with_subs(click_event(setup.link_id, T0 + 3, ip="203.0.113.32", blocked=True, **ids), "pub-b"),
        with_subs(click_event(setup.link_id, T0 + 4, ip="203.0.113.33", capped=True, **ids), None, "ad 2"),
    ]
    await send(worker, events)
    # clicks, unique, bots, blocked, capped
    assert await by_value(db_engine, 1) == {
        (False, "pub-a"): (2, 2, 0, 0, 0),
        (False, "pub-b"): (0, 0, 1, 1, 0),
        (False, ""): (0, 0, 0, 0, 1),
    }
    assert await by_value(db_engine, 2) == {
        (False, "ad 1"): (1, 1, 1, 0, 0),
        (False, ""): (1, 1, 0, 1, 0),
        (False, "ad 2"): (0, 0, 0, 0, 1),
    }
    totals = await rollup_totals(db_engine)
    for key in range(1, 6):
        sums = [sum(counts[i] for counts in (await by_value(db_engine, key)).values()) for i in range(len(COUNTS))]
        assert sums == [totals[name] for name in COUNTS], key

    # A redelivered message stores no click again, and so adds nothing.
    before = await by_value(db_engine, 1)
    await send(worker, events[:2])
    assert await by_value(db_engine, 1) == before


async def test_a_sub_with_a_value_per_click_is_bounded_per_link_and_day_and_the_rest_count_as_other(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions)
    worker.clicks.sub_limit = 2
    ids = {"offer_id": setup.offer_id, "affiliate_id": setup.affiliate_id}

    def click(n: int, sub5: str) -> dict[str, Any]:
        return with_subs(click_event(setup.link_id, T0 + n, ip=f"198.51.100.{n}", **ids), "pub", None, None, None, sub5)

    # "v-often" comes three times and "v-twice" twice in the batch: the two most frequent are admitted.
    values = ["v-often", "v-once-1", "v-often", "v-twice", "v-often", "v-twice", "v-once-2", "x" * 201]
    await send(worker, [click(n, value) for n, value in enumerate(values, start=1)])
    assert await by_value(db_engine, 5) == {
        (False, "v-often"): (3, 3, 0, 0, 0),
        (False, "v-twice"): (2, 2, 0, 0, 0),
        (True, ""): (3, 3, 0, 0, 0),  # two values past the bound and one too long to be a group
    }
    # Later the same day: an admitted value keeps its row, a new one is other; sub1's single value was never bounded.
    await send(worker, [click(20, "v-twice"), click(21, "v-new")])
    counts = await by_value(db_engine, 5)
    assert counts[(False, "v-twice")][0] == 3 and counts[(True, "")][0] == 4
    assert await by_value(db_engine, 1) == {(False, "pub"): (10, 10, 0, 0, 0)}
    async with db_engine.connect() as connection:
        admitted = (await connection.execute(select(SubValue.sub_key, SubValue.sub_value))).all()
    assert sorted(admitted) == [(1, "pub"), (5, "v-often"), (5, "v-twice")]


async def money_by_value(engine: AsyncEngine, key: int) -> dict[tuple[bool, str], tuple[int, Decimal, Decimal]]:
    t = HourlySubRollup
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                select(t.other, t.sub_value, t.conversions, t.revenue, t.payout).where(t.sub_key == key)
            )
        ).all()
    out: dict[tuple[bool, str], tuple[int, Decimal, Decimal]] = {}
    for other, value, converted, revenue, payout in rows:
        n, r, p = out.get((other, value), (0, Decimal(0), Decimal(0)))
        out[(other, value)] = (n + converted, r + revenue, p + payout)
    return {k: v for k, v in out.items() if v != (0, 0, 0)}


async def test_conversions_count_where_their_click_counted_and_status_changes_move_the_same_rows(
    worker: InProcessWorker, db_engine: AsyncEngine
) -> None:
    (setup,) = await seed(worker.sessions, revenue_amount=Decimal(10), payout_amount=Decimal(4))
    worker.clicks.sub_limit = 1
    ids = {"offer_id": setup.offer_id, "affiliate_id": setup.affiliate_id}
    first = with_subs(click_event(setup.link_id, T0, **ids), "pub-a", None, None, None, "tok-1")
    second = with_subs(click_event(setup.link_id, T0 + 1, ip="203.0.113.40", **ids), "pub-a", None, None, None, "tok-2")
    await send(worker, [first])
    await send(worker, [second])  # tok-2 comes when the day's one place for sub5 is taken: other
    late = CODEC.generate(setup.link_id, T0 + 2)  # a conversion whose click never arrives
    bodies = [conversion_body(c, f"TX-{n}") for n, c in enumerate((first["click_id"], second["click_id"], late))]
    await worker.send("conversions", bodies)
    await worker.run_until_drained("conversions")

    d = Decimal
    assert await money_by_value(db_engine, 1) == {(False, "pub-a"): (2, d(20), d(8)), (False, ""): (1, d(10), d(4))}
    assert await money_by_value(db_engine, 5) == {
        (False, "tok-1"): (1, d(10), d(4)),
        (True, ""): (1, d(10), d(4)),
        (False, ""): (1, d(10), d(4)),
    }
    totals = await rollup_totals(db_engine)
    for key in range(1, 6):
        sums = [sum(v[i] for v in (await money_by_value(db_engine, key)).values()) for i in range(3)]
        assert sums == [totals["conversions"], totals["revenue"], totals["payout"]], key

    # Staff reject the first: its rows go back, on every key, where the conversion was counted.
    stored = {c.txid: c.id for c in await conversions(db_engine)}
    async with worker.sessions() as session:
        await edit_conversion(session, stored["TX-0"], "reject", user_id=None)
    assert await money_by_value(db_engine, 1) == {(False, "pub-a"): (1, d(10), d(4)), (False, ""): (1, d(10), d(4))}
    assert (False, "tok-1") not in await money_by_value(db_engine, 5)
