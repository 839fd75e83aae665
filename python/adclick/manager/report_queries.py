"""Report queries: clicks, conversions and money grouped by time or dimension, in any IANA time zone, with totals.

Rollup groupings (day, hour, offer, affiliate, link, country, device; up to four at once) read the rollup table
with the fewest rows that holds every grouping and filter of the request (`choose_rollup`): hour x country x
device, else hour x link, else `hourly_rollups` itself. The smaller tables are exact projections of
`hourly_rollups` (adclick.core.counting), so a report sums the same whichever table serves it. Sub-id groupings
(sub1..sub5, one at a time) read raw clicks and the conversions of the range, over at most `SUB_RANGE_MAX_DAYS`
days.

Time zones: a range is whole local days [from 00:00, to + 1 day 00:00) in the chosen zone. Rollups are hourly in
UTC and each rollup hour counts in the local day (and is labelled with the local hour) where it starts. In every
zone whose offset is a whole number of hours that is exact; in a zone with a :30 or :45 offset (Asia/Kolkata,
Asia/Kathmandu, Australia/Adelaide...) a local day runs from 00:30 (00:45) to 00:30 the next day, and the report
says so in `notes`. Sub-id reports read exact timestamps, so their days are exact in every zone.
Day buckets are computed in SQL from the zone's UTC offsets over the range (DST transitions included), a CASE of
`CAST(hour + interval 'N minutes' AS date)` per rollup row on PostgreSQL (in UTC, which the report transaction
sets; cheaper per row than `AT TIME ZONE`, and than grouping by hour first, which leaves a big intermediate
result) and of `date(hour, '+N minutes')` per hour on SQLite, after grouping by hour.

Conversions count as the rollups count them: `pending` and `approved`, at the hour the conversion was received, under
their click's country and device ("(unknown)" when the click was not stored yet when the conversion was: see
adclick.core.counting.Place). Sums of revenue and payout add offers' amounts whatever their currency.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from functools import lru_cache
from itertools import pairwise
from typing import Any, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import (
    ColumnElement,
    Date,
    Select,
    Table,
    and_,
    case,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    type_coerce,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy import text as sql_text
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.counting import COUNTED, NO_ID, ROLLUPS_BY_SIZE, Rollup
from adclick.core.db.models import ROLLUP_METRICS, ROLLUP_MONEY, Affiliate, Click, Conversion, Link, Offer
from adclick.core.db.types import Money

ROLLUP_DIMENSIONS = ("day", "hour", "offer", "affiliate", "link", "country", "device")
SUB_DIMENSIONS = ("sub1", "sub2", "sub3", "sub4", "sub5")
DIMENSIONS = ROLLUP_DIMENSIONS + SUB_DIMENSIONS
TIME_DIMENSIONS = ("day", "hour")
NAMED_DIMENSIONS = ("offer", "affiliate", "link")
MAX_GROUPS = 4  # hour x link x country x device: the rollups row by row
RANGE_MAX_DAYS = 400
SUB_RANGE_MAX_DAYS = 31
DEFAULT_DAYS = 7
COUNTED_STATUSES = tuple(sorted(COUNTED))  # what adds to the rollups
# A report filter -> the ReportQuery field that holds it.
FILTER_DIMENSIONS = {
    "offer": "offer_id",
    "affiliate": "affiliate_id",
    "link": "link_id",
    "country": "country",
    "device": "device",
}
METRICS = ROLLUP_METRICS
MONEY = ROLLUP_MONEY  # the METRICS summed as money
UNKNOWN_LABEL = "(unknown)"
NONE_LABEL = "(none)"

_CLICKS = cast(Table, Click.__table__)
_CONVERSIONS = cast(Table, Conversion.__table__)
_ZONE_NAME = re.compile(r"^[A-Za-z0-9_+\-/]{1,64}$")
_ZERO = Decimal(0)
_RATE = Decimal("0.0001")


class ReportError(ValueError):
    """A report request that cannot be answered as asked (an HTTP 400, with this message)."""


@dataclass(frozen=True, slots=True)
class ReportQuery:
    """What to report: groupings, a UTC range made of whole local days, and equality filters."""

    group_by: tuple[str, ...]
    zone: ZoneInfo
    date_from: date
    date_to: date
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    offer_id: int | None = None
    affiliate_id: int | None = None
    link_id: int | None = None
    country: str | None = None
    device: str | None = None

    @property
    def tz(self) -> str:
        return self.zone.key

    @property
    def is_sub(self) -> bool:
        return self.group_by[0] in SUB_DIMENSIONS

    def params(self) -> dict[str, str]:
        """The query string that asks for this report again (links from the HTML page, CSV export)."""
        out = {
            "group_by": ",".join(self.group_by),
            "from": self.date_from.isoformat(),
            "to": self.date_to.isoformat(),
            "tz": self.tz,
        }
        for name in ("offer_id", "affiliate_id", "link_id", "country", "device"):
            value = getattr(self, name)
            if value is not None:
                out[name] = str(value)
        return out


def parse_zone(name: str | None) -> ZoneInfo:
    if not name:
        return ZoneInfo("UTC")
    if not _ZONE_NAME.match(name) or ".." in name:
        raise ReportError(f"unknown time zone {name!r}: use an IANA name such as America/Sao_Paulo")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ReportError(f"unknown time zone {name!r}: use an IANA name such as America/Sao_Paulo") from None


def parse_date(value: str, name: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ReportError(f"{name} must be a date (YYYY-MM-DD), got {value!r}") from None


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant of local 00:00 (a midnight skipped by a DST jump maps to the first instant after it)."""
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def parse_group_by(value: str | None) -> tuple[str, ...]:
    names = tuple(part.strip() for part in (value or "day").split(",") if part.strip())
    if not names:
        names = ("day",)
    unknown = [name for name in names if name not in DIMENSIONS]
    if unknown:
        raise ReportError(f"cannot group by {', '.join(unknown)}: choose from {', '.join(DIMENSIONS)}")
    if len(set(names)) != len(names):
        raise ReportError("group_by names a grouping twice")
    if len(names) > MAX_GROUPS:
        raise ReportError(f"group by at most {MAX_GROUPS} groupings at once")
    if any(name in SUB_DIMENSIONS for name in names) and len(names) > 1:
        raise ReportError("a sub-id grouping (sub1..sub5) reads raw clicks and cannot be combined with others")
    if "day" in names and "hour" in names:
        raise ReportError("group by day or by hour, not both")
    return names


