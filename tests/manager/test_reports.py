"""Reports on PostgreSQL and SQLite: every grouping's rows and totals equal sums of the raw seeded clicks and
conversions, days follow the chosen time zone, sub-id groupings read raw clicks, affiliates see only their own."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from adclick.core.counting import HOURLY, ROLLUPS_BY_SIZE, add_to_rollups
from adclick.core.db.models import Advertiser, Affiliate, Click, Conversion, Link, Offer
from adclick.manager.report_queries import (
    ROLLUP_DIMENSIONS,
    ReportError,
    ReportQuery,
    build_query,
    choose_rollup,
    dimensions_of,
    run_report,
    time_series,
)
from sqlalchemy import insert, text
from sqlalchemy.ext.asyncio import AsyncSession

pytestmark = pytest.mark.anyio

D = Decimal
T0 = datetime(2026, 3, 8, 0, tzinfo=UTC)
FIRST, LAST = date(2026, 3, 8), date(2026, 3, 10)
COUNTED = ("pending", "approved")
# offer -> advertiser 1; link id -> (offer, affiliate)
LINKS = {11: (1, 1), 12: (1, 2), 13: (2, 1), 14: (3, 2)}
METRIC_NAMES = ("clicks", "unique_clicks", "bot_clicks", "conversions", "revenue", "payout")


@dataclass
class Seeded:
    clicks: list[dict[str, Any]]
    conversions: list[dict[str, Any]]


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def seed_campaigns(session: AsyncSession) -> None:
    session.add(Advertiser(id=1, name="Shop"))
    session.add_all([Affiliate(id=1, name="Alice Media"), Affiliate(id=2, name="Bob Traffic")])
    await session.flush()
    session.add_all([Offer(id=i, advertiser_id=1, name=f"Offer {i}") for i in (1, 2, 3)])
    await session.flush()
    session.add_all(
        [
            Link(id=link, slug=f"l{link}", offer_id=o, affiliate_id=a, template="https://x")
            for link, (o, a) in LINKS.items()
        ]
    )
    await session.commit()


async def seed_events(session: AsyncSession, clicks: list[dict[str, Any]], conversions: list[dict[str, Any]]) -> Seeded:
    """Insert raw clicks and conversions and the rollups the worker would have written for them."""
    rollups: list[dict[str, Any]] = []
    for click in clicks:
        offer, affiliate = LINKS[click["link_id"]]
        click.setdefault("offer_id", offer)
        click.setdefault("affiliate_id", affiliate)
        rollups.append(
            {
                "hour": hour_of(click["ts"]),
                "link_id": click["link_id"],
                "country": click.get("country") or "",
                "device": click.get("device") or "",
                "offer_id": offer,
                "affiliate_id": affiliate,
                "clicks": 0 if click["bot"] else 1,  # as the worker counts: bots only in bot_clicks
                "unique_clicks": int(click["unique"]),
                "bot_clicks": int(click["bot"]),
                "conversions": 0,
                "revenue": 0,
                "payout": 0,
            }
        )
    for conversion in conversions:
        offer, affiliate = LINKS[conversion["link_id"]]
        conversion.update(offer_id=offer, affiliate_id=affiliate, advertiser_id=1, currency="USD")
        conversion.setdefault("updated_at", conversion["created_at"])
        if conversion["status"] in COUNTED:
            rollups.append(
                {
                    "hour": hour_of(conversion["created_at"]),
                    "link_id": conversion["link_id"],
                    "country": "",
                    "device": "",
                    "offer_id": offer,
                    "affiliate_id": affiliate,
                    "clicks": 0,
                    "unique_clicks": 0,
                    "bot_clicks": 0,
                    "conversions": 1,
                    "revenue": conversion["revenue"],
                    "payout": conversion["payout"],
                }
            )
    if clicks:
        await session.execute(insert(Click), clicks)
    if conversions:
        await session.execute(insert(Conversion), conversions)
    await add_to_rollups(session, rollups)
    await session.commit()
    return Seeded(clicks, conversions)


def random_events(seed: int = 7, n_clicks: int = 400) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Clicks and conversions over four UTC days around the range, some conversions without their click."""
    rng = random.Random(seed)
    clicks: list[dict[str, Any]] = []
    for n in range(n_clicks):
        bot = rng.random() < 0.1
        clicks.append(
            {
                "click_id": f"c{n:06d}",
                "ts": T0 - timedelta(hours=6) + timedelta(seconds=rng.randrange(4 * 86_400)),
                "link_id": rng.choice(list(LINKS)),
                "country": rng.choice(["US", "BR", "DE", None]),
                "device": rng.choice(["desktop", "smartphone", None]),
                "bot": bot,
                "unique": not bot and rng.random() < 0.7,
                "sub1": rng.choice(["alpha", "beta", "=cmd|calc", None]),
                "sub2": rng.choice(["x", "y"]),
                "sub3": None,
                "sub4": rng.choice(["k1", "k2", "k3", None]),
                "sub5": f"s{rng.randrange(20)}",
            }
        )
    conversions: list[dict[str, Any]] = []
    for n, click in enumerate(rng.sample(clicks, 120)):
        conversions.append(
            {
                "txid": f"T{n}",
                "click_id": click["click_id"],
                "link_id": click["link_id"],
                "status": rng.choice(["pending", "approved", "approved", "rejected", "capped"]),
                "amount": None,
                "revenue": D(rng.randrange(100, 5000)) / 100,
                "payout": D(rng.randrange(50, 3000)) / 100,
                "created_at": click["ts"] + timedelta(minutes=rng.randrange(1, 600)),
            }
        )
    for n in range(10):  # the click has not arrived (yet): sub-id reports put these under ''
        conversions.append(
            {
                "txid": f"orphan{n}",
                "click_id": f"missing{n}",
                "link_id": 11 + n % 4,
                "status": "approved",
                "amount": D("10"),
                "revenue": D("3.33"),
                "payout": D("1.11"),
                "created_at": T0 + timedelta(hours=5 * n, minutes=17),
            }
        )
    return clicks, conversions


