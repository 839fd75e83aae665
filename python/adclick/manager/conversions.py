"""Conversions in the manager: list and filter them; approve, reject or adjust one, audited, with rollups following.

An edit is one transaction: lock the conversion row, change it, move the rollups by the difference between what
the conversion counted before and what it counts now, take or give back daily-cap slots, write an audit row (who,
when, before, after). What counts, and where, is the rule the worker applies too (adclick.core.counting); an edit
that would count the conversion again over a full daily cap is refused (409) and changes nothing.

`updated_at` becomes the time of the edit, so the worker treats a postback received before the edit as older
than the manager's decision (a `duplicate` rejection) and a later one as a new status change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, cast
from urllib.parse import urlencode

import redis
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, Select, Table, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from adclick.core import capping, counting, outbox, subs
from adclick.core.db.models import (
    CONVERSION_STATUSES,
    Affiliate,
    Conversion,
    ConversionAudit,
    Offer,
    OfferAffiliateOverride,
    User,
)
from adclick.manager import deliveries
from adclick.manager.deps import (
    BigIdFilter,
    BigRowId,
    CurrentUser,
    FormIdFilter,
    FormLinkIdFilter,
    Principal,
    SessionDep,
    StaffUser,
)
from adclick.manager.params import id_filters, id_text, is_staff, scope_of
from adclick.manager.report_queries import ReportError, filter_choices, local_midnight, parse_date, parse_zone
from adclick.manager.schemas import DeliveryOut
from adclick.manager.templating import flash, render

ACTIONS = ("approve", "reject", "adjust")
MONEY_LIMIT = Decimal(10) ** 12
PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

_CONVERSIONS = cast(Table, Conversion.__table__)


class ConversionEditError(Exception):
    """An edit that cannot be made; `status` is the HTTP status to answer (400, 404, 409)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class ConversionFilter:
    status: str | None = None
    offer_id: int | None = None
    affiliate_id: int | None = None
    link_id: int | None = None
    txid: str | None = None
    start: datetime | None = None  # received at or after (UTC)
    end: datetime | None = None  # received before (UTC)

    def where(self) -> list[ColumnElement[bool]]:
        v = _CONVERSIONS.c
        out: list[ColumnElement[bool]] = []
        if self.status is not None:
            out.append(v.status == self.status)
        if self.offer_id is not None:
            out.append(v.offer_id == self.offer_id)
        if self.affiliate_id is not None:
            out.append(v.affiliate_id == self.affiliate_id)
        if self.link_id is not None:
            out.append(v.link_id == self.link_id)
        if self.txid is not None:
            out.append(v.txid == self.txid)
        if self.start is not None:
            out.append(v.created_at >= self.start)
        if self.end is not None:
            out.append(v.created_at < self.end)
        return out


def build_filter(
    *,
    status: str | None = None,
    offer_id: int | None = None,
    affiliate_id: int | None = None,
    link_id: int | None = None,
    txid: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
    tz: str | None = None,
    scope_affiliate_id: int | None = None,
) -> ConversionFilter:
    """Validate list filters; dates are whole local days in `tz`. `scope_affiliate_id` overrides `affiliate_id`."""
    status = status or None
    if status is not None and status not in CONVERSION_STATUSES:
        raise ReportError(f"unknown status {status!r}: choose from {', '.join(CONVERSION_STATUSES)}")
    zone = parse_zone(tz)
    first = parse_date(date_from, "from") if date_from else None
    last = parse_date(date_to, "to") if date_to else None
    if first is not None and last is not None and last < first:
        raise ReportError(f"'to' ({last}) is before 'from' ({first})")
    start = local_midnight(first, zone) if first is not None else None
    end = None
    if last is not None:
        end = local_midnight(last + timedelta(days=1), zone)
    if scope_affiliate_id is not None:
        affiliate_id = scope_affiliate_id
    return ConversionFilter(status, offer_id, affiliate_id, link_id, txid or None, start, end)


