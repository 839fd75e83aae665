"""What staff set up for money safety (issue 14): advertisers' postback allowlists, offers' pixel and bot rules,
and the IP blocklist, each validated and published to Redis for the roles that check it, on PostgreSQL and SQLite."""

from __future__ import annotations

import json
import time

import pytest
from adclick.core.publisher import rebuild, redis_client
from support.manager import Manager, csrf_of

pytestmark = pytest.mark.anyio


async def reconcile(manager: Manager) -> None:
    """One pass of the manager's reconciler."""
    client = redis_client(manager.redis.url, 2000)
    try:
        await rebuild(manager.sessions, client)
    finally:
        client.close()


async def test_an_advertisers_postback_allowlist_is_validated_and_published(manager: Manager) -> None:
    api = await manager.api("manager")
    created = await api.post("/api/v1/advertisers", json={"name": "Shop", "postback_ips": "198.51.100.7 2001:DB8::/32"})
    assert created.status_code == 201, created.text
    advertiser_id = created.json()["id"]
    assert created.json()["postback_ips"] == "198.51.100.7/32, 2001:db8::/32"
    key = f"adclick:advertiser:{advertiser_id}"
    assert json.loads(manager.redis.client().get(key)) == {
        "token_version": 1,
        "postback_ips": ["198.51.100.7/32", "2001:db8::/32"],
    }

    for bad in ("10.0.0.1/8", "not-an-ip", "198.51.100.0/33"):
        refused = await api.patch(f"/api/v1/advertisers/{advertiser_id}", json={"postback_ips": bad})
        assert refused.status_code == 422, bad
    cleared = await api.patch(f"/api/v1/advertisers/{advertiser_id}", json={"postback_ips": ""})
    assert cleared.status_code == 200 and cleared.json()["postback_ips"] is None
    assert json.loads(manager.redis.client().get(key)) == {"token_version": 1}

    # The reconciler puts a list back when Redis lost it, without lowering a token version.
    await api.patch(f"/api/v1/advertisers/{advertiser_id}", json={"postback_ips": "203.0.113.0/24"})
    manager.redis.client().set(key, json.dumps({"token_version": 1}))
    await reconcile(manager)
    assert json.loads(manager.redis.client().get(key))["postback_ips"] == ["203.0.113.0/24"]


async def test_offer_pixel_and_bot_settings_are_validated(manager: Manager) -> None:
    api = await manager.api("manager")
    base = {"advertiser_id": manager.ids["advertiser"], "name": "O"}
    created = await api.post("/api/v1/offers", json=base)
    assert created.status_code == 201
    offer = created.json()
    assert (offer["pixel_enabled"], offer["pixel_status"], offer["bot_conversions"]) == (False, "pending", "reject")

    revshare = {**base, "payout_model": "revshare", "payout_amount": "10", "pixel_enabled": True}
    refused = await api.post("/api/v1/offers", json=revshare)
    assert refused.status_code == 422 and "pixel_max_amount" in refused.text
    assert (await api.post("/api/v1/offers", json={**revshare, "pixel_max_amount": "500"})).status_code == 201
    for bad in ({"pixel_status": "paid"}, {"bot_conversions": "maybe"}, {"pixel_domains": "shop example/x"}):
        assert (await api.patch(f"/api/v1/offers/{offer['id']}", json=bad)).status_code == 422, bad
    patched = await api.patch(
        f"/api/v1/offers/{offer['id']}",
        json={"pixel_enabled": True, "pixel_domains": "Shop.Example, .checkout.example"},
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["pixel_enabled"], patched.json()["pixel_domains"]) == (
        True,
        "shop.example, checkout.example",
    )


async def test_the_blocklist_is_edited_by_staff_only_and_reaches_trackers(manager: Manager) -> None:
    store = manager.redis.client()
    pubsub = store.pubsub()
    pubsub.subscribe("adclick:invalidate")
    api = await manager.api("manager")
    added = await api.post("/api/v1/blocklist", json={"cidrs": "203.0.113.0/24, 198.51.100.7", "note": "dc"})
    assert added.status_code == 201, added.text
    assert added.json()["live"] is True
    assert json.loads(store.get("adclick:ipblock")) == {"v": 1, "cidrs": ["203.0.113.0/24", "198.51.100.7/32"]}
    deadline = time.monotonic() + 5
    messages = []
    while time.monotonic() < deadline and "!ipblock" not in messages:
        message = pubsub.get_message(timeout=0.5)
        if message and message["type"] == "message":
            messages.append(message["data"].decode() if isinstance(message["data"], bytes) else message["data"])
    assert "!ipblock" in messages

    assert (await api.post("/api/v1/blocklist", json={"cidrs": "300.1.1.1"})).status_code == 422
    again = await api.post("/api/v1/blocklist", json={"cidrs": "203.0.113.0/24"})
    assert again.status_code == 201 and again.json()["items"] == []  # already listed
    (first, _second) = (await api.get("/api/v1/blocklist")).json()["items"]
    assert (await api.delete(f"/api/v1/blocklist/{first['id']}")).status_code == 204
    assert json.loads(store.get("adclick:ipblock"))["cidrs"] == ["198.51.100.7/32"]

    affiliate = await manager.api("affiliate")
    assert (await affiliate.get("/api/v1/blocklist")).status_code == 403
    assert (await affiliate.post("/api/v1/blocklist", json={"cidrs": "192.0.2.1"})).status_code == 403
    anonymous = await manager.anonymous()
    assert (await anonymous.get("/api/v1/blocklist")).status_code == 401

    page_user = await manager.as_role("manager")
    page = await page_user.get("/blocklist")
    assert page.status_code == 200 and "198.51.100.7/32" in page.text
    posted = await page_user.post("/blocklist", data={"cidrs": "192.0.2.0/24", "csrf_token": csrf_of(page.text)})
    assert posted.status_code == 303
    assert "192.0.2.0/24" in json.loads(store.get("adclick:ipblock"))["cidrs"]
    bad = await page_user.post("/blocklist", data={"cidrs": "<script>", "csrf_token": csrf_of(page.text)})
    assert bad.status_code == 422 and "<script>" not in bad.text

    # Lost in Redis: the reconciler writes it back.
    store.delete("adclick:ipblock")
    await reconcile(manager)
    assert json.loads(store.get("adclick:ipblock"))["cidrs"] == ["198.51.100.7/32", "192.0.2.0/24"]
    pubsub.close()


async def test_the_offer_page_turns_the_pixel_on_and_off(manager: Manager) -> None:
    browser = await manager.as_role("manager")
    offer_id = manager.ids["offer"]
    page = (await browser.get(f"/offers/{offer_id}")).text
    assert 'name="pixel_enabled"' in page and "checked" not in page.split('name="pixel_enabled"')[1][:40]
    base = {"advertiser_id": str(manager.ids["advertiser"]), "name": "Offer", "csrf_token": csrf_of(page)}
    on = await browser.post(
        f"/offers/{offer_id}", data={**base, "pixel_enabled": "true", "pixel_domains": "shop.example"}
    )
    assert on.status_code == 303, on.text
    api = await manager.api("manager")
    offer = (await api.get(f"/api/v1/offers/{offer_id}")).json()
    assert (offer["pixel_enabled"], offer["pixel_domains"]) == (True, "shop.example")
    off = await browser.post(f"/offers/{offer_id}", data=base)  # an unticked box sends nothing: off, domains cleared
    assert off.status_code == 303, off.text
    offer = (await api.get(f"/api/v1/offers/{offer_id}")).json()
    assert (offer["pixel_enabled"], offer["pixel_domains"]) == (False, None)
