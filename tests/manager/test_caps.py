"""An offer's caps in the manager: daily, monthly and lifetime caps in the offer's time zone, and how full each is."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from adclick.core.counting import Cap
from adclick.core.db.models import DailyCap, OfferAffiliateOverride
from support.manager import Manager, form

pytestmark = pytest.mark.anyio


async def test_caps_and_their_time_zone_are_set_checked_and_cleared_over_the_api(manager: Manager) -> None:
    api = await manager.api("admin")
    offer = {"advertiser_id": manager.ids["advertiser"], "name": "Capped"}
    made = await api.post(
        "/api/v1/offers", json={**offer, "daily_cap": 5, "monthly_cap": 100, "lifetime_cap": 1000,
                                "cap_timezone": "America/New_York"}
    )  # fmt: skip
    assert made.status_code == 201, made.text
    body = made.json()
    assert (body["daily_cap"], body["monthly_cap"], body["lifetime_cap"]) == (5, 100, 1000)
    assert body["cap_timezone"] == "America/New_York"
    assert (await api.post("/api/v1/offers", json=offer)).json()["cap_timezone"] == "UTC"

    for bad in ({"cap_timezone": "Mars/Olympus"}, {"cap_timezone": "../../etc/passwd"}, {"monthly_cap": -1}):
        refused = await api.patch(f"/api/v1/offers/{body['id']}", json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    cleared = await api.patch(f"/api/v1/offers/{body['id']}", json={"monthly_cap": None, "cap_timezone": "Asia/Tokyo"})
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["monthly_cap"], cleared.json()["lifetime_cap"], cleared.json()["cap_timezone"]) == (
        None,
        1000,
        "Asia/Tokyo",
    )


async def test_the_offer_page_shows_each_caps_fill_in_its_current_period(manager: Manager) -> None:
    offer_id, affiliate_id = manager.ids["offer"], manager.ids["affiliate"]
    client = await manager.as_role("manager")
    saved = await client.post(
        f"/offers/{offer_id}",
        data=form(client, name="Summer", advertiser_id=str(manager.ids["advertiser"]), currency="USD",
                  daily_cap="10", monthly_cap="200", lifetime_cap="", cap_timezone="Europe/Berlin"),
    )  # fmt: skip
    assert saved.status_code == 303, saved.text
    now = datetime.now(UTC)
    day = Cap("offer", 0, 10, "Europe/Berlin").start(now)
    month = Cap("offer_month", 0, 200, "Europe/Berlin").start(now)
    async with manager.sessions() as session, session.begin():
        session.add(OfferAffiliateOverride(offer_id=offer_id, affiliate_id=affiliate_id, daily_cap=4))
        session.add(DailyCap(scope="offer", offer_id=offer_id, affiliate_id=0, day=day, used=10))
        session.add(DailyCap(scope="offer_month", offer_id=offer_id, affiliate_id=0, day=month, used=57))
        session.add(DailyCap(scope="affiliate_offer", offer_id=offer_id, affiliate_id=affiliate_id, day=day, used=1))
        # An earlier period's slots are not this period's fill.
        session.add(
            DailyCap(scope="offer_month", offer_id=offer_id, affiliate_id=0, day=month.replace(year=2020), used=9)
        )

    html = (await client.get(f"/offers/{offer_id}")).text
    assert "Caps now" in html
    rows = html.split('<table class="caps">')[1].split("</table>")[0]
    assert "the offer&#39;s daily cap (10)" in rows and "<strong>full</strong>" in rows
    assert "the offer&#39;s monthly cap (200)" in rows and "<td>57</td><td>200</td>" in rows and "28%" in rows
    assert "the affiliate&#39;s daily cap (4)" in rows and "<td>1</td><td>4</td>" in rows
    assert "lifetime" not in rows  # blank: no lifetime cap
    assert "UTC" in rows  # when each resets, in UTC
    # Affiliates never see an offer's page.
    affiliate = await manager.as_role("affiliate")
    assert (await affiliate.get(f"/offers/{offer_id}")).status_code in (403, 404)


async def test_a_cap_edit_that_fills_or_frees_a_cap_moves_the_offers_links_at_once(manager: Manager) -> None:
    offer_id = manager.ids["offer"]
    api = await manager.api("admin")
    await manager.create_link(api, "capped-1", url="https://shop.example/?c={click_id}")
    fallback = "https://backup.example/?c={click_id}&s={sub1}"
    async with manager.sessions() as session, session.begin():
        session.add(DailyCap(scope="offer", offer_id=offer_id, affiliate_id=0, day=datetime.now(UTC).date(), used=3))
    redis = manager.redis.client()

    def published() -> dict[str, object]:
        return dict(json.loads(redis.get("adclick:link:capped-1")))

    # A cap lowered to what is already taken fills it: the links go to the cap fallback until midnight (UTC).
    reply = await api.patch(f"/api/v1/offers/{offer_id}", json={"daily_cap": 3, "cap_fallback_url": fallback})
    assert reply.status_code == 200, reply.text
    assert reply.json()["capped_until"] is not None and reply.json()["live"] is True
    midnight = datetime.combine(datetime.now(UTC).date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    assert (published()["capped_until"], published()["cap_url"]) == (int(midnight.timestamp()), fallback)
    staff = await manager.as_role("manager")
    html = (await staff.get(f"/offers/{offer_id}")).text
    assert 'id="capped"' in html and "backup.example" in html

    # Raised: free again, and the links serve the offer.
    reply = await api.patch(f"/api/v1/offers/{offer_id}", json={"daily_cap": 10})
    assert reply.status_code == 200 and reply.json()["capped_until"] is None
    assert "capped_until" not in published() and "cap_url" not in published()
    assert 'id="capped"' not in (await staff.get(f"/offers/{offer_id}")).text


async def test_a_cap_fallback_is_checked_like_a_destination(manager: Manager) -> None:
    api = await manager.api("admin")
    offer_id = manager.ids["offer"]
    for bad in ("javascript:alert(1)//x", "https://{sub1}.evil.example/", "https://ok.example/\r\nSet-Cookie: a=b"):
        refused = await api.patch(f"/api/v1/offers/{offer_id}", json={"cap_fallback_url": bad})
        assert refused.status_code in (400, 422), (bad, refused.text)
    # Affiliates may neither set nor see it.
    affiliate = await manager.api("affiliate")
    patched = await affiliate.patch(f"/api/v1/offers/{offer_id}", json={"cap_fallback_url": "https://x.example/"})
    assert patched.status_code in (403, 404)
