"""Reports over HTTP: the JSON API, the time series for the chart and the report page (queries: report_queries)."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response

from adclick.manager.deps import CurrentUser, SessionDep
from adclick.manager.params import ReportParamsDep, is_staff, query_or_400, scope_of
from adclick.manager.report_queries import (
    DIMENSIONS,
    SUB_DIMENSIONS,
    ReportError,
    filter_choices,
    run_report,
    time_series,
)
from adclick.manager.templating import render

router = APIRouter()

JSON_ROW_LIMIT = 1000
JSON_MAX_ROW_LIMIT = 10_000
PAGE_ROW_LIMIT = 1000
COMMON_ZONES = (
    "UTC",
    "America/Sao_Paulo",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "America/Mexico_City",
    "Europe/London",
    "Europe/Berlin",
    "Europe/Moscow",
    "Asia/Kolkata",
    "Asia/Singapore",
    "Asia/Tokyo",
    "Australia/Sydney",
)
DIMENSION_LABELS = {
    "day": "Day",
    "hour": "Hour",
    "offer": "Offer",
    "affiliate": "Affiliate",
    "link": "Link",
    "country": "Country",
    "device": "Device",
    **{name: name.capitalize() for name in SUB_DIMENSIONS},
}


@router.get("/api/v1/reports", tags=["reports"])
async def report_api(
    session: SessionDep,
    user: CurrentUser,
    params: ReportParamsDep,
    limit: Annotated[int, Query(ge=1, le=JSON_MAX_ROW_LIMIT)] = JSON_ROW_LIMIT,
) -> dict[str, Any]:
    """Clicks, unique clicks, bots, conversions, conversion rate (%), revenue, payout, profit and EPC per group.

    Money and rates are exact decimal strings. Affiliates get only their own rows, without revenue and profit, and
    their EPC is payout per click. `truncated` says rows were cut
    at `limit` (the totals still cover everything); the CSV export has every row.
    """
    q = query_or_400(params, user)
    return (await run_report(session, q, limit=limit)).as_dict(is_staff(user))


@router.get("/api/v1/reports/timeseries", tags=["reports"])
async def timeseries_api(session: SessionDep, user: CurrentUser, params: ReportParamsDep) -> dict[str, Any]:
    """Clicks, conversions and revenue (payout for affiliates) per local day (per hour for ranges of up to two
    days), gaps filled with 0."""
    q = query_or_400(replace(params, group_by="day"), user)
    return await time_series(session, q, is_staff(user))


@router.get("/reports", include_in_schema=False)
async def reports_page(request: Request, session: SessionDep, user: CurrentUser, params: ReportParamsDep) -> Response:
    errors: list[str] = []
    report = None
    try:
        q = params.query(user)
    except ReportError as error:
        errors.append(str(error))
        q = None
    if q is not None:
        report = await run_report(session, q, limit=PAGE_ROW_LIMIT)
    query_string = urlencode(q.params()) if q is not None else ""
    context = {
        "params": params,
        "q": q,
        "report": report,
        "errors": errors,
        "dimensions": DIMENSIONS,
        "dimension_labels": DIMENSION_LABELS,
        "zones": COMMON_ZONES,
        "query_string": query_string,
        "row_limit": PAGE_ROW_LIMIT,
        "staff": is_staff(user),
        **await filter_choices(session, scope_of(user)),
    }
    return render(request, "reports.html", context, status_code=400 if errors else 200)
