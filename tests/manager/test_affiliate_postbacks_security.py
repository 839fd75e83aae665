"""What an affiliate user may not do with postbacks, on PostgreSQL and SQLite: see another affiliate's deliveries,
redeliver, test another affiliate's postback, or set a template; and what a template may not smuggle in (HTML, SQL,
CR/LF). Every refusal changes nothing."""

from __future__ import annotations

import httpx
import pytest
from adclick.core.db.models import Affiliate, PostbackDelivery
from sqlalchemy import func, select
from support.manager import Manager, form
from test_affiliate_postbacks import SECRET_VALUE, TEMPLATE, add_conversion, approve_and_send, set_postback

pytestmark = pytest.mark.anyio


async def count_deliveries(manager: Manager) -> int:
    async with manager.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(PostbackDelivery)) or 0)


async def templates(manager: Manager) -> dict[int, str | None]:
    async with manager.sessions() as session:
        return {row.id: row.postback_url for row in await session.execute(select(Affiliate.id, Affiliate.postback_url))}


async def both_clients(manager: Manager, role: str) -> tuple[httpx.AsyncClient, httpx.AsyncClient]:
    """The role's user with an API token, and signed in with a browser session (CSRF token at hand)."""
    return await manager.api(role), await manager.as_role(role)


async def test_an_affiliate_cannot_see_another_affiliates_deliveries(manager: Manager) -> None:
    staff = await manager.api("admin")
    for key in ("affiliate", "other_affiliate"):
        await set_postback(staff, manager.ids[key])
    theirs = await add_conversion(manager, "other_affiliate", "THEIRS")
    sent = await approve_and_send(manager, staff, theirs)
    assert (await staff.get(f"/api/v1/conversions/{theirs}/deliveries")).json()[0]["id"] == sent.id

    api, browser = await both_clients(manager, "affiliate")
    reply = await api.get(f"/api/v1/conversions/{theirs}/deliveries")
    assert reply.status_code == 404 and "click-THEIRS" not in reply.text
    page = await browser.get(f"/conversions/{theirs}")
    assert page.status_code == 404 and "click-THEIRS" not in page.text
    other = manager.ids["other_affiliate"]
    for reply in (
        await api.get(f"/api/v1/affiliates/{other}/postback"),
        await browser.get(f"/affiliates/{other}/postback"),
    ):
        assert reply.status_code == 403 and "click-THEIRS" not in reply.text
    # its own postback page lists its own deliveries only
    own = (await api.get(f"/api/v1/affiliates/{manager.ids['affiliate']}/postback")).json()
    assert own["deliveries"] == []
    assert "click-THEIRS" not in (await browser.get("/postback")).text


async def test_an_affiliate_cannot_redeliver(manager: Manager) -> None:
    staff = await manager.api("admin")
    await set_postback(staff, manager.ids["affiliate"])
    mine = await add_conversion(manager, "affiliate", "MINE")
    sent = await approve_and_send(manager, staff, mine)
    api, browser = await both_clients(manager, "affiliate")
    assert (await api.post(f"/api/v1/deliveries/{sent.id}/redeliver")).status_code == 403
    refused = await browser.post(f"/deliveries/{sent.id}/redeliver", data=form(browser))
    assert refused.status_code == 403
    assert await count_deliveries(manager) == 1


async def test_an_affiliate_cannot_test_another_affiliates_postback(manager: Manager) -> None:
    staff = await manager.api("admin")
    other = manager.ids["other_affiliate"]
    await set_postback(staff, other)
    api, browser = await both_clients(manager, "affiliate")
    assert (await api.post(f"/api/v1/affiliates/{other}/postback/test")).status_code == 403
    assert (await browser.post(f"/affiliates/{other}/postback/test", data=form(browser))).status_code == 403
    assert (await api.post("/api/v1/affiliates/999999/postback/test")).status_code == 403  # existing or not
    assert await count_deliveries(manager) == 0


async def test_an_affiliate_cannot_set_templates_triggers_or_secrets(manager: Manager) -> None:
    staff = await manager.api("admin")
    mine, offer = manager.ids["affiliate"], manager.ids["offer"]
    await set_postback(staff, mine)
    before = await templates(manager)
    api, browser = await both_clients(manager, "affiliate")
    evil = "https://evil.example/steal?c={click_id}"
    for reply in (
        await api.patch(f"/api/v1/affiliates/{mine}", json={"postback_url": evil}),
        await api.patch(f"/api/v1/affiliates/{mine}", json={"postback_triggers": ["pending"]}),
        await api.post(f"/api/v1/affiliates/{mine}/rotate-postback-secret"),
        await api.put(f"/api/v1/offers/{offer}/overrides/{mine}", json={"postback_url": evil}),
        await api.post("/api/v1/affiliates", json={"name": "Mine too", "postback_url": evil}),
        await browser.post(f"/affiliates/{mine}/postback", data=form(browser, postback_url=evil)),
        await browser.post(f"/offers/{offer}/overrides", data=form(browser, affiliate_id=str(mine), postback_url=evil)),
    ):
        assert reply.status_code == 403, reply.text
    assert await templates(manager) == before
    assert (await api.get(f"/api/v1/affiliates/{mine}")).status_code == 403  # nor read the secret