# -- the expected report, computed in Python from the raw events --


def rollup_key(dimension: str, zone: ZoneInfo, event: dict[str, Any], moment: datetime, is_click: bool) -> Any:
    hour = hour_of(moment)
    if dimension == "day":
        return hour.astimezone(zone).date().isoformat()
    if dimension == "hour":
        return hour.astimezone(zone).isoformat()
    if dimension in ("offer", "affiliate", "link"):
        return event[f"{dimension}_id"]
    if dimension in ("country", "device"):
        return (event.get(dimension) or "") if is_click else ""
    raise AssertionError(dimension)


def expected(data: Seeded, q: ReportQuery) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows keyed by their grouping values, as the report should give them."""
    out: dict[tuple[Any, ...], dict[str, Any]] = defaultdict(
        lambda: {name: 0 if name not in ("revenue", "payout") else D(0) for name in METRIC_NAMES}
    )

    def keep(event: dict[str, Any], click: dict[str, Any] | None) -> bool:
        for name in ("offer_id", "affiliate_id", "link_id"):
            wanted = getattr(q, name)
            if wanted is not None and event[name] != wanted:
                return False
        return True

    by_id = {click["click_id"]: click for click in data.clicks}
    if q.is_sub:
        sub = q.group_by[0]
        for click in data.clicks:
            if q.start <= click["ts"] < q.end and keep(click, click):
                row = out[(click[sub] or "",)]
                row["clicks"] += 0 if click["bot"] else 1
                row["unique_clicks"] += int(click["unique"])
                row["bot_clicks"] += int(click["bot"])
        for conversion in data.conversions:
            if (
                conversion["status"] in COUNTED
                and q.start <= conversion["created_at"] < q.end
                and keep(conversion, None)
            ):
                click = by_id.get(conversion["click_id"])
                row = out[((click or {}).get(sub) or "",)]
                row["conversions"] += 1
                row["revenue"] += conversion["revenue"]
                row["payout"] += conversion["payout"]
        return dict(out)
    for click in data.clicks:
        if q.start <= hour_of(click["ts"]) < q.end and keep(click, click):
            row = out[tuple(rollup_key(d, q.zone, click, click["ts"], True) for d in q.group_by)]
            row["clicks"] += 0 if click["bot"] else 1
            row["unique_clicks"] += int(click["unique"])
            row["bot_clicks"] += int(click["bot"])
    for conversion in data.conversions:
        when = conversion["created_at"]
        if conversion["status"] in COUNTED and q.start <= hour_of(when) < q.end and keep(conversion, None):
            row = out[tuple(rollup_key(d, q.zone, conversion, when, False) for d in q.group_by)]
            row["conversions"] += 1
            row["revenue"] += conversion["revenue"]
            row["payout"] += conversion["payout"]
    return dict(out)


def got(report: Any) -> dict[tuple[Any, ...], dict[str, Any]]:
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in report.rows:
        key = tuple(row.keys[d] for d in report.query.group_by)
        assert key not in rows, f"two rows for {key}"
        rows[key] = {name: getattr(row.totals, name) for name in METRIC_NAMES}
    return rows


def summed(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    total: dict[str, Any] = {name: 0 if name not in ("revenue", "payout") else D(0) for name in METRIC_NAMES}
    for row in rows:
        for name in METRIC_NAMES:
            total[name] += row[name]
    return total


GROUPINGS = [
    "day",
    "hour",
    "offer",
    "affiliate",
    "link",
    "country",
    "device",
    "sub1",
    "sub2",
    "sub3",
    "sub4",
    "sub5",
    "day,offer",
    "hour,link,country",
    "affiliate,device",
]


@pytest.fixture
async def seeded(db_session: AsyncSession) -> Seeded:
    await seed_campaigns(db_session)
    clicks, conversions = random_events()
    return await seed_events(db_session, clicks, conversions)


@pytest.mark.parametrize("tz", ["UTC", "America/Sao_Paulo", "Asia/Tokyo"])
async def test_every_grouping_equals_the_sums_of_the_raw_events(
    db_session: AsyncSession, seeded: Seeded, tz: str
) -> None:
    for group_by in GROUPINGS:
        q = build_query(group_by, FIRST.isoformat(), LAST.isoformat(), tz)
        report = await run_report(db_session, q)
        want = expected(seeded, q)
        assert got(report) == want, group_by
        assert {name: getattr(report.totals, name) for name in METRIC_NAMES} == summed(want.values()), group_by
        assert report.totals.clicks > 100 and report.totals.conversions > 20  # the range really holds data


# Every rollup grouping of one or two dimensions, and some of three and four.
ROLLUP_GROUPINGS = [
    ",".join(names)
    for size in (1, 2)
    for names in itertools.combinations(ROLLUP_DIMENSIONS, size)
    if not {"day", "hour"} <= set(names)
] + ["day,offer,affiliate", "hour,country,device", "offer,link,device", "day,link,country,device"]
ROLLUP_FILTERS: list[dict[str, Any]] = [
    {},
    {"offer_id": 1},
    {"affiliate_id": 2},
    {"link_id": 13},
    {"country": "BR"},
    {"device": "desktop"},
    {"offer_id": 1, "device": "smartphone"},
    {"scope_affiliate_id": 0},  # an affiliate user without an affiliate: nothing
]


def as_compared(report: Any) -> tuple[Any, ...]:
    rows = [(row.keys, row.labels, row.names, row.totals) for row in report.rows]
    return rows, report.totals, report.truncated, report.notes


async def add_uneven_rollups(session: AsyncSession) -> None:
    """Rollup rows of the kind real traffic makes besides the seeded ones: clicks whose event named no offer or
    affiliate, and a conversion that named another offer than its link's clicks (its link moved offers)."""
    moment = T0 + timedelta(hours=30, minutes=5)
    base = {"hour": hour_of(moment), "link_id": 11, "country": "US", "device": "desktop"}
    conversion = {"country": "", "device": "", "conversions": 1, "revenue": D("4.20"), "payout": D("1.10")}
    rows = [
        {**base, "offer_id": None, "affiliate_id": None, "clicks": 3, "unique_clicks": 2},
        {**base, "link_id": 12, "offer_id": None, "affiliate_id": 2, "clicks": 2, "bot_clicks": 1},
        {**base, **conversion, "offer_id": 3, "affiliate_id": 1},
    ]
    await add_to_rollups(session, rows)
    await session.commit()


