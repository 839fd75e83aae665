"""Campaign set-up pages: advertisers, affiliates, offers with per-affiliate overrides, and links."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import segno
from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from adclick.core import counting
from adclick.core.affiliate_postbacks import MACROS as POSTBACK_MACROS
from adclick.core.affiliate_postbacks import TRIGGERS, parse_triggers
from adclick.core.db.models import Advertiser, Affiliate, Link, Offer
from adclick.core.publisher import published_state, serving_config
from adclick.manager import campaigns, deliveries, edits
from adclick.manager.api import advertiser_out, listed_affiliate, tracking_url
from adclick.manager.campaigns import Conflict, Invalid
from adclick.manager.deps import (
    BigRowId,
    CurrentUser,
    IdFilter,
    LinkId,
    PageNo,
    RowId,
    SessionDep,
    StaffUser,
    own_affiliate,
)
from adclick.manager.forms import form_fields, parse
from adclick.manager.schemas import (
    AdvertiserIn,
    AdvertiserPatch,
    AffiliateIn,
    AffiliatePatch,
    LinkIn,
    OfferIn,
    OfferPatch,
    OverrideIn,
)
from adclick.manager.templating import flash, listing, render, render_form, see_other

router = APIRouter(include_in_schema=False)

NOT_LIVE = (
    "Saved, not yet live: Redis could not be reached, so trackers still serve the old config (or none). "
    "The reconciler publishes it as soon as Redis answers."
)
MACROS = (
    "{click_id} {link_id} {offer_id} {aff_id} {sub1} {sub2} {sub3} {sub4} {sub5} {country} {device} {os} {ts}"
    " {p:NAME} (the click's own parameter NAME, e.g. {p:gclid})"
)
AFFILIATE_POSTBACK_MACROS = " ".join(f"{{{name}}}" for name in sorted(POSTBACK_MACROS)) + " {p:NAME}"


def _saved(request: Request, what: str, live: bool | None) -> None:
    """`live` None: nothing trackers serve changed."""
    if live is None:
        flash(request, f"{what} saved.", "success")
    elif live:
        flash(request, f"{what} saved and live.", "success")
    else:
        flash(request, NOT_LIVE, "warning")


# -- advertisers --

ADVERTISER_FIELDS = ("name", "status", "postback_ips")


@router.get("/advertisers")
async def advertisers_page(request: Request, session: SessionDep, _user: StaffUser, page: PageNo = 1) -> Response:
    return await listing(request, session, Advertiser, "advertisers", page)


@router.post("/advertisers")
async def create_advertiser(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    fields = await form_fields(request, *ADVERTISER_FIELDS)
    data, errors = parse(AdvertiserIn, fields)
    if data is None:
        return await listing(request, session, Advertiser, "advertisers", errors=errors, form=fields)
    advertiser = await edits.add_advertiser(request.app.state.redis, session, data)
    return see_other(request, f"/advertisers/{advertiser.id}", "Advertiser created.", "success")


async def _advertiser_page(request: Request, session: SessionDep, advertiser_id: int, **extra: Any) -> Response:
    advertiser = await campaigns.get_advertiser(session, advertiser_id)
    offers = (await session.scalars(select(Offer).where(Offer.advertiser_id == advertiser_id).order_by(Offer.id))).all()
    context = {"advertiser": advertiser, "info": advertiser_out(request, advertiser), "offers": offers, **extra}
    return render_form(request, "advertiser.html", context)


@router.get("/advertisers/{advertiser_id}")
async def advertiser_page(request: Request, advertiser_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    return await _advertiser_page(request, session, advertiser_id)


@router.post("/advertisers/{advertiser_id}")
async def update_advertiser(request: Request, advertiser_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    fields = await form_fields(request, *ADVERTISER_FIELDS)
    fields.setdefault("postback_ips", "")  # a blank allowlist means postbacks from anywhere
    data, errors = parse(AdvertiserPatch, fields)
    if data is None:
        return await _advertiser_page(request, session, advertiser_id, errors=errors)
    _advertiser, live = await edits.edit_advertiser(request.app.state.redis, session, advertiser_id, data)
    _saved(request, "Advertiser", live)
    return see_other(request, f"/advertisers/{advertiser_id}")


@router.post("/advertisers/{advertiser_id}/rotate-token")
async def rotate_token(request: Request, advertiser_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    _advertiser, live = await edits.rotate_token(request.app.state.redis, session, advertiser_id)
    if live:
        flash(request, "New postback token made; the old one no longer works.", "success")
    else:
        flash(
            request,
            "New postback token made, but Redis could not be reached: the postback role accepts the old token "
            "until the reconciler reaches Redis.",
            "warning",
        )
    return see_other(request, f"/advertisers/{advertiser_id}")


@router.post("/advertisers/{advertiser_id}/delete")
async def delete_advertiser(request: Request, advertiser_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    await campaigns.delete_advertiser(session, advertiser_id)
    return see_other(request, "/advertisers", "Advertiser deleted.")


# -- affiliates --

AFFILIATE_FIELDS = ("name", "email", "status")


@router.get("/affiliates")
async def affiliates_page(request: Request, session: SessionDep, _user: StaffUser, page: PageNo = 1) -> Response:
    return await listing(request, session, Affiliate, "affiliates", page, listed=listed_affiliate)


@router.post("/affiliates")
async def create_affiliate(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    fields = await form_fields(request, *AFFILIATE_FIELDS)
    data, errors = parse(AffiliateIn, fields)
    if data is None:
        return await listing(
            request, session, Affiliate, "affiliates", errors=errors, form=fields, listed=listed_affiliate
        )
    affiliate = await campaigns.create_affiliate(session, data)
    return see_other(request, f"/affiliates/{affiliate.id}", "Affiliate created.", "success")


async def _affiliate_page(request: Request, session: SessionDep, affiliate_id: int, **extra: Any) -> Response:
    affiliate = await campaigns.get_affiliate(session, affiliate_id)
    links, total = await campaigns.page(session, campaigns.links_query(affiliate_id=affiliate_id))
    postback = {
        "postback_url": affiliate.postback_url or "",
        "postback_triggers": parse_triggers(affiliate.postback_triggers),
    }
    context = {
        "affiliate": affiliate,
        "links": links,
        "total_links": total,
        "triggers": TRIGGERS,
        "postback_macros": AFFILIATE_POSTBACK_MACROS,
        "postback": extra.pop("postback", None) or postback,
        **extra,
    }
    return render_form(request, "affiliate.html", context)


@router.get("/affiliates/{affiliate_id}")
async def affiliate_page(request: Request, affiliate_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    return await _affiliate_page(request, session, affiliate_id)


@router.post("/affiliates/{affiliate_id}")
async def update_affiliate(request: Request, affiliate_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    fields: dict[str, Any] = await form_fields(request, *AFFILIATE_FIELDS)
    fields.setdefault("email", None)  # a blank email clears it
    data, errors = parse(AffiliatePatch, fields)
    if data is None:
        return await _affiliate_page(request, session, affiliate_id, errors=errors)
    _affiliate, live = await edits.edit_affiliate(request.app.state.redis, session, affiliate_id, data)
    _saved(request, "Affiliate", live)
    return see_other(request, f"/affiliates/{affiliate_id}")


SECRET_ACTIONS = ("keep", "generate", "set", "remove")


@router.post("/affiliates/{affiliate_id}/postback")
async def update_affiliate_postback(
    request: Request, affiliate_id: RowId, session: SessionDep, _user: StaffUser
) -> Response:
    """Its postback template, triggers and signing secret (kept, generated, set to a typed one, or removed)."""
    form = await request.form()
    url = form.get("postback_url")
    url = url if isinstance(url, str) else ""
    triggers = [value for value in form.getlist("postback_triggers") if isinstance(value, str)]
    action = form.get("secret_action") or "keep"
    fields: dict[str, Any] = {"postback_url": url if url.strip() else None, "postback_triggers": triggers}
    errors: list[str] = []
    if action == "generate":
        fields["postback_secret"] = campaigns.new_postback_secret()
    elif action == "remove":
        fields["postback_secret"] = None
    elif action == "set":
        secret = form.get("postback_secret")
        fields["postback_secret"] = secret.strip() if isinstance(secret, str) else ""
    elif action != "keep":
        errors.append(f"secret_action: choose one of {', '.join(SECRET_ACTIONS)}")
    data, more = parse(AffiliatePatch, fields)
    errors += more
    if data is not None and not errors:
        _affiliate, live = await edits.edit_affiliate(request.app.state.redis, session, affiliate_id, data)
        _saved(request, "Postback", live)
        return see_other(request, f"/affiliates/{affiliate_id}")
    postback = {"postback_url": url, "postback_triggers": triggers}
    return await _affiliate_page(request, session, affiliate_id, errors=errors, postback=postback)


async def _postback_page(request: Request, session: SessionDep, affiliate_id: int) -> Response:
    context = {
        "affiliate": await campaigns.get_affiliate(session, affiliate_id),
        "postback": await deliveries.postback_of(session, affiliate_id),
        "staff": request.state.user.is_staff,
    }
    return render(request, "affiliate_postback.html", context)


@router.get("/postback")
async def own_postback_page(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    """An affiliate user's own postback; staff pick an affiliate first."""
    if user.scope is None:
        return see_other(request, "/affiliates")
    return await _postback_page(request, session, user.scope)


