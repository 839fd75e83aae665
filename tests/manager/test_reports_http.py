"""Reports, exports, conversions and failed jobs over HTTP on the real manager app (PostgreSQL and SQLite): who may
see and do what, affiliates confined to their own rows, clear 400s, CSRF, escaping, CSV downloads, SQS retries."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from adclick.core.counting import add_to_rollups
from adclick.core.db.models import Click, Conversion, FailedJob, Link
from sqlalchemy import insert, select
from support.manager import Manager, form
from support.servers import SqsServer

pytestmark = pytest.mark.anyio

D = Decimal
L, F, A, N = 303, 403, 401, 404  # as in test_authz: to /login, forbidden, API sign-in needed, not found

# Unknown path parameters are 1: no conversion or job 1 exists, and action "1" is no action (a 400, or on a
# page a flash and a redirect back), so an allowed caller gets the route's own refusal, a refused one 401/403.
AUTHZ_MATRIX: dict[tuple[str, str], tuple[int, int, int, int]] = {
    # reports and exports: every signed-in user (an affiliate sees its own rows)
    ("GET", "/reports"): (L, 200, 200, 200),
    ("GET", "/api/v1/reports"): (A, 200, 200, 200),
    ("GET", "/api/v1/reports/timeseries"): (A, 200, 200, 200),
    ("GET", "/api/v1/exports/report.csv"): (A, 200, 200, 200),
    ("GET", "/api/v1/exports/conversions.csv"): (A, 200, 200, 200),
    ("GET", "/api/v1/exports/payouts.csv"): (A, 200, 200, 200),
    # conversions: everyone reads (own rows), staff edit
    ("GET", "/conversions"): (L, 200, 200, 200),
    ("GET", "/conversions/{conversion_id}"): (L, N, N, N),
    ("POST", "/conversions/{conversion_id}/{action}"): (L, F, 303, 303),
    ("GET", "/api/v1/conversions"): (A, 200, 200, 200),
    ("GET", "/api/v1/conversions/{conversion_id}"): (A, N, N, N),
    ("POST", "/api/v1/conversions/{conversion_id}/{action}"): (A, F, 400, 400),
    # failed jobs and queues: staff
    ("GET", "/jobs"): (L, F, 200, 200),
    ("GET", "/jobs/{job_id}"): (L, F, N, N),
    ("POST", "/jobs/{job_id}/retry"): (L, F, 303, 303),
    ("POST", "/jobs/{job_id}/forget"): (L, F, N, N),
    ("POST", "/jobs/forget-retried"): (L, F, 303, 303),
    ("GET", "/api/v1/jobs"): (A, F, 200, 200),
    ("GET", "/api/v1/jobs/{job_id}"): (A, F, N, N),
    ("POST", "/api/v1/jobs/{job_id}/retry"): (A, F, N, N),
    ("DELETE", "/api/v1/jobs/{job_id}"): (A, F, N, N),
    ("GET", "/api/v1/queues"): (A, F, 200, 200),
}
WHEN = datetime(2026, 3, 9, 12, 30, tzinfo=UTC)
RANGE = {"from": "2026-03-09", "to": "2026-03-09", "tz": "UTC"}


async def traffic(manager: Manager) -> dict[str, int]:
    """A link per affiliate (the affiliate user's and the other's), clicks and one conversion on each."""
    ids = manager.ids
    async with manager.sessions() as session:
        mine = Link(id=101, slug="mine", offer_id=ids["offer"], affiliate_id=ids["affiliate"], template="https://x")
        other = Link(
            id=102, slug="other", offer_id=ids["offer"], affiliate_id=ids["other_affiliate"], template="https://x"
        )
        session.add_all([mine, other])
        await session.flush()
        rows = []
        for link, affiliate, clicks, sub in (
            (101, ids["affiliate"], 5, "=1+2"),
            (102, ids["other_affiliate"], 7, "theirs"),
        ):
            await session.execute(
                insert(Click),
                [{"click_id": f"{link}-{n}", "ts": WHEN, "link_id": link, "offer_id": ids["offer"],
                  "affiliate_id": affiliate, "bot": False, "unique": True, "sub1": sub} for n in range(clicks)],
            )  # fmt: skip
            await session.execute(
                insert(Conversion),
                [{"offer_id": ids["offer"], "txid": f"T{link}", "click_id": f"{link}-0", "link_id": link,
                  "affiliate_id": affiliate, "advertiser_id": ids["advertiser"], "status": "pending",
                  "currency": "USD", "revenue": D("9"), "payout": D("4"), "created_at": WHEN, "updated_at": WHEN}],
            )  # fmt: skip
            rows.append({"hour": WHEN.replace(minute=0), "link_id": link, "country": "", "device": "",
                         "offer_id": ids["offer"], "affiliate_id": affiliate, "clicks": clicks,
                         "unique_clicks": clicks, "bot_clicks": 0, "conversions": 1, "revenue": D("9"),
                         "payout": D("4")})  # fmt: skip
        await add_to_rollups(session, rows)
        await session.commit()
        found = await session.execute(select(Conversion.link_id, Conversion.id))
        return {f"conversion_{link}": cid for link, cid in found.all()}


async def test_reports_json_for_each_role_and_affiliates_see_only_their_own(manager: Manager) -> None:
    await traffic(manager)
    anonymous = manager.client()
    assert (await anonymous.get("/api/v1/reports", params=RANGE)).status_code == 401
    page = await anonymous.get("/reports")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")

    for role in ("admin", "manager"):
        body = (
            await (await manager.api(role)).get("/api/v1/reports", params={**RANGE, "group_by": "affiliate"})
        ).json()
        assert {row["keys"]["affiliate"] for row in body["rows"]} == {
            manager.ids["affiliate"],
            manager.ids["other_affiliate"],
        }
        assert body["totals"]["clicks"] == 12 and body["totals"]["revenue"] == "18.000000"
        assert body["totals"]["conversion_rate"] == "16.6667" and body["totals"]["epc"] == "1.5000"

    affiliate = await manager.api("affiliate")
    other_id = manager.ids["other_affiliate"]
    for group_by in ("affiliate", "link", "day", "sub1"):
        body = (
            await affiliate.get("/api/v1/reports", params={**RANGE, "group_by": group_by, "affiliate_id": other_id})
        ).json()
        assert body["totals"]["clicks"] == 5 and body["totals"]["conversions"] == 1, group_by
    links = (await affiliate.get("/api/v1/reports", params={**RANGE, "group_by": "link"})).json()
    assert [row["labels"]["link"] for row in links["rows"]] == ["mine (#101)"]
    series = (await affiliate.get("/api/v1/reports/timeseries", params=RANGE)).json()
    assert series["interval"] == "hour" and sum(series["clicks"]) == 5 and series["conversions"][12] == 1


async def test_bad_report_requests_are_clear_400s(manager: Manager) -> None:
    api = await manager.api("manager")
    too_long = await api.get("/api/v1/reports", params={"group_by": "sub2", "from": "2026-01-01", "to": "2026-03-01"})
    assert too_long.status_code == 400 and "at most 31 days" in too_long.json()["detail"]
    zone = await api.get("/api/v1/reports", params={"tz": "Nowhere/City"})
    assert zone.status_code == 400 and "unknown time zone" in zone.json()["detail"]
    browser = await manager.as_role("manager")
    page = await browser.get("/reports", params={"group_by": "sub1", "from": "2026-01-01", "to": "2026-03-01"})
    assert page.status_code == 400 and "at most 31 days" in page.text and "<form" in page.text


async def test_report_page_escapes_names_and_links_its_chart_and_csv(manager: Manager) -> None:
    await traffic(manager)
    async with manager.sessions() as session:
        link = await session.get(Link, 101)
        assert link is not None
        link.slug = "x<script>"[:8]
        await session.commit()
    api = await manager.api("admin")
    renamed = await api.patch(
        f"/api/v1/affiliates/{manager.ids['affiliate']}", json={"name": "<script>alert(1)</script>"}
    )
    assert renamed.status_code == 200, renamed.text
    browser = await manager.as_role("manager")
    page = await browser.get("/reports", params={**RANGE, "group_by": "affiliate"})
    assert page.status_code == 200
    assert "<script>alert(1)</script>" not in page.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert 'data-series-url="/api/v1/reports/timeseries?group_by=affiliate&amp;from=2026-03-09' in page.text
    assert "/static/vendor/chartjs/chart.umd.min.js" in page.text
    assert (await browser.get("/static/vendor/chartjs/chart.umd.min.js")).text.startswith("/*!\n * Chart.js v4")
    dashboard = await browser.get("/")
    assert 'id="series-chart"' in dashboard.text and "/static/reports.js" in dashboard.text
    links = await browser.get("/reports", params={**RANGE, "group_by": "link"})
    assert "x&lt;script" in links.text and "x<script" not in links.text


async def test_csv_downloads_with_the_session_cookie_and_confined_to_the_affiliate(manager: Manager) -> None:
    await traffic(manager)
    affiliate = await manager.as_role("affiliate")
    reply = await affiliate.get("/api/v1/exports/report.csv", params={**RANGE, "group_by": "sub1"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/csv")
    assert 'filename="adclick-report-2026-03-09-2026-03-09.csv"' in reply.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(reply.text)))
    assert rows[0][:7] == [
        "sub1",
        "clicks",
        "unique_clicks",
        "bot_clicks",
        "blocked_clicks",
        "capped_clicks",
        "conversions",
    ]
    assert rows[1][:7] == ["'=1+2", "5", "5", "0", "0", "0", "1"] and len(rows) == 2
    conversions = list(csv.reader(io.StringIO((await affiliate.get("/api/v1/exports/conversions.csv")).text)))
    assert [row[conversions[0].index("link_id")] for row in conversions[1:]] == ["101"]
    payouts = list(csv.reader(io.StringIO((await affiliate.get("/api/v1/exports/payouts.csv", params=RANGE)).text)))
    assert len(payouts) == 2 and payouts[1][payouts[0].index("pending_payout")] == "4.000000"
    assert (await manager.client().get("/api/v1/exports/report.csv")).status_code == 401


async def test_conversion_edits_need_staff_and_csrf_and_move_the_report(manager: Manager) -> None:
    ids = await traffic(manager)
    mine = ids["conversion_101"]
    affiliate = await manager.as_role("affiliate")
    listed = (await affiliate.get("/api/v1/conversions")).json()
    assert [c["id"] for c in listed["items"]] == [mine]
    assert (await affiliate.get(f"/api/v1/conversions/{ids['conversion_102']}")).status_code == 404
    denied = await affiliate.post(f"/api/v1/conversions/{mine}/approve", headers={"X-CSRF-Token": affiliate.csrf})  # type: ignore[attr-defined]
    assert denied.status_code == 403

    browser = await manager.as_role("manager")
    no_token = await browser.post(f"/conversions/{mine}/reject", data={"note": "x"})
    assert no_token.status_code == 403
    rejected = await browser.post(f"/conversions/{mine}/reject", data=form(browser, note="<b>fraud</b>"))
    assert rejected.status_code == 303
    detail = await browser.get(f"/conversions/{mine}")
    assert (
        "rejected" in detail.text and "&lt;b&gt;fraud&lt;/b&gt;" in detail.text and "manager@example.com" in detail.text
    )

    api = await manager.api("manager")
    report = (await api.get("/api/v1/reports", params={**RANGE, "group_by": "affiliate"})).json()
    assert report["totals"]["conversions"] == 1 and report["totals"]["revenue"] == "9.000000"
    adjusted = await api.post(f"/api/v1/conversions/{ids['conversion_102']}/adjust", json={"revenue": "12.5"})
    assert adjusted.status_code == 200 and adjusted.json()["after"]["revenue"] == "12.500000"
    again = await api.post(f"/api/v1/conversions/{mine}/reject")
    assert again.status_code == 409 and "already rejected" in again.json()["detail"]
    report = (await api.get("/api/v1/reports", params=RANGE)).json()
    assert report["totals"]["revenue"] == "12.500000"
    page = await browser.get("/conversions", params={"status": "rejected"})
    assert page.status_code == 200 and f'href="/conversions/{mine}"' in page.text


async def test_failed_jobs_for_staff_only_retry_lands_on_the_queue_and_forget_deletes(
    adclick_env: dict[str, str], manager: Manager, sqs_server: SqsServer
) -> None:
    settings = manager.settings
    url = sqs_server.create_queue(settings.conversions_queue)
    async with manager.sessions() as session:
        job = FailedJob(queue=settings.conversions_queue, message_id="m1", body='v1:{"txid":"<T>"}', error="boom")
        session.add(job)
        await session.commit()
        job_id = job.id
    affiliate = await manager.api("affiliate")
    for method, path in (("GET", "/api/v1/jobs"), ("POST", f"/api/v1/jobs/{job_id}/retry"), ("GET", "/api/v1/queues")):
        assert (await affiliate.request(method, path)).status_code == 403, path
    assert (await (await manager.as_role("affiliate")).get("/jobs")).status_code == 403

    browser = await manager.as_role("manager")
    page = await browser.get("/jobs")
    assert page.status_code == 200 and settings.conversions_queue in page.text
    detail = await browser.get(f"/jobs/{job_id}")
    assert "v1:{&#34;txid&#34;:&#34;&lt;T&gt;&#34;}" in detail.text
    retried = await browser.post(f"/jobs/{job_id}/retry", data=form(browser))
    assert retried.status_code == 303
    assert sqs_server.drain(url) == ['v1:{"txid":"<T>"}']

    api = await manager.api("admin")
    shown: dict[str, Any] = (await api.get(f"/api/v1/jobs/{job_id}")).json()
    assert shown["retried_at"] is not None and shown["body"] == 'v1:{"txid":"<T>"}'
    queues = (await api.get("/api/v1/queues")).json()["queues"]
    assert {q["name"]: q["exists"] for q in queues}[settings.conversions_queue] is True
    assert (await api.delete(f"/api/v1/jobs/{job_id}")).status_code == 204
    assert (await api.delete(f"/api/v1/jobs/{job_id}")).status_code == 404


HUGE = "99999999999999999999"
ID_FILTERED = (
    "/api/v1/reports",
    "/api/v1/reports/timeseries",
    "/api/v1/exports/report.csv",
    "/reports",
    "/api/v1/conversions",
    "/api/v1/exports/conversions.csv",
    "/conversions",
)


async def test_out_of_range_ids_are_422s_and_missing_ones_404s(manager: Manager) -> None:
    ids = await traffic(manager)
    api, browser = await manager.api("manager"), await manager.as_role("manager")
    assert (await api.get(f"/api/v1/conversions/{HUGE}")).status_code == 422
    assert (await api.get("/api/v1/conversions/0")).status_code == 422
    assert (await api.get(f"/api/v1/conversions/{2**63 - 1}")).status_code == 404
    assert (await api.get(f"/api/v1/conversions/{ids['conversion_101']}")).status_code == 200
    assert (await api.post(f"/api/v1/conversions/{HUGE}/approve")).status_code == 422
    assert (await api.post(f"/api/v1/conversions/{2**63 - 1}/approve")).status_code == 404
    assert (await browser.get(f"/conversions/{HUGE}")).status_code == 422
    assert (await browser.get(f"/conversions/{2**63 - 1}")).status_code == 404
    for client, path in ((api, "/api/v1/conversions"), (browser, "/conversions")):
        assert (await client.get(path, params={"before_id": HUGE})).status_code == 422, path
        assert (await client.get(path, params={"before_id": str(2**63 - 1)})).status_code == 200, path
    for path in (*ID_FILTERED, "/api/v1/exports/payouts.csv"):
        client = browser if not path.startswith("/api/") else api
        names = (
            ("offer_id", "affiliate_id") if path.endswith("payouts.csv") else ("offer_id", "affiliate_id", "link_id")
        )
        for name in names:
            wide = str(2**40) if name == "link_id" else str(2**31)
            for value in (HUGE, wide, "0", "-1"):
                reply = await client.get(path, params={**RANGE, name: value})
                assert reply.status_code == 422, (path, name, value, reply.text[:200])
            widest = str(2**40 - 1) if name == "link_id" else str(2**31 - 1)
            for value in (widest, ""):  # in range but unknown, and an HTML form's "any"
                reply = await client.get(path, params={**RANGE, name: value})
                assert reply.status_code == 200, (path, name, value, reply.text[:200])
    affiliate = await manager.api("affiliate")
    assert (await affiliate.get("/api/v1/reports", params={"affiliate_id": HUGE})).status_code == 422
    assert (await affiliate.get(f"/api/v1/conversions/{ids['conversion_102']}")).status_code == 404


STAFF_ONLY = ("revenue", "profit", "advertiser", "audit")  # and the note of `note_on`
# Revenue, profit, their sums over both affiliates and revenue EPCs, as JSON, CSV (6 decimals) or pages (2) show them.
MONEY_LEAK = re.compile(r"(?<![\d.:])(?:(?:9|5|18|10)\.00(?:0000)?|1\.8000|1\.5000)(?!\d)")


def leaks(text: str) -> list[str]:
    """What of the network's money, advertisers and audit notes shows in an answer (traffic(): revenue 9.00, profit
    5.00 and revenue EPC 1.8000 on the affiliate's link, where its payout is 4.00; the note of `note_on`)."""
    found = [word for word in STAFF_ONLY if word in text.lower()]
    return found + MONEY_LEAK.findall(text) + (["secret-note"] if "secret-note" in text else [])