def listing_statement(f: ConversionFilter) -> Select[Any]:
    """Conversions with their offer and affiliate names, newest first (by id, which follows arrival)."""
    offers = cast(Table, Offer.__table__)
    affiliates = cast(Table, Affiliate.__table__)
    return (
        select(_CONVERSIONS, offers.c.name.label("offer_name"), affiliates.c.name.label("affiliate_name"))
        .select_from(
            _CONVERSIONS.outerjoin(offers, offers.c.id == _CONVERSIONS.c.offer_id).outerjoin(
                affiliates, affiliates.c.id == _CONVERSIONS.c.affiliate_id
            )
        )
        .where(*f.where())
        .order_by(_CONVERSIONS.c.id.desc())
    )


def export_statement(f: ConversionFilter) -> Select[Any]:
    """The same rows oldest first, as an export (or an ERP import) reads best."""
    return listing_statement(f).order_by(None).order_by(_CONVERSIONS.c.created_at, _CONVERSIONS.c.id)


CONVERSION_COLUMNS = (
    "id",
    "created_at",
    "updated_at",
    "status",
    "reason",
    "offer_id",
    "offer_name",
    "affiliate_id",
    "affiliate_name",
    "advertiser_id",
    "link_id",
    "txid",
    "click_id",
    "event",
    "amount",
    "currency",
    "revenue",
    "payout",
)
# What an affiliate may not see of its own conversions: the network's revenue and its advertiser.
STAFF_ONLY_COLUMNS = frozenset({"advertiser_id", "revenue"})
AFFILIATE_COLUMNS = tuple(name for name in CONVERSION_COLUMNS if name not in STAFF_ONLY_COLUMNS)


def conversion_columns(user: Principal) -> tuple[str, ...]:
    """The columns of a conversion `user` may see: all for staff, AFFILIATE_COLUMNS for an affiliate."""
    return CONVERSION_COLUMNS if is_staff(user) else AFFILIATE_COLUMNS


def as_dict(row: Any, columns: Sequence[str] = CONVERSION_COLUMNS) -> dict[str, Any]:
    """A JSON-ready conversion (`columns` of it): money as exact decimal strings, times as ISO 8601 UTC."""
    m = row._mapping if hasattr(row, "_mapping") else row
    out: dict[str, Any] = {}
    for name in columns:
        value = m.get(name)
        if isinstance(value, Decimal):
            value = str(value)
        elif isinstance(value, datetime):
            value = value.isoformat()
        out[name] = value
    return out


async def list_conversions(
    session: AsyncSession,
    f: ConversionFilter,
    *,
    limit: int = PAGE_SIZE,
    before_id: int | None = None,
    columns: Sequence[str] = CONVERSION_COLUMNS,
) -> tuple[list[dict[str, Any]], int | None]:
    """One page, newest first, and the `before_id` of the next page (None on the last); `columns` must hold id."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    statement = listing_statement(f)
    if before_id is not None:
        statement = statement.where(_CONVERSIONS.c.id < before_id)
    rows = [as_dict(row, columns) for row in (await session.execute(statement.limit(limit + 1))).all()]
    following = rows[limit - 1]["id"] if len(rows) > limit else None
    return rows[:limit], following


async def get_conversion(
    session: AsyncSession,
    conversion_id: int,
    *,
    scope_affiliate_id: int | None = None,
    columns: Sequence[str] = CONVERSION_COLUMNS,
    audit: bool = True,
) -> dict[str, Any]:
    """One conversion (`columns` of it) and, with `audit`, its audit trail, oldest change first; 404 if missing or
    another affiliate's."""
    f = ConversionFilter(affiliate_id=scope_affiliate_id)
    row = (await session.execute(listing_statement(f).where(_CONVERSIONS.c.id == conversion_id))).first()
    if row is None:
        raise ConversionEditError(404, f"no conversion {conversion_id}")
    out = as_dict(row, columns)
    if not audit:
        return out
    audits = (
        await session.execute(
            select(ConversionAudit).where(ConversionAudit.conversion_id == conversion_id).order_by(ConversionAudit.id)
        )
    ).scalars()
    out["audit"] = [
        {"at": a.at.isoformat(), "user_id": a.user_id, "before": a.before, "after": a.after} for a in audits
    ]
    return out


