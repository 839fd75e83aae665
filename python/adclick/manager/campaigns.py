"""Campaign set-up on the database: advertisers, affiliates, offers, per-affiliate overrides and links.

Pages and the JSON API both call these; they commit, and the callers publish links to Redis afterwards.
"""

from __future__ import annotations

import secrets
import string
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.db.models import Advertiser, Affiliate, Base, Link, Offer, OfferAffiliateOverride
from adclick.core.publisher import InvalidLinkConfig, check_link_config, check_template, link_config
from adclick.manager.schemas import (
    AdvertiserIn,
    AdvertiserPatch,
    AffiliateIn,
    AffiliatePatch,
    LinkIn,
    LinkPatch,
    OfferIn,
    OfferPatch,
    OverrideIn,
)

T = TypeVar("T", bound=Base)
PAGE_SIZE = 100
SLUG_ALPHABET = string.ascii_letters + string.digits
SLUG_LENGTH = 8


class NotFound(LookupError):
    """No such row (or not one this user may see): 404."""


class Conflict(ValueError):
    """The change clashes with other rows (a taken slug, a row still in use): 409."""


class Invalid(ValueError):
    """Well-formed input that makes no sense here (an unknown offer, a template the tracker refuses): 422."""


async def get_row(session: AsyncSession, model: type[T], key: Any, what: str) -> T:
    row = await session.get(model, key)
    if row is None:
        raise NotFound(f"{what} {key} not found")
    return row


async def _exists(session: AsyncSession, model: type[Base], key: int, what: str) -> None:
    if await session.get(model, key) is None:
        raise Invalid(f"{what} {key} does not exist")


async def _commit(session: AsyncSession, conflict: str) -> None:
    try:
        await session.commit()
    except IntegrityError as error:
        await session.rollback()
        raise Conflict(conflict) from error


async def _delete(session: AsyncSession, row: Base, what: str) -> None:
    await session.delete(row)
    await _commit(session, f"{what} is still in use; archive it instead")


async def page(session: AsyncSession, query: Select[Any], number: int = 1) -> tuple[list[Any], int]:
    """One page of rows (PAGE_SIZE a page) and the total count."""
    total = int(await session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)
    rows = list((await session.scalars(query.limit(PAGE_SIZE).offset((max(number, 1) - 1) * PAGE_SIZE))).all())
    return rows, total


# -- advertisers --


async def get_advertiser(session: AsyncSession, advertiser_id: int) -> Advertiser:
    return await get_row(session, Advertiser, advertiser_id, "advertiser")


async def create_advertiser(session: AsyncSession, data: AdvertiserIn) -> Advertiser:
    values = data.model_dump()
    values["postback_ips"] = values.get("postback_ips") or None  # an empty list is no list
    advertiser = Advertiser(**values)
    session.add(advertiser)
    await session.commit()
    return advertiser


async def update_advertiser(session: AsyncSession, advertiser_id: int, data: AdvertiserPatch) -> Advertiser:
    advertiser = await get_advertiser(session, advertiser_id)
    for name, value in data.model_dump(exclude_unset=True, exclude_none=True).items():
        if name == "postback_ips":
            value = value or None  # an empty list is no list: postbacks from anywhere
        setattr(advertiser, name, value)
    await session.commit()
    return advertiser


async def rotate_token(session: AsyncSession, advertiser_id: int) -> Advertiser:
    """Bump the token version, which revokes every older postback token of this advertiser."""
    advertiser = await get_advertiser(session, advertiser_id)
    advertiser.token_version += 1
    await session.commit()
    return advertiser


async def delete_advertiser(session: AsyncSession, advertiser_id: int) -> None:
    await _delete(session, await get_advertiser(session, advertiser_id), "the advertiser")


# -- affiliates --


async def get_affiliate(session: AsyncSession, affiliate_id: int) -> Affiliate:
    return await get_row(session, Affiliate, affiliate_id, "affiliate")