async def note_on(manager: Manager, conversion_id: int) -> None:
    api = await manager.api("manager")
    reply = await api.post(f"/api/v1/conversions/{conversion_id}/adjust", json={"amount": "100", "note": "secret-note"})
    assert reply.status_code == 200, reply.text


async def test_affiliates_see_payouts_but_never_revenue_profit_advertisers_or_audit_notes(manager: Manager) -> None:
    ids = await traffic(manager)
    mine = ids["conversion_101"]
    await note_on(manager, mine)
    affiliate_api, affiliate = await manager.api("affiliate"), await manager.as_role("affiliate")
    staff_api, staff = await manager.api("manager"), await manager.as_role("manager")
    day = {**RANGE, "group_by": "day"}

    report = await affiliate_api.get("/api/v1/reports", params=day)
    assert report.status_code == 200 and not leaks(report.text), leaks(report.text)
    totals = report.json()["totals"]
    assert (totals["clicks"], totals["payout"], totals["epc"]) == (5, "4.000000", "0.8000")
    assert "revenue" not in report.json()["rows"][0] and "profit" not in report.json()["rows"][0]
    staff_totals = (await staff_api.get("/api/v1/reports", params=day)).json()["totals"]
    assert (staff_totals["revenue"], staff_totals["profit"], staff_totals["epc"]) == (
        "18.000000",
        "10.000000",
        "1.5000",
    )

    series = await affiliate_api.get("/api/v1/reports/timeseries", params=RANGE)
    assert not leaks(series.text), leaks(series.text)
    assert series.json()["money"] == "payout" and series.json()["payout"][12] == "4.000000"
    staff_series = (await staff_api.get("/api/v1/reports/timeseries", params=RANGE)).json()
    assert staff_series["money"] == "revenue" and staff_series["revenue"][12] == "18.000000"

    page = await affiliate.get("/reports", params=day)
    assert page.status_code == 200 and "4.00" in page.text and "0.8000" in page.text
    assert not [leak for leak in leaks(page.text) if leak not in ("revenue",)] and "Revenue" not in page.text
    staff_page = (await staff.get("/reports", params=day)).text
    assert all(text in staff_page for text in ("Revenue", "Profit", "18.00", "10.00", "1.5000"))

    report_csv = await affiliate.get("/api/v1/exports/report.csv", params=day)
    assert report_csv.status_code == 200 and not leaks(report_csv.text), leaks(report_csv.text)
    rows = list(csv.reader(io.StringIO(report_csv.text)))
    assert rows[1][rows[0].index("payout")] == "4.000000" and rows[1][rows[0].index("epc")] == "0.8000"
    staff_csv = list(csv.reader(io.StringIO((await staff.get("/api/v1/exports/report.csv", params=day)).text)))
    assert {"revenue", "profit"} <= set(staff_csv[0]) and staff_csv[1][staff_csv[0].index("revenue")] == "18.000000"

    listed = await affiliate_api.get("/api/v1/conversions")
    assert not leaks(listed.text), leaks(listed.text)
    assert [(c["id"], c["payout"]) for c in listed.json()["items"]] == [(mine, "4.000000")]
    detail = await affiliate_api.get(f"/api/v1/conversions/{mine}")
    assert detail.status_code == 200 and not leaks(detail.text), leaks(detail.text)
    assert detail.json()["payout"] == "4.000000"
    staff_detail = (await staff_api.get(f"/api/v1/conversions/{mine}")).json()
    assert staff_detail["revenue"] == "9.000000" and staff_detail["advertiser_id"] == manager.ids["advertiser"]
    assert staff_detail["audit"][0]["after"]["note"] == "secret-note"
    staff_listed = (await staff_api.get("/api/v1/conversions")).json()["items"]
    assert {c["revenue"] for c in staff_listed} == {"9.000000"} and all("advertiser_id" in c for c in staff_listed)

    for path in ("/conversions", f"/conversions/{mine}"):
        shown = await affiliate.get(path)
        assert shown.status_code == 200 and "4.000000" in shown.text, path
        assert not [leak for leak in leaks(shown.text) if leak != "revenue"] and "Revenue" not in shown.text, path
        assert "Audit" not in shown.text, path
    staff_list_page = (await staff.get("/conversions")).text
    assert all(text in staff_list_page for text in ("Revenue", "9.000000"))
    staff_detail_page = (await staff.get(f"/conversions/{mine}")).text
    assert all(text in staff_detail_page for text in ("Revenue", "9.000000", "Audit log", "secret-note"))

    conversions_csv = await affiliate.get("/api/v1/exports/conversions.csv")
    assert not leaks(conversions_csv.text), leaks(conversions_csv.text)
    assert "4.000000" in conversions_csv.text
    staff_conversions = list(csv.reader(io.StringIO((await staff.get("/api/v1/exports/conversions.csv")).text)))
    assert {"revenue", "advertiser_id"} <= set(staff_conversions[0])

    payouts = await affiliate.get("/api/v1/exports/payouts.csv", params=RANGE)
    assert payouts.status_code == 200 and not leaks(payouts.text), leaks(payouts.text)
    assert list(csv.reader(io.StringIO(payouts.text)))[1][-1] == "4.000000"
