"""Money safety from outside (issue 14): the running system, driven only over HTTP as strangers, affiliates and
advertisers would, with the database read at the end.

- A token-less pixel can neither create an approved or paid conversion nor change a stored conversion's status;
  an offer with the pixel enabled records one pending conversion per click.
- A bot click and a click from a blocked address never appear in clicks, CR, EPC or paid conversions.
"""

from __future__ import annotations

import time
import urllib.parse
from decimal import Decimal

from faultkit import FaultSystem
from support.procs import wait_until
from support.roles import request
from support.tracker import UA_IPHONE, UA_SLACKBOT


def _location(system: FaultSystem, slug: str, user_agent: str = UA_IPHONE) -> tuple[int, str]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", system.tracker.port, timeout=10)
    try:
        conn.request("GET", f"/c/{slug}?sub1=money", headers={"User-Agent": user_agent})
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location") or ""
    finally:
        conn.close()


def _cid(location: str) -> str:
    return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["cid"][0]


def _offer_with_link(system: FaultSystem, name: str, **terms: object) -> tuple[int, str]:
    offer = {
        "advertiser_id": system.advertiser_id,
        "name": name,
        "revenue_amount": "4.00",
        "payout_amount": "2.00",
        "default_status": "approved",
        **terms,
    }
    offer_id = int(system.api("POST", "/api/v1/offers", offer)["id"])
    slug = f"money-{offer_id}"
    link = {
        "offer_id": offer_id,
        "affiliate_id": system.affiliate_id,
        "slug": slug,
        "url": "https://shop.example/lp?cid={click_id}",
        "fallback_url": "https://shop.example/elsewhere",
    }
    system.api("POST", "/api/v1/links", link)
    wait_until(lambda: _location(system, slug)[0] == 302, timeout=30, message=f"/c/{slug} served")
    return offer_id, slug


def _pixel(system: FaultSystem, **query: str) -> None:
    reply = request(system.postback.port, "GET", "/pixel.gif?" + urllib.parse.urlencode(query))
    status, body = reply.status, reply.body
    assert status == 200 and body.startswith(b"GIF"), (status, body[:50])


def _postback(system: FaultSystem, **query: str) -> int:
    query = {"token": system.token, **query}
    return request(system.postback.port, "GET", "/postback?" + urllib.parse.urlencode(query)).status


def test_a_pixel_never_creates_approved_money_nor_changes_a_status(system: FaultSystem) -> None:
    closed_offer, closed_slug = _offer_with_link(system, "No pixel")
    open_offer, open_slug = _offer_with_link(system, "Pixel on", pixel_enabled=True)
    closed_click = _cid(_location(system, closed_slug)[1])
    open_click = _cid(_location(system, open_slug)[1])
    paid_click = _cid(_location(system, open_slug)[1])

    # The advertiser's own approved conversion first, then an affiliate holding ClickIDs tries the pixel.
    assert _postback(system, click_id=paid_click, txid="REAL-1", status="approved") == 200
    system.wait_settled()
    for _ in range(3):
        _pixel(system, click_id=closed_click, txid="FAKE-1", status="approved", amount="999")
        _pixel(system, click_id=open_click, txid=f"FAKE-{time.monotonic_ns()}", status="approved", amount="999")
    _pixel(system, click_id=paid_click, txid="REAL-1", status="rejected")
    system.wait_settled()

    rows = system.sql(
        "SELECT offer_id, click_id, txid, status, payout FROM conversions WHERE offer_id = ANY($1) ORDER BY id",
        [closed_offer, open_offer],
    )
    by_click = {}
    for row in rows:
        by_click.setdefault(row["click_id"], []).append((row["txid"], row["status"], row["payout"]))
    assert closed_click not in by_click  # the pixel is off for this offer: nothing at all
    assert by_click[open_click] == [("pixel:" + open_click, "pending", Decimal("2.000000"))]  # one, pending
    assert by_click[paid_click][0] == ("REAL-1", "approved", Decimal("2.000000"))  # untouched by the pixel
    assert not any(status == "approved" for txid, status, _ in by_click[paid_click] if txid != "REAL-1")
    reasons = {
        row["reason"]
        for row in system.sql(
            "SELECT reason FROM conversion_rejections WHERE offer_id = ANY($1)", [closed_offer, open_offer]
        )
    }
    assert {"duplicate"} <= reasons
    refused = system.sql(
        "SELECT count(*) AS n FROM conversion_rejections WHERE reason = 'pixel_disabled' AND click_id = $1",
        closed_click,
    )
    assert refused[0]["n"] == 3


def test_bot_and_blocked_clicks_never_reach_paid_metrics(system: FaultSystem) -> None:
    offer_id, slug = _offer_with_link(system, "Bots and blocks")
    human = _cid(_location(system, slug)[1])
    bot_status, bot_location = _location(system, slug, UA_SLACKBOT)
    assert bot_status == 302
    bot = _cid(bot_location)

    entry = system.api("POST", "/api/v1/blocklist", {"cidrs": "127.0.0.1", "note": "money safety test"})["items"][0]
    try:
        # Every click of this test comes from 127.0.0.1: blocked within a second, sent to the link's fallback.
        wait_until(
            lambda: _location(system, slug)[1] == "https://shop.example/elsewhere",
            timeout=10,
            interval=0.1,
            message="the blocklist applied",
        )
        blocked_status, blocked_location = _location(system, slug)
    finally:
        system.api("DELETE", f"/api/v1/blocklist/{entry['id']}")
        wait_until(lambda: "cid=" in _location(system, slug)[1], timeout=10, interval=0.1, message="unblocked")
    assert (blocked_status, blocked_location) == (302, "https://shop.example/elsewhere")

    for click_id, txid in ((human, "H-1"), (bot, "B-1")):
        assert _postback(system, click_id=click_id, txid=txid, status="approved") == 200
    system.wait_settled()

    conversions = {
        row["txid"]: (row["status"], row["reason"])
        for row in system.sql("SELECT txid, status, reason FROM conversions WHERE offer_id = $1", offer_id)
    }
    assert conversions == {"H-1": ("approved", None), "B-1": ("rejected", "bot")}
    (totals,) = system.sql(
        "SELECT sum(clicks) AS clicks, sum(bot_clicks) AS bots, sum(blocked_clicks) AS blocked, "
        "sum(conversions) AS conversions, sum(payout) AS payout FROM hourly_rollups WHERE offer_id = $1",
        offer_id,
    )
    # The human click, plus the probes that waited for the link and the unblock; never the bot or blocked ones.
    humans = system.sql("SELECT count(*) AS n FROM clicks WHERE offer_id = $1 AND NOT bot AND NOT blocked", offer_id)[
        0
    ]["n"]
    assert totals["clicks"] == humans
    assert (totals["bots"], totals["conversions"], totals["payout"]) == (1, 1, Decimal("2.000000"))
    assert totals["blocked"] >= 2  # the probe that saw the block, and the click after it
