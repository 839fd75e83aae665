"""The affiliate-postback outbox: one `postback_deliveries` row per conversion change an affiliate is told about.

Written in the transaction that makes the change (the worker's batch, the manager's edit), so a crash loses no
postback and a redelivered message adds none: the row's key is the conversion, the trigger and the change's time,
and a second insert of the same key is ignored. The worker's deliverer (adclick.worker.deliverer) sends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol, cast

from sqlalchemy import Table, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.affiliate_postbacks import parse_triggers, trigger_of
from adclick.core.db.models import Affiliate, OfferAffiliateOverride, PostbackDelivery
from adclick.core.db.types import utc_now
from adclick.core.db.upsert import insert_ignore


@dataclass(slots=True)
class Change:
    """A conversion stored (`before` None) or whose status changed, with what the postback reports."""

    conversion_id: int
    offer_id: int
    affiliate_id: int | None
    click_id: str
    txid: str
    event: str
    before: str | None
    after: str
    payout: Decimal
    currency: str
    at: datetime  # when the change was received: with the trigger, it makes the row once per change


class Conversionlike(Protocol):
    """What a change needs of its conversion: a stored row (the manager's) or the worker's copy of one."""

    @property
    def id(self) -> int | None: ...

    offer_id: int
    affiliate_id: int | None
    click_id: str
    txid: str
    event: str
    payout: Decimal
    currency: str


_FROM_CONVERSION = ("offer_id", "affiliate_id", "click_id", "txid", "event", "payout", "currency")


def change_of(conversion: Conversionlike, before: str | None, after: str, at: datetime) -> Change:
    """The change of `conversion` from `before` (None: new) to `after`, received at `at`."""
    assert conversion.id is not None, "a change is reported once its conversion has an id"
    same = {name: getattr(conversion, name) for name in _FROM_CONVERSION}
    return Change(conversion_id=conversion.id, before=before, after=after, at=at, **same)


def delivery_key(conversion_id: int, trigger: str, at: datetime) -> str:
    return f"c{conversion_id}:{trigger}:{int(at.timestamp() * 1000)}"


async def enqueue(session: AsyncSession, changes: Sequence[Change]) -> int:
    """Write the deliveries these changes fire, per each affiliate's template and triggers; how many were new."""
    fired = [(c, t) for c in changes if c.affiliate_id is not None and (t := trigger_of(c.before, c.after))]
    if not fired:
        return 0
    affiliate_ids = sorted({c.affiliate_id for c, _ in fired if c.affiliate_id is not None})
    found = await session.execute(
        select(Affiliate.id, Affiliate.postback_url, Affiliate.postback_triggers).where(Affiliate.id.in_(affiliate_ids))
    )
    affiliates = {row.id: (row.postback_url, parse_triggers(row.postback_triggers)) for row in found.all()}
    pairs = sorted({(c.offer_id, c.affiliate_id) for c, _ in fired})
    overrides: dict[tuple[int, int | None], str] = {}
    found_overrides = await session.execute(
        select(
            OfferAffiliateOverride.offer_id, OfferAffiliateOverride.affiliate_id, OfferAffiliateOverride.postback_url
        ).where(
            tuple_(OfferAffiliateOverride.offer_id, OfferAffiliateOverride.affiliate_id).in_(pairs),
            OfferAffiliateOverride.postback_url.is_not(None),
        )
    )
    for offer_id, affiliate_id, url in found_overrides.all():
        if url:
            overrides[(offer_id, affiliate_id)] = url
    now = utc_now()
    rows: list[dict[str, Any]] = []
    for change, trigger in fired:
        assert change.affiliate_id is not None
        url, triggers = affiliates.get(change.affiliate_id, (None, ()))
        template = overrides.get((change.offer_id, change.affiliate_id)) or url
        if not template or trigger not in triggers:
            continue
        rows.append(
            {
                "key": delivery_key(change.conversion_id, trigger, change.at),
                "kind": "conversion",
                "conversion_id": change.conversion_id,
                "affiliate_id": change.affiliate_id,
                "trigger": trigger,
                "template": template,
                "click_id": change.click_id,
                "values": values_of(change, trigger),
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            }
        )
    if not rows:
        return 0
    rows.sort(key=lambda row: row["key"])  # one lock order for concurrent batches
    table = cast(Table, PostbackDelivery.__table__)
    return len(await insert_ignore(session, table, rows, returning=[table.c.id]))


def values_of(change: Change, trigger: str) -> dict[str, Any]:
    """The macros' values that the change itself knows (the click's subs and parameters are read when sent)."""
    return {
        "click_id": change.click_id,
        "txid": change.txid,
        "conversion_id": change.conversion_id,
        "offer_id": change.offer_id,
        "aff_id": change.affiliate_id,
        "payout": str(change.payout),
        "currency": change.currency,
        "status": change.after,
        "event": change.event,
        "trigger": trigger,
    }
