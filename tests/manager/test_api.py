"""The JSON API, resource by resource, on PostgreSQL and SQLite with a real Redis."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from adclick.core.db.models import Link
from adclick.core.tokens import verify_token
from sqlalchemy import select
from support.manager import POSTBACK, TRACKER, Manager

pytestmark = pytest.mark.anyio


async def test_advertisers_crud_token_and_rotation(manager: Manager) -> None:
    api = await manager.api("manager")
    created = await api.post("/api/v1/advertisers", json={"name": "  Acme  "})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["name"] == "Acme" and body["status"] == "active" and body["token_version"] == 1
    secret = manager.settings.postback_secret.get_secret_value()
    assert verify_token(secret, body["postback_token"]) == (body["id"], 1)
    assert body["postback_url"].startswith(f"{POSTBACK}/postback?click_id={{click_id}}&txid={{txid}}")
    assert body["postback_url"].endswith(f"&token={body['postback_token']}")

    advertiser_id = body["id"]
    listed = (await api.get("/api/v1/advertisers")).json()
    assert {a["id"] for a in listed["items"]} >= {advertiser_id} and listed["total"] == 2
    patched = await api.patch(f"/api/v1/advertisers/{advertiser_id}", json={"status": "paused"})
    assert patched.json()["status"] == "paused" and patched.json()["name"] == "Acme"

    rotated = await api.post(f"/api/v1/advertisers/{advertiser_id}/rotate-token")
    assert rotated.status_code == 200 and rotated.json()["token_version"] == 2 and rotated.json()["live"] is True
    assert verify_token(secret, rotated.json()["postback_token"]) == (advertiser_id, 2)
    stored = manager.redis.client().get(f"adclick:advertiser:{advertiser_id}")
    assert stored is not None and json.loads(stored) == {"token_version": 2}

    assert (await api.delete(f"/api/v1/advertisers/{advertiser_id}")).status_code == 204
    assert (await api.get(f"/api/v1/advertisers/{advertiser_id}")).status_code == 404
    in_use = await api.delete(f"/api/v1/advertisers/{manager.ids['advertiser']}")
    assert in_use.status_code == 409 and "archive" in in_use.json()["detail"]


async def test_bad_input_is_a_clear_422(manager: Manager) -> None:
    api = await manager.api("admin")
    cases = [
        ("/api/v1/advertisers", {"name": ""}),
        ("/api/v1/advertisers", {"name": "x" * 201}),
        ("/api/v1/advertisers", {"name": "A", "status": "deleted"}),
        ("/api/v1/advertisers", {"name": "A", "surprise": 1}),
        ("/api/v1/affiliates", {"name": "A", "email": "not-an-email"}),
        ("/api/v1/offers", {"advertiser_id": manager.ids["advertiser"], "name": "O", "currency": "usd"}),
        ("/api/v1/offers", {"advertiser_id": manager.ids["advertiser"], "name": "O", "payout_amount": "-1"}),
        ("/api/v1/offers", {"advertiser_id": manager.ids["advertiser"], "name": "O", "payout_amount": "1.0000001"}),
        (
            "/api/v1/offers",
            {
                "advertiser_id": manager.ids["advertiser"],
                "name": "O",
                "revenue_model": "revshare",
                "revenue_amount": 150,
            },
        ),
        ("/api/v1/offers", {"advertiser_id": manager.ids["advertiser"], "name": "O", "attribution_window_hours": 0}),
        ("/api/v1/users", {"email": "a@example.com", "password": "short", "role": "manager"}),
        ("/api/v1/users", {"email": "a@example.com", "password": "long enough password", "role": "affiliate"}),
    ]
    for path, payload in cases:
        reply = await api.post(path, json=payload)
        assert reply.status_code == 422, (path, payload, reply.text)
        assert reply.json()["detail"], (path, payload)
    unknown = await api.post("/api/v1/offers", json={"advertiser_id": 999, "name": "O"})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["msg"] == "advertiser 999 does not exist"
    assert (
        await api.post("/api/v1/advertisers", content=b"{not json", headers={"content-type": "application/json"})
    ).status_code == 422


async def test_affiliates_crud(manager: Manager) -> None:
    api = await manager.api("manager")
    created = await api.post("/api/v1/affiliates", json={"name": "Pub", "email": "Pub@Example.com"})
    assert created.status_code == 201 and created.json()["email"] == "pub@example.com"
    affiliate_id = created.json()["id"]
    assert (await api.get(f"/api/v1/affiliates/{affiliate_id}")).json()["name"] == "Pub"
    patched = await api.patch(f"/api/v1/affiliates/{affiliate_id}", json={"email": None, "name": "Pub 2"})
    assert patched.json()["email"] is None and patched.json()["name"] == "Pub 2"
    assert len((await api.get("/api/v1/affiliates")).json()["items"]) == 3
    assert (await api.delete(f"/api/v1/affiliates/{affiliate_id}")).status_code == 204
    assert (await api.get(f"/api/v1/affiliates/{affiliate_id}")).status_code == 404


async def test_offers_and_overrides_crud_with_exact_money(manager: Manager) -> None:
    api = await manager.api("manager")
    payload = {
        "advertiser_id": manager.ids["advertiser"],
        "name": "Winter",
        "currency": "EUR",
        "revenue_model": "revshare",
        "revenue_amount": "12.5",
        "payout_amount": "3.333333",
        "attribution_window_hours": 48,
        "default_status": "approved",
        "daily_cap": 100,
    }
    created = await api.post("/api/v1/offers", json=payload)
    assert created.status_code == 201, created.text
    offer = created.json()
    assert Decimal(offer["revenue_amount"]) == Decimal("12.5") and Decimal(offer["payout_amount"]) == Decimal(
        "3.333333"
    )
    assert offer["currency"] == "EUR" and offer["daily_cap"] == 100 and offer["default_status"] == "approved"
    offer_id = offer["id"]
    patched = await api.patch(f"/api/v1/offers/{offer_id}", json={"daily_cap": None, "payout_amount": "4"})
    assert patched.json()["daily_cap"] is None and Decimal(patched.json()["payout_amount"]) == 4
    too_much = await api.patch(f"/api/v1/offers/{offer_id}", json={"revenue_amount": "101"})
    assert too_much.status_code == 422
    filtered = (await api.get(f"/api/v1/offers?advertiser_id={manager.ids['advertiser']}")).json()
    assert {o["id"] for o in filtered["items"]} == {offer_id, manager.ids["offer"]}

    affiliate = manager.ids["affiliate"]
    put = await api.put(
        f"/api/v1/offers/{offer_id}/overrides/{affiliate}", json={"payout_amount": "5.5", "daily_cap": 3}
    )
    assert put.status_code == 200, put.text
    override = put.json()
    assert Decimal(override.pop("payout_amount")) == Decimal("5.5")
    expected = {"offer_id": offer_id, "affiliate_id": affiliate, "payout_model": None, "daily_cap": 3}
    assert override == {**expected, "postback_url": None}
    replaced = await api.put(f"/api/v1/offers/{offer_id}/overrides/{affiliate}", json={"payout_model": "revshare"})
    assert replaced.json()["payout_amount"] is None and replaced.json()["payout_model"] == "revshare"
    assert len((await api.get(f"/api/v1/offers/{offer_id}/overrides")).json()) == 1
    missing = await api.put(f"/api/v1/offers/{offer_id}/overrides/999", json={})
    assert missing.status_code == 422
    assert (await api.delete(f"/api/v1/offers/{offer_id}/overrides/{affiliate}")).status_code == 204
    assert (await api.get(f"/api/v1/offers/{offer_id}/overrides")).json() == []
    assert (await api.delete(f"/api/v1/offers/{offer_id}")).status_code == 204


def link_payload(manager: Manager, **extra: object) -> dict[str, object]:
    return {
        "offer_id": manager.ids["offer"],
        "affiliate_id": manager.ids["affiliate"],
        "url": "https://shop.example/lp?cid={click_id}&s1={sub1}",
        **extra,
    }


async def test_links_crud_publish_to_redis(manager: Manager) -> None:
    api = await manager.api("manager")
    redis = manager.redis.client()
    pubsub = manager.listen()

    created = await api.post("/api/v1/links", json=link_payload(manager))
    assert created.status_code == 201, created.text
    link = created.json()
    assert link["live"] is True and len(link["slug"]) == 8
    assert link["tracking_url"] == f"{TRACKER}/c/{link['slug']}"
    stored = json.loads(redis.get(f"adclick:link:{link['slug']}"))
    assert stored == {
        "v": 1,
        "id": link["id"],
        "slug": link["slug"],
        "offer_id": manager.ids["offer"],
        "affiliate_id": manager.ids["affiliate"],
        "status": "active",
        "expires_at": None,
        "url": "https://shop.example/lp?cid={click_id}&s1={sub1}",
        "rules": [],
        "fallback_url": None,
        "cookie": False,
    }
    message = pubsub.get_message(timeout=2)
    assert message is not None and message["data"] == link["slug"]

    rotation = {
        "slug": "summer-sale",
        "destinations": [{"url": "https://a.example/?c={click_id}", "weight": 70}, {"url": "https://b.example/"}],
        "rules": [{"countries": ["US", "CA"], "devices": ["mobile"], "url": "https://m.example/?c={click_id}"}],
        "fallback_url": "https://shop.example/",
        "cookie": True,
        "expires_at": "2031-01-01T00:00:00Z",
    }
    patched = await api.patch(f"/api/v1/links/{link['id']}", json=rotation)
    assert patched.status_code == 200, patched.text
    assert patched.json()["slug"] == "summer-sale"
    assert redis.get(f"adclick:link:{link['slug']}") is None  # the old slug no longer answers
    stored = json.loads(redis.get("adclick:link:summer-sale"))
    assert "url" not in stored and stored["destinations"][1] == {"url": "https://b.example/", "weight": 1}
    assert stored["rules"] == [
        {"countries": ["US", "CA"], "devices": ["mobile"], "url": "https://m.example/?c={click_id}"}
    ]
    assert stored["cookie"] is True and stored["expires_at"] == 1924992000

    paused = await api.post(f"/api/v1/links/{link['id']}/pause")
    assert paused.json()["status"] == "paused"
    assert json.loads(redis.get("adclick:link:summer-sale"))["status"] == "paused"
    resumed = await api.post(f"/api/v1/links/{link['id']}/resume")
    assert resumed.json()["status"] == "active"
    assert json.loads(redis.get("adclick:link:summer-sale"))["status"] == "active"

    taken = await api.post("/api/v1/links", json=link_payload(manager, slug="summer-sale"))
    assert taken.status_code == 409
    found = (await api.get("/api/v1/links?q=summer")).json()
    assert [item["slug"] for item in found["items"]] == ["summer-sale"]

    assert (await api.delete(f"/api/v1/links/{link['id']}")).status_code == 204
    assert redis.get("adclick:link:summer-sale") is None
    assert (await api.get(f"/api/v1/links/{link['id']}")).status_code == 404


async def test_link_templates_are_checked_by_the_trackers_decoder_before_anything_is_saved(manager: Manager) -> None:
    api = await manager.api("manager")
    bad = [
        ("https://{click_id}.example/", "scheme, host or port"),
        ("https://shop.example/?x={nope}", "unknown macro {nope}"),
        ("ftp://shop.example/", None),
        ("javascript:alert(1)//", None),
    ]
    for url, message in bad:
        reply = await api.post("/api/v1/links", json=link_payload(manager, url=url))
        assert reply.status_code == 422, (url, reply.text)
        if message:
            assert message in str(reply.json()["detail"]), reply.json()
    rule = {"countries": ["USA"], "url": "https://m.example/"}
    assert (await api.post("/api/v1/links", json=link_payload(manager, rules=[rule]))).status_code == 422
    device = {"devices": ["toaster"], "url": "https://m.example/"}
    reply = await api.post("/api/v1/links", json=link_payload(manager, rules=[device]))
    assert reply.status_code == 422 and "toaster" in str(reply.json()["detail"])
    async with manager.sessions() as session:
        assert (await session.scalars(select(Link))).all() == []
    assert manager.redis.client().keys("adclick:link:*") == []


async def test_an_offers_destination_template_is_checked_by_the_trackers_decoder_before_anything_is_saved(
    manager: Manager,
) -> None:
    api = await manager.api("manager")
    template = "https://shop.example/lp?cid={click_id}&aff={aff_id}"
    new = {"advertiser_id": manager.ids["advertiser"], "name": "With template", "destination_template": template}
    created = await api.post("/api/v1/offers", json=new)
    assert created.status_code == 201, created.text
    offer_id = created.json()["id"]
    assert created.json()["destination_template"] == template
    assert (await api.get(f"/api/v1/offers/{offer_id}")).json()["destination_template"] == template

    bad = [
        ("https://{click_id}.example/", "scheme, host or port"),
        ("https://shop.example/?x={nope}", "unknown macro {nope}"),
        ("ftp://shop.example/", None),
    ]
    for url, message in bad:
        for reply in (
            await api.post("/api/v1/offers", json={**new, "destination_template": url}),
            await api.patch(f"/api/v1/offers/{offer_id}", json={"destination_template": url, "name": "Changed"}),
        ):
            assert reply.status_code == 422, (url, reply.text)
            assert "destination_template" in str(reply.json()["detail"]), reply.json()
            if message:
                assert message in str(reply.json()["detail"]), reply.json()
    listed = (await api.get("/api/v1/offers")).json()
    assert listed["total"] == 2  # the seeded offer and the one above: no bad one was saved
    kept = (await api.get(f"/api/v1/offers/{offer_id}")).json()
    assert kept["destination_template"] == template and kept["name"] == "With template"

    other = "https://other.example/?c={click_id}"
    patched = await api.patch(f"/api/v1/offers/{offer_id}", json={"destination_template": other})
    assert patched.status_code == 200 and patched.json()["destination_template"] == other
    cleared = await api.patch(f"/api/v1/offers/{offer_id}", json={"destination_template": None})
    assert cleared.status_code == 200 and cleared.json()["destination_template"] is None  # no link follows it
    assert (await api.post("/api/v1/offers", json={**new, "destination_template": None})).status_code == 201


async def test_users_crud_and_last_admin_is_kept(manager: Manager) -> None:
    api = await manager.api("admin")
    created = await api.post(
        "/api/v1/users",
        json={
            "email": "New@Example.com",
            "password": "a long enough one",
            "role": "affiliate",
            "affiliate_id": manager.ids["other_affiliate"],
        },
    )
    assert created.status_code == 201, created.text
    user = created.json()
    assert user["email"] == "new@example.com" and "password" not in json.dumps(user) and "hash" not in json.dumps(user)
    assert (
        await api.post(
            "/api/v1/users", json={"email": "new@example.com", "password": "a long enough one", "role": "manager"}
        )
    ).status_code == 409
    promoted = await api.patch(f"/api/v1/users/{user['id']}", json={"role": "manager"})
    assert promoted.json()["role"] == "manager" and promoted.json()["affiliate_id"] is None
    new_login = await manager.login("new@example.com", "a long enough one")
    assert (await new_login.get("/advertisers")).status_code == 200
    await api.patch(f"/api/v1/users/{user['id']}", json={"is_active": False})
    assert (await new_login.get("/advertisers")).status_code == 303  # a deactivated user is signed out at once

    admin_id = manager.ids["admin_user"]
    assert (await api.patch(f"/api/v1/users/{admin_id}", json={"role": "manager"})).status_code == 409
    assert (await api.delete(f"/api/v1/users/{admin_id}")).status_code == 409
    assert (await api.delete(f"/api/v1/users/{user['id']}")).status_code == 204
    assert (await api.get(f"/api/v1/users/{user['id']}")).status_code == 404


async def test_api_tokens_are_stored_hashed_and_revocable(manager: Manager) -> None:
    api = await manager.api("manager")
    mine = (await api.get("/api/v1/tokens")).json()
    assert [t["name"] for t in mine] == ["tests"] and "token" not in mine[0]
    made = await api.post("/api/v1/tokens", json={"name": "erp"})
    token = made.json()["token"]
    async with manager.sessions() as session:
        from adclick.core.db.models import ApiToken

        hashes = set((await session.scalars(select(ApiToken.token_hash))).all())
    assert token not in hashes and any(len(h) == 64 for h in hashes)
    second = manager.client()
    second.headers["Authorization"] = f"Bearer {token}"
    assert (await second.get("/api/v1/me")).json()["email"] == "manager@example.com"
    assert (await api.delete(f"/api/v1/tokens/{made.json()['id']}")).status_code == 204
    assert (await second.get("/api/v1/me")).status_code == 401
    other = manager.client()
    other.headers["Authorization"] = "Bearer adc_nothing"
    assert (await other.get("/api/v1/me")).status_code == 401


async def test_openapi_lists_the_api_and_no_docs_page_needs_a_cdn(manager: Manager) -> None:
    client = manager.client()
    schema = (await client.get("/api/v1/openapi.json")).json()
    assert "/api/v1/links" in schema["paths"] and all(path.startswith("/api/") for path in schema["paths"])
    assert (await client.get("/docs")).status_code in (303, 404)
