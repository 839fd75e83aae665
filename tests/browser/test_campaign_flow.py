"""The manager in real headless Chromium, with every role running: a campaign set up through the pages, its
tracking link followed through the tracker, a postback, and the click and conversion in the report and the charts.

Screenshots of each step land in test-artifacts/browser/ (or ADCLICK_TEST_ARTIFACTS); see conftest.py.
"""

from __future__ import annotations

import re
import urllib.parse
import urllib.request
from typing import Any, cast

import pytest
from browserkit import Landing, Shots, Tab, fill_macros
from playwright.sync_api import Locator, Page, expect
from support.procs import wait_until
from support.system import ADMIN, PASSWORD, System

# What the chart holds (each dataset's sum) and what it drew: pixels in the plot area (legend and axes left out)
# painted at all, and painted in the Clicks line's colour.
CHART_DRAWN = """canvas => {
  const chart = canvas.chart;
  const sums = {};
  for (const set of chart.data.datasets) sums[set.label] = set.data.reduce((a, b) => a + Number(b), 0);
  const hex = chart.data.datasets.find(set => set.label === "Clicks").borderColor;
  const rgb = [1, 3, 5].map(i => parseInt(hex.slice(i, i + 2), 16));
  const area = chart.chartArea, ratio = chart.currentDevicePixelRatio;
  const pixels = canvas.getContext("2d").getImageData(
    area.left * ratio, area.top * ratio, (area.right - area.left) * ratio, (area.bottom - area.top) * ratio).data;
  let painted = 0, clicks = 0;
  for (let i = 0; i < pixels.length; i += 4) {
    if (pixels[i + 3] === 0) continue;
    painted++;
    if (rgb.every((value, k) => Math.abs(pixels[i + k] - value) < 24)) clicks++;
  }
  return {sums, points: chart.data.labels.length, painted, clicks_line: clicks};
}"""


