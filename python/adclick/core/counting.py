"""What clicks and conversions count towards, in one place for the worker and the manager: rollups and daily caps.

Rollups. Every event adds to `hourly_rollups` (hour x link x country x device; a row's offer and affiliate are
those of its first event) and, in the same transaction, to two projections of it that reports read when they can,
because they are far smaller:
- `hourly_link_rollups`: hour x link x offer x affiliate (reports by day, hour, offer, affiliate, link);
- `hourly_country_device_rollups`: hour x country x device (reports by day, hour, country, device).
A projection row is exactly the sum of the `hourly_rollups` rows it stands for: `add_to_rollups` writes
`hourly_rollups` first, reads back the offer and affiliate each written row holds (RETURNING), and projects those,
so a link whose offer changed within an hour, or a click and a conversion that name different offers, sum the same
way in every table. In `hourly_link_rollups` offer and affiliate are part of the key and 0 stands for none.
Every writer goes through the tables in one order (`ROLLUPS_WRITE_ORDER`), keys sorted within each, so concurrent
transactions cannot deadlock; the smallest and most contended table comes last and holds its row locks the least.

Conversions. `pending` and `approved` count: they add one conversion and their revenue and payout to the rollups
at the hour the conversion was received, under its link and its `Place`, and hold a slot of each daily cap that
applies (the offer's, then the affiliate's on the offer) for the UTC day the conversion was received. `rejected` and
`capped` count nothing. A change of status or money moves the rollups by the difference (`rollup_change`) and,
between counting and not counting, takes or gives back the cap slots (`move_caps`). What to do when a cap is full is
the caller's decision: the worker stores the conversion `capped`, the manager refuses the edit.

A conversion's place is the country and device of its click, read from the click row when the worker first stores
the conversion, and recorded in the conversion's `params` (`ROLLUP_PARAM`), so every later status change, by the
worker or the manager, moves the very rollup rows the conversion was first counted in, whatever happens to the
click row since. A click not stored by then (a conversion may arrive before its click) gives country and device '',
for good: the conversion stays under "(unknown)" in country and device reports even after its click arrives. So do
conversions stored before places were recorded (they were counted under '').
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any, Protocol, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Table

from adclick.core.db.models import (
    ROLLUP_METRICS,
    DailyCap,
    HourlyCountryDeviceRollup,
    HourlyLinkRollup,
    HourlyRollup,
    Offer,
    OfferAffiliateOverride,
)
from adclick.core.db.upsert import Executor, increment, release_cap, take_cap
from adclick.core.subs import NONE, SUB_KEYS, Slot, rows_for

COUNTED = frozenset({"pending", "approved"})
METRICS = ROLLUP_METRICS
NO_ID = 0  # offer or affiliate "none" in the key of hourly_link_rollups
_ZERO = Decimal(0)


@dataclass(frozen=True, slots=True)
class Rollup:
    """A rollup table: its key columns and the report dimensions (day and hour come from `hour`) it holds."""

    table: Table
    key: tuple[str, ...]
    dimensions: frozenset[str]


HOURLY = Rollup(
    cast(Table, HourlyRollup.__table__),
    ("hour", "link_id", "country", "device"),
    frozenset({"day", "hour", "offer", "affiliate", "link", "country", "device"}),
)
BY_LINK = Rollup(
    cast(Table, HourlyLinkRollup.__table__),
    ("hour", "link_id", "offer_id", "affiliate_id"),
    frozenset({"day", "hour", "offer", "affiliate", "link"}),
)
BY_COUNTRY_DEVICE = Rollup(
    cast(Table, HourlyCountryDeviceRollup.__table__),
    ("hour", "country", "device"),
    frozenset({"day", "hour", "country", "device"}),
)
ROLLUPS_WRITE_ORDER = (HOURLY, BY_LINK, BY_COUNTRY_DEVICE)
ROLLUPS_BY_SIZE = (BY_COUNTRY_DEVICE, BY_LINK, HOURLY)  # fewest rows first: a report reads the first that fits


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _fine_key(hour: datetime, link_id: int, country: str | None, device: str | None) -> tuple[Any, ...]:
    # CHAR(2) comes back blank-padded from PostgreSQL ('' as '  '): compare countries without the padding.
    return hour, link_id, (country or "").rstrip(), device or ""


async def add_to_rollups(executor: Executor, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add events to every rollup table, in the caller's transaction.

    Each row is one event (or a sum of events) at the finest grain: `hour`, `link_id`, `country`, `device`,
    `offer_id`, `affiliate_id` and any of METRICS (missing ones add 0). Rows that add nothing are skipped.
    """
    batch = [row for row in rows if any(row.get(name) for name in METRICS)]
    if not batch:
        return
    deltas = [name for name in METRICS if any(name in row for row in batch)]
    table = HOURLY.table
    stored = await increment(
        executor,
        table,
        HOURLY.key,
        batch,
        deltas,
        returning=[*(table.c[name] for name in HOURLY.key), table.c.offer_id, table.c.affiliate_id],
    )
    owners = {
        _fine_key(row.hour, row.link_id, row.country, row.device): (row.offer_id, row.affiliate_id) for row in stored
    }
    by_link: list[dict[str, Any]] = []
    by_country_device: list[dict[str, Any]] = []
    for row in batch:
        offer_id, affiliate_id = owners[_fine_key(row["hour"], row["link_id"], row["country"], row["device"])]
        values = {name: row.get(name, 0) for name in deltas}
        by_link.append(
            {
                "hour": row["hour"],
                "link_id": row["link_id"],
                "offer_id": NO_ID if offer_id is None else offer_id,
                "affiliate_id": NO_ID if affiliate_id is None else affiliate_id,
                **values,
            }
        )
        by_country_device.append(
            {"hour": row["hour"], "country": row["country"] or "", "device": row["device"] or "", **values}
        )
    await increment(executor, BY_LINK.table, BY_LINK.key, by_link, deltas)
    await increment(executor, BY_COUNTRY_DEVICE.table, BY_COUNTRY_DEVICE.key, by_country_device, deltas)