def parse_money(value: Any, name: str) -> Decimal | None:
    """A non-negative amount from a form or JSON (text or number, never a float's binary guess); '' is None."""
    if value is None or value == "":
        return None
    if isinstance(value, float):
        value = repr(value)
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ConversionEditError(400, f"{name} must be a number, got {value!r}") from None
    if not amount.is_finite() or amount < 0 or amount >= MONEY_LIMIT or amount != amount.quantize(Decimal("1e-6")):
        raise ConversionEditError(400, f"{name} must be between 0 and 10^12 with at most 6 decimals, got {value!r}")
    return amount.quantize(Decimal("1e-6"))  # as the database returns it, so before and after compare


async def _caps(session: AsyncSession, conversion: Conversion) -> list[counting.Cap]:
    offer = await session.get(Offer, conversion.offer_id)
    override = None
    if conversion.affiliate_id is not None:
        override = await session.get(OfferAffiliateOverride, (conversion.offer_id, conversion.affiliate_id))
    return counting.caps_of(offer, override, conversion.affiliate_id)


def _snapshot(conversion: Conversion) -> dict[str, Any]:
    return {
        "status": conversion.status,
        "amount": None if conversion.amount is None else str(conversion.amount),
        "revenue": str(conversion.revenue),
        "payout": str(conversion.payout),
    }


async def edit_conversion(
    session: AsyncSession,
    conversion_id: int,
    action: str,
    *,
    user_id: int | None,
    revenue: Any = None,
    payout: Any = None,
    amount: Any = None,
    note: str | None = None,
    links_redis: redis.Redis | None = None,
) -> dict[str, Any]:
    """Approve, reject or adjust one conversion and commit; returns its audit entry.

    A change between counting and not counting fills or frees a cap: the offer's cap state is stored in the same
    transaction (adclick.core.capping) and its links republished through `links_redis` after the commit.

    `approve` and `reject` may set revenue and payout in the same step (e.g. approving a capped conversion,
    stored with 0); `adjust` changes amount, revenue or payout and keeps the status. Raises ConversionEditError
    (and changes nothing) for an unknown conversion, a status it already has, or a daily cap that is full.
    """
    if action not in ACTIONS:
        raise ConversionEditError(400, f"unknown action {action!r}: choose from {', '.join(ACTIONS)}")
    new_revenue = parse_money(revenue, "revenue")
    new_payout = parse_money(payout, "payout")
    new_amount = parse_money(amount, "amount")
    note = (note or "").strip()[:500] or None
    try:
        conversion = (
            await session.execute(select(Conversion).where(Conversion.id == conversion_id).with_for_update())
        ).scalar_one_or_none()
        if conversion is None:
            raise ConversionEditError(404, f"no conversion {conversion_id}")
        before = _snapshot(conversion)
        if action == "adjust":
            if new_revenue is None and new_payout is None and new_amount is None:
                raise ConversionEditError(400, "adjust needs a new amount, revenue or payout")
            status = conversion.status
        else:
            status = "approved" if action == "approve" else "rejected"
            if conversion.status == status:
                raise ConversionEditError(409, f"conversion {conversion_id} is already {status}")
        standing = counting.Standing(conversion.status, conversion.revenue, conversion.payout)
        caps = await _caps(session, conversion)
        when = conversion.created_at
        full = await counting.move_caps(session, conversion.offer_id, when, caps, conversion.status, status)
        if full is not None:
            raise ConversionEditError(409, f"{full.describe()} for {full.start(when)} is full: nothing was changed")
        conversion.status = status
        if new_revenue is not None:
            conversion.revenue = new_revenue
        if new_payout is not None:
            conversion.payout = new_payout
        if new_amount is not None:
            conversion.amount = new_amount
        now = datetime.now(UTC)
        conversion.updated_at = now
        after = {**_snapshot(conversion), "action": action}
        if note:
            after["note"] = note
        if after == {**before, "action": action}:
            raise ConversionEditError(409, "nothing to change: the conversion already has these values")
        now_standing = counting.Standing(conversion.status, conversion.revenue, conversion.payout)
        place = counting.Place.of_params(conversion.params)
        delta = counting.rollup_change(conversion, standing, now_standing, place=place)
        if delta is not None:
            await counting.add_to_rollups(session, [delta])
            await subs.add_to_sub_rollups(session, counting.sub_rollup_change(delta, place))
        await session.execute(
            insert(ConversionAudit).values(
                conversion_id=conversion.id, user_id=user_id, at=now, before=before, after=after
            )
        )
        # The affiliate's postback of this change, in its transaction (adclick.core.outbox), as the worker does.
        change = outbox.change_of(conversion, standing.status, conversion.status, now)
        await outbox.enqueue(session, [change])
        recapped = await capping.refresh(session, [conversion.offer_id]) if caps else set()
        await session.commit()
    except BaseException:
        await session.rollback()
        raise
    if recapped and links_redis is not None:
        await capping.publish(links_redis, session, recapped)
    return {"conversion_id": conversion_id, "at": now.isoformat(), "user_id": user_id, "before": before, "after": after}


