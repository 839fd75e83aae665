"""CSV exports on PostgreSQL and SQLite: every row, correct values, formulas defused, delivered in chunks."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from adclick.manager.conversions import build_filter
from adclick.manager.exports import CHUNK_BYTES, conversions_csv, payouts_csv, report_csv, safe_cell
from adclick.manager.report_queries import build_query, run_report
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from test_reports import LINKS, random_events, seed_campaigns, seed_events

pytestmark = pytest.mark.anyio

D = Decimal
ROWS = 20_000


@pytest.fixture
def sessions(db_engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    from adclick.core.db.session import session_factory

    return session_factory(db_engine)


async def collect(stream: AsyncIterator[bytes]) -> tuple[list[list[str]], list[int]]:
    chunks = [chunk async for chunk in stream]
    text = b"".join(chunks).decode()
    return list(csv.reader(io.StringIO(text, newline=""))), [len(chunk) for chunk in chunks]


def test_cells_that_a_spreadsheet_would_run_are_defused() -> None:
    for text in ("=1+1", "+1", "-2+3", "@SUM(A1)", "\t=1", "\r=1", '=HYPERLINK("http://evil","x")'):
        assert safe_cell(text) == "'" + text
    assert safe_cell("alpha=1") == "alpha=1"
    assert safe_cell(D("-1.50")) == "-1.50" and safe_cell(-3) == "-3"  # our own numbers stay numbers
    assert safe_cell(None) == "" and safe_cell(True) == "true"
    assert safe_cell(datetime(2026, 3, 9, 1, tzinfo=UTC)) == "2026-03-09T01:00:00+00:00"


async def test_a_report_of_many_rows_streams_every_row_in_chunks(
    db_session: AsyncSession, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await seed_campaigns(db_session)
    start = datetime(2026, 3, 9, tzinfo=UTC)
    clicks = [
        {
            "click_id": f"k{n:07d}",
            "ts": start + timedelta(seconds=n * 4),
            "link_id": 11 + n % 4,
            "bot": n % 10 == 0,
            "unique": n % 3 == 0,
            "sub1": "=cmd|' /C calc'!A0" if n == 7 else f"gclid-{n:07d}",
        }
        for n in range(ROWS)
    ]
    await seed_events(db_session, clicks, [])
    q = build_query("sub1", "2026-03-09", "2026-03-09", "UTC")
    rows, sizes = await collect(report_csv(sessions, q))
    header, body = rows[0], rows[1:]
    assert header[:7] == [
        "sub1",
        "clicks",
        "unique_clicks",
        "bot_clicks",
        "blocked_clicks",
        "capped_clicks",
        "conversions",
    ]
    assert len(body) == ROWS
    assert len(sizes) > 5 and max(sizes) < 2 * CHUNK_BYTES  # delivered piecewise, not as one buffer
    by_sub = {row[0]: row for row in body}
    assert by_sub["'=cmd|' /C calc'!A0"][1:4] == ["1", "0", "0"]
    assert by_sub["gclid-0000003"][1:4] == ["1", "1", "0"]
    assert by_sub["gclid-0000010"][1:4] == ["0", "0", "1"]  # a bot: in bot_clicks only
    bots = sum(1 for click in clicks if click["bot"])
    assert (sum(int(row[1]) for row in body), sum(int(row[3]) for row in body)) == (ROWS - bots, bots)

    hourly, _ = await collect(report_csv(sessions, build_query("hour,link", "2026-03-09", "2026-03-09", "UTC")))
    assert hourly[0][:4] == ["hour", "link", "link_name", "clicks"]
    assert len(hourly) - 1 == 4 * 23  # 20,000 clicks 4 s apart cover 22 h 13 min: 23 hours of 4 links
    assert hourly[1][:3] == ["2026-03-09T00:00:00+00:00", "11", "l11"]
    assert sum(int(row[3]) for row in hourly[1:]) == ROWS - bots


async def test_report_csv_equals_the_report(
    db_session: AsyncSession, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await seed_campaigns(db_session)
    await seed_events(db_session, *random_events())
    for group_by in ("day", "offer", "affiliate,device", "sub4"):
        q = build_query(group_by, "2026-03-08", "2026-03-10", "America/Sao_Paulo")
        report = await run_report(db_session, q)
        await db_session.commit()  # SQLite: an open transaction holds the database lock the export needs
        rows, _ = await collect(report_csv(sessions, q))
        width = len(rows[0])
        metrics = [[row[i] for i in range(width - 11, width)] for row in rows[1:]]
        assert metrics == [
            [
                str(r.totals.clicks),
                str(r.totals.unique_clicks),
                str(r.totals.bot_clicks),
                str(r.totals.blocked_clicks),
                str(r.totals.capped_clicks),
                str(r.totals.conversions),
                str(r.totals.conversion_rate) if r.totals.conversion_rate is not None else "",
                str(r.totals.revenue),
                str(r.totals.payout),
                str(r.totals.profit),
                str(r.totals.epc) if r.totals.epc is not None else "",
            ]
            for r in report.rows
        ], group_by


async def test_conversions_csv_has_every_filtered_conversion_with_formulas_defused(
    db_session: AsyncSession, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await seed_campaigns(db_session)
    clicks, conversions = random_events()
    conversions[0]["txid"] = '=HYPERLINK("http://evil.example","click me")'
    conversions[1]["txid"] = "@SUM(1+1)"
    await seed_events(db_session, clicks, conversions)
    rows, _ = await collect(conversions_csv(sessions, build_filter()))
    header, body = rows[0], rows[1:]
    assert len(body) == len(conversions)
    txids = [row[header.index("txid")] for row in body]
    assert '\'=HYPERLINK("http://evil.example","click me")' in txids and "'@SUM(1+1)" in txids
    created = [row[header.index("created_at")] for row in body]
    assert created == sorted(created)
    by_txid = {c["txid"]: c for c in conversions}
    for row in body:
        txid = row[header.index("txid")]
        source = by_txid[txid[1:] if txid.startswith("'") else txid]
        assert D(row[header.index("revenue")]) == source["revenue"]
        assert row[header.index("status")] == source["status"]
        assert row[header.index("offer_name")] == f"Offer {source['offer_id']}"
    approved, _ = await collect(conversions_csv(sessions, build_filter(status="approved", scope_affiliate_id=2)))
    want = [c for c in conversions if c["status"] == "approved" and c["affiliate_id"] == 2]
    assert len(approved) - 1 == len(want) > 0


async def test_payout_statement_sums_approved_and_pending_per_affiliate_and_offer(
    db_session: AsyncSession, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await seed_campaigns(db_session)
    clicks, conversions = random_events()
    await seed_events(db_session, clicks, conversions)
    q = build_query("day", "2026-03-08", "2026-03-09", "America/Sao_Paulo")
    rows, _ = await collect(payouts_csv(sessions, q))
    header, body = rows[0], rows[1:]
    want: dict[tuple[int, int], dict[str, Any]] = defaultdict(lambda: {"n": 0, "pay": D(0), "pn": 0, "ppay": D(0)})
    for c in conversions:
        if q.start <= c["created_at"] < q.end and c["status"] in ("approved", "pending"):
            entry = want[(c["affiliate_id"], c["offer_id"])]
            if c["status"] == "approved":
                entry["n"] += 1
                entry["pay"] += c["payout"]
            else:
                entry["pn"] += 1
                entry["ppay"] += c["payout"]
    got = {
        (int(row[header.index("affiliate_id")]), int(row[header.index("offer_id")])): {
            "n": int(row[header.index("approved_conversions")]),
            "pay": D(row[header.index("payout")]),
            "pn": int(row[header.index("pending_conversions")]),
            "ppay": D(row[header.index("pending_payout")]),
        }
        for row in body
    }
    assert got == want and len(got) == len({(a, o) for o, a in LINKS.values()})
    first = dict(zip(header, body[0], strict=True))
    assert (first["period_start"], first["period_end"], first["time_zone"]) == (
        "2026-03-08",
        "2026-03-09",
        "America/Sao_Paulo",
    )
    assert first["affiliate_name"] == "Alice Media" and first["currency"] == "USD"
    own = build_query("day", "2026-03-08", "2026-03-09", "America/Sao_Paulo", scope_affiliate_id=2)
    mine, _ = await collect(payouts_csv(sessions, own))
    assert {row[header.index("affiliate_id")] for row in mine[1:]} == {"2"}