# Offer fields a PATCH may clear with null (the rest ignore a null).
NULLABLE_OFFER_FIELDS = frozenset(
    {
        "daily_cap",
        "monthly_cap",
        "lifetime_cap",
        "cap_fallback_url",
        "destination_template",
        "pixel_max_amount",
        "pixel_domains",
    }
)


def _stored_triggers(triggers: list[str] | None) -> str | None:
    """The postback triggers as `affiliates.postback_triggers` keeps them: a comma list, NULL for the default."""
    return None if triggers is None else ",".join(triggers)


async def create_affiliate(session: AsyncSession, data: AffiliateIn) -> Affiliate:
    values = data.model_dump()
    values["postback_triggers"] = _stored_triggers(values["postback_triggers"])
    affiliate = Affiliate(**values)
    session.add(affiliate)
    await session.commit()
    return affiliate


# A null in a patch clears these (no email, no postback, the default triggers, unsigned); elsewhere it changes nothing.
CLEARABLE_AFFILIATE_FIELDS = frozenset({"email", "postback_url", "postback_triggers", "postback_secret"})


async def update_affiliate(session: AsyncSession, affiliate_id: int, data: AffiliatePatch) -> Affiliate:
    affiliate = await get_affiliate(session, affiliate_id)
    for name, value in data.model_dump(exclude_unset=True).items():
        if name == "postback_triggers":
            value = _stored_triggers(value)
        if value is not None or name in CLEARABLE_AFFILIATE_FIELDS:
            setattr(affiliate, name, value)
    await session.commit()
    return affiliate


def new_postback_secret() -> str:
    """A random secret to sign an affiliate's postbacks with: 256 bits, URL-safe text."""
    return secrets.token_urlsafe(32)


async def rotate_postback_secret(session: AsyncSession, affiliate_id: int) -> Affiliate:
    """Give the affiliate a new random signing secret; its postbacks are signed with it from the next attempt."""
    affiliate = await get_affiliate(session, affiliate_id)
    affiliate.postback_secret = new_postback_secret()
    await session.commit()
    return affiliate


async def delete_affiliate(session: AsyncSession, affiliate_id: int) -> None:
    await _delete(session, await get_affiliate(session, affiliate_id), "the affiliate")


# -- offers and overrides --


async def get_offer(session: AsyncSession, offer_id: int) -> Offer:
    return await get_row(session, Offer, offer_id, "offer")


def _check_destination_template(template: str | None, field: str = "destination_template") -> None:
    """An offer's template goes through the tracker's decoder at save time, as a link's does."""
    if template is None:
        return
    try:
        check_template(template)
    except InvalidLinkConfig as error:
        raise Invalid(f"{field}: {error}") from error


async def create_offer(session: AsyncSession, data: OfferIn) -> Offer:
    await _exists(session, Advertiser, data.advertiser_id, "advertiser")
    _check_destination_template(data.destination_template)
    _check_destination_template(data.cap_fallback_url, "cap_fallback_url")
    values = data.model_dump()
    values["pixel_domains"] = values.get("pixel_domains") or None
    offer = Offer(**values)
    session.add(offer)
    await session.commit()
    return offer


async def following_links(session: AsyncSession, offer_id: int) -> int:
    """How many links of the offer have no template of their own, so serve (and follow) the offer's."""
    query = select(func.count()).select_from(Link).where(Link.offer_id == offer_id, Link.template.is_(None))
    return int(await session.scalar(query) or 0)