# -- HTTP: JSON API and pages --

router = APIRouter()


@dataclass(frozen=True, slots=True)
class ConversionParams:
    """List filters as given in the query string (blank values allowed, for HTML forms)."""

    status: str | None = None
    offer_id: str | None = None
    affiliate_id: str | None = None
    link_id: str | None = None
    txid: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    tz: str | None = None

    def build(self, user: Principal) -> ConversionFilter:
        return build_filter(
            status=self.status or None,
            **id_filters(self),
            txid=(self.txid or "").strip() or None,
            date_from=self.date_from or None,
            date_to=self.date_to or None,
            tz=self.tz or None,
            scope_affiliate_id=scope_of(user),
        )

    def query_string(self) -> str:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__}
        values["from"], values["to"] = values.pop("date_from"), values.pop("date_to")
        return urlencode({name: value for name, value in values.items() if value})


def conversion_params(
    status: Annotated[str | None, Query(description=", ".join(CONVERSION_STATUSES))] = None,
    offer_id: FormIdFilter = None,
    affiliate_id: FormIdFilter = None,
    link_id: FormLinkIdFilter = None,
    txid: str | None = None,
    date_from: Annotated[str | None, Query(alias="from", description="first local day received, YYYY-MM-DD")] = None,
    date_to: Annotated[str | None, Query(alias="to", description="last local day received, YYYY-MM-DD")] = None,
    tz: Annotated[str | None, Query(description="IANA time zone of the days, default UTC")] = None,
) -> ConversionParams:
    ids = (id_text(offer_id), id_text(affiliate_id), id_text(link_id))
    return ConversionParams(status, *ids, txid, date_from, date_to, tz)


ConversionParamsDep = Annotated[ConversionParams, Depends(conversion_params)]


def filter_or_400(params: ConversionParams, user: Principal) -> ConversionFilter:
    try:
        return params.build(user)
    except ReportError as error:
        raise HTTPException(400, str(error)) from None


class EditIn(BaseModel):
    """New values for an edit; money as decimal strings (or numbers), blank or missing: unchanged."""

    model_config = ConfigDict(extra="forbid")

    revenue: str | int | None = None
    payout: str | int | None = None
    amount: str | int | None = None
    note: Annotated[str | None, Field(max_length=500)] = None


@router.get("/api/v1/conversions", tags=["conversions"])
async def conversions_api(
    session: SessionDep,
    user: CurrentUser,
    params: ConversionParamsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    before_id: BigIdFilter = None,
) -> dict[str, Any]:
    """Newest first; page on with `before_id` = the previous answer's `next_before_id`.

    Affiliates get their own conversions, without revenue and advertiser id.
    """
    f = filter_or_400(params, user)
    columns = conversion_columns(user)
    items, following = await list_conversions(session, f, limit=limit, before_id=before_id, columns=columns)
    return {"items": items, "next_before_id": following}


async def _visible_conversion(session: AsyncSession, conversion_id: int, user: Principal) -> dict[str, Any]:
    staff = is_staff(user)
    columns = conversion_columns(user)
    return await get_conversion(session, conversion_id, scope_affiliate_id=scope_of(user), columns=columns, audit=staff)


@router.get("/api/v1/conversions/{conversion_id}", tags=["conversions"])
async def conversion_api(conversion_id: BigRowId, session: SessionDep, user: CurrentUser) -> dict[str, Any]:
    """One conversion with its audit trail (an affiliate: its own, without revenue, advertiser id and audit)."""
    try:
        return await _visible_conversion(session, conversion_id, user)
    except ConversionEditError as error:
        raise HTTPException(error.status, error.message) from None