def build_query(
    group_by: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    tz: str | None = None,
    *,
    offer_id: int | None = None,
    affiliate_id: int | None = None,
    link_id: int | None = None,
    country: str | None = None,
    device: str | None = None,
    scope_affiliate_id: int | None = None,
    today: date | None = None,
) -> ReportQuery:
    """Validate a report request. `scope_affiliate_id` (an affiliate user's own id) overrides `affiliate_id`.

    Without dates: the last `DEFAULT_DAYS` local days, today included. Raises ReportError.
    """
    names = parse_group_by(group_by)
    zone = parse_zone(tz)
    if today is None:
        today = datetime.now(zone).date()
    last = parse_date(date_to, "to") if date_to else today
    first = parse_date(date_from, "from") if date_from else last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first:
        raise ReportError(f"'to' ({last}) is before 'from' ({first})")
    days = (last - first).days + 1
    limit = SUB_RANGE_MAX_DAYS if names[0] in SUB_DIMENSIONS else RANGE_MAX_DAYS
    if days > limit:
        what = "sub-id reports read raw clicks and cover" if limit == SUB_RANGE_MAX_DAYS else "a report covers"
        raise ReportError(f"{what} at most {limit} days; {first} to {last} is {days} days")
    if country is not None:
        country = country.strip().upper() or None
    if device is not None:
        device = device.strip() or None
    if scope_affiliate_id is not None:
        affiliate_id = scope_affiliate_id
    return ReportQuery(
        group_by=names,
        zone=zone,
        date_from=first,
        date_to=last,
        start=local_midnight(first, zone),
        end=local_midnight(last + timedelta(days=1), zone),
        offer_id=offer_id,
        affiliate_id=affiliate_id,
        link_id=link_id,
        country=country,
        device=device,
    )