@pytest.mark.parametrize(
    ("group_by", "filters", "table"),
    [
        ("day", {}, "hourly_country_device_rollups"),
        ("hour,device", {"country": "BR"}, "hourly_country_device_rollups"),
        ("day,offer", {}, "hourly_link_rollups"),
        ("link", {"scope_affiliate_id": 3}, "hourly_link_rollups"),
        ("country", {"scope_affiliate_id": 3}, "hourly_rollups"),
        ("offer,country", {}, "hourly_rollups"),
    ],
)
def test_reports_read_the_smallest_rollup_that_holds_them(group_by: str, filters: dict[str, Any], table: str) -> None:
    assert choose_rollup(build_query(group_by, "2026-03-01", "2026-03-07", "UTC", **filters)).table.name == table


@pytest.mark.parametrize("tz", ["UTC", "Asia/Kolkata", "America/New_York"])
async def test_every_rollup_that_holds_a_report_gives_the_same_report(
    db_session: AsyncSession, seeded: Seeded, tz: str
) -> None:
    await add_uneven_rollups(db_session)
    compared = 0
    for group_by in ROLLUP_GROUPINGS:
        for filters in ROLLUP_FILTERS:
            q = build_query(group_by, FIRST.isoformat(), LAST.isoformat(), tz, **filters)
            holding = [rollup for rollup in ROLLUPS_BY_SIZE if dimensions_of(q) <= rollup.dimensions]
            assert choose_rollup(q) == holding[0] and holding[-1] == HOURLY
            totals = []
            for limit in (None, 5):
                reports = [as_compared(await run_report(db_session, q, limit=limit, rollup=r)) for r in holding]
                assert all(report == reports[-1] for report in reports), (group_by, filters, limit)
                compared += len(holding) - 1
                totals.append(reports[-1][1])
            assert totals[0] == totals[1], (group_by, filters)  # a cut report still totals every row
            if filters == {} and tz == "UTC":
                assert reports[-1][1].clicks > 100  # the range really holds data
    assert compared > 100


