"""The JSON API under /api/v1 (OpenAPI at /api/v1/openapi.json): what the pages do, for scripts and integrations.

Authenticate with `Authorization: Bearer <API token>` (made on the API tokens page), or with the session
cookie plus an `X-CSRF-Token` header on writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select

from adclick.core.affiliate_postbacks import MASK
from adclick.core.db.models import Advertiser, Affiliate, Link, Offer, User
from adclick.core.tokens import make_token
from adclick.manager import accounts, campaigns, deliveries, edits
from adclick.manager.deps import (
    AdminUser,
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
from adclick.manager.schemas import (
    AdvertiserIn,
    AdvertiserOut,
    AdvertiserPatch,
    AffiliateIn,
    AffiliateOut,
    AffiliatePatch,
    AffiliatePostbackOut,
    DeliveryOut,
    LinkIn,
    LinkOut,
    LinkPatch,
    NewTokenOut,
    OfferIn,
    OfferOut,
    OfferPatch,
    OverrideIn,
    OverrideOut,
    TokenIn,
    TokenOut,
    UserIn,
    UserOut,
    UserPatch,
)

router = APIRouter(prefix="/api/v1", tags=["api"])


def postback_url(base_url: str, token: str) -> str:
    """Same format as `adclick postback-token` prints (postback/main.py); roles may not import each other."""
    fields = "click_id={click_id}&txid={txid}&amount={amount}&currency={currency}&status={status}"
    return f"{base_url.rstrip('/')}/postback?{fields}&token={token}"


def advertiser_out(request: Request, advertiser: Advertiser, live: bool | None = None) -> AdvertiserOut:
    settings = request.app.state.settings
    token = make_token(settings.postback_secret.get_secret_value(), advertiser.id, advertiser.token_version)
    return AdvertiserOut(
        id=advertiser.id,
        name=advertiser.name,
        status=advertiser.status,
        token_version=advertiser.token_version,
        postback_ips=advertiser.postback_ips,
        created_at=advertiser.created_at,
        postback_token=token,
        postback_url=postback_url(settings.manager_postback_base_url, token),
        live=live,
    )


def tracking_url(request: Request, slug: str) -> str:
    return f"{request.app.state.settings.manager_tracker_base_url.rstrip('/')}/c/{slug}"


def link_out(request: Request, link: Link, live: bool | None = None) -> LinkOut:
    fields = campaigns.link_fields(link)
    fields.pop("slug")
    return LinkOut(
        id=link.id,
        slug=link.slug,
        tracking_url=tracking_url(request, link.slug),
        created_at=link.created_at,
        updated_at=link.updated_at,
        follows_offer_template=link.template is None,
        live=live,
        **fields,
    )


def listed_affiliate(affiliate: Affiliate) -> AffiliateOut:
    """An affiliate as listings show it: its signing secret masked, its template's secrets too."""
    out = AffiliateOut.model_validate(affiliate)
    masked = {"postback_secret": MASK if affiliate.postback_secret else None}
    return out.model_copy(update={**masked, "postback_url": deliveries.shown_template(affiliate.postback_url)})


async def _page_of(session: SessionDep, query: Any, page: int, out: Callable[[Any], Any]) -> dict[str, Any]:
    """One page of a listing, as every list route answers it."""
    rows, total = await campaigns.page(session, query, page)
    return {"total": total, "page_size": campaigns.PAGE_SIZE, "items": [out(row) for row in rows]}


def _by_id(model: Any) -> Any:
    return select(model).order_by(model.id)


def _done() -> Response:
    """What a delete answers: 204, no body."""
    return Response(status_code=204)


@router.get("/me", response_model=UserOut)
async def me(user: CurrentUser) -> Any:
    return user


# -- advertisers --


@router.get("/advertisers")
async def list_advertisers(request: Request, session: SessionDep, _user: StaffUser, page: PageNo = 1) -> Any:
    return await _page_of(session, _by_id(Advertiser), page, lambda row: advertiser_out(request, row))


@router.post("/advertisers", status_code=201, response_model=AdvertiserOut)
async def create_advertiser(request: Request, data: AdvertiserIn, session: SessionDep, _user: StaffUser) -> Any:
    return advertiser_out(request, await edits.add_advertiser(request.app.state.redis, session, data))


@router.get("/advertisers/{advertiser_id}", response_model=AdvertiserOut)
async def get_advertiser(request: Request, advertiser_id: RowId, session: SessionDep, _user: StaffUser) -> Any:
    return advertiser_out(request, await campaigns.get_advertiser(session, advertiser_id))


@router.patch("/advertisers/{advertiser_id}", response_model=AdvertiserOut)
async def update_advertiser(
    request: Request, advertiser_id: RowId, data: AdvertiserPatch, session: SessionDep, _user: StaffUser
) -> Any:
    """`live`: whether its links' new state reached Redis (null when the change leaves them as they were)."""
    advertiser, live = await edits.edit_advertiser(request.app.state.redis, session, advertiser_id, data)
    return advertiser_out(request, advertiser, live)


