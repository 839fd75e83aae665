"""Edit-and-republish steps: change a campaign row, then publish what trackers and the postback role read.

Each step takes the Redis client, a session and plain values, never a request, so the JSON API and the pages share
them. A step returns whether what it published reached Redis (`live`), None when nothing served changed.
"""

from __future__ import annotations

import redis
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core import capping
from adclick.core.db.models import Advertiser, Affiliate, Link, Offer, OfferAffiliateOverride
from adclick.core.publisher import publish, publish_links_of, publish_token_version, unpublish
from adclick.manager import campaigns
from adclick.manager.schemas import (
    AdvertiserIn,
    AdvertiserPatch,
    AffiliatePatch,
    LinkIn,
    LinkPatch,
    OfferPatch,
    OverrideIn,
)


def serving(row: Advertiser | Affiliate | Offer) -> tuple[bool, int | None]:
    """What of an advertiser, affiliate or offer decides whether its links are served."""
    return row.status == "active", getattr(row, "advertiser_id", None)


async def add_advertiser(client: redis.Redis, session: AsyncSession, data: AdvertiserIn) -> Advertiser:
    """Create an advertiser; one with a postback allowlist is published at once (the reconciler would within a
    minute, and until then the postback role would take its postbacks from anywhere, though the worker would not)."""
    advertiser = await campaigns.create_advertiser(session, data)
    if advertiser.postback_ips is not None:
        await publish_token_version(client, advertiser)
    return advertiser


async def edit_advertiser(
    client: redis.Redis, session: AsyncSession, advertiser_id: int, data: AdvertiserPatch
) -> tuple[Advertiser, bool | None]:
    """Update an advertiser, then republish its links if what decides their serving changed. The second value is
    whether their new state reached Redis, None when they serve what they did (for the API and the pages)."""
    current = await campaigns.get_advertiser(session, advertiser_id)
    before, ips_before = serving(current), current.postback_ips
    advertiser = await campaigns.update_advertiser(session, advertiser_id, data)
    live = None
    if serving(advertiser) != before:
        live = await publish_links_of(client, session, advertiser_id=advertiser_id)
    if advertiser.postback_ips != ips_before:  # the postback role checks the allowlist it reads from Redis
        published = await publish_token_version(client, advertiser)
        live = published if live is None else live and published
    return advertiser, live


async def rotate_token(client: redis.Redis, session: AsyncSession, advertiser_id: int) -> tuple[Advertiser, bool]:
    """Bump the advertiser's token version (revoking older tokens) and tell the postback role through Redis."""
    advertiser = await campaigns.rotate_token(session, advertiser_id)
    return advertiser, await publish_token_version(client, advertiser)


async def edit_affiliate(
    client: redis.Redis, session: AsyncSession, affiliate_id: int, data: AffiliatePatch
) -> tuple[Affiliate, bool | None]:
    """As `edit_advertiser`, for an affiliate."""
    before = serving(await campaigns.get_affiliate(session, affiliate_id))
    affiliate = await campaigns.update_affiliate(session, affiliate_id, data)
    live = None
    if serving(affiliate) != before:
        live = await publish_links_of(client, session, affiliate_id=affiliate_id)
    return affiliate, live


CAP_FIELDS = ("daily_cap", "monthly_cap", "lifetime_cap", "cap_timezone")


def _caps_of(offer: Offer) -> tuple[object, ...]:
    return tuple(getattr(offer, name) for name in CAP_FIELDS)


async def edit_offer(
    client: redis.Redis, session: AsyncSession, offer_id: int, data: OfferPatch
) -> tuple[Offer, bool | None]:
    """As `edit_advertiser`, for an offer; a new `destination_template` reaches only the links that follow it.

    A change of its caps may fill or free them (adclick.core.capping), and a new cap fallback changes where its
    links send clicks while capped: either republishes every link of the offer.
    """
    before = await campaigns.get_offer(session, offer_id)
    serving_before, template_before = serving(before), before.destination_template
    caps_before, cap_url_before = _caps_of(before), before.cap_fallback_url
    offer = await campaigns.update_offer(session, offer_id, data)
    recapped = False
    if _caps_of(offer) != caps_before:
        recapped = bool(await capping.refresh(session, [offer.id]))
        await session.commit()
    if serving(offer) != serving_before or recapped or offer.cap_fallback_url != cap_url_before:
        return offer, await publish_links_of(client, session, offer_id=offer.id)
    if offer.destination_template != template_before:  # only the links that follow it serve something new
        return offer, await publish_links_of(client, session, offer_id=offer.id, inheriting_only=True)
    return offer, None


async def recap(client: redis.Redis, session: AsyncSession, offer_id: int) -> bool | None:
    """After a committed change to what fills the offer's caps: store its cap state, and republish its links if
    that changed (whether they reached Redis; None when nothing changed)."""
    changed = await capping.refresh(session, [offer_id])
    await session.commit()
    return await capping.publish(client, session, changed) if changed else None


async def put_override(
    client: redis.Redis, session: AsyncSession, offer_id: int, affiliate_id: int, data: OverrideIn
) -> tuple[OfferAffiliateOverride, bool | None]:
    """Create or replace an affiliate's terms on an offer; a new daily cap may fill or free it (`recap`)."""
    override = await campaigns.put_override(session, offer_id, affiliate_id, data)
    return override, await recap(client, session, offer_id)


async def delete_override(client: redis.Redis, session: AsyncSession, offer_id: int, affiliate_id: int) -> None:
    """Remove an affiliate's terms on an offer, and with them its daily cap: a capped affiliate's links serve again."""
    await campaigns.delete_override(session, offer_id, affiliate_id)
    await publish_links_of(client, session, offer_id=offer_id)


async def add_link(client: redis.Redis, session: AsyncSession, data: LinkIn) -> tuple[Link, bool]:
    """Create a link and publish it."""
    link = await campaigns.create_link(session, data)
    return link, await publish(client, session, link)


async def edit_link(
    client: redis.Redis, session: AsyncSession, link_id: int, data: LinkPatch | LinkIn
) -> tuple[Link, bool]:
    """Update a link (a LinkPatch changes the fields it names, a LinkIn replaces them all) and publish it, removing
    its old key when the slug changed."""
    previous_slug = (await campaigns.get_link(session, link_id)).slug
    if isinstance(data, LinkIn):
        link = await campaigns.replace_link(session, link_id, data)
    else:
        link = await campaigns.update_link(session, link_id, data)
    return link, await publish(client, session, link, previous_slug)


async def set_link_status(client: redis.Redis, session: AsyncSession, link_id: int, status: str) -> tuple[Link, bool]:
    """Pause or resume a link and publish it."""
    link = await campaigns.set_link_status(session, link_id, status)
    return link, await publish(client, session, link)


async def remove_link(client: redis.Redis, session: AsyncSession, link_id: int) -> bool:
    """Delete a link and its key; False when Redis could not be reached (trackers serve it until the reconciler)."""
    slug = await campaigns.delete_link(session, link_id)
    return await unpublish(client, session, slug)
