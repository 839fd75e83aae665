"""A campaign to test on: advertiser → offer, an affiliate, and a link between them, written through the ORM (what the
roles read) or through the manager's JSON API (what staff do)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adclick.core.db.models import Advertiser, Affiliate, Link, Offer
from adclick.core.db.session import session_factory
from sqlalchemy.ext.asyncio import AsyncSession

from .database import engine_on


@dataclass
class Campaign:
    """What `seed_campaign` wrote (the affiliate and link only when asked for)."""

    advertiser: Advertiser
    offer: Offer
    affiliate: Affiliate | None = None
    link: Link | None = None

    @property
    def advertiser_id(self) -> int:
        return self.advertiser.id

    @property
    def offer_id(self) -> int:
        return self.offer.id

    @property
    def affiliate_id(self) -> int:
        assert self.affiliate is not None
        return self.affiliate.id

    @property
    def link_id(self) -> int:
        assert self.link is not None
        return self.link.id


async def seed_campaign(
    session: AsyncSession,
    *,
    advertiser: dict[str, Any] | None = None,
    offer: dict[str, Any] | None = None,
    affiliate: dict[str, Any] | None = None,
    link: dict[str, Any] | None = None,
) -> Campaign:
    """An advertiser and its offer, and with `affiliate` (columns, `{}` for the defaults) an affiliate, and with `link`
    a link of the offer for that affiliate. Each dict holds columns over the defaults; the rows are flushed (they have
    their ids), committing is the caller's."""
    row = Advertiser(**{"name": "Shop", **(advertiser or {})})
    partner = None if affiliate is None and link is None else Affiliate(**{"name": "Partner", **(affiliate or {})})
    session.add_all([row] if partner is None else [row, partner])
    await session.flush()
    made = Campaign(row, Offer(advertiser_id=row.id, **{"name": "Summer", **(offer or {})}), partner)
    session.add(made.offer)
    await session.flush()
    if link is not None:
        assert partner is not None
        columns = {"slug": "summer", "template": "https://shop.example/", **link}
        made.link = Link(offer_id=made.offer.id, affiliate_id=partner.id, **columns)
        session.add(made.link)
        await session.flush()
    return made


async def seed_database(database_url: str, **rows: dict[str, Any] | None) -> Campaign:
    """`seed_campaign` on a database of its own engine, committed (the rows keep their loaded columns)."""
    async with engine_on(database_url) as engine, session_factory(engine)() as session:
        made = await seed_campaign(session, **rows)
        await session.commit()
        return made


@dataclass
class ApiCampaign:
    """The ids of what `seed_campaign_api` made through the manager."""

    advertiser_id: int
    offer_id: int
    affiliate_id: int
    link_id: int | None = None


def seed_campaign_api(
    api: Callable[..., Any],
    *,
    advertiser: dict[str, Any] | None = None,
    offer: dict[str, Any] | None = None,
    affiliate: dict[str, Any] | None = None,
    link: dict[str, Any] | None = None,
) -> ApiCampaign:
    """An advertiser, an affiliate and an offer made through `/api/v1` by `api` (a `ManagerApi`, or anything called
    the same way), and with `link` a link of the offer for the affiliate. Each dict holds fields over the defaults."""
    advertiser_id = int(api("POST", "/api/v1/advertisers", {"name": "Shop", **(advertiser or {})})["id"])
    affiliate_id = int(api("POST", "/api/v1/affiliates", {"name": "Partner", **(affiliate or {})})["id"])
    offer_fields = {"advertiser_id": advertiser_id, "name": "Summer", **(offer or {})}
    made = ApiCampaign(advertiser_id, int(api("POST", "/api/v1/offers", offer_fields)["id"]), affiliate_id)
    if link is not None:
        fields = {"offer_id": made.offer_id, "affiliate_id": affiliate_id, "url": "https://shop.example/", **link}
        made.link_id = int(api("POST", "/api/v1/links", fields)["id"])
    return made
