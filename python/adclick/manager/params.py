"""Query-string parameters that reports, exports and conversions share, and who may see what (access scopes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from fastapi import Depends, HTTPException, Query

from adclick.manager.deps import FormIdFilter, FormLinkIdFilter, Principal
from adclick.manager.report_queries import DIMENSIONS, ReportError, ReportQuery, build_query


def is_staff(user: Principal) -> bool:
    """Staff (admin, manager) see everything; an affiliate sees its clicks, conversions and payouts, never the
    network's revenue, profit, advertisers or audit notes."""
    return user.is_staff


def scope_of(user: Principal) -> int | None:
    """The affiliate id an affiliate user is confined to (0, matching nothing, if it has none); None for staff."""
    return user.scope


def id_text(value: int | None) -> str | None:
    """A bounded id filter (None: any) as the query-string text ReportParams and ConversionParams keep."""
    return None if value is None else str(value)


def optional_int(value: str | None, name: str) -> int | None:
    """An id from a query string, where a blank (an HTML form's empty choice) means "any"."""
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise ReportError(f"{name} must be a whole number, got {value!r}") from None


class IdFilters(TypedDict):
    offer_id: int | None
    affiliate_id: int | None
    link_id: int | None


def id_filters(params: Any) -> IdFilters:
    """The offer, affiliate and link id filters of query-string text (ReportParams, ConversionParams)."""
    return IdFilters(
        offer_id=optional_int(params.offer_id, "offer_id"),
        affiliate_id=optional_int(params.affiliate_id, "affiliate_id"),
        link_id=optional_int(params.link_id, "link_id"),
    )


@dataclass(frozen=True, slots=True)
class ReportParams:
    """The query string of a report request, as given (blank values allowed, for HTML forms)."""

    group_by: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    tz: str | None = None
    offer_id: str | None = None
    affiliate_id: str | None = None
    link_id: str | None = None
    country: str | None = None
    device: str | None = None

    def query(self, user: Principal) -> ReportQuery:
        return build_query(
            self.group_by or None,
            self.date_from or None,
            self.date_to or None,
            self.tz or None,
            **id_filters(self),
            country=self.country or None,
            device=self.device or None,
            scope_affiliate_id=scope_of(user),
        )


def report_params(
    group_by: Annotated[
        str | None, Query(description=f"one or more of {', '.join(DIMENSIONS)}, comma-separated")
    ] = None,
    date_from: Annotated[str | None, Query(alias="from", description="first local day, YYYY-MM-DD")] = None,
    date_to: Annotated[str | None, Query(alias="to", description="last local day, YYYY-MM-DD (inclusive)")] = None,
    tz: Annotated[str | None, Query(description="IANA time zone of the days and hours, default UTC")] = None,
    offer_id: FormIdFilter = None,
    affiliate_id: FormIdFilter = None,
    link_id: FormLinkIdFilter = None,
    country: str | None = None,
    device: str | None = None,
) -> ReportParams:
    ids = (id_text(offer_id), id_text(affiliate_id), id_text(link_id))
    return ReportParams(group_by, date_from, date_to, tz, *ids, country, device)


ReportParamsDep = Annotated[ReportParams, Depends(report_params)]


def query_or_400(params: ReportParams, user: Principal) -> ReportQuery:
    try:
        return params.query(user)
    except ReportError as error:
        raise HTTPException(400, str(error)) from None