@router.get("/api/v1/conversions/{conversion_id}/deliveries", tags=["conversions"], response_model=list[DeliveryOut])
async def deliveries_api(conversion_id: BigRowId, session: SessionDep, user: CurrentUser) -> Any:
    """The postbacks to the affiliate this conversion fired, oldest first, URLs as sent with secrets masked (an
    affiliate: of its own conversions only)."""
    try:
        await _visible_conversion(session, conversion_id, user)
    except ConversionEditError as error:
        raise HTTPException(error.status, error.message) from None
    return await deliveries.of_conversion(session, conversion_id)


@router.post("/api/v1/conversions/{conversion_id}/{action}", tags=["conversions"])
async def edit_api(
    request: Request,
    conversion_id: BigRowId,
    action: str,
    session: SessionDep,
    user: StaffUser,
    body: EditIn | None = None,
) -> dict[str, Any]:
    """`approve`, `reject` (optionally with revenue and payout) or `adjust`; answers the audit entry."""
    values = body or EditIn()
    try:
        return await edit_conversion(
            session,
            conversion_id,
            action,
            user_id=user.id,
            revenue=values.revenue,
            payout=values.payout,
            amount=values.amount,
            note=values.note,
            links_redis=request.app.state.redis,
        )
    except ConversionEditError as error:
        raise HTTPException(error.status, error.message) from None


@router.get("/conversions", include_in_schema=False)
async def conversions_page(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    params: ConversionParamsDep,
    before_id: BigIdFilter = None,
) -> Response:
    errors: list[str] = []
    items: list[dict[str, Any]] = []
    following = None
    try:
        f = params.build(user)
    except ReportError as error:
        errors.append(str(error))
    else:
        columns = conversion_columns(user)
        items, following = await list_conversions(session, f, limit=PAGE_SIZE, before_id=before_id, columns=columns)
    context = {
        "params": params,
        "items": items,
        "next_before_id": following,
        "errors": errors,
        "statuses": CONVERSION_STATUSES,
        "query_string": params.query_string(),
        "can_edit": is_staff(user),
        "staff": is_staff(user),
        **await filter_choices(session, scope_of(user)),
    }
    return render(request, "conversions.html", context, status_code=400 if errors else 200)


@router.get("/conversions/{conversion_id}", include_in_schema=False)
async def conversion_page(
    request: Request, conversion_id: BigRowId, session: SessionDep, user: CurrentUser
) -> Response:
    try:
        conversion = await _visible_conversion(session, conversion_id, user)
    except ConversionEditError as error:
        raise HTTPException(error.status, error.message) from None
    emails: dict[int, str] = {}
    user_ids = {entry["user_id"] for entry in conversion.get("audit", ()) if entry["user_id"] is not None}
    if user_ids:
        found = await session.execute(select(User.id, User.email).where(User.id.in_(user_ids)))
        emails = {uid: email for uid, email in found.all()}
    context = {
        "c": conversion,
        "emails": emails,
        "can_edit": is_staff(user),
        "staff": is_staff(user),
        "deliveries": await deliveries.of_conversion(session, conversion_id),
    }
    return render(request, "conversions_detail.html", context)


@router.post("/conversions/{conversion_id}/{action}", include_in_schema=False)
async def edit_page(
    request: Request, conversion_id: BigRowId, action: str, session: SessionDep, user: StaffUser
) -> Response:
    form = await request.form()
    values = {name: form.get(name) for name in ("revenue", "payout", "amount", "note")}
    texts = {name: value.strip() if isinstance(value, str) else None for name, value in values.items()}
    back = form.get("back")
    target = back if isinstance(back, str) and back.startswith("/conversions") else f"/conversions/{conversion_id}"
    try:
        await edit_conversion(
            session, conversion_id, action, user_id=user.id, links_redis=request.app.state.redis, **texts
        )
    except ConversionEditError as error:
        if error.status == 404:
            raise HTTPException(404, error.message) from None
        flash(request, error.message, "error")
    else:
        done = {"approve": "approved", "reject": "rejected", "adjust": "adjusted"}[action]
        flash(request, f"Conversion {conversion_id} {done}; reports follow.", "success")
    return RedirectResponse(target, status_code=303)