# -- conversions --


class Attributed(Protocol):
    """Where a conversion rolls up: what a stored conversion (or the worker's copy of one) carries."""

    @property
    def created_at(self) -> datetime: ...
    @property
    def link_id(self) -> int: ...
    @property
    def offer_id(self) -> int: ...
    @property
    def affiliate_id(self) -> int | None: ...


@dataclass(frozen=True, slots=True)
class Place:
    """The country and device a conversion rolls up under (its click's; '' and '' when the click was missing), and
    where it counts in the sub-id rollups: one `Slot` per sub key as its click counted (adclick.core.subs), five
    `subs.NONE` when the click was missing; None for a conversion stored before the sub-id rollups, which never
    counted there (so its changes move nothing there either)."""

    country: str = ""
    device: str = ""
    subs: tuple[Slot, ...] | None = None

    @classmethod
    def of_click(cls, country: str | None, device: str | None, subs: tuple[Slot, ...] | None = None) -> Place:
        # As the click rolled up (worker.clicks.rollup_rows); CHAR(2) comes back blank-padded from PostgreSQL.
        return cls((country or "").rstrip(), device or "", subs)

    @classmethod
    def of_params(cls, params: Mapping[str, Any] | None) -> Place:
        """The place recorded in a stored conversion's params; '' and '' when none is (or it is malformed)."""
        value = params.get(ROLLUP_PARAM) if isinstance(params, Mapping) else None
        if not isinstance(value, Mapping):
            return NOWHERE
        country, device = value.get("country", ""), value.get("device", "")
        if not isinstance(country, str) or not isinstance(device, str):
            return NOWHERE
        return cls(country, device, _slots_of(value.get("subs")))

    def record(self, params: dict[str, Any]) -> dict[str, Any]:
        """`params` with this place recorded in it; a value the postback sent under that name never stays."""
        params.pop(ROLLUP_PARAM, None)
        if self != NOWHERE:  # no entry reads back as '' and '', so conversions without a click add no bytes
            entry: dict[str, Any] = {"country": self.country, "device": self.device}
            if self.subs is not None:
                entry["subs"] = [[slot.other, slot.value] for slot in self.subs]
            params[ROLLUP_PARAM] = entry
        return params