@router.get("/affiliates/{affiliate_id}/postback")
async def postback_page(request: Request, affiliate_id: RowId, session: SessionDep, user: CurrentUser) -> Response:
    own_affiliate(user, affiliate_id)
    return await _postback_page(request, session, affiliate_id)


@router.post("/affiliates/{affiliate_id}/postback/test")
async def send_test_postback(request: Request, affiliate_id: RowId, session: SessionDep, user: CurrentUser) -> Response:
    own_affiliate(user, affiliate_id)
    back = "/postback" if user.scope is not None else f"/affiliates/{affiliate_id}/postback"
    try:
        row = await deliveries.send_test(session, affiliate_id)
    except Conflict as error:
        return see_other(request, back, str(error), "error")
    return see_other(request, back, f"Test postback #{row.id} queued; its result shows below once sent.", "success")


@router.post("/deliveries/{delivery_id}/redeliver")
async def redeliver(request: Request, delivery_id: BigRowId, session: SessionDep, _user: StaffUser) -> Response:
    row = await deliveries.redeliver(session, delivery_id)
    form = await request.form()
    back = form.get("back")
    if not (isinstance(back, str) and back.startswith(("/conversions/", "/affiliates/")) and "//" not in back):
        back = f"/conversions/{row.conversion_id}" if row.conversion_id else f"/affiliates/{row.affiliate_id}/postback"
    return see_other(request, back, f"Postback queued again as delivery #{row.id}.", "success")


