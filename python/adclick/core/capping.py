"""Caps enforced at the click: while a cap of an offer is full, its links send clicks to its cap fallback.

Whoever changes how full a cap is calls `refresh` in the same transaction, for the offers it touched: the worker
after a batch of conversions (one may fill a cap, a reversal may free one), the manager after an edit of a
conversion, an offer's caps or an affiliate's override. `refresh` reads the slots taken in each cap's running
period (`counting.cap_fill`) and stores until when the caps are full: `offers.capped_until` for the offer-wide caps
(daily, monthly, lifetime), `offer_affiliate_overrides.capped_until` for an affiliate's daily cap on the offer.

After commit the caller republishes the links of the offers whose state changed (`publish`), so the trackers learn
it through the link configs and invalidations they already follow; the config carries the instant, and the
tracker's own clock ends the cap at the reset, with no writer. A publish that fails (Redis down) is made good by
the manager's reconciler, which publishes what the database holds.

An affiliate's daily cap holds only that affiliate's links; an offer-wide cap holds every link of the offer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime

import redis
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.counting import CapFill, cap_fill
from adclick.core.db.models import Offer, OfferAffiliateOverride
from adclick.core.publisher import publish_links_of

log = logging.getLogger(__name__)

# A full lifetime cap never resets: its links stay on the fallback until someone raises or removes the cap.
FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


def full_until(fills: Iterable[CapFill]) -> datetime | None:
    """Until when the caps among `fills` keep clicks off the offer: the latest reset of a full one; None if none is."""
    return max((fill.resets_at or FOREVER for fill in fills if fill.full), default=None)


async def refresh(session: AsyncSession, offer_ids: Iterable[int], now: datetime | None = None) -> set[int]:
    """Store, for each offer, until when its caps are full as of `now`; returns the offers whose state changed.

    Run it inside the transaction that took or gave back cap slots, after it did (the worker's slot rows are locked
    by then, so two workers cannot store different answers for the same counts).
    """
    now = now or datetime.now(UTC)
    ids = sorted(set(offer_ids))
    if not ids:
        return set()
    offers = (
        await session.scalars(
            select(Offer).where(Offer.id.in_(ids)).order_by(Offer.id).execution_options(populate_existing=True)
        )
    ).all()
    overrides = (
        await session.scalars(
            select(OfferAffiliateOverride)
            .where(
                OfferAffiliateOverride.offer_id.in_(ids),
                or_(OfferAffiliateOverride.daily_cap.is_not(None), OfferAffiliateOverride.capped_until.is_not(None)),
            )
            .order_by(OfferAffiliateOverride.offer_id, OfferAffiliateOverride.affiliate_id)
            .execution_options(populate_existing=True)
        )
    ).all()
    changed: set[int] = set()
    for offer in offers:
        mine = [o for o in overrides if o.offer_id == offer.id]
        fills = await cap_fill(session, offer, mine, now)
        offer_wide = full_until(f for f in fills if f.cap.scope != "affiliate_offer")
        if _differs(offer.capped_until, offer_wide, now):
            await session.execute(update(Offer).where(Offer.id == offer.id).values(capped_until=offer_wide))
            changed.add(offer.id)
        for override in mine:
            until = full_until(
                f for f in fills if f.cap.scope == "affiliate_offer" and f.cap.affiliate_id == override.affiliate_id
            )
            if _differs(override.capped_until, until, now):
                await session.execute(
                    update(OfferAffiliateOverride)
                    .where(
                        OfferAffiliateOverride.offer_id == offer.id,
                        OfferAffiliateOverride.affiliate_id == override.affiliate_id,
                    )
                    .values(capped_until=until)
                )
                changed.add(offer.id)
    return changed


def _differs(stored: datetime | None, wanted: datetime | None, now: datetime) -> bool:
    """Whether the stored instant says something else than `wanted`; one already past says "not capped"."""
    if stored is not None and stored <= now:
        stored = None
    return stored != wanted


async def publish(client: redis.Redis, session: AsyncSession, offer_ids: Iterable[int]) -> bool:
    """Republish the links of `offer_ids` after their cap state changed (committed); False if Redis failed."""
    ok = True
    for offer_id in sorted(set(offer_ids)):
        ok = await publish_links_of(client, session, offer_id=offer_id) and ok
    return ok