# -- metrics --


@dataclass(slots=True)
class Totals:
    """The counters of one report row (or of the whole report) and the rates derived from them.

    `clicks` are the clicks that can earn: bot, blocked and capped clicks (sent to a full offer's cap fallback) are
    counted apart, and CR and EPC ignore them.
    """

    clicks: int = 0
    unique_clicks: int = 0
    bot_clicks: int = 0
    blocked_clicks: int = 0
    capped_clicks: int = 0
    conversions: int = 0
    revenue: Decimal = _ZERO
    payout: Decimal = _ZERO

    def add(self, other: Totals) -> None:
        self.clicks += other.clicks
        self.unique_clicks += other.unique_clicks
        self.bot_clicks += other.bot_clicks
        self.blocked_clicks += other.blocked_clicks
        self.capped_clicks += other.capped_clicks
        self.conversions += other.conversions
        self.revenue += other.revenue
        self.payout += other.payout

    @property
    def profit(self) -> Decimal:
        return self.revenue - self.payout

    @property
    def conversion_rate(self) -> Decimal | None:
        """Conversions per 100 clicks; None without clicks."""
        if not self.clicks:
            return None
        return (Decimal(self.conversions) * 100 / self.clicks).quantize(_RATE)

    @property
    def epc(self) -> Decimal | None:
        """Revenue per click; None without clicks."""
        if not self.clicks:
            return None
        return (self.revenue / self.clicks).quantize(_RATE)

    @property
    def payout_epc(self) -> Decimal | None:
        """Payout per click (an affiliate's EPC); None without clicks."""
        if not self.clicks:
            return None
        return (self.payout / self.clicks).quantize(_RATE)

    def as_dict(self, staff: bool = True) -> dict[str, Any]:
        """JSON-ready: counts as numbers, money and rates as exact decimal strings.

        Without `staff` (an affiliate's view): no revenue or profit, and EPC is payout per click.
        """
        cr, epc = self.conversion_rate, self.epc if staff else self.payout_epc
        out: dict[str, Any] = {
            "clicks": self.clicks,
            "unique_clicks": self.unique_clicks,
            "bot_clicks": self.bot_clicks,
            "blocked_clicks": self.blocked_clicks,
            "capped_clicks": self.capped_clicks,
            "conversions": self.conversions,
            "conversion_rate": None if cr is None else str(cr),
            "revenue": str(self.revenue),
            "payout": str(self.payout),
            "profit": str(self.profit),
            "epc": None if epc is None else str(epc),
        }
        if not staff:
            del out["revenue"], out["profit"]
        return out

    @classmethod
    def from_mapping(cls, row: Any) -> Totals:
        return cls(
            clicks=int(row["clicks"] or 0),
            unique_clicks=int(row["unique_clicks"] or 0),
            bot_clicks=int(row["bot_clicks"] or 0),
            blocked_clicks=int(row["blocked_clicks"] or 0),
            capped_clicks=int(row["capped_clicks"] or 0),
            conversions=int(row["conversions"] or 0),
            revenue=row["revenue"] if row["revenue"] is not None else _ZERO,
            payout=row["payout"] if row["payout"] is not None else _ZERO,
        )


@dataclass(slots=True)
class ReportRow:
    keys: dict[str, Any]  # grouping -> raw key (ISO date/hour text, id, country code, sub value)
    labels: dict[str, str]  # grouping -> what a person reads
    totals: Totals
    names: dict[str, str | None] = field(default_factory=dict)  # offer/affiliate name, link slug

    def as_dict(self, staff: bool = True) -> dict[str, Any]:
        return {"keys": self.keys, "labels": self.labels, **self.totals.as_dict(staff)}


@dataclass(slots=True)
class Report:
    query: ReportQuery
    rows: list[ReportRow]
    totals: Totals
    truncated: bool = False
    notes: list[str] = field(default_factory=list)

    def as_dict(self, staff: bool = True) -> dict[str, Any]:
        """JSON-ready; without `staff`, what an affiliate may see (Totals.as_dict)."""
        q = self.query
        return {
            "group_by": list(q.group_by),
            "from": q.date_from.isoformat(),
            "to": q.date_to.isoformat(),
            "tz": q.tz,
            "start": q.start.isoformat(),
            "end": q.end.isoformat(),
            "rows": [row.as_dict(staff) for row in self.rows],
            "totals": self.totals.as_dict(staff),
            "truncated": self.truncated,
            "notes": self.notes,
        }