def sign_in(page: Page, base: str, shots: Shots) -> None:
    page.goto(f"{base}/")
    expect(page).to_have_url(f"{base}/login?next=/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    shots(page, "sign in")
    page.get_by_label("Email").fill(ADMIN)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()


def go(page: Page, nav: str) -> None:
    """Follow a link of the header's navigation, as a person would."""
    page.locator("header nav").get_by_role("link", name=nav, exact=True).click()
    expect(page.get_by_role("heading", name=nav)).to_be_visible()


def totals(page: Page) -> dict[str, str]:
    """The report's Total row, by column heading."""
    headings = page.locator("table.report thead th").all_inner_texts()
    cells = page.locator("table.report tfoot th").all_inner_texts()
    assert cells[0] == "Total" and len(headings) == len(cells), (headings, cells)
    return dict(zip(headings[1:], cells[1:], strict=True))


def wait_for_totals(page: Page, column: str, value: str, within: float = 30.0) -> dict[str, str]:
    """Reload the report until the worker has stored what it counts (the worker is asynchronous by design)."""

    def shown() -> dict[str, str] | None:
        page.reload()
        now = totals(page)
        return now if now[column] == value else None

    return cast(dict[str, str], wait_until(shown, timeout=within, interval=0.5, message=f"{column} {value} shown"))


def chart(page: Page) -> dict[str, Any]:
    """What the page's Chart.js chart holds and drew, once reports.js has fetched its series."""
    canvas = page.locator("#series-chart")
    expect(canvas).to_have_attribute("data-points", re.compile(r"^\d+$"))  # set after the chart is drawn
    result: dict[str, Any] = canvas.evaluate(CHART_DRAWN)
    return result


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_campaign_set_up_in_the_browser_counts_its_click_and_conversion(
    stack: System, landing: Landing, tab: Tab, shots: Shots
) -> None:
    stack.start()
    page, base = tab.page, stack.manager.base
    sign_in(page, base, shots)
    assert chart(page)["sums"] == {"Clicks": 0, "Conversions": 0, "Revenue": 0}
    shots(page, "dashboard before traffic")

    # An advertiser; its page shows the postback URL to give them, token included.
    go(page, "Advertisers")
    form = page.locator("form[action='/advertisers']")
    form.get_by_label("Name").fill("Spring Shop")
    form.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_have_text("Advertiser created.")
    expect(page.get_by_role("heading", name="Spring Shop")).to_be_visible()
    postback_template = page.locator("dt:text-is('Postback URL') + dd code").inner_text()
    assert postback_template.startswith(stack.roles["postback"].base + "/postback?")
    assert "token=" in postback_template and "{click_id}" in postback_template
    shots(page, "advertiser with postback URL")

    # An offer of that advertiser: 12.00 revenue and 8.00 payout per conversion, approved unless told otherwise.
    page.get_by_role("link", name="New offer…").click()
    form = page.locator("form[action='/offers']")
    expect(form.get_by_label("Advertiser")).to_have_value(page.url.rsplit("=", 1)[1])
    form.get_by_label("Name").fill("Spring Sale")
    form.locator("input[name='revenue_amount']").fill("12.00")
    form.locator("input[name='payout_amount']").fill("8.00")
    form.get_by_label("Default status").select_option("approved")
    shots(page, "new offer form")
    form.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_have_text("Offer created.")
    shots(page, "offer")

    go(page, "Affiliates")
    form = page.locator("form[action='/affiliates']")
    form.get_by_label("Name").fill("Blog Partner")
    form.get_by_label("Email").fill("partner@blog.example")
    form.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_have_text("Affiliate created.")
    shots(page, "affiliate")

    # A link with a generated slug, sending people to the landing page with their ClickID.
    go(page, "Links")
    page.get_by_role("link", name="New link").click()
    form = page.locator("form[action='/links']")
    form.get_by_label("Offer").select_option(label=_option(form, "offer_id", "Spring Sale"))
    form.get_by_label("Affiliate").select_option(label=_option(form, "affiliate_id", "Blog Partner"))
    form.get_by_label("Destination URL template").fill(f"{landing.base}/welcome?cid={{click_id}}&s1={{sub1}}")
    shots(page, "new link form")
    form.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_have_text("Link saved and live.")
    expect(page.locator("dd.state")).to_have_class("state live")
    tracking_url = page.locator("dt:text-is('Tracking URL') + dd code").inner_text()
    assert tracking_url.startswith(stack.roles["tracker"].base + "/c/")
    shots(page, "link with tracking URL")

    # A visitor follows the tracking link: the tracker answers 302 and the browser lands on the advertiser's page.
    response = page.goto(f"{tracking_url}?sub1=newsletter")
    assert response is not None and response.ok
    hop = response.request.redirected_from
    assert hop is not None and hop.url.startswith(tracking_url)
    tracker_reply = hop.response()
    assert tracker_reply is not None and tracker_reply.status == 302
    expect(page.get_by_role("heading", name="Welcome to the spring sale")).to_be_visible()
    landed = urllib.parse.urlsplit(page.url)
    assert f"{landed.scheme}://{landed.netloc}{landed.path}" == f"{landing.base}/welcome"
    query = urllib.parse.parse_qs(landed.query)
    click_id = query["cid"][0]
    assert query["s1"] == ["newsletter"]
    assert [path for path in landing.paths if path != "/favicon.ico"] == [f"/welcome?{landed.query}"]
    shots(page, "landing page")

    # The click reaches the report once the worker has stored it.
    page.goto(f"{base}/reports")
    found = wait_for_totals(page, "Clicks", "1")
    assert (found["Unique"], found["Bots"], found["Conv."]) == ("1", "0", "0")
    shots(page, "report with the click")

    # The advertiser's server calls the postback URL from its page with the sale.
    postback = fill_macros(
        postback_template, click_id=click_id, txid="ORDER-1001", amount="49.90", currency="USD", status="approved"
    )
    with urllib.request.urlopen(postback, timeout=10) as reply:
        assert reply.status == 200

    found = wait_for_totals(page, "Conv.", "1")
    assert (found["Clicks"], found["Revenue"], found["Payout"], found["Profit"]) == ("1", "12.00", "8.00", "4.00")
    drawn = chart(page)
    assert drawn["sums"] == {"Clicks": 1, "Conversions": 1, "Revenue": 12}, drawn
    assert drawn["painted"] > 0 and drawn["clicks_line"] > 0, drawn
    shots(page, "report with the conversion and chart")

    go(page, "Dashboard")
    drawn = chart(page)
    assert drawn["points"] == 30 and drawn["sums"] == {"Clicks": 1, "Conversions": 1, "Revenue": 12}, drawn
    assert drawn["painted"] > 0 and drawn["clicks_line"] > 0, drawn
    expect(page.locator(".series-zone")).to_have_text("(UTC)")
    shots(page, "dashboard chart")

    assert tab.errors == [] and tab.dialogs == []


def _option(form: Locator, select: str, name: str) -> str:
    """The text of a select's option for a row called `name` ("Name (#id)")."""
    texts = form.locator(f"select[name='{select}'] option").all_inner_texts()
    matches = [text for text in texts if text.startswith(f"{name} (#")]
    assert len(matches) == 1, texts
    return matches[0]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_script_in_a_name_shows_as_text_and_a_form_without_its_csrf_token_is_refused(
    stack: System, tab: Tab, shots: Shots
) -> None:
    stack.start("manager")
    page, base = tab.page, stack.manager.base
    sign_in(page, base, shots)

    name = "<script>alert('affiliate')</script> & <b>Co</b>"
    go(page, "Affiliates")
    form = page.locator("form[action='/affiliates']")
    form.get_by_label("Name").fill(name)
    form.get_by_role("button", name="Create").click()
    expect(page.get_by_role("status")).to_have_text("Affiliate created.")
    expect(page.locator("main h1")).to_have_text(f"{name} active")
    assert page.locator("main script, main b").count() == 0
    shots(page, "script in a name shown as text")
    go(page, "Affiliates")
    expect(page.locator("table tbody").get_by_role("link", name=name)).to_be_visible()

    # A form that lost its token (an old tab, a forged cross-site post) is refused and creates nothing.
    form = page.locator("form[action='/affiliates']")
    form.locator("input[name='csrf_token']").evaluate("input => input.remove()")
    form.get_by_label("Name").fill("No Token Ltd")
    with page.expect_response(lambda r: r.url == f"{base}/affiliates" and r.request.method == "POST") as posted:
        form.get_by_role("button", name="Create").click()
    assert posted.value.status == 403
    expect(page.get_by_text("CSRF token missing or wrong")).to_be_visible()
    shots(page, "form without csrf token refused")
    page.get_by_role("link", name="Dashboard").click()
    go(page, "Affiliates")
    expect(page.get_by_role("link", name="No Token Ltd")).to_have_count(0)

    assert tab.errors == [] and tab.dialogs == []