def _slots_of(value: Any) -> tuple[Slot, ...] | None:
    """Recorded sub slots read back; None when absent or malformed (such a conversion moves no sub-id rollup)."""
    if not isinstance(value, list) or len(value) != len(SUB_KEYS):
        return None
    slots = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], bool) and isinstance(item[1], str)):
            return None
        slots.append(Slot(item[0], item[1]))
    return tuple(slots)


NOWHERE = Place()
# A new conversion whose click is not stored (yet): '' and '' in the hourly rollups, '' for every sub in the sub-id
# rollups, for good.
CLICK_MISSING = Place(subs=(NONE,) * len(SUB_KEYS))
ROLLUP_PARAM = "adclick_rollup"  # in conversions.params: {"country": ..., "device": ...}, see Place


@dataclass(frozen=True, slots=True)
class Standing:
    """What a conversion says at one moment: its status, revenue and payout."""

    status: str
    revenue: Decimal
    payout: Decimal

    @property
    def counts(self) -> bool:
        return self.status in COUNTED


def rollup_change(
    conversion: Attributed, before: Standing | None, after: Standing | None, *, place: Place
) -> dict[str, Any] | None:
    """The rollup row (for `add_to_rollups`) that moves `conversion`, counted at `place`, from counting `before`
    to counting `after`.

    `before` None: a new conversion; `after` None: a removed one. None when nothing moves.
    """
    was = before is not None and before.counts
    now = after is not None and after.counts
    conversions = int(now) - int(was)
    revenue = (after.revenue if now and after else _ZERO) - (before.revenue if was and before else _ZERO)
    payout = (after.payout if now and after else _ZERO) - (before.payout if was and before else _ZERO)
    if not conversions and not revenue and not payout:
        return None
    return {
        "hour": hour_of(conversion.created_at),
        "link_id": conversion.link_id,
        "country": place.country,
        "device": place.device,
        "offer_id": conversion.offer_id,
        "affiliate_id": conversion.affiliate_id,
        "conversions": conversions,
        "revenue": revenue,
        "payout": payout,
    }


def sub_rollup_change(change: Mapping[str, Any] | None, place: Place) -> list[dict[str, Any]]:
    """The sub-id rollup rows (adclick.core.subs) of a conversion's `rollup_change` row, counted at its place's
    sub slots; none for a conversion that never counted there."""
    if change is None or place.subs is None:
        return []
    counts = {name: change[name] for name in ("conversions", "revenue", "payout")}
    return rows_for(
        change["hour"], change["link_id"], place.country, place.subs, change["offer_id"], change["affiliate_id"], counts
    )


LIFETIME = date(1970, 1, 1)  # the one period of a lifetime cap
_PERIODS = {"offer": "day", "affiliate_offer": "day", "offer_month": "month", "offer_total": "lifetime"}


