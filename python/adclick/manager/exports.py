"""CSV exports of reports, conversions and affiliates' payout statements, streamed in constant memory.

Rows come from a server-side cursor (`AsyncSession.stream` with `yield_per`; asyncpg keeps a portal open on
PostgreSQL) and leave as ~64 KiB chunks, so memory stays flat whatever the row count. Each export opens its own
session, inside the response's generator, so the session lives exactly as long as the download.

Cells that a spreadsheet would run as a formula (text starting with = + - @, tab or carriage return) get a
leading apostrophe; numbers we format ourselves are written as they are, so negative amounts stay numbers.

Payout statement: per affiliate, offer and currency, the conversions received in the period (whole local days),
approved ones with their payout (what to pay) and pending ones (what may come), one row each, no total row, so an
ERP can import it as it is.
"""

from __future__ import annotations

import csv
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any, cast

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import Select, Table, case, func, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick.core.db.models import ROLLUP_COUNTS, Affiliate, Conversion, Offer
from adclick.core.db.session import get_engine, session_factory
from adclick.core.db.types import Money
from adclick.manager.conversions import (
    CONVERSION_COLUMNS,
    ConversionFilter,
    ConversionParamsDep,
    conversion_columns,
    export_statement,
    filter_or_400,
)
from adclick.manager.deps import CurrentUser, FormIdFilter, SessionDep
from adclick.manager.params import ReportParams, ReportParamsDep, id_text, is_staff, query_or_400
from adclick.manager.report_queries import (
    NAMED_DIMENSIONS,
    ReportQuery,
    ReportRow,
    make_row,
    prepare_report_transaction,
    report_statement,
)

CHUNK_BYTES = 64 * 1024
YIELD_PER = 2000
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

PAYOUT_COLUMNS = (
    "period_start",
    "period_end",
    "time_zone",
    "affiliate_id",
    "affiliate_name",
    "affiliate_email",
    "offer_id",
    "offer_name",
    "currency",
    "approved_conversions",
    "payout",
    "pending_conversions",
    "pending_payout",
)

_CONVERSIONS = cast(Table, Conversion.__table__)


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: formulas in text are defused, our own numbers pass unchanged."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    text = str(value)
    if text.startswith(FORMULA_STARTS):
        return "'" + text
    return text