async def test_report_queries_are_planned_for_their_own_range_without_jit(db_session: AsyncSession) -> None:
    await run_report(db_session, build_query("day", "2026-03-08", "2026-03-10", "UTC"))
    if db_session.get_bind().dialect.name != "postgresql":
        return
    # Settings of the report's transaction only (a generic plan of a month-long range walks the whole index).
    names = ("plan_cache_mode", "jit", "work_mem", "TimeZone")
    shown = [await db_session.scalar(text(f"SHOW {name}")) for name in names]
    assert shown == ["force_custom_plan", "off", "32MB", "UTC"]
    await db_session.rollback()
    assert await db_session.scalar(text("SHOW plan_cache_mode")) == "auto"


async def test_totals_are_the_same_for_every_grouping_and_derive_rates(
    db_session: AsyncSession, seeded: Seeded
) -> None:
    reference = None
    for group_by in GROUPINGS:
        report = await run_report(db_session, build_query(group_by, "2026-03-08", "2026-03-10", "America/Sao_Paulo"))
        totals = report.totals
        values = {name: getattr(totals, name) for name in METRIC_NAMES}
        reference = reference or values
        assert values == reference, group_by
        assert totals.profit == totals.revenue - totals.payout
        assert totals.conversion_rate == (D(totals.conversions) * 100 / totals.clicks).quantize(D("0.0001"))
        assert totals.epc == (totals.revenue / totals.clicks).quantize(D("0.0001"))


async def test_days_are_cut_at_local_midnight(db_session: AsyncSession) -> None:
    await seed_campaigns(db_session)
    # 02:30 UTC on the 10th is 23:30 on the 9th in São Paulo (UTC-3); 04:10 UTC is 01:10 on the 10th there.
    late = datetime(2026, 3, 10, 2, 30, tzinfo=UTC)
    early = datetime(2026, 3, 10, 4, 10, tzinfo=UTC)
    clicks = [
        {"click_id": "late", "ts": late, "link_id": 11, "bot": False, "unique": True},
        {"click_id": "early", "ts": early, "link_id": 11, "bot": False, "unique": True},
    ]
    conversions = [
        {"txid": "t", "click_id": "late", "link_id": 11, "status": "approved", "amount": None,
         "revenue": D("5"), "payout": D("2"), "created_at": late + timedelta(minutes=5)},
    ]  # fmt: skip
    await seed_events(db_session, clicks, conversions)

    def by_day(report: Any) -> dict[str, tuple[int, int]]:
        return {row.keys["day"]: (row.totals.clicks, row.totals.conversions) for row in report.rows}

    utc = await run_report(db_session, build_query("day", "2026-03-09", "2026-03-10", "UTC"))
    assert by_day(utc) == {"2026-03-10": (2, 1)}
    sao_paulo = await run_report(db_session, build_query("day", "2026-03-09", "2026-03-10", "America/Sao_Paulo"))
    assert by_day(sao_paulo) == {"2026-03-09": (1, 1), "2026-03-10": (1, 0)}
    # The 9th alone in São Paulo is [03:00 UTC on the 9th, 03:00 UTC on the 10th): only the late click.
    only_ninth = await run_report(db_session, build_query("day", "2026-03-09", "2026-03-09", "America/Sao_Paulo"))
    assert by_day(only_ninth) == {"2026-03-09": (1, 1)}
    hours = await run_report(db_session, build_query("hour", "2026-03-09", "2026-03-10", "America/Sao_Paulo"))
    assert [row.keys["hour"] for row in hours.rows] == ["2026-03-09T23:00:00-03:00", "2026-03-10T01:00:00-03:00"]
    assert [row.labels["hour"] for row in hours.rows] == ["2026-03-09 23:00", "2026-03-10 01:00"]