@router.post("/affiliates/{affiliate_id}/delete")
async def delete_affiliate(request: Request, affiliate_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    await campaigns.delete_affiliate(session, affiliate_id)
    return see_other(request, "/affiliates", "Affiliate deleted.")


# -- offers and overrides --

OFFER_FIELDS = (
    "advertiser_id",
    "name",
    "status",
    "currency",
    "revenue_model",
    "revenue_amount",
    "payout_model",
    "payout_amount",
    "attribution_window_hours",
    "default_status",
    "daily_cap",
    "monthly_cap",
    "lifetime_cap",
    "cap_timezone",
    "cap_fallback_url",
    "destination_template",
    "pixel_enabled",
    "pixel_status",
    "pixel_max_amount",
    "pixel_domains",
    "bot_conversions",
)


async def _choices(session: SessionDep) -> dict[str, Any]:
    advertisers = (await session.scalars(select(Advertiser).order_by(Advertiser.name).limit(1000))).all()
    affiliates = (await session.scalars(select(Affiliate).order_by(Affiliate.name).limit(1000))).all()
    offers = (await session.scalars(select(Offer).order_by(Offer.name).limit(1000))).all()
    return {"advertisers": advertisers, "affiliates": affiliates, "offers": offers}


async def _offers_page(request: Request, session: SessionDep, page: int = 1, **extra: Any) -> Response:
    rows, total = await campaigns.page(session, select(Offer).order_by(Offer.id), page)
    context = {"offer_rows": rows, "total": total, "page": page, "macros": MACROS, **(await _choices(session)), **extra}
    return render_form(request, "offers.html", context)


@router.get("/offers")
async def offers_page(request: Request, session: SessionDep, _user: StaffUser, page: PageNo = 1) -> Response:
    return await _offers_page(request, session, page)


@router.post("/offers")
async def create_offer(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    fields = await form_fields(request, *OFFER_FIELDS)
    if "currency" in fields:
        fields["currency"] = fields["currency"].upper()
    data, errors = parse(OfferIn, fields)
    if data is not None:
        try:
            offer = await campaigns.create_offer(session, data)
        except Invalid as error:
            errors = [str(error)]
        else:
            return see_other(request, f"/offers/{offer.id}", "Offer created.", "success")
    return await _offers_page(request, session, errors=errors, form=fields)


async def _cap_links(request: Request, session: SessionDep, offer_id: int) -> list[tuple[str, str]]:
    """Tracking links of other active offers, to pick one as this offer's cap fallback (their clicks count there)."""
    base = request.app.state.settings.manager_tracker_base_url.rstrip("/")
    query = (
        select(Link.slug, Offer.name)
        .join(Offer, Offer.id == Link.offer_id)
        .where(Link.offer_id != offer_id, Link.status == "active", Offer.status == "active")
        .order_by(Offer.name, Link.slug)
        .limit(200)
    )
    return [
        (f"{base}/c/{slug}?sub1={{sub1}}&sub2={{sub2}}", f"{name}: {slug}")
        for slug, name in await session.execute(query)
    ]


async def _offer_page(request: Request, session: SessionDep, offer_id: int, **extra: Any) -> Response:
    offer = await campaigns.get_offer(session, offer_id)
    overrides = await campaigns.list_overrides(session, offer_id)
    now = datetime.now(UTC)
    context = {
        "offer": offer,
        "overrides": overrides,
        "caps": await counting.cap_fill(session, offer, overrides, now),
        "capped_until": offer.capped_until if offer.capped_until and offer.capped_until > now else None,
        "capped_affiliates": [o for o in overrides if o.capped_until and o.capped_until > now],
        "cap_links": await _cap_links(request, session, offer_id),
        "shown_template": deliveries.shown_template,
        "postback_macros": AFFILIATE_POSTBACK_MACROS,
        "macros": MACROS,
        **(await _choices(session)),
        **extra,
    }
    return render_form(request, "offer.html", context)


@router.get("/offers/{offer_id}")
async def offer_page(request: Request, offer_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    return await _offer_page(request, session, offer_id)


@router.post("/offers/{offer_id}")
async def update_offer(request: Request, offer_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    fields: dict[str, Any] = await form_fields(request, *OFFER_FIELDS)
    if "currency" in fields:
        fields["currency"] = fields["currency"].upper()
    for cap in ("daily_cap", "monthly_cap", "lifetime_cap"):
        fields.setdefault(cap, None)  # a blank cap means no cap
    fields.setdefault("cap_fallback_url", None)  # a blank fallback means none
    fields.setdefault("destination_template", None)  # a blank template means none
    fields.setdefault("pixel_enabled", "false")  # an unticked box sends nothing
    fields.setdefault("pixel_max_amount", None)
    fields.setdefault("pixel_domains", "")
    data, errors = parse(OfferPatch, fields)
    if data is not None:
        try:
            _offer, live = await edits.edit_offer(request.app.state.redis, session, offer_id, data)
        except Invalid as error:
            errors = [str(error)]
        else:
            _saved(request, "Offer", live)
            return see_other(request, f"/offers/{offer_id}")
    await session.rollback()
    return await _offer_page(request, session, offer_id, errors=errors)


@router.post("/offers/{offer_id}/delete")
async def delete_offer(request: Request, offer_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    await campaigns.delete_offer(session, offer_id)
    return see_other(request, "/offers", "Offer deleted.")


@router.post("/offers/{offer_id}/overrides")
async def put_override(request: Request, offer_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    fields = await form_fields(request, "affiliate_id", "payout_model", "payout_amount", "daily_cap", "postback_url")
    affiliate_id = fields.pop("affiliate_id", "")
    data, errors = parse(OverrideIn, fields)
    if not (affiliate_id.isdigit() and 0 < int(affiliate_id) < 2**31):
        errors.append("affiliate_id: choose an affiliate")
    if data is not None and not errors:
        try:
            await edits.put_override(request.app.state.redis, session, offer_id, int(affiliate_id), data)
        except Invalid as error:
            errors = [str(error)]
        else:
            return see_other(request, f"/offers/{offer_id}", "Override saved.", "success")
    return await _offer_page(request, session, offer_id, errors=errors)


@router.post("/offers/{offer_id}/overrides/{affiliate_id}/delete")
async def delete_override(
    request: Request, offer_id: RowId, affiliate_id: RowId, session: SessionDep, _user: StaffUser
) -> Response:
    await edits.delete_override(request.app.state.redis, session, offer_id, affiliate_id)
    return see_other(request, f"/offers/{offer_id}", "Override removed.")


# -- links --

LINK_FIELDS = (
    "offer_id",
    "affiliate_id",
    "slug",
    "url",
    "destinations",
    "rules",
    "fallback_url",
    "status",
    "expires_at",
)


async def link_form(request: Request) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """The posted link form as LinkIn fields, the raw text (to show again) and errors in the text areas."""
    raw = await form_fields(request, *LINK_FIELDS)
    form = await request.form()
    data: dict[str, Any] = {k: v for k, v in raw.items() if k not in ("destinations", "rules", "expires_at")}
    data["cookie"] = form.get("cookie") == "on"
    errors: list[str] = []
    if raw.get("destinations"):
        destinations = []
        for number, line in enumerate(raw["destinations"].splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) == 1:
                destinations.append({"url": parts[0], "weight": 1})
            elif len(parts) == 2 and parts[0].isdigit():
                destinations.append({"url": parts[1], "weight": int(parts[0])})
            else:
                errors.append(
                    f"destinations line {number}: write WEIGHT URL, e.g. 70 https://a.example/?c={{click_id}}"
                )
        data["destinations"] = destinations or None
    if raw.get("rules"):
        try:
            data["rules"] = json.loads(raw["rules"])
        except ValueError as error:
            errors.append(f"rules: not JSON ({error})")
    if raw.get("expires_at"):
        value = raw["expires_at"]
        data["expires_at"] = value if value.endswith("Z") or "+" in value[10:] else value + "Z"  # the form is UTC
    return data, raw, errors


def _link_text(link: Link) -> dict[str, str]:
    """A link's fields as the form shows them."""
    fields = campaigns.link_fields(link)
    text = {key: "" if value is None else str(value) for key, value in fields.items()}
    text["destinations"] = "\n".join(f"{d['weight']} {d['url']}" for d in fields["destinations"] or [])
    text["rules"] = json.dumps(fields["rules"], indent=2) if fields["rules"] else ""
    text["expires_at"] = link.expires_at.strftime("%Y-%m-%dT%H:%M") if link.expires_at else ""
    text["cookie"] = "on" if fields["cookie"] else ""
    return text


@router.get("/links")
async def links_page(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    page: PageNo = 1,
    offer_id: IdFilter = None,
    affiliate_id: IdFilter = None,
    q: str | None = None,
) -> Response:
    query = campaigns.visible_links(user.scope, affiliate_id, offer_id, (q or "")[:200])
    rows, total = await campaigns.page(session, query, page)
    offer_names = {row[0]: row[1] for row in await session.execute(select(Offer.id, Offer.name))}
    context = {
        "links": rows,
        "total": total,
        "page": page,
        "q": q or "",
        "offer_names": offer_names,
        "tracking_url": lambda slug: tracking_url(request, slug),
    }
    return render(request, "links.html", context)


@router.get("/links/new")
async def new_link_page(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    form = {"status": "active"}
    for key in ("offer_id", "affiliate_id"):
        value = request.query_params.get(key)
        if value and value.isdigit():
            form[key] = value
    return render(request, "link_form.html", {"form": form, "macros": MACROS, **(await _choices(session))})


@router.post("/links")
async def create_link(request: Request, session: SessionDep, _user: StaffUser) -> Response:
    data, raw, errors = await link_form(request)
    parsed, more = parse(LinkIn, data)
    errors += more
    if parsed is not None and not errors:
        try:
            link, live = await edits.add_link(request.app.state.redis, session, parsed)
        except (Invalid, Conflict) as error:
            errors = [str(error)]
        else:
            _saved(request, "Link", live)
            return see_other(request, f"/links/{link.id}")
    context = {"form": raw, "errors": errors, "macros": MACROS, **(await _choices(session))}
    return render(request, "link_form.html", context, status_code=422)


async def _link_page(request: Request, session: SessionDep, link: Link, **extra: Any) -> Response:
    user = request.state.user
    config, held = await serving_config(session, link)
    context: dict[str, Any] = {
        "link": link,
        "tracking_url": tracking_url(request, link.slug),
        "state": await published_state(request.app.state.redis, config),
        "held_by": held,
        "offer": await session.get(Offer, link.offer_id),
        "affiliate": await session.get(Affiliate, link.affiliate_id),
        "macros": MACROS,
        "form": extra.pop("form", None) or _link_text(link),
        **extra,
    }
    if user.role != "affiliate":
        context.update(await _choices(session))
    return render_form(request, "link.html", context)


@router.get("/links/{link_id}")
async def link_page(request: Request, link_id: LinkId, session: SessionDep, user: CurrentUser) -> Response:
    return await _link_page(request, session, await campaigns.get_link(session, link_id, user.scope))


@router.post("/links/{link_id}")
async def update_link(request: Request, link_id: LinkId, session: SessionDep, _user: StaffUser) -> Response:
    data, raw, errors = await link_form(request)
    parsed, more = parse(LinkIn, data)
    errors += more
    if parsed is not None and not errors:
        try:
            link, live = await edits.edit_link(request.app.state.redis, session, link_id, parsed)
        except (Invalid, Conflict) as error:
            errors = [str(error)]
        else:
            _saved(request, "Link", live)
            return see_other(request, f"/links/{link.id}")
    link = await campaigns.get_link(session, link_id)
    return await _link_page(request, session, link, form=raw, errors=errors)


async def _set_status(request: Request, link_id: int, session: SessionDep, status: str) -> Response:
    _link, live = await edits.set_link_status(request.app.state.redis, session, link_id, status)
    _saved(request, "Paused link" if status == "paused" else "Resumed link", live)
    return see_other(request, f"/links/{link_id}")


@router.post("/links/{link_id}/pause")
async def pause_link(request: Request, link_id: LinkId, session: SessionDep, _user: StaffUser) -> Response:
    return await _set_status(request, link_id, session, "paused")


@router.post("/links/{link_id}/resume")
async def resume_link(request: Request, link_id: LinkId, session: SessionDep, _user: StaffUser) -> Response:
    return await _set_status(request, link_id, session, "active")


@router.post("/links/{link_id}/delete")
async def delete_link(request: Request, link_id: LinkId, session: SessionDep, _user: StaffUser) -> Response:
    if await edits.remove_link(request.app.state.redis, session, link_id):
        return see_other(request, "/links", "Link deleted.")
    warning = "Link deleted; trackers keep serving it until the reconciler reaches Redis."
    return see_other(request, "/links", warning, "warning")


@router.get("/links/{link_id}/qr.svg")
async def link_qr(request: Request, link_id: LinkId, session: SessionDep, user: CurrentUser) -> Response:
    """The tracking URL as a QR code (SVG, made here: no third-party service sees the URL)."""
    link = await campaigns.get_link(session, link_id, user.scope)
    buffer = io.BytesIO()
    segno.make(tracking_url(request, link.slug), error="m").save(buffer, kind="svg", scale=5, border=2, xmldecl=False)
    return Response(buffer.getvalue(), media_type="image/svg+xml")