class _Sink:
    """The file `csv.writer` writes to: text collected until a chunk is ready."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def write(self, text: str) -> None:
        self.parts.append(text)
        self.size += len(text)

    def take(self) -> bytes:
        data = "".join(self.parts).encode()
        self.parts.clear()
        self.size = 0
        return data


async def csv_stream(header: Iterable[str], rows: AsyncIterator[Iterable[Any]]) -> AsyncIterator[bytes]:
    """Encode rows as CSV (RFC 4180, CRLF), yielding chunks of about CHUNK_BYTES."""
    sink = _Sink()
    writer = csv.writer(sink, lineterminator="\r\n")
    writer.writerow(list(header))
    async for row in rows:
        writer.writerow([safe_cell(value) for value in row])
        if sink.size >= CHUNK_BYTES:
            yield sink.take()
    if sink.size:
        yield sink.take()


async def _stream(session: AsyncSession, statement: Select[Any]) -> AsyncIterator[Any]:
    result = await session.stream(statement.execution_options(yield_per=YIELD_PER))
    async for mapping in result.mappings():
        yield mapping


# The metrics that are counts (clicks ... conversions); money and rates follow them.
COUNTS = ROLLUP_COUNTS


def csv_header(q: ReportQuery, staff: bool = True) -> list[str]:
    header: list[str] = []
    for dimension in q.group_by:
        header += [dimension, f"{dimension}_name"] if dimension in NAMED_DIMENSIONS else [dimension]
    if not staff:
        return [*header, *COUNTS, "conversion_rate", "payout", "epc"]
    return [*header, *COUNTS, "conversion_rate", "revenue", "payout", "profit", "epc"]


def csv_cells(row: ReportRow, q: ReportQuery, staff: bool = True) -> list[Any]:
    """The cells under `csv_header(q, staff)`."""
    cells: list[Any] = []
    for dimension in q.group_by:
        key = row.keys[dimension]
        if dimension in NAMED_DIMENSIONS:
            cells += [key, row.names.get(dimension) or ""]
        else:
            cells.append(key)
    t = row.totals
    cells += [
        t.clicks,
        t.unique_clicks,
        t.bot_clicks,
        t.blocked_clicks,
        t.capped_clicks,
        t.conversions,
        t.conversion_rate,
    ]
    if not staff:
        return [*cells, t.payout, t.payout_epc]
    return [*cells, t.revenue, t.payout, t.profit, t.epc]


async def report_csv(
    sessions: async_sessionmaker[AsyncSession], q: ReportQuery, staff: bool = True
) -> AsyncIterator[bytes]:
    """Every row of a report (no row limit) as CSV; without `staff`, the columns an affiliate may see."""
    async with sessions() as session:
        dialect = session.get_bind().dialect.name
        await prepare_report_transaction(session)

        async def rows() -> AsyncIterator[list[Any]]:
            async for mapping in _stream(session, report_statement(q, dialect)):
                yield csv_cells(make_row(mapping, q), q, staff)

        async for chunk in csv_stream(csv_header(q, staff), rows()):
            yield chunk


async def conversions_csv(
    sessions: async_sessionmaker[AsyncSession], f: ConversionFilter, columns: Sequence[str] = CONVERSION_COLUMNS
) -> AsyncIterator[bytes]:
    """The filtered conversions, oldest first, as CSV (`columns` of CONVERSION_COLUMNS)."""
    async with sessions() as session:

        async def rows() -> AsyncIterator[list[Any]]:
            async for mapping in _stream(session, export_statement(f)):
                yield [mapping[name] for name in columns]

        async for chunk in csv_stream(columns, rows()):
            yield chunk


def payout_statement(q: ReportQuery) -> Select[Any]:
    """Approved and pending conversions received in the period, by affiliate, offer and currency."""
    v = _CONVERSIONS.c
    offers = cast(Table, Offer.__table__)
    affiliates = cast(Table, Affiliate.__table__)
    approved = v.status == "approved"
    pending = v.status == "pending"
    grouped = (
        select(
            v.affiliate_id,
            v.offer_id,
            v.currency,
            func.sum(case((approved, 1), else_=0)).label("approved_conversions"),
            type_coerce(func.sum(case((approved, v.payout), else_=0)), Money).label("payout"),
            func.sum(case((pending, 1), else_=0)).label("pending_conversions"),
            type_coerce(func.sum(case((pending, v.payout), else_=0)), Money).label("pending_payout"),
        )
        .where(v.created_at >= q.start, v.created_at < q.end, v.status.in_(("approved", "pending")))
        .group_by(v.affiliate_id, v.offer_id, v.currency)
    )
    if q.affiliate_id is not None:
        grouped = grouped.where(v.affiliate_id == q.affiliate_id)
    if q.offer_id is not None:
        grouped = grouped.where(v.offer_id == q.offer_id)
    inner = grouped.subquery("g")
    return (
        select(
            inner,
            affiliates.c.name.label("affiliate_name"),
            affiliates.c.email.label("affiliate_email"),
            offers.c.name.label("offer_name"),
        )
        .select_from(
            inner.outerjoin(affiliates, affiliates.c.id == inner.c.affiliate_id).outerjoin(
                offers, offers.c.id == inner.c.offer_id
            )
        )
        .order_by(inner.c.affiliate_id, inner.c.offer_id, inner.c.currency)
    )


async def payouts_csv(sessions: async_sessionmaker[AsyncSession], q: ReportQuery) -> AsyncIterator[bytes]:
    """The payout statement of the period (`q.affiliate_id`: one affiliate, else every affiliate)."""
    period = {"period_start": q.date_from, "period_end": q.date_to, "time_zone": q.tz}
    async with sessions() as session:

        async def rows() -> AsyncIterator[list[Any]]:
            async for mapping in _stream(session, payout_statement(q)):
                values = {**period, **mapping}
                yield [values[name] for name in PAYOUT_COLUMNS]

        async for chunk in csv_stream(PAYOUT_COLUMNS, rows()):
            yield chunk


def filename(kind: str, q: ReportQuery | None = None) -> str:
    if q is None:
        return f"adclick-{kind}.csv"
    return f"adclick-{kind}-{q.date_from.isoformat()}-{q.date_to.isoformat()}.csv"


# -- HTTP --

router = APIRouter(tags=["exports"])


def _sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    factory: async_sessionmaker[AsyncSession] | None = getattr(request.app.state, "session_factory", None)
    return factory if factory is not None else session_factory(get_engine())


async def _csv_response(session: AsyncSession, body: AsyncIterator[bytes], name: str) -> StreamingResponse:
    # The export reads through its own session; end this request's transaction first (on SQLite an open one
    # would hold the lock the export's BEGIN waits for).
    await session.close()
    return StreamingResponse(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.get("/api/v1/exports/report.csv")
async def report_export(
    request: Request, session: SessionDep, user: CurrentUser, params: ReportParamsDep
) -> StreamingResponse:
    """Every row of a report (same parameters as /api/v1/reports, no row limit) as CSV."""
    q = query_or_400(params, user)
    body = report_csv(_sessions(request), q, is_staff(user))
    return await _csv_response(session, body, filename("report", q))


@router.get("/api/v1/exports/conversions.csv")
async def conversions_export(
    request: Request, session: SessionDep, user: CurrentUser, params: ConversionParamsDep
) -> StreamingResponse:
    """The conversions matching the filters (same as /api/v1/conversions), oldest first, as CSV."""
    f = filter_or_400(params, user)
    body = conversions_csv(_sessions(request), f, conversion_columns(user))
    return await _csv_response(session, body, filename("conversions"))


@router.get("/api/v1/exports/payouts.csv")
async def payouts_export(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    date_from: Annotated[str | None, Query(alias="from")] = None,
    date_to: Annotated[str | None, Query(alias="to")] = None,
    tz: str | None = None,
    affiliate_id: FormIdFilter = None,
    offer_id: FormIdFilter = None,
) -> StreamingResponse:
    """Payout statement of a period, per affiliate, offer and currency (an affiliate gets its own only)."""
    ids = {"offer_id": id_text(offer_id), "affiliate_id": id_text(affiliate_id)}
    params = ReportParams("day", date_from, date_to, tz, **ids)
    q = query_or_400(params, user)
    return await _csv_response(session, payouts_csv(_sessions(request), q), filename("payouts", q))
