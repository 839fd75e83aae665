"""Postbacks out to affiliates, in the manager: the deliveries of a conversion or an affiliate, redelivery, a test.

The worker's deliverer (adclick.worker.deliverer) sends every row written here; the manager only adds rows to the
outbox (`postback_deliveries`) and reads them. What leaves here for a page or the API has its secrets masked
(adclick.core.affiliate_postbacks.mask): a URL's credential-like query values and any user:password.
Who may see or do what is the web layer's rule (manager/deps.py); these steps take plain values and a session.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core.affiliate_postbacks import mask, parse_triggers, sample
from adclick.core.db.models import Affiliate, PostbackDelivery
from adclick.core.db.types import utc_now
from adclick.manager.campaigns import Conflict, get_affiliate, get_row
from adclick.manager.schemas import AffiliatePostbackOut, DeliveryOut

RECENT = 50  # deliveries shown on an affiliate's postback page
_RESENT = ("conversion_id", "affiliate_id", "trigger", "template", "click_id")  # what a redelivery sends again


def shown_template(template: str | None) -> str | None:
    """A template with its secrets masked, its macros still readable (mask re-encodes the query it rewrites)."""
    if not template:
        return None
    masked = mask(template)
    return masked if masked == template else masked.replace("%7B", "{").replace("%7D", "}")


def delivery_out(row: PostbackDelivery) -> DeliveryOut:
    """A delivery as pages and the API show it: the URL as last sent and the template, secrets masked."""
    error = row.last_error
    if error and row.url and row.url in error:  # an HTTP client's message may quote the URL it failed on
        error = error.replace(row.url, mask(row.url))
    # Every other field as stored (DeliveryOut reads attributes); these four as they may be shown.
    shown = {
        "template": shown_template(row.template) or "",
        "url": mask(row.url) if row.url else None,
        "last_error": error,
        "next_attempt_at": row.next_attempt_at if row.state == "pending" else None,
    }
    return DeliveryOut.model_validate(row).model_copy(update=shown)


async def of_conversion(session: AsyncSession, conversion_id: int) -> list[DeliveryOut]:
    """Every delivery of a conversion (redeliveries included), oldest first; the caller checked it may see it."""
    query = select(PostbackDelivery).where(PostbackDelivery.conversion_id == conversion_id)
    return [delivery_out(row) for row in (await session.scalars(query.order_by(PostbackDelivery.id))).all()]


async def postback_of(session: AsyncSession, affiliate_id: int, limit: int = RECENT) -> AffiliatePostbackOut:
    """An affiliate's postback as the affiliate may see it (template masked, no secret) and its latest deliveries."""
    affiliate = await get_affiliate(session, affiliate_id)
    query = select(PostbackDelivery).where(PostbackDelivery.affiliate_id == affiliate_id)
    rows = (await session.scalars(query.order_by(PostbackDelivery.id.desc()).limit(limit))).all()
    return AffiliatePostbackOut(
        affiliate_id=affiliate.id,
        postback_url=shown_template(affiliate.postback_url),
        postback_triggers=list(parse_triggers(affiliate.postback_triggers)),
        signed=bool(affiliate.postback_secret),
        deliveries=[delivery_out(row) for row in rows],
    )


def _key(prefix: str, of: int) -> str:
    """A fresh outbox key: redeliveries and tests are new rows each time they are asked for."""
    return f"{prefix}:{of}:{secrets.token_hex(8)}"


async def _add(session: AsyncSession, **values: Any) -> PostbackDelivery:
    now = utc_now()
    row = PostbackDelivery(state="pending", attempts=0, next_attempt_at=now, created_at=now, **values)
    session.add(row)
    await session.commit()
    return row


async def redeliver(session: AsyncSession, delivery_id: int) -> PostbackDelivery:
    """A new pending row sending what `delivery_id` sent again (its template and values), due now."""
    source = await get_row(session, PostbackDelivery, delivery_id, "delivery")
    same = {name: getattr(source, name) for name in _RESENT}
    return await _add(
        session,
        key=_key("redelivery", source.id),
        kind="redelivery",
        values=dict(source.values),
        **same,
    )


async def send_test(session: AsyncSession, affiliate_id: int) -> PostbackDelivery:
    """A test postback to the affiliate's template with plainly fake values (core sample), due now.

    Conflict when it has no template, or when its last test is still waiting to be sent (so a held-down button
    does not queue a flood of requests to its server).
    """
    affiliate: Affiliate = await get_affiliate(session, affiliate_id)
    if not affiliate.postback_url:
        raise Conflict(f"affiliate {affiliate_id} has no postback URL to test")
    waiting = await session.scalar(
        select(func.count())
        .select_from(PostbackDelivery)
        .where(
            PostbackDelivery.affiliate_id == affiliate_id,
            PostbackDelivery.kind == "test",
            PostbackDelivery.state == "pending",
        )
    )
    if waiting:
        raise Conflict("a test postback is still waiting to be sent; see its result below before sending another")
    values = {**sample(affiliate_id).values, "trigger": "test"}
    return await _add(
        session,
        key=_key("test", affiliate_id),
        kind="test",
        conversion_id=None,
        affiliate_id=affiliate_id,
        trigger="test",
        template=affiliate.postback_url,
        click_id=None,
        values=values,
    )