async def test_days_follow_daylight_saving_changes(db_session: AsyncSession) -> None:
    await seed_campaigns(db_session)
    # New York goes from UTC-5 to UTC-4 on 2026-03-08. 04:30 UTC on the 9th is 00:30 on the 9th (EDT);
    # 04:30 UTC on the 8th is 23:30 on the 7th (EST).
    clicks = [
        {"click_id": "a", "ts": datetime(2026, 3, 8, 4, 30, tzinfo=UTC), "link_id": 11, "bot": False, "unique": False},
        {"click_id": "b", "ts": datetime(2026, 3, 9, 4, 30, tzinfo=UTC), "link_id": 11, "bot": False, "unique": False},
        {"click_id": "c", "ts": datetime(2026, 3, 9, 3, 30, tzinfo=UTC), "link_id": 11, "bot": False, "unique": False},
    ]
    await seed_events(db_session, clicks, [])
    report = await run_report(db_session, build_query("day", "2026-03-07", "2026-03-09", "America/New_York"))
    assert {row.keys["day"]: row.totals.clicks for row in report.rows} == {
        "2026-03-07": 1,
        "2026-03-08": 1,
        "2026-03-09": 1,
    }


async def test_half_hour_zones_count_each_utc_hour_where_it_starts_and_say_so(db_session: AsyncSession) -> None:
    await seed_campaigns(db_session)
    # Kolkata is UTC+05:30. Rollup hour 18:00 UTC starts at 23:30 local (the 9th), 19:00 UTC at 00:30 (the 10th).
    clicks = [
        {"click_id": "a", "ts": datetime(2026, 3, 9, 18, 45, tzinfo=UTC), "link_id": 11, "bot": False, "unique": False},
        {"click_id": "b", "ts": datetime(2026, 3, 9, 19, 5, tzinfo=UTC), "link_id": 11, "bot": False, "unique": False},
    ]
    await seed_events(db_session, clicks, [])
    report = await run_report(db_session, build_query("day", "2026-03-09", "2026-03-10", "Asia/Kolkata"))
    assert {row.keys["day"]: row.totals.clicks for row in report.rows} == {"2026-03-09": 1, "2026-03-10": 1}
    assert any("00:30" in note for note in report.notes)
    # Sub-id reports read exact click times: 18:45 UTC is 00:15 on the 10th in Kolkata.
    tenth = await run_report(db_session, build_query("sub1", "2026-03-10", "2026-03-10", "Asia/Kolkata"))
    assert tenth.totals.clicks == 2 and tenth.notes == []


async def test_affiliates_see_only_their_own_rows(db_session: AsyncSession, seeded: Seeded) -> None:
    for group_by in ("affiliate", "link", "day,offer", "sub1"):
        q = build_query(group_by, "2026-03-08", "2026-03-10", "UTC", affiliate_id=2, scope_affiliate_id=1)
        assert q.affiliate_id == 1
        report = await run_report(db_session, q)
        assert got(report) == expected(seeded, q)
        own = {link for link, (_, affiliate) in LINKS.items() if affiliate == 1}
        if group_by == "affiliate":
            assert [row.keys["affiliate"] for row in report.rows] == [1]
        if group_by == "link":
            assert {row.keys["link"] for row in report.rows} == own
    everyone = await run_report(db_session, build_query("affiliate", "2026-03-08", "2026-03-10", "UTC"))
    assert {row.keys["affiliate"] for row in everyone.rows} == {1, 2}