def cap_zone(name: str | None) -> ZoneInfo:
    """An offer's cap time zone; a name this machine does not know (checked when saved) falls back to UTC."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@dataclass(frozen=True, slots=True)
class Cap:
    """A cap that applies to a conversion: the offer's daily ('offer', affiliate 0), monthly ('offer_month') and
    lifetime ('offer_total') caps, and an affiliate's daily cap on it ('affiliate_offer').

    Periods start at midnight (and on the first of the month) in `zone`, the offer's cap time zone.
    """

    scope: str
    affiliate_id: int
    limit: int
    zone: str = "UTC"

    @property
    def period(self) -> str:
        return _PERIODS[self.scope]

    def start(self, when: datetime) -> date:
        """The first day of the period that `when` falls in: the key of its slots."""
        if self.period == "lifetime":
            return LIFETIME
        local = when.astimezone(cap_zone(self.zone)).date()
        return local.replace(day=1) if self.period == "month" else local

    def end(self, when: datetime) -> datetime | None:
        """When the period that `when` falls in ends (the cap resets), in UTC; None for a lifetime cap."""
        if self.period == "lifetime":
            return None
        zone = cap_zone(self.zone)
        first = self.start(when)
        if self.period == "month":
            following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        else:
            following = first + timedelta(days=1)
        return datetime.combine(following, time(0), tzinfo=zone).astimezone(UTC)

    def describe(self) -> str:
        who = "affiliate" if self.scope == "affiliate_offer" else "offer"
        period = {"day": "daily", "month": "monthly", "lifetime": "lifetime"}[self.period]
        return f"the {who}'s {period} cap ({self.limit})"


def caps_of(offer: Offer | None, override: OfferAffiliateOverride | None, affiliate_id: int | None) -> list[Cap]:
    """The caps a conversion on `offer` by `affiliate_id` takes, offer-wide first: every writer locks cap rows in
    the same order."""
    caps: list[Cap] = []
    if offer is None:
        return caps
    zone = offer.cap_timezone or "UTC"
    if offer.daily_cap is not None:
        caps.append(Cap("offer", 0, offer.daily_cap, zone))
    if offer.monthly_cap is not None:
        caps.append(Cap("offer_month", 0, offer.monthly_cap, zone))
    if offer.lifetime_cap is not None:
        caps.append(Cap("offer_total", 0, offer.lifetime_cap, zone))
    if override is not None and affiliate_id is not None and (cap := affiliate_cap(offer, override)) is not None:
        caps.append(cap)
    return caps


def affiliate_cap(offer: Offer, override: OfferAffiliateOverride) -> Cap | None:
    """The daily cap an affiliate's override sets on the offer, in the offer's cap time zone; None without one."""
    if override.daily_cap is None:
        return None
    return Cap("affiliate_offer", override.affiliate_id, override.daily_cap, offer.cap_timezone or "UTC")


async def take_caps(executor: Executor, offer_id: int, when: datetime, caps: Sequence[Cap]) -> Cap | None:
    """Take a slot of every cap, or none: on a full cap, give back the slots taken and return that cap."""
    taken: list[Cap] = []
    for cap in caps:
        day = cap.start(when)
        if not await take_cap(
            executor, scope=cap.scope, offer_id=offer_id, affiliate_id=cap.affiliate_id, day=day, cap=cap.limit
        ):
            await release_caps(executor, offer_id, when, taken)
            return cap
        taken.append(cap)
    return None


async def release_caps(executor: Executor, offer_id: int, when: datetime, caps: Sequence[Cap]) -> None:
    for cap in caps:
        day = cap.start(when)
        await release_cap(executor, scope=cap.scope, offer_id=offer_id, affiliate_id=cap.affiliate_id, day=day)


async def move_caps(
    executor: Executor, offer_id: int, when: datetime, caps: Sequence[Cap], before: str | None, after: str
) -> Cap | None:
    """Take or give back cap slots for a status change from `before` (None: new) to `after` of a conversion
    received at `when` (its slots are those of the periods `when` falls in, whenever the change happens).

    Returns the cap that was full when the change would start counting (nothing was taken then), else None.
    """
    was, now = before in COUNTED, after in COUNTED
    if now and not was:
        return await take_caps(executor, offer_id, when, caps)
    if was and not now:
        await release_caps(executor, offer_id, when, caps)
    return None


@dataclass(frozen=True, slots=True)
class CapFill:
    """How full a cap is in the period running at `now`, and when that period ends (None: never)."""

    cap: Cap
    used: int
    period_start: date
    resets_at: datetime | None

    @property
    def full(self) -> bool:
        return self.used >= self.cap.limit


async def cap_fill(
    executor: Executor, offer: Offer, overrides: Sequence[OfferAffiliateOverride], now: datetime
) -> list[CapFill]:
    """Every cap of the offer (its own, then each affiliate's) with the slots taken in its current period."""
    caps = caps_of(offer, None, None) + [cap for o in overrides if (cap := affiliate_cap(offer, o)) is not None]
    if not caps:
        return []
    starts = [cap.start(now) for cap in caps]
    table = cast(Table, DailyCap.__table__)
    rows = await executor.execute(
        table.select().where(table.c.offer_id == offer.id, table.c.day.in_(sorted(set(starts))))
    )
    used = {(row.scope, row.affiliate_id, row.day): row.used for row in rows.all()}
    return [
        CapFill(cap, used.get((cap.scope, cap.affiliate_id, start), 0), start, cap.end(now))
        for cap, start in zip(caps, starts, strict=True)
    ]
