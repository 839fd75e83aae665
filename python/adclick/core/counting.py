"""What clicks and conversions count towards, in one place for the worker and the manager: rollups and daily caps.

Rollups. Every event adds to `hourly_rollups` (hour x link x country x device; a row's offer and affiliate are
those of its first event), in the transaction that stores the event (`add_to_rollups`).

Conversions. `pending` and `approved` count: they add one conversion and their revenue and payout to the rollups
at the hour the conversion was received, under its link with country and device '' (the click may not have
arrived, and a later status change must find the same rows), and hold a slot of each daily cap that applies (the
offer's, then the affiliate's on the offer) for the UTC day the conversion was received. `rejected` and `capped`
count nothing. A change of status or money moves the rollups by the difference (`rollup_change`) and, between
counting and not counting, takes or gives back the cap slots (`move_caps`). What to do when a cap is full is the
caller's decision: the worker stores the conversion `capped`, the manager refuses the edit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

from adclick.core.db.models import HourlyRollup, Offer, OfferAffiliateOverride
from adclick.core.db.upsert import Executor, increment, release_cap, take_cap

COUNTED = frozenset({"pending", "approved"})
METRICS = ("clicks", "unique_clicks", "bot_clicks", "conversions", "revenue", "payout")
ROLLUP_KEY = ("hour", "link_id", "country", "device")
_ZERO = Decimal(0)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


async def add_to_rollups(executor: Executor, rows: Iterable[Mapping[str, Any]]) -> None:
    """Add events to the rollups, in the caller's transaction.

    Each row is one event (or a sum of events): `hour`, `link_id`, `country`, `device`, `offer_id`, `affiliate_id`
    and any of METRICS (missing ones add 0). Rows that add nothing are skipped.
    """
    batch = [row for row in rows if any(row.get(name) for name in METRICS)]
    if batch:
        deltas = [name for name in METRICS if any(name in row for row in batch)]
        await increment(executor, HourlyRollup, ROLLUP_KEY, batch, deltas)


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
class Standing:
    """What a conversion says at one moment: its status, revenue and payout."""

    status: str
    revenue: Decimal
    payout: Decimal

    @property
    def counts(self) -> bool:
        return self.status in COUNTED


def rollup_change(conversion: Attributed, before: Standing | None, after: Standing | None) -> dict[str, Any] | None:
    """The rollup row (for `add_to_rollups`) that moves `conversion` from counting `before` to counting `after`.

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
        "country": "",
        "device": "",
        "offer_id": conversion.offer_id,
        "affiliate_id": conversion.affiliate_id,
        "conversions": conversions,
        "revenue": revenue,
        "payout": payout,
    }


@dataclass(frozen=True, slots=True)
class Cap:
    """A daily cap that applies to a conversion: scope 'offer' (affiliate 0) or 'affiliate_offer'."""

    scope: str
    affiliate_id: int
    limit: int

    def describe(self) -> str:
        return f"the {'offer' if self.scope == 'offer' else 'affiliate'}'s daily cap ({self.limit})"


def caps_of(offer: Offer | None, override: OfferAffiliateOverride | None, affiliate_id: int | None) -> list[Cap]:
    """The caps a conversion on `offer` by `affiliate_id` takes, offer-wide first: every writer locks cap rows in
    the same order."""
    caps: list[Cap] = []
    if offer is not None and offer.daily_cap is not None:
        caps.append(Cap("offer", 0, offer.daily_cap))
    if override is not None and override.daily_cap is not None and affiliate_id is not None:
        caps.append(Cap("affiliate_offer", affiliate_id, override.daily_cap))
    return caps


def cap_day(received_at: datetime) -> date:
    """The UTC day whose cap slots a conversion holds."""
    return received_at.date()


async def take_caps(executor: Executor, offer_id: int, day: date, caps: Sequence[Cap]) -> Cap | None:
    """Take a slot of every cap, or none: on a full cap, give back the slots taken and return that cap."""
    taken: list[Cap] = []
    for cap in caps:
        if not await take_cap(
            executor, scope=cap.scope, offer_id=offer_id, affiliate_id=cap.affiliate_id, day=day, cap=cap.limit
        ):
            for got in taken:
                await release_cap(executor, scope=got.scope, offer_id=offer_id, affiliate_id=got.affiliate_id, day=day)
            return cap
        taken.append(cap)
    return None


async def release_caps(executor: Executor, offer_id: int, day: date, caps: Sequence[Cap]) -> None:
    for cap in caps:
        await release_cap(executor, scope=cap.scope, offer_id=offer_id, affiliate_id=cap.affiliate_id, day=day)


async def move_caps(
    executor: Executor, offer_id: int, day: date, caps: Sequence[Cap], before: str | None, after: str
) -> Cap | None:
    """Take or give back cap slots for a status change from `before` (None: new) to `after`.

    Returns the cap that was full when the change would start counting (nothing was taken then), else None.
    """
    was, now = before in COUNTED, after in COUNTED
    if now and not was:
        return await take_caps(executor, offer_id, day, caps)
    if was and not now:
        await release_caps(executor, offer_id, day, caps)
    return None
