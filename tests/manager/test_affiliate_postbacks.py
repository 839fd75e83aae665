"""Postbacks out to affiliates in the manager, on PostgreSQL and SQLite: staff set an affiliate's template, triggers
and signing secret (checked when saved), see each conversion's deliveries with secrets masked and redeliver them;
an affiliate sees and tests its own postback. Who may not do what is in test_affiliate_postbacks_security.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import httpx
import pytest
from adclick.core.affiliate_postbacks import MASK, render
from adclick.core.db.models import Affiliate, Conversion, PostbackDelivery
from sqlalchemy import select, update
from support.manager import Manager, form

pytestmark = pytest.mark.anyio

L, F, A, N = 303, 403, 401, 404  # as in test_authz.py: login redirect, forbidden, API 401, not found
AUTHZ_MATRIX: dict[tuple[str, str], tuple[int, int, int, int]] = {
    # (anonymous, affiliate, manager, admin); {affiliate_id} is an affiliate not the affiliate user's, without a
    # postback URL; {delivery_id} and {conversion_id} do not exist.
    ("POST", "/api/v1/affiliates/{affiliate_id}/rotate-postback-secret"): (A, F, 200, 200),
    ("GET", "/api/v1/affiliates/{affiliate_id}/postback"): (A, F, 200, 200),
    ("POST", "/api/v1/affiliates/{affiliate_id}/postback/test"): (A, F, 409, 409),
    ("POST", "/api/v1/deliveries/{delivery_id}/redeliver"): (A, F, N, N),
    ("GET", "/api/v1/conversions/{conversion_id}/deliveries"): (A, N, N, N),
    ("POST", "/affiliates/{affiliate_id}/postback"): (L, F, 303, 303),
    ("GET", "/affiliates/{affiliate_id}/postback"): (L, F, 200, 200),
    ("POST", "/affiliates/{affiliate_id}/postback/test"): (L, F, 303, 303),
    ("POST", "/deliveries/{delivery_id}/redeliver"): (L, F, N, N),
    ("GET", "/postback"): (L, 200, 303, 303),
}

SECRET_VALUE = "hunter2-not-for-display"
TEMPLATE = f"https://aff.example/pb?cid={{click_id}}&payout={{payout}}&status={{status}}&token={SECRET_VALUE}"
SIGNING_SECRET = "s" * 20 + "-signing-secret"


async def set_postback(api: httpx.AsyncClient, affiliate_id: int, **fields: Any) -> dict[str, Any]:
    reply = await api.patch(f"/api/v1/affiliates/{affiliate_id}", json={"postback_url": TEMPLATE, **fields})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


async def add_conversion(manager: Manager, affiliate: str, txid: str, status: str = "pending") -> int:
    """A conversion of the seeded offer for `affiliate` ("affiliate" or "other_affiliate"), as the worker stores one."""
    async with manager.sessions() as session:
        row = Conversion(
            offer_id=manager.ids["offer"],
            txid=txid,
            click_id=f"click-{txid}",
            link_id=1,
            affiliate_id=manager.ids[affiliate],
            advertiser_id=manager.ids["advertiser"],
            status=status,
            amount=Decimal("100"),
            currency="USD",
            revenue=Decimal("10"),
            payout=Decimal("7.25"),
        )
        session.add(row)
        await session.commit()
        return row.id


async def approve_and_send(manager: Manager, staff: httpx.AsyncClient, conversion_id: int) -> PostbackDelivery:
    """Approve the conversion (its outbox row is written in the edit's transaction), then record it as sent, as the
    worker's deliverer would: the rendered URL, HTTP 200."""
    reply = await staff.post(f"/api/v1/conversions/{conversion_id}/approve")
    assert reply.status_code == 200, reply.text
    async with manager.sessions() as session:
        row = (
            await session.scalars(select(PostbackDelivery).where(PostbackDelivery.conversion_id == conversion_id))
        ).one()
        await session.execute(
            update(PostbackDelivery)
            .where(PostbackDelivery.id == row.id)
            .values(url=render(row.template, row.values), state="delivered", attempts=1, last_status=200)
        )
        await session.commit()
        await session.refresh(row)
        return row


async def deliveries(manager: Manager) -> list[PostbackDelivery]:
    async with manager.sessions() as session:
        return list((await session.scalars(select(PostbackDelivery).order_by(PostbackDelivery.id))).all())


async def affiliate_row(manager: Manager, key: str = "affiliate") -> Affiliate:
    async with manager.sessions() as session:
        row = await session.get(Affiliate, manager.ids[key])
        assert row is not None
        return row


async def test_staff_set_the_template_triggers_and_secret_and_listings_mask_the_secrets(manager: Manager) -> None:
    api = await manager.api("manager")
    affiliate_id = manager.ids["affiliate"]
    body = await set_postback(
        api, affiliate_id, postback_triggers=["reversal", "approved"], postback_secret=SIGNING_SECRET
    )
    assert body["postback_url"] == TEMPLATE and body["postback_secret"] == SIGNING_SECRET
    assert body["postback_triggers"] == ["approved", "reversal"]  # in the one order, whatever order was sent
    stored = await affiliate_row(manager)
    assert (stored.postback_url, stored.postback_triggers) == (TEMPLATE, "approved,reversal")

    listed = {a["id"]: a for a in (await api.get("/api/v1/affiliates")).json()["items"]}
    mine = listed[affiliate_id]
    assert mine["postback_secret"] == MASK and SECRET_VALUE not in mine["postback_url"]
    assert mine["postback_url"] == "https://aff.example/pb?cid={click_id}&payout={payout}&status={status}&token=****"
    assert listed[manager.ids["other_affiliate"]]["postback_secret"] is None
    assert listed[manager.ids["other_affiliate"]]["postback_triggers"] == ["approved"]  # the default

    rotated = (await api.post(f"/api/v1/affiliates/{affiliate_id}/rotate-postback-secret")).json()
    assert rotated["postback_secret"] not in (None, SIGNING_SECRET) and len(rotated["postback_secret"]) >= 32
    cleared = await api.patch(
        f"/api/v1/affiliates/{affiliate_id}",
        json={"postback_url": None, "postback_triggers": None, "postback_secret": None},
    )
    assert cleared.status_code == 200, cleared.text
    assert (cleared.json()["postback_url"], cleared.json()["postback_secret"]) == (None, None)
    assert cleared.json()["postback_triggers"] == ["approved"]
    created = await api.post(
        "/api/v1/affiliates", json={"name": "New", "postback_url": TEMPLATE, "postback_triggers": []}
    )
    assert created.status_code == 201, created.text
    assert created.json()["postback_triggers"] == []  # nothing fires: the postback is off, the template kept


BAD_TEMPLATES = {
    "ftp://aff.example/pb": "http:// or https://",
    "javascript:alert(1)//": "http:// or https://",
    "https://{aff_id}.aff.example/pb": "host or port",
    "https://aff.example:{txid}/pb": "host or port",
    "https://aff.example/pb?x=1\r\nX-Injected: yes": "control characters",
    "https://aff.example/pb?x=1\nHost: evil.example": "control characters",
    "https://aff.example/pb?x=a b": "spaces",
    "https://aff.example/pb?x={nope}": "unknown macro",
    "https://user:pw@aff.example/pb": "user name or password",
    "https://aff.example/pb?x={p:bad/name}": "click parameter",
}


@pytest.mark.parametrize("template", sorted(BAD_TEMPLATES))
async def test_a_bad_template_is_a_422_with_its_reason_and_changes_nothing(manager: Manager, template: str) -> None:
    api = await manager.api("admin")
    affiliate_id, offer_id = manager.ids["affiliate"], manager.ids["offer"]
    await set_postback(api, affiliate_id)
    reason = BAD_TEMPLATES[template]
    for reply in (
        await api.patch(f"/api/v1/affiliates/{affiliate_id}", json={"postback_url": template, "name": "Renamed"}),
        await api.post("/api/v1/affiliates", json={"name": "Bad", "postback_url": template}),
        await api.put(f"/api/v1/offers/{offer_id}/overrides/{affiliate_id}", json={"postback_url": template}),
    ):
        assert reply.status_code == 422, reply.text
        assert reason in reply.json()["detail"][0]["msg"], reply.text
    stored = await affiliate_row(manager)
    assert (stored.postback_url, stored.name) == (TEMPLATE, "Mine")
    assert (await api.get(f"/api/v1/offers/{offer_id}/overrides")).json() == []
    names = [a["name"] for a in (await api.get("/api/v1/affiliates")).json()["items"]]
    assert "Bad" not in names


async def test_bad_triggers_and_secrets_are_refused(manager: Manager) -> None:
    api = await manager.api("admin")
    path = f"/api/v1/affiliates/{manager.ids['affiliate']}"
    unknown = await api.patch(path, json={"postback_triggers": ["approved", "everything"]})
    assert unknown.status_code == 422 and "unknown postback trigger" in unknown.text
    for secret in ("short", "with a space in the middle", "x" * 129, "line\nbreak-and-more-chars"):
        assert (await api.patch(path, json={"postback_secret": secret})).status_code == 422, secret
    stored = await affiliate_row(manager)
    assert (stored.postback_triggers, stored.postback_secret) == (None, None)


async def test_an_override_takes_its_own_postback_url(manager: Manager) -> None:
    api = await manager.api("manager")
    offer_id, affiliate_id = manager.ids["offer"], manager.ids["affiliate"]
    url = "https://offer-pb.example/c?tx={txid}&s={p:clickid}"
    put = await api.put(f"/api/v1/offers/{offer_id}/overrides/{affiliate_id}", json={"postback_url": url})
    assert put.status_code == 200, put.text
    assert put.json()["postback_url"] == url
    cleared = await api.put(f"/api/v1/offers/{offer_id}/overrides/{affiliate_id}", json={"daily_cap": 5})
    assert cleared.json()["postback_url"] is None  # a PUT replaces the override's terms

    staff = await manager.as_role("admin")
    bad = await staff.post(
        f"/offers/{offer_id}/overrides",
        data=form(staff, affiliate_id=str(affiliate_id), postback_url="https://{aff_id}.example/"),
    )
    assert bad.status_code == 422 and "host or port" in bad.text
    good = await staff.post(
        f"/offers/{offer_id}/overrides", data=form(staff, affiliate_id=str(affiliate_id), postback_url=url)
    )
    assert good.status_code == 303, good.text
    page = (await staff.get(f"/offers/{offer_id}")).text
    assert "https://offer-pb.example/c?tx={txid}&amp;s={p:clickid}" in page


async def test_a_conversions_deliveries_show_the_url_as_sent_with_its_secrets_masked(manager: Manager) -> None:
    staff = await manager.api("manager")
    await set_postback(staff, manager.ids["affiliate"], postback_secret=SIGNING_SECRET)
    conversion_id = await add_conversion(manager, "affiliate", "T1")
    sent = await approve_and_send(manager, staff, conversion_id)
    assert sent.url is not None and SECRET_VALUE in sent.url

    for client in (staff, await manager.api("affiliate")):
        reply = await client.get(f"/api/v1/conversions/{conversion_id}/deliveries")
        assert reply.status_code == 200, reply.text
        (row,) = reply.json()
        assert SECRET_VALUE not in reply.text and SIGNING_SECRET not in reply.text
        assert row["url"] == f"https://aff.example/pb?cid=click-T1&payout=7.250000&status=approved&token={MASK}"
        assert row["template"].endswith(f"&token={MASK}") and "{click_id}" in row["template"]
        assert (row["kind"], row["trigger"], row["state"], row["last_status"], row["attempts"]) == (
            "conversion", "approved", "delivered", 200, 1)  # fmt: skip
        assert row["last_error"] is None and row["next_attempt_at"] is None and row["created_at"]


async def test_staff_redeliver_as_a_new_pending_row_with_the_same_template_and_values(manager: Manager) -> None:
    staff = await manager.api("admin")
    await set_postback(staff, manager.ids["affiliate"])
    conversion_id = await add_conversion(manager, "affiliate", "T2")
    sent = await approve_and_send(manager, staff, conversion_id)

    reply = await staff.post(f"/api/v1/deliveries/{sent.id}/redeliver")
    assert reply.status_code == 201, reply.text
    again = reply.json()
    assert again["id"] != sent.id and (again["kind"], again["state"], again["attempts"]) == ("redelivery", "pending", 0)
    assert again["url"] is None and again["next_attempt_at"] is not None
    first, second = await deliveries(manager)
    assert second.key != first.key and second.kind == "redelivery"
    same = ("conversion_id", "affiliate_id", "trigger", "template", "click_id", "values")
    assert {name: getattr(second, name) for name in same} == {name: getattr(first, name) for name in same}
    assert second.next_attempt_at <= second.created_at  # due at once
    assert len((await staff.get(f"/api/v1/conversions/{conversion_id}/deliveries")).json()) == 2
    # a second redelivery is another row again: each request its own key
    assert (await staff.post(f"/api/v1/deliveries/{sent.id}/redeliver")).status_code == 201
    assert len({row.key for row in await deliveries(manager)}) == 3
    assert (await staff.post("/api/v1/deliveries/999999/redeliver")).status_code == 404


async def test_an_affiliate_sees_and_tests_its_own_postback(manager: Manager) -> None:
    staff = await manager.api("manager")
    affiliate_id = manager.ids["affiliate"]
    own = await manager.api("affiliate")
    seen = (await own.get(f"/api/v1/affiliates/{affiliate_id}/postback")).json()
    assert seen == {
        "affiliate_id": affiliate_id, "postback_url": None, "postback_triggers": ["approved"], "signed": False,
        "deliveries": []}  # fmt: skip
    none_yet = await own.post(f"/api/v1/affiliates/{affiliate_id}/postback/test")
    assert none_yet.status_code == 409 and "no postback URL" in none_yet.json()["detail"]

    await set_postback(staff, affiliate_id, postback_secret=SIGNING_SECRET, postback_triggers=["pending", "approved"])
    reply = await own.post(f"/api/v1/affiliates/{affiliate_id}/postback/test")
    assert reply.status_code == 201, reply.text
    test = reply.json()
    assert (test["kind"], test["trigger"], test["state"], test["conversion_id"]) == ("test", "test", "pending", None)
    (row,) = await deliveries(manager)
    assert row.template == TEMPLATE and row.click_id is None and row.affiliate_id == affiliate_id
    assert row.values["click_id"] == "TEST-CLICK-ID" and row.values["event"] == "test"
    assert row.values["aff_id"] == affiliate_id
    waiting = await own.post(f"/api/v1/affiliates/{affiliate_id}/postback/test")
    assert waiting.status_code == 409 and "still waiting" in waiting.text

    seen = (await own.get(f"/api/v1/affiliates/{affiliate_id}/postback")).json()
    assert seen["signed"] is True and seen["postback_triggers"] == ["pending", "approved"]
    assert seen["postback_url"].endswith(f"&token={MASK}") and [d["id"] for d in seen["deliveries"]] == [row.id]
    assert SECRET_VALUE not in str(seen) and SIGNING_SECRET not in str(seen)

    # staff may test any affiliate's; each test is a row of its own once the last one was sent
    async with manager.sessions() as session:
        await session.execute(update(PostbackDelivery).values(state="delivered"))
        await session.commit()
    assert (await staff.post(f"/api/v1/affiliates/{affiliate_id}/postback/test")).status_code == 201
    assert len({row.key for row in await deliveries(manager)}) == 2


async def test_pages_show_masked_urls_never_the_secrets(manager: Manager) -> None:
    """Browser-free: the HTML of the conversion, the affiliate's postback page and the affiliate listing."""
    api = await manager.api("manager")
    affiliate_id = manager.ids["affiliate"]
    await set_postback(api, affiliate_id, postback_secret=SIGNING_SECRET)
    conversion_id = await add_conversion(manager, "affiliate", "T3")
    sent = await approve_and_send(manager, api, conversion_id)
    masked_url = f"https://aff.example/pb?cid=click-T3&amp;payout=7.250000&amp;status=approved&amp;token={MASK}"

    staff, own = await manager.as_role("manager"), await manager.as_role("affiliate")
    for client in (staff, own):
        page = await client.get(f"/conversions/{conversion_id}")
        assert page.status_code == 200 and masked_url in page.text
        assert SECRET_VALUE not in page.text and SIGNING_SECRET not in page.text
    assert f'action="/deliveries/{sent.id}/redeliver"' in (await staff.get(f"/conversions/{conversion_id}")).text
    assert "/redeliver" not in (await own.get(f"/conversions/{conversion_id}")).text

    mine = await own.get("/postback")
    assert mine.status_code == 200 and masked_url in mine.text and "Send a test postback" in mine.text
    assert SECRET_VALUE not in mine.text and SIGNING_SECRET not in mine.text
    assert f'action="/affiliates/{affiliate_id}/postback/test"' in mine.text and 'name="csrf_token"' in mine.text
    assert 'href="/postback"' in mine.text  # in the affiliate's navigation
    tested = await own.post(f"/affiliates/{affiliate_id}/postback/test", data=form(own))
    assert tested.status_code == 303 and tested.headers["location"] == "/postback"
    assert "queued" in (await own.get("/postback")).text

    listing = (await staff.get("/affiliates")).text
    assert SIGNING_SECRET not in listing and SECRET_VALUE not in listing and MASK in listing
    detail = (await staff.get(f"/affiliates/{affiliate_id}")).text
    assert SIGNING_SECRET in detail  # staff only: the affiliate's own page is staff-only

    redelivered = await staff.post(
        f"/deliveries/{sent.id}/redeliver", data=form(staff, back=f"/conversions/{conversion_id}")
    )
    assert redelivered.status_code == 303 and redelivered.headers["location"] == f"/conversions/{conversion_id}"
    offsite = await staff.post(f"/deliveries/{sent.id}/redeliver", data=form(staff, back="//evil.example/"))
    assert offsite.headers["location"] == f"/conversions/{conversion_id}"


async def test_the_affiliate_form_saves_checks_and_generates(manager: Manager) -> None:
    staff = await manager.as_role("admin")
    affiliate_id = manager.ids["affiliate"]
    path = f"/affiliates/{affiliate_id}/postback"
    bad = await staff.post(path, data=form(staff, postback_url="https://aff.example/pb\r\nX: y", secret_action="keep"))
    assert bad.status_code == 422 and "control characters" in bad.text
    assert (await affiliate_row(manager)).postback_url is None

    saved = await staff.post(
        path,
        data={
            **form(staff, postback_url=TEMPLATE, secret_action="set", postback_secret=SIGNING_SECRET),
            "postback_triggers": ["approved", "reversal"],
        },
    )
    assert saved.status_code == 303, saved.text
    stored = await affiliate_row(manager)
    assert (stored.postback_url, stored.postback_triggers, stored.postback_secret) == (
        TEMPLATE, "approved,reversal", SIGNING_SECRET)  # fmt: skip

    kept = await staff.post(path, data=form(staff, postback_url=TEMPLATE, postback_triggers="approved"))
    assert kept.status_code == 303 and (await affiliate_row(manager)).postback_secret == SIGNING_SECRET
    generated = await staff.post(path, data=form(staff, postback_url=TEMPLATE, secret_action="generate"))
    assert generated.status_code == 303
    new = (await affiliate_row(manager)).postback_secret
    assert new is not None and new != SIGNING_SECRET and len(new) >= 32
    assert (await staff.post(path, data=form(staff, secret_action="remove"))).status_code == 303
    stored = await affiliate_row(manager)
    assert (stored.postback_url, stored.postback_triggers, stored.postback_secret) == (None, "", None)
    short = await staff.post(path, data=form(staff, secret_action="set", postback_secret="short"))
    assert short.status_code == 422 and "postback_secret" in short.text