# -- SQL --


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


# A report binds its time range. After five runs PostgreSQL may switch a prepared statement to a generic plan, costed
# for a range of unknown width (a fraction of a percent of the rows): on a month of rollups that walks the whole
# primary key index in one process instead of scanning in parallel, several times slower. So every report is planned
# for its own range. Its hash aggregates get room (a month by hour and offer is ~15k groups, which sort on disk at
# the default 4 MB), and no JIT: a sub-id report's row estimates are far too high, and compiling its plan took a
# second of a 5-second report, for nothing back. Local days are cut in UTC arithmetic (`local_day`).
_REPORT_SETTINGS = sql_text(
    "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('work_mem', '32MB', true),"
    " set_config('jit', 'off', true), set_config('TimeZone', 'UTC', true)"
)


async def prepare_report_transaction(session: AsyncSession) -> None:
    """Settings for the report queries of this transaction (PostgreSQL; they end with it)."""
    if _dialect(session) == "postgresql":
        await session.execute(_REPORT_SETTINGS)


@lru_cache(maxsize=256)
def offset_segments(start: datetime, end: datetime, zone: ZoneInfo) -> tuple[tuple[datetime, int], ...]:
    """[(first whole UTC hour it applies to, UTC offset in minutes)] for the rollup hours in [start, end)."""
    segments: list[tuple[datetime, int]] = []
    moment = start.replace(minute=0, second=0, microsecond=0)
    while moment < end:
        offset = moment.astimezone(zone).utcoffset()
        minutes = int(offset.total_seconds() // 60) if offset is not None else 0
        if not segments or segments[-1][1] != minutes:
            segments.append((moment, minutes))
        moment += timedelta(hours=1)
    return tuple(segments)


def half_hour_note(q: ReportQuery) -> str | None:
    odd = [minutes for _, minutes in offset_segments(q.start, q.end, q.zone) if minutes % 60]
    if not odd or q.is_sub:
        return None
    minutes = odd[0] % 60
    return (
        f"{q.tz} is {minutes} minutes off a whole-hour UTC offset and rollups are hourly in UTC: each UTC hour "
        f"counts in the local day and hour where it starts, so a day here runs from 00:{minutes:02d} "
        f"to 00:{minutes:02d} the next day (sub-id reports are exact)"
    )


def _sqlite_timestamp(moment: datetime) -> str:
    # The text SQLAlchemy's SQLite DATETIME stores (naive UTC), so it compares with stored values as text.
    return moment.astimezone(UTC).replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")


def local_day(column: ColumnElement[Any], q: ReportQuery, dialect: str) -> ColumnElement[Any]:
    """The local date of a UTC timestamp column (a rollup hour) in the report's zone, in SQL."""
    segments = offset_segments(q.start, q.end, q.zone)

    def shifted(minutes: int) -> ColumnElement[Any]:
        if dialect == "postgresql":
            return sql_cast(column + literal_column(f"interval '{minutes:+d} minutes'"), Date)
        return func.date(column, literal_column(f"'{minutes:+d} minutes'"))

    def bound(moment: datetime) -> ColumnElement[Any]:
        if dialect == "postgresql":
            return literal_column(f"TIMESTAMPTZ '{moment.astimezone(UTC).isoformat()}'")
        return literal_column(f"'{_sqlite_timestamp(moment)}'")

    if len(segments) == 1:
        return shifted(segments[0][1])
    whens = [(column < bound(following), shifted(minutes)) for (_, minutes), (following, _) in pairwise(segments)]
    return case(*whens, else_=shifted(segments[-1][1]))


def _group_positions(count: int) -> list[ColumnElement[Any]]:
    # GROUP BY 1, 2: the same expression as the SELECT list, without binding the time zone twice (PostgreSQL
    # would see $1 and $2 as different expressions).
    return [literal_column(str(position)) for position in range(1, count + 1)]


def filter_dimensions(q: ReportQuery) -> set[str]:
    return {name for name, field in FILTER_DIMENSIONS.items() if getattr(q, field) is not None}


def dimensions_of(q: ReportQuery) -> set[str]:
    """What a rollup must hold to answer the report: its groupings and the dimensions it filters on."""
    return set(q.group_by) | filter_dimensions(q)


def choose_rollup(q: ReportQuery) -> Rollup:
    """The rollup table with the fewest rows that holds every grouping and filter of the report."""
    wanted = dimensions_of(q)
    return next(rollup for rollup in ROLLUPS_BY_SIZE if wanted <= rollup.dimensions)


def _rollup_key(dimension: str, q: ReportQuery, dialect: str, rollup: Rollup) -> ColumnElement[Any]:
    r = rollup.table.c
    if dimension == "day":
        return local_day(r.hour, q, dialect)
    if dimension in ("offer", "affiliate"):
        # hourly_link_rollups keys "none" as 0 where hourly_rollups has NULL: read both as NULL.
        return func.nullif(r[f"{dimension}_id"], NO_ID)
    return r[{"hour": "hour", "link": "link_id", "country": "country", "device": "device"}[dimension]]


def _rollup_filters(q: ReportQuery, rollup: Rollup) -> list[ColumnElement[bool]]:
    r = rollup.table.c
    where: list[ColumnElement[bool]] = [r.hour >= q.start, r.hour < q.end]
    for name in ("offer_id", "affiliate_id", "link_id"):
        wanted = getattr(q, name)
        if wanted is not None:
            # No offer, affiliate or link has id 0 or less (an affiliate user without an affiliate asks for 0).
            where.append(r[name] == wanted if wanted > NO_ID else false())
    if q.country is not None:
        where.append(r.country == q.country)
    if q.device is not None:
        where.append(r.device == q.device)
    return where


def _rollup_sums(rollup: Rollup) -> list[ColumnElement[Any]]:
    r = rollup.table.c
    return [
        func.sum(r.clicks).label("clicks"),
        func.sum(r.unique_clicks).label("unique_clicks"),
        func.sum(r.bot_clicks).label("bot_clicks"),
        func.sum(r.blocked_clicks).label("blocked_clicks"),
        func.sum(r.capped_clicks).label("capped_clicks"),
        func.sum(r.conversions).label("conversions"),
        # Summed in SQL on the stored representation (NUMERIC, or integer millionths on SQLite), then converted.
        type_coerce(func.sum(r.revenue), Money).label("revenue"),
        type_coerce(func.sum(r.payout), Money).label("payout"),
    ]


def _window_totals(metrics: dict[str, ColumnElement[Any]]) -> list[ColumnElement[Any]]:
    """`total_<metric>`: the sum over every group (a window, computed before ORDER BY and LIMIT cut rows)."""
    out: list[ColumnElement[Any]] = []
    for name, column in metrics.items():
        total = func.sum(column).over()
        out.append((type_coerce(total, Money) if name in ("revenue", "payout") else total).label(f"total_{name}"))
    return out


def _with_names(grouped: Select[Any], q: ReportQuery, totals: bool = False) -> Select[Any]:
    """Wrap a grouped statement, adding offer and affiliate names and link slugs, and order it."""
    inner = grouped.subquery("grouped")
    columns: list[Any] = [inner.c[f"k{i}"] for i in range(len(q.group_by))]
    columns += [inner.c[name] for name in METRICS]
    if totals:
        columns += _window_totals({name: inner.c[name] for name in METRICS})
    joined: Any = inner
    for i, dimension in enumerate(q.group_by):
        target = {"offer": (Offer, Offer.name), "affiliate": (Affiliate, Affiliate.name), "link": (Link, Link.slug)}
        if dimension not in target:
            continue
        model, name = target[dimension]
        alias = cast(Table, model.__table__).alias(f"n{i}")
        joined = joined.outerjoin(alias, alias.c.id == inner.c[f"k{i}"])
        columns.append(alias.c[name.key].label(f"name{i}"))
    statement = select(*columns).select_from(joined)
    keys = [inner.c[f"k{i}"] for i in range(len(q.group_by))]
    if any(dimension in TIME_DIMENSIONS for dimension in q.group_by):
        return statement.order_by(*keys)
    return statement.order_by(inner.c.clicks.desc(), *keys)


def rollup_statement(q: ReportQuery, dialect: str, totals: bool = False, rollup: Rollup | None = None) -> Select[Any]:
    """A report from the rollups: `rollup` (a table that holds the groupings and filters), else `choose_rollup`."""
    rollup = rollup or choose_rollup(q)
    if not dimensions_of(q) <= rollup.dimensions:
        raise ValueError(f"{rollup.table.name} does not hold {', '.join(sorted(dimensions_of(q)))}")
    if "day" in q.group_by and dialect != "postgresql":
        return _with_names(_by_local_day(q, dialect, rollup), q, totals)
    keys = [_rollup_key(dimension, q, dialect, rollup).label(f"k{i}") for i, dimension in enumerate(q.group_by)]
    grouped = (
        select(*keys, *_rollup_sums(rollup)).where(*_rollup_filters(q, rollup)).group_by(*_group_positions(len(keys)))
    )
    return _with_names(grouped, q, totals)


def rollup_totals_statement(q: ReportQuery, rollup: Rollup | None = None) -> Select[Any]:
    """The sums of a rollup report over all its groups: its range and filters summed, from `rollup` or else the
    smallest table that holds the filters (the groupings do not change the sums)."""
    wanted = filter_dimensions(q)
    source = rollup or next(table for table in ROLLUPS_BY_SIZE if wanted <= table.dimensions)
    return select(*_rollup_sums(source)).where(*_rollup_filters(q, source))


def _by_local_day(q: ReportQuery, dialect: str, rollup: Rollup) -> Select[Any]:
    """Group by UTC hour first, then fold the hours into local days: SQLite's date() runs once per hour (and other
    grouping), not once per rollup row."""
    keys = [
        (rollup.table.c.hour if dimension == "day" else _rollup_key(dimension, q, dialect, rollup)).label(f"k{i}")
        for i, dimension in enumerate(q.group_by)
    ]
    hourly = (
        select(*keys, *_rollup_sums(rollup))
        .where(*_rollup_filters(q, rollup))
        .group_by(*_group_positions(len(keys)))
        .subquery("hourly")
    )
    outer_keys = [
        (local_day(hourly.c[f"k{i}"], q, dialect) if dimension == "day" else hourly.c[f"k{i}"]).label(f"k{i}")
        for i, dimension in enumerate(q.group_by)
    ]
    sums = [func.sum(hourly.c[name]).label(name) for name in METRICS if name not in MONEY]
    sums += [type_coerce(func.sum(hourly.c[name]), Money).label(name) for name in MONEY]
    return select(*outer_keys, *sums).group_by(*_group_positions(len(outer_keys)))


def _raw_filters(q: ReportQuery, ids: Any, place: Any) -> list[ColumnElement[bool]]:
    """The report's equality filters on raw rows: ids from the `ids` columns, country and device from `place` (a
    conversion's place is its click's)."""
    where: list[ColumnElement[bool]] = []
    for name in ("offer_id", "affiliate_id", "link_id"):
        if getattr(q, name) is not None:
            where.append(ids[name] == getattr(q, name))
    for name in ("country", "device"):
        if getattr(q, name) is not None:
            where.append(place[name] == getattr(q, name))
    return where


def sub_statement(q: ReportQuery, dialect: str, totals: bool = False) -> Select[Any]:
    """Clicks of the range by sub value, full-outer-joined with the range's counted conversions by their click's
    sub value ('' when the value or the click is missing)."""
    c, v = _CLICKS.c, _CONVERSIONS.c
    sub = q.group_by[0]
    key = func.coalesce(c[sub], "")
    clicks = (
        select(
            key.label("k"),
            # As the rollups count them (adclick.worker.clicks): each click in one of the four columns.
            func.sum(case((or_(c.bot, c.blocked, c.capped), 0), else_=1)).label("clicks"),
            func.sum(case((c.unique, 1), else_=0)).label("unique_clicks"),
            func.sum(case((and_(c.bot, not_(c.blocked)), 1), else_=0)).label("bot_clicks"),
            func.sum(case((c.blocked, 1), else_=0)).label("blocked_clicks"),
            func.sum(case((and_(c.capped, not_(c.bot), not_(c.blocked)), 1), else_=0)).label("capped_clicks"),
        )
        .where(c.ts >= q.start, c.ts < q.end, *_raw_filters(q, c, c))
        .group_by(*_group_positions(1))
        .subquery("c")
    )
    conversion_filters: list[ColumnElement[bool]] = [
        v.created_at >= q.start,
        v.created_at < q.end,
        v.status.in_(COUNTED_STATUSES),
        *_raw_filters(q, v, c),
    ]
    conversions = (
        select(
            key.label("k"),
            func.count().label("conversions"),
            type_coerce(func.sum(v.revenue), Money).label("revenue"),
            type_coerce(func.sum(v.payout), Money).label("payout"),
        )
        .select_from(_CONVERSIONS.outerjoin(_CLICKS, c.click_id == v.click_id))
        .where(*conversion_filters)
        .group_by(*_group_positions(1))
        .subquery("v")
    )
    merged_key = func.coalesce(clicks.c.k, conversions.c.k)
    metrics: dict[str, ColumnElement[Any]] = {
        "clicks": func.coalesce(clicks.c.clicks, 0),
        "unique_clicks": func.coalesce(clicks.c.unique_clicks, 0),
        "bot_clicks": func.coalesce(clicks.c.bot_clicks, 0),
        "blocked_clicks": func.coalesce(clicks.c.blocked_clicks, 0),
        "capped_clicks": func.coalesce(clicks.c.capped_clicks, 0),
        "conversions": func.coalesce(conversions.c.conversions, 0),
        "revenue": conversions.c.revenue,
        "payout": conversions.c.payout,
    }
    columns: list[ColumnElement[Any]] = [merged_key.label("k0"), *(c.label(name) for name, c in metrics.items())]
    if totals:
        columns += _window_totals(metrics)
    statement = select(*columns).select_from(clicks.join(conversions, clicks.c.k == conversions.c.k, full=True))
    return statement.order_by(literal_column("clicks").desc(), literal_column("conversions").desc(), merged_key)


def report_statement(q: ReportQuery, dialect: str, totals: bool = False, rollup: Rollup | None = None) -> Select[Any]:
    """The SELECT behind a report: columns k0.. (keys), the metrics, name0.. (names where a grouping has one),
    and with `totals` the sums over every row as total_<metric> (the same on each row). `rollup` picks the table
    of a rollup report (tests compare them); by default the smallest that holds the report."""
    return sub_statement(q, dialect, totals) if q.is_sub else rollup_statement(q, dialect, totals, rollup)


# -- rows --


def _key_and_label(dimension: str, value: Any, name: str | None, zone: ZoneInfo) -> tuple[Any, str]:
    if dimension == "day":
        day = value if isinstance(value, date) else date.fromisoformat(str(value)[:10])
        return day.isoformat(), day.isoformat()
    if dimension == "hour":
        moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        local = moment.astimezone(zone)
        return local.isoformat(), local.strftime("%Y-%m-%d %H:%M")
    if dimension in ("offer", "affiliate", "link"):
        if value is None:
            return None, UNKNOWN_LABEL
        return int(value), f"{name} (#{value})" if name else f"#{value}"
    if dimension in ("country", "device"):
        text = (value or "").strip()
        return text, text or UNKNOWN_LABEL
    return value or "", value or NONE_LABEL  # sub ids


def make_row(mapping: Any, q: ReportQuery) -> ReportRow:
    """A report row from one result row of `report_statement`."""
    keys: dict[str, Any] = {}
    labels: dict[str, str] = {}
    names: dict[str, str | None] = {}
    for i, dimension in enumerate(q.group_by):
        name = mapping.get(f"name{i}")
        keys[dimension], labels[dimension] = _key_and_label(dimension, mapping[f"k{i}"], name, q.zone)
        if dimension in NAMED_DIMENSIONS:
            names[dimension] = name
    return ReportRow(keys, labels, Totals.from_mapping(mapping), names)


async def run_report(
    session: AsyncSession, q: ReportQuery, *, limit: int | None = None, rollup: Rollup | None = None
) -> Report:
    """Run a report; with `limit`, at most that many rows (and `truncated`), the totals still over everything.

    `rollup` makes a rollup report read that table (it must hold the groupings); by default `choose_rollup` picks.
    """
    dialect = _dialect(session)
    await prepare_report_transaction(session)
    # A cut rollup report sums its totals apart, from the smallest table that holds its filters: a window over
    # every group would make the database group everything before the first row, where rows in key order can
    # stop at the limit. Sub-id reports group everything anyway and take them from a window.
    window = limit is not None and q.is_sub
    statement = report_statement(q, dialect, totals=window, rollup=rollup)
    if limit is not None:
        statement = statement.limit(limit + 1)
    mappings = (await session.execute(statement)).mappings().all()
    rows = [make_row(mapping, q) for mapping in mappings[:limit]]
    truncated = limit is not None and len(mappings) > limit
    totals = Totals()
    if window and mappings:
        first = mappings[0]
        totals = Totals.from_mapping({name: first[f"total_{name}"] for name in METRICS})
    elif truncated:
        totals = Totals.from_mapping((await session.execute(rollup_totals_statement(q, rollup))).mappings().one())
    else:
        for row in rows:
            totals.add(row.totals)
    notes = [note for note in (half_hour_note(q),) if note]
    return Report(q, rows, totals, truncated, notes)


# -- time series --


def series_interval(q: ReportQuery) -> str:
    """Hours for ranges of up to two days, else days."""
    return "hour" if (q.date_to - q.date_from).days < 2 else "day"


def _buckets(q: ReportQuery, interval: str) -> list[str]:
    if interval == "day":
        return [(q.date_from + timedelta(days=n)).isoformat() for n in range((q.date_to - q.date_from).days + 1)]
    out: list[str] = []
    moment = q.start.replace(minute=0, second=0, microsecond=0)
    if moment < q.start:
        moment += timedelta(hours=1)
    while moment < q.end:
        out.append(moment.astimezone(q.zone).isoformat())
        moment += timedelta(hours=1)
    return out


async def time_series(session: AsyncSession, q: ReportQuery, staff: bool = True) -> dict[str, Any]:
    """Clicks, conversions and revenue per local day (or hour), every bucket present, for the chart.

    Without `staff` (an affiliate's view) the money series is payout, not revenue: `money` names it.
    """
    money = "revenue" if staff else "payout"
    interval = series_interval(q)
    series_query = replace(q, group_by=(interval,))
    report = await run_report(session, series_query)
    found = {row.keys[interval]: row.totals for row in report.rows}
    labels = _buckets(series_query, interval)
    empty = Totals()
    points = [found.get(label, empty) for label in labels]
    return {
        "interval": interval,
        "tz": q.tz,
        "labels": [label if interval == "day" else label[:16].replace("T", " ") for label in labels],
        "keys": labels,
        "clicks": [point.clicks for point in points],
        "conversions": [point.conversions for point in points],
        "money": money,
        money: [str(getattr(point, money)) for point in points],
        "totals": report.totals.as_dict(staff),
    }


async def filter_choices(session: AsyncSession, scope: int | None) -> dict[str, Any]:
    """Offers and affiliates for the filter selects; `scope` (an affiliate user's id, `params.scope_of`) narrows
    the offers to its own links' and leaves no affiliates to pick."""
    offers = select(Offer.id, Offer.name).order_by(Offer.name, Offer.id)
    if scope is not None:
        offers = offers.where(Offer.id.in_(select(Link.offer_id).where(Link.affiliate_id == scope)))
    choices: dict[str, Any] = {"offers": (await session.execute(offers)).all(), "affiliates": []}
    if scope is None:
        found = await session.execute(select(Affiliate.id, Affiliate.name).order_by(Affiliate.name, Affiliate.id))
        choices["affiliates"] = found.all()
    return choices