async def test_filters_and_names(db_session: AsyncSession, seeded: Seeded) -> None:
    q = build_query("link", "2026-03-08", "2026-03-10", "UTC", offer_id=1, country="br")
    report = await run_report(db_session, q)
    assert {row.keys["link"] for row in report.rows} <= {11, 12}
    assert report.totals.clicks == sum(
        1
        for c in seeded.clicks
        if c["offer_id"] == 1 and c["country"] == "BR" and q.start <= c["ts"] < q.end and not c["bot"]
    )
    named = await run_report(db_session, build_query("offer,affiliate", "2026-03-08", "2026-03-10", "UTC"))
    labels = {(row.labels["offer"], row.labels["affiliate"]) for row in named.rows}
    assert ("Offer 1 (#1)", "Alice Media (#1)") in labels


async def test_limit_truncates_rows_but_not_totals(db_session: AsyncSession, seeded: Seeded) -> None:
    q = build_query("hour", "2026-03-08", "2026-03-10", "UTC")
    full = await run_report(db_session, q)
    cut = await run_report(db_session, q, limit=5)
    assert len(cut.rows) == 5 and cut.truncated and not full.truncated
    assert cut.totals == full.totals
    assert [row.keys for row in cut.rows] == [row.keys for row in full.rows[:5]]
    sub = build_query("sub5", "2026-03-08", "2026-03-10", "UTC")
    assert (await run_report(db_session, sub, limit=3)).totals == (await run_report(db_session, sub)).totals


async def test_time_series_has_every_bucket(db_session: AsyncSession, seeded: Seeded) -> None:
    q = build_query("day", "2026-03-06", "2026-03-10", "America/Sao_Paulo")
    series = await time_series(db_session, q)
    assert series["interval"] == "day"
    assert series["labels"] == ["2026-03-06", "2026-03-07", "2026-03-08", "2026-03-09", "2026-03-10"]
    assert series["clicks"][0] == 0 and sum(series["clicks"]) == (await run_report(db_session, q)).totals.clicks
    hourly = await time_series(db_session, build_query("day", "2026-03-09", "2026-03-09", "America/Sao_Paulo"))
    assert hourly["interval"] == "hour" and len(hourly["labels"]) == 24
    assert hourly["labels"][0] == "2026-03-09 00:00"
    day_report = await run_report(db_session, build_query("day", "2026-03-09", "2026-03-09", "America/Sao_Paulo"))
    assert sum(D(value) for value in hourly["revenue"]) == day_report.totals.revenue


BAD: list[tuple[Callable[[], Any], str]] = [
    (lambda: build_query("sub1", "2026-01-01", "2026-02-15", "UTC"), "at most 31 days"),
    (lambda: build_query("day", "2024-01-01", "2026-02-15", "UTC"), "at most 400 days"),
    (lambda: build_query("weekday"), "cannot group by weekday"),
    (lambda: build_query("sub1,offer"), "cannot be combined"),
    (lambda: build_query("day,hour"), "not both"),
    (lambda: build_query("day", "2026-03-10", "2026-03-01"), "before"),
    (lambda: build_query("day", "yesterday"), "YYYY-MM-DD"),
    (lambda: build_query("day", tz="Mars/Olympus"), "unknown time zone"),
    (lambda: build_query("day", tz="../../etc/passwd"), "unknown time zone"),
    (lambda: build_query("day,offer,link,country,device"), "at most 4"),
]


@pytest.mark.parametrize(("make", "message"), BAD, ids=[message for _, message in BAD])
def test_bad_requests_say_what_is_wrong(make: Callable[[], Any], message: str) -> None:
    with pytest.raises(ReportError, match=message):
        make()


def test_sub_id_reports_may_cover_31_days_and_default_to_the_last_week() -> None:
    q = build_query("sub1", "2026-01-01", "2026-01-31", "UTC")
    assert (q.start, q.end) == (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC))
    default = build_query(None, tz="America/Sao_Paulo", today=date(2026, 3, 10))
    assert (default.group_by, default.date_from, default.date_to) == (("day",), date(2026, 3, 4), date(2026, 3, 10))
    assert default.start == datetime(2026, 3, 4, 3, tzinfo=UTC)