async def update_offer(session: AsyncSession, offer_id: int, data: OfferPatch) -> Offer:
    """Change an offer; its links that follow its template follow a new one (the caller republishes them)."""
    offer = await get_offer(session, offer_id)
    changes = data.model_dump(exclude_unset=True)
    if changes.get("advertiser_id") is not None:
        await _exists(session, Advertiser, changes["advertiser_id"], "advertiser")
    try:
        OfferIn.model_validate({**_columns(offer, OfferIn.model_fields), **changes})
    except ValueError as error:
        raise Invalid(str(error)) from error
    if "cap_fallback_url" in changes:
        _check_destination_template(changes["cap_fallback_url"], "cap_fallback_url")
    if "destination_template" in changes:
        _check_destination_template(changes["destination_template"])
        if changes["destination_template"] is None and offer.destination_template is not None:
            if following := await following_links(session, offer_id):
                raise Invalid(
                    f"destination_template: {following} link(s) follow it; give them a URL of their own first"
                )
    for name, value in changes.items():
        if name == "pixel_domains":
            value = value or None  # an empty list is no list: the pixel from any page
        if value is not None or name in NULLABLE_OFFER_FIELDS:
            setattr(offer, name, value)
    await session.commit()
    return offer


def _columns(row: Base, names: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


async def delete_offer(session: AsyncSession, offer_id: int) -> None:
    await _delete(session, await get_offer(session, offer_id), "the offer")


async def list_overrides(session: AsyncSession, offer_id: int) -> list[OfferAffiliateOverride]:
    await get_offer(session, offer_id)
    query = select(OfferAffiliateOverride).where(OfferAffiliateOverride.offer_id == offer_id)
    return list((await session.scalars(query.order_by(OfferAffiliateOverride.affiliate_id))).all())


async def put_override(
    session: AsyncSession, offer_id: int, affiliate_id: int, data: OverrideIn
) -> OfferAffiliateOverride:
    """Create or replace an affiliate's terms on an offer."""
    await get_offer(session, offer_id)
    await _exists(session, Affiliate, affiliate_id, "affiliate")
    row = await session.get(OfferAffiliateOverride, (offer_id, affiliate_id))
    if row is None:
        row = OfferAffiliateOverride(offer_id=offer_id, affiliate_id=affiliate_id)
        session.add(row)
    for name, value in data.model_dump().items():
        setattr(row, name, value)
    await session.commit()
    return row


async def delete_override(session: AsyncSession, offer_id: int, affiliate_id: int) -> None:
    row = await get_row(session, OfferAffiliateOverride, (offer_id, affiliate_id), "override")
    await _delete(session, row, "the override")


# -- links --


def links_query(affiliate_id: int | None = None, offer_id: int | None = None, q: str | None = None) -> Select[Any]:
    query = select(Link).order_by(Link.id.desc())
    if affiliate_id is not None:
        query = query.where(Link.affiliate_id == affiliate_id)
    if offer_id is not None:
        query = query.where(Link.offer_id == offer_id)
    if q:
        query = query.where(or_(Link.slug.contains(q, autoescape=True), Link.template.contains(q, autoescape=True)))
    return query


def visible_links(
    scope: int | None, affiliate_id: int | None = None, offer_id: int | None = None, q: str | None = None
) -> Select[Any]:
    """The links a user may list: `scope` (Principal.scope) confines an affiliate user to its own, whatever
    `affiliate_id` filter it asks for; staff (scope None) filter as they like."""
    return links_query(affiliate_id if scope is None else scope, offer_id, q)


async def get_link(session: AsyncSession, link_id: int, affiliate_id: int | None = None) -> Link:
    """The link; an affiliate user (`affiliate_id`) gets NotFound for another affiliate's link, not a hint it exists."""
    link = await get_row(session, Link, link_id, "link")
    if affiliate_id is not None and link.affiliate_id != affiliate_id:
        raise NotFound(f"link {link_id} not found")
    return link


def _extra(fields: dict[str, Any]) -> dict[str, Any]:
    """The part of a link that lives in `links.config` (JSON) rather than in its own columns."""
    extra: dict[str, Any] = {"rules": [_clean(rule) for rule in fields.get("rules") or []]}
    if fields.get("destinations"):
        extra["destinations"] = fields["destinations"]
    if fields.get("fallback_url"):
        extra["fallback_url"] = fields["fallback_url"]
    extra["cookie"] = bool(fields.get("cookie"))
    return extra


def _clean(rule: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in rule.items() if value not in (None, [])}


def link_fields(link: Link) -> dict[str, Any]:
    """The editable fields of a link, as LinkIn takes them."""
    extra = link.config or {}
    return {
        "offer_id": link.offer_id,
        "affiliate_id": link.affiliate_id,
        "slug": link.slug,
        "url": None if extra.get("destinations") else link.template,
        "destinations": extra.get("destinations"),
        "rules": extra.get("rules") or [],
        "fallback_url": extra.get("fallback_url"),
        "cookie": bool(extra.get("cookie")),
        "status": link.status,
        "expires_at": link.expires_at,
    }


async def _slug(session: AsyncSession) -> str:
    for _ in range(10):
        slug = "".join(secrets.choice(SLUG_ALPHABET) for _ in range(SLUG_LENGTH))
        if await session.scalar(select(Link.id).where(Link.slug == slug)) is None:
            return slug
    raise Conflict("could not find a free slug; give one")


async def _apply(session: AsyncSession, link: Link, data: LinkIn) -> Link:
    """Fill `link` from `data`, flush, and check its config with the tracker's decoder before anything commits.

    Without a URL or destinations the link keeps no template of its own: it follows its offer's.
    """
    offer = await session.get(Offer, data.offer_id)
    if offer is None:
        raise Invalid(f"offer {data.offer_id} does not exist")
    await _exists(session, Affiliate, data.affiliate_id, "affiliate")
    own = data.url or (data.destinations[0].url if data.destinations else None)
    if own is None and offer.destination_template is None:
        raise Invalid("a link needs a url or destinations, or an offer with a destination template")
    fields = data.model_dump(mode="json", exclude={"expires_at"})
    slug = data.slug or link.slug or await _slug(session)
    taken = await session.scalar(select(Link.id).where(Link.slug == slug, Link.id != (link.id or 0)))
    if taken is not None:
        raise Conflict(f"slug {slug!r} is taken")
    link.slug = slug
    link.offer_id = data.offer_id
    link.affiliate_id = data.affiliate_id
    link.template = own
    link.config = _extra(fields)
    link.status = data.status
    link.expires_at = data.expires_at
    session.add(link)
    try:
        await session.flush()
        config = link_config(link, parents_active=True, offer_template=offer.destination_template)
        check_link_config(config)  # validity only
    except InvalidLinkConfig as error:
        await session.rollback()
        raise Invalid(str(error)) from error
    except IntegrityError as error:
        await session.rollback()
        raise Conflict(f"slug {slug!r} is taken") from error
    await _commit(session, f"slug {slug!r} is taken")
    return link


async def create_link(session: AsyncSession, data: LinkIn) -> Link:
    return await _apply(session, Link(), data)


async def update_link(session: AsyncSession, link_id: int, data: LinkPatch) -> Link:
    link = await get_link(session, link_id)
    merged = {**link_fields(link), **data.model_dump(exclude_unset=True)}
    if "url" in data.model_fields_set and data.url and "destinations" not in data.model_fields_set:
        merged["destinations"] = None  # a new single URL replaces the rotation
    try:
        full = LinkIn.model_validate(merged)
    except ValueError as error:
        raise Invalid(str(error)) from error
    return await _apply(session, link, full)


async def replace_link(session: AsyncSession, link_id: int, data: LinkIn) -> Link:
    """Replace every field of a link (the edit form); a blank slug keeps the current one."""
    return await _apply(session, await get_link(session, link_id), data)


async def set_link_status(session: AsyncSession, link_id: int, status: str) -> Link:
    link = await get_link(session, link_id)
    link.status = status
    await session.commit()
    return link


async def delete_link(session: AsyncSession, link_id: int) -> str:
    link = await get_link(session, link_id)
    slug = link.slug
    await _delete(session, link, "the link")
    return slug
