"""Links for load tests: N links on a dedicated bench advertiser, offer and affiliate, kept in the database like any.

Made through the manager's domain steps (the bench entities) and one batched insert (the links), so their ids come
from the database, the reconciler keeps them, and a second run with the same prefix finds and reuses them.
The links have no URL of their own: they follow the bench offer's destination template, so a run with another
`url` changes one row and republishes them all.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.db.models import Advertiser, Affiliate, Link, Offer
from adclick.core.links import LinkConfigError, check_slug
from adclick.core.publisher import InvalidLinkConfig, check_template, held_by
from adclick.manager import campaigns
from adclick.manager.campaigns import Conflict, Invalid
from adclick.manager.schemas import AdvertiserIn, AffiliateIn, OfferIn, OfferPatch

BENCH_ADVERTISER = "Bench advertiser"
BENCH_OFFER = "Bench offer"
BENCH_AFFILIATE = "Bench affiliate"
DEFAULT_PREFIX = "bench-"
DEFAULT_URL = "https://bench.example/landing?c={click_id}&s1={sub1}&o={offer_id}&a={aff_id}"
MAX_LINKS = 1_000_000


@dataclass
class BenchLinks:
    """What `ensure_bench_links` found and made."""

    advertiser_id: int
    offer_id: int
    affiliate_id: int
    slugs: list[str]
    ids: list[int]  # in the order of `slugs`
    created: int
    url_changed: bool  # the bench offer had another destination template: every bench link now serves the new one
    held_by: list[str]  # which of the offer, advertiser and affiliate are not active (their links serve paused)


def bench_slugs(count: int, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """`{prefix}0` .. `{prefix}{count-1}`, the slugs the locustfile and the benchmarks click."""
    if not 1 <= count <= MAX_LINKS:
        raise Invalid(f"the number of links must be 1..{MAX_LINKS:,}, got {count:,}")
    slugs = [f"{prefix}{i}" for i in range(count)]
    try:
        check_slug(slugs[-1])  # the longest
    except LinkConfigError as error:
        raise Invalid(f"prefix {prefix!r} makes bad slugs: {error}") from error
    return slugs


async def _bench_parents(session: AsyncSession, url: str) -> tuple[Advertiser, Offer, Affiliate]:
    """The bench advertiser, offer and affiliate (the oldest of each name), made if missing."""
    advertiser = await session.scalar(
        select(Advertiser).where(Advertiser.name == BENCH_ADVERTISER).order_by(Advertiser.id).limit(1)
    )
    if advertiser is None:
        advertiser = await campaigns.create_advertiser(session, AdvertiserIn(name=BENCH_ADVERTISER))
    affiliate = await session.scalar(
        select(Affiliate).where(Affiliate.name == BENCH_AFFILIATE).order_by(Affiliate.id).limit(1)
    )
    if affiliate is None:
        affiliate = await campaigns.create_affiliate(session, AffiliateIn(name=BENCH_AFFILIATE))
    offer = await session.scalar(
        select(Offer).where(Offer.name == BENCH_OFFER, Offer.advertiser_id == advertiser.id).order_by(Offer.id).limit(1)
    )
    if offer is None:
        data = OfferIn(advertiser_id=advertiser.id, name=BENCH_OFFER, destination_template=url)
        offer = await campaigns.create_offer(session, data)
    return advertiser, offer, affiliate


async def ensure_bench_links(
    session: AsyncSession, count: int, prefix: str = DEFAULT_PREFIX, url: str = DEFAULT_URL
) -> BenchLinks:
    """Make or reuse the links `{prefix}0` .. `{prefix}{count-1}` on the bench offer and affiliate, and commit.

    The caller publishes them (`publisher.publish_links_of(offer_id=...)`). Raises Invalid for a bad count,
    prefix or URL, and Conflict when one of the slugs belongs to a link outside the bench campaign.
    """
    slugs = bench_slugs(count, prefix)
    try:
        check_template(url)  # with the tracker's own decoder, as every link and offer template is
    except InvalidLinkConfig as error:
        raise Invalid(f"url: {error}") from error
    advertiser, offer, affiliate = await _bench_parents(session, url)

    wanted = set(slugs)
    query = select(Link.slug, Link.id, Link.offer_id, Link.affiliate_id)
    found: dict[str, int] = {}
    foreign: list[str] = []
    for slug, link_id, offer_id, affiliate_id in await session.execute(
        query.where(Link.slug.startswith(prefix, autoescape=True))
    ):
        if slug in wanted:
            found[slug] = link_id
            if (offer_id, affiliate_id) != (offer.id, affiliate.id):
                foreign.append(slug)
    if foreign:
        foreign.sort()
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise Conflict(
            f"{len(foreign)} of these slugs ({shown}) belong to links outside the bench offer and affiliate; "
            "choose another prefix"
        )

    url_changed = offer.destination_template != url
    if url_changed:  # the caller republishes every link of the offer, those following it included
        offer = await campaigns.update_offer(session, offer.id, OfferPatch(destination_template=url))
    missing = [slug for slug in slugs if slug not in found]
    if missing:
        rows = [
            {
                "slug": slug,
                "offer_id": offer.id,
                "affiliate_id": affiliate.id,
                "template": None,  # follows the bench offer's destination template
                "config": {"rules": [], "cookie": False},
                "status": "active",
            }
            for slug in missing
        ]
        try:
            await session.execute(insert(Link), rows)  # one executemany, batched by the driver
            await session.commit()
        except IntegrityError as error:
            await session.rollback()
            raise Conflict("another writer took some of these slugs meanwhile; run again") from error
        made = query.where(Link.offer_id == offer.id, Link.slug.startswith(prefix, autoescape=True))
        found.update({slug: link_id for slug, link_id, _, _ in await session.execute(made) if slug in wanted})
    return BenchLinks(
        advertiser_id=advertiser.id,
        offer_id=offer.id,
        affiliate_id=affiliate.id,
        slugs=slugs,
        ids=[found[slug] for slug in slugs],
        created=len(missing),
        url_changed=url_changed,
        held_by=held_by(offer.status, advertiser.status, affiliate.status),
    )