@router.post("/advertisers/{advertiser_id}/rotate-token")
async def rotate_token(request: Request, advertiser_id: RowId, session: SessionDep, _user: StaffUser) -> Any:
    """Bump the token version (revoking older tokens) and tell the postback role through Redis."""
    advertiser, live = await edits.rotate_token(request.app.state.redis, session, advertiser_id)
    return {**advertiser_out(request, advertiser).model_dump(mode="json"), "live": live}


@router.delete("/advertisers/{advertiser_id}", status_code=204)
async def delete_advertiser(advertiser_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    await campaigns.delete_advertiser(session, advertiser_id)
    return _done()


# -- affiliates --


@router.get("/affiliates")
async def list_affiliates(session: SessionDep, _user: StaffUser, page: PageNo = 1) -> Any:
    """Signing secrets and template secrets masked; one affiliate's own answer shows them."""
    return await _page_of(session, _by_id(Affiliate), page, listed_affiliate)


@router.post("/affiliates", status_code=201, response_model=AffiliateOut)
async def create_affiliate(data: AffiliateIn, session: SessionDep, _user: StaffUser) -> Any:
    return await campaigns.create_affiliate(session, data)


@router.get("/affiliates/{affiliate_id}", response_model=AffiliateOut)
async def get_affiliate(affiliate_id: RowId, session: SessionDep, _user: StaffUser) -> Any:
    return await campaigns.get_affiliate(session, affiliate_id)


@router.patch("/affiliates/{affiliate_id}", response_model=AffiliateOut)
async def update_affiliate(
    request: Request, affiliate_id: RowId, data: AffiliatePatch, session: SessionDep, _user: StaffUser
) -> Any:
    """`live`: whether its links' new state reached Redis (null when the change leaves them as they were)."""
    affiliate, live = await edits.edit_affiliate(request.app.state.redis, session, affiliate_id, data)
    return AffiliateOut.model_validate(affiliate).model_copy(update={"live": live})


@router.delete("/affiliates/{affiliate_id}", status_code=204)
async def delete_affiliate(affiliate_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    await campaigns.delete_affiliate(session, affiliate_id)
    return _done()


@router.post("/affiliates/{affiliate_id}/rotate-postback-secret", response_model=AffiliateOut)
async def rotate_postback_secret(affiliate_id: RowId, session: SessionDep, _user: StaffUser) -> Any:
    """A new random secret signs its postbacks from their next attempt on; give it to the affiliate."""
    return await campaigns.rotate_postback_secret(session, affiliate_id)


# -- postbacks out to affiliates (an affiliate user: its own) --


@router.get("/affiliates/{affiliate_id}/postback", response_model=AffiliatePostbackOut)
async def get_postback(affiliate_id: RowId, session: SessionDep, user: CurrentUser) -> Any:
    """Its template (masked), triggers and latest deliveries; an affiliate user may ask only for its own."""
    own_affiliate(user, affiliate_id)
    return await deliveries.postback_of(session, affiliate_id)


@router.post("/affiliates/{affiliate_id}/postback/test", status_code=201, response_model=DeliveryOut)
async def send_test_postback(affiliate_id: RowId, session: SessionDep, user: CurrentUser) -> Any:
    """Queue a test postback (fake values, event `test`) to its template; 409 when it has none or one is waiting."""
    own_affiliate(user, affiliate_id)
    return deliveries.delivery_out(await deliveries.send_test(session, affiliate_id))


@router.post("/deliveries/{delivery_id}/redeliver", status_code=201, response_model=DeliveryOut)
async def redeliver(delivery_id: BigRowId, session: SessionDep, _user: StaffUser) -> Any:
    """Send a delivery again: a new row (kind `redelivery`) with its template and values, due now."""
    return deliveries.delivery_out(await deliveries.redeliver(session, delivery_id))


# -- offers and overrides --


@router.get("/offers")
async def list_offers(session: SessionDep, _user: StaffUser, page: PageNo = 1, advertiser_id: IdFilter = None) -> Any:
    query = _by_id(Offer)
    if advertiser_id is not None:
        query = query.where(Offer.advertiser_id == advertiser_id)
    return await _page_of(session, query, page, OfferOut.model_validate)


@router.post("/offers", status_code=201, response_model=OfferOut)
async def create_offer(data: OfferIn, session: SessionDep, _user: StaffUser) -> Any:
    return await campaigns.create_offer(session, data)


@router.get("/offers/{offer_id}", response_model=OfferOut)
async def get_offer(offer_id: RowId, session: SessionDep, _user: StaffUser) -> Any:
    return await campaigns.get_offer(session, offer_id)


@router.patch("/offers/{offer_id}", response_model=OfferOut)
async def update_offer(
    request: Request, offer_id: RowId, data: OfferPatch, session: SessionDep, _user: StaffUser
) -> Any:
    """`live`: whether its links' new state reached Redis (null when the change leaves them as they were).

    A new `destination_template` reaches every link that follows it (those without a URL of their own).
    """
    offer, live = await edits.edit_offer(request.app.state.redis, session, offer_id, data)
    return OfferOut.model_validate(offer).model_copy(update={"live": live})


@router.delete("/offers/{offer_id}", status_code=204)
async def delete_offer(offer_id: RowId, session: SessionDep, _user: StaffUser) -> Response:
    await campaigns.delete_offer(session, offer_id)
    return _done()


@router.get("/offers/{offer_id}/overrides", response_model=list[OverrideOut])
async def list_overrides(offer_id: RowId, session: SessionDep, _user: StaffUser) -> Any:
    return await campaigns.list_overrides(session, offer_id)


@router.put("/offers/{offer_id}/overrides/{affiliate_id}", response_model=OverrideOut)
async def put_override(
    request: Request, offer_id: RowId, affiliate_id: RowId, data: OverrideIn, session: SessionDep, _user: StaffUser
) -> Any:
    override, _live = await edits.put_override(request.app.state.redis, session, offer_id, affiliate_id, data)
    return override


@router.delete("/offers/{offer_id}/overrides/{affiliate_id}", status_code=204)
async def delete_override(
    request: Request, offer_id: RowId, affiliate_id: RowId, session: SessionDep, _user: StaffUser
) -> Response:
    await edits.delete_override(request.app.state.redis, session, offer_id, affiliate_id)
    return _done()


# -- links (affiliate users see their own, read-only) --


@router.get("/links")
async def list_links(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    page: PageNo = 1,
    offer_id: IdFilter = None,
    affiliate_id: IdFilter = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
) -> Any:
    query = campaigns.visible_links(user.scope, affiliate_id, offer_id, q)
    return await _page_of(session, query, page, lambda row: link_out(request, row))


@router.post("/links", status_code=201, response_model=LinkOut)
async def create_link(request: Request, data: LinkIn, session: SessionDep, _user: StaffUser) -> Any:
    """Without `url` or `destinations` the link serves, and follows, its offer's `destination_template`."""
    link, live = await edits.add_link(request.app.state.redis, session, data)
    return link_out(request, link, live)


@router.get("/links/{link_id}", response_model=LinkOut)
async def get_link(request: Request, link_id: LinkId, session: SessionDep, user: CurrentUser) -> Any:
    return link_out(request, await campaigns.get_link(session, link_id, user.scope))


@router.patch("/links/{link_id}", response_model=LinkOut)
async def update_link(request: Request, link_id: LinkId, data: LinkPatch, session: SessionDep, _user: StaffUser) -> Any:
    link, live = await edits.edit_link(request.app.state.redis, session, link_id, data)
    return link_out(request, link, live)


@router.post("/links/{link_id}/pause", response_model=LinkOut)
async def pause_link(request: Request, link_id: LinkId, session: SessionDep, _user: StaffUser) -> Any:
    link, live = await edits.set_link_status(request.app.state.redis, session, link_id, "paused")
    return link_out(request, link, live)


@router.post("/links/{link_id}/resume", response_model=LinkOut)
async def resume_link(request: Request, link_id: LinkId, session: SessionDep, _user: StaffUser) -> Any:
    link, live = await edits.set_link_status(request.app.state.redis, session, link_id, "active")
    return link_out(request, link, live)


@router.delete("/links/{link_id}", status_code=204)
async def delete_link(request: Request, link_id: LinkId, session: SessionDep, _user: StaffUser) -> Response:
    await edits.remove_link(request.app.state.redis, session, link_id)
    return _done()


# -- users (admin) and the caller's own API tokens --


@router.get("/users")
async def list_users(session: SessionDep, _user: AdminUser, page: PageNo = 1) -> Any:
    return await _page_of(session, _by_id(User), page, UserOut.model_validate)


@router.post("/users", status_code=201, response_model=UserOut)
async def create_user(data: UserIn, session: SessionDep, _user: AdminUser) -> Any:
    return await accounts.create_user(session, data)


@router.get("/users/{user_id}", response_model=UserOut)
async def get_user(user_id: RowId, session: SessionDep, _user: AdminUser) -> Any:
    return await accounts.get_user(session, user_id)


@router.patch("/users/{user_id}", response_model=UserOut)
async def update_user(user_id: RowId, data: UserPatch, session: SessionDep, admin: AdminUser) -> Any:
    return await accounts.update_user(session, user_id, data, acting=admin)


@router.delete("/users/{user_id}", status_code=204)
async def delete_user(user_id: RowId, session: SessionDep, admin: AdminUser) -> Response:
    await accounts.delete_user(session, user_id, acting=admin)
    return _done()


@router.get("/tokens", response_model=list[TokenOut])
async def list_tokens(session: SessionDep, user: CurrentUser) -> Any:
    return await accounts.list_tokens(session, user)


@router.post("/tokens", status_code=201, response_model=NewTokenOut)
async def create_token(data: TokenIn, session: SessionDep, user: CurrentUser) -> Any:
    row, token = await accounts.create_token(session, user, data.name)
    return NewTokenOut(id=row.id, name=row.name, created_at=row.created_at, last_used_at=None, token=token)


@router.delete("/tokens/{token_id}", status_code=204)
async def delete_token(token_id: RowId, session: SessionDep, user: CurrentUser) -> Response:
    await accounts.delete_token(session, user, token_id)
    return _done()