async def test_posts_need_the_csrf_token(manager: Manager) -> None:
    staff = await manager.api("admin")
    mine = manager.ids["affiliate"]
    await set_postback(staff, mine)
    sent = await approve_and_send(manager, staff, await add_conversion(manager, "affiliate", "CSRF"))
    affiliate, admin = await manager.as_role("affiliate"), await manager.as_role("admin")
    refused = [
        await affiliate.post(f"/affiliates/{mine}/postback/test", data={}),
        await affiliate.post(f"/affiliates/{mine}/postback/test", data={"csrf_token": "x" * 43}),
        await affiliate.post(f"/api/v1/affiliates/{mine}/postback/test"),  # the cookie alone is no authority
        await admin.post(f"/deliveries/{sent.id}/redeliver", data={}),
        await admin.post(f"/api/v1/deliveries/{sent.id}/redeliver"),
        await admin.post(f"/affiliates/{mine}/postback", data={"postback_url": "https://evil.example/"}),
    ]
    assert [reply.status_code for reply in refused] == [403] * len(refused)
    assert await count_deliveries(manager) == 1 and (await templates(manager))[mine] == TEMPLATE
    ok = await affiliate.post(
        f"/api/v1/affiliates/{mine}/postback/test",
        headers={"X-CSRF-Token": affiliate.csrf},  # type: ignore[attr-defined]
    )
    assert ok.status_code == 201, ok.text


SCRIPT = "<script>alert(1)</script>"
SQL = "';DROP/**/TABLE/**/affiliates;--"  # a space would be refused: no whitespace in a URL


async def test_html_and_sql_in_a_template_are_inert_data_shown_escaped(manager: Manager) -> None:
    """Neither is a URL's business, but neither breaks one: stored as typed (parameters, never SQL text), rendered
    escaped on every page, and the affiliates table is still there."""
    staff = await manager.api("admin")
    mine = manager.ids["affiliate"]
    template = f"https://aff.example/pb?x={SCRIPT}&q={SQL}&c={{click_id}}"
    body = await set_postback(staff, mine, postback_url=template)
    assert body["postback_url"] == template
    conversion_id = await add_conversion(manager, "affiliate", "HTML")
    await approve_and_send(manager, staff, conversion_id)
    assert (await templates(manager))[mine] == template  # the table survived, the text is as typed

    admin, affiliate = await manager.as_role("admin"), await manager.as_role("affiliate")
    pages = [(admin, "/affiliates"), (admin, f"/affiliates/{mine}"), (admin, f"/affiliates/{mine}/postback")]
    pages += [(affiliate, "/postback"), (affiliate, f"/conversions/{conversion_id}")]
    for client, path in pages:
        html = (await client.get(path)).text
        assert "<script>alert" not in html, path
        assert "&lt;script&gt;" in html or "%3Cscript%3E" in html, path
    # a name typed into the form comes back escaped too
    bad = await admin.post(f"/affiliates/{mine}/postback", data=form(admin, postback_url=f"{SCRIPT}https://x/"))
    assert bad.status_code == 422 and "<script>alert" not in bad.text


@pytest.mark.parametrize("newline", ["\r\n", "\n", "\r", "%0d%0a\r"])
async def test_cr_or_lf_anywhere_in_a_template_is_refused(manager: Manager, newline: str) -> None:
    staff = await manager.api("admin")
    mine, offer = manager.ids["affiliate"], manager.ids["offer"]
    template = f"https://aff.example/pb?c={{click_id}}{newline}X-Injected: 1&token={SECRET_VALUE}"
    replies = [
        await staff.patch(f"/api/v1/affiliates/{mine}", json={"postback_url": template}),
        await staff.put(f"/api/v1/offers/{offer}/overrides/{mine}", json={"postback_url": template}),
        await staff.post("/api/v1/affiliates", json={"name": "Split", "postback_url": template}),
    ]
    assert [reply.status_code for reply in replies] == [422, 422, 422]
    assert all("control characters" in reply.text for reply in replies)
    assert (await templates(manager))[mine] is None
