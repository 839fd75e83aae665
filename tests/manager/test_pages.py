"""Campaign pages: escaping, links saved while Redis is down, the reconciler, affiliates' view, QR codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import anyio
import pytest
from adclick.core.db.models import Link, Offer, User
from adclick.core.publisher import link_config, rebuild
from sqlalchemy import select, update
from support.manager import TRACKER, Manager, form, manager_settings

pytestmark = pytest.mark.anyio

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


async def test_a_script_in_a_name_renders_escaped_on_list_and_detail_pages(manager: Manager) -> None:
    client = await manager.as_role("admin")
    made = {}
    for kind in ("advertisers", "affiliates"):
        reply = await client.post(f"/{kind}", data=form(client, name=SCRIPT))
        assert reply.status_code == 303, reply.text
        made[kind] = reply.headers["location"]
    offer = await client.post(
        "/offers", data=form(client, name=SCRIPT, advertiser_id=str(manager.ids["advertiser"]), currency="usd")
    )
    assert offer.status_code == 303, offer.text
    link = await client.post(
        "/links",
        data=manager.link_form(
            client, offer_id=offer.headers["location"].rsplit("/", 1)[1], url="https://shop.example/?q=<script>"
        ),
    )
    assert link.status_code == 303, link.text
    pages = ["/advertisers", "/affiliates", "/offers", "/links", made["advertisers"], made["affiliates"]]
    pages += [offer.headers["location"], link.headers["location"], f"/offers/{manager.ids['offer']}"]
    for page in pages:
        html = (await client.get(page)).text
        assert SCRIPT not in html and "<script>alert" not in html, page
        assert ESCAPED in html or "?q=&lt;script&gt;" in html, page
    # a failed form shows what was typed, escaped too
    bad = await client.post("/affiliates", data=form(client, name=SCRIPT, email="<script>@x"))
    assert bad.status_code == 422 and "<script>@x" not in bad.text


async def test_a_link_saved_while_redis_is_down_is_committed_not_yet_live_then_rebuilt(
    manager: Manager, database_url: str
) -> None:
    client = await manager.as_role("manager")
    manager.redis.stop()
    reply = await client.post(
        "/links", data=manager.link_form(client, slug="offline", url="https://shop.example/?c={click_id}")
    )
    assert reply.status_code == 303, reply.text
    page = await client.get(reply.headers["location"])
    assert "Saved, not yet live" in page.text and "Redis could not be reached" in page.text
    async with manager.sessions() as session:
        saved = await session.scalar(select(Link).where(Link.slug == "offline"))
    assert saved is not None and saved.template == "https://shop.example/?c={click_id}"

    manager.redis.start()
    redis = manager.redis.client()
    assert redis.get("adclick:link:offline") is None
    redis.set("adclick:link:stray", json.dumps({"v": 1, "id": 999, "slug": "stray", "url": "https://x.example/"}))
    env = {**os.environ, "ADCLICK_DATABASE_URL": database_url, "ADCLICK_REDIS_URL": manager.redis.url}
    with anyio.fail_after(60):
        done = await anyio.run_process([sys.executable, "-m", "adclick.cli", "cache-rebuild"], env=env, check=False)
    assert done.returncode == 0, done.stderr.decode()
    assert "1 stray keys deleted" in done.stdout.decode()
    assert json.loads(redis.get("adclick:link:offline")) == link_config(saved, parents_active=True)
    assert redis.get("adclick:link:stray") is None
    assert "live: trackers serve this version" in (await client.get(reply.headers["location"])).text


async def test_the_managers_reconciler_publishes_what_redis_missed(manager: Manager, database_url: str) -> None:
    from adclick.core.db.session import create_engine, session_factory
    from adclick.manager.app import create_app

    engine = create_engine(database_url)
    app = create_app(
        manager_settings(database_url, manager.redis.url, manager_reconcile_seconds=0.2),
        sessions=session_factory(engine),
    )
    try:
        async with app.router.lifespan_context(app):
            async with manager.sessions() as session:
                link = Link(
                    slug="late",
                    offer_id=manager.ids["offer"],
                    affiliate_id=manager.ids["affiliate"],
                    template="https://shop.example/",
                    config={},
                )
                session.add(link)
                await session.commit()
            redis = manager.redis.client()
            for _ in range(50):
                if redis.get("adclick:link:late") is not None:
                    break
                await asyncio.sleep(0.1)
            assert json.loads(redis.get("adclick:link:late")) == link_config(link, parents_active=True)
    finally:
        await engine.dispose()


async def test_rebuild_writes_only_what_differs_unless_forced(manager: Manager) -> None:
    api = await manager.api("manager")
    for slug in ("one", "two"):
        await manager.create_link(api, slug, url="https://s.example/")
    redis = manager.redis.client()
    redis.set("adclick:link:two", "{}")
    result = await rebuild(manager.sessions, redis)
    assert (result.links, result.written, result.deleted) == (2, 1, 0)
    assert json.loads(redis.get("adclick:link:two"))["slug"] == "two"
    assert (await rebuild(manager.sessions, redis, force=True)).written == 2


async def test_an_affiliate_sees_only_its_own_links(manager: Manager) -> None:
    api = await manager.api("manager")
    mine, theirs = [], []
    for affiliate, bucket in ((manager.ids["affiliate"], mine), (manager.ids["other_affiliate"], theirs)):
        for n in range(2):
            bucket.append(
                await manager.create_link(api, f"a{affiliate}n{n}", affiliate_id=affiliate, url="https://s.example/")
            )
    affiliate = await manager.as_role("affiliate")
    listing = (await affiliate.get("/links")).text
    assert all(link["slug"] in listing for link in mine) and not any(link["slug"] in listing for link in theirs)
    # asking for the other affiliate's links by filter changes nothing
    filtered = (await affiliate.get(f"/links?affiliate_id={manager.ids['other_affiliate']}")).text
    assert not any(link["slug"] in filtered for link in theirs)
    api_list = (await affiliate.get(f"/api/v1/links?affiliate_id={manager.ids['other_affiliate']}")).json()
    assert sorted(item["slug"] for item in api_list["items"]) == sorted(link["slug"] for link in mine)
    for link in theirs:
        for path in (f"/links/{link['id']}", f"/links/{link['id']}/qr.svg", f"/api/v1/links/{link['id']}"):
            assert (await affiliate.get(path)).status_code == 404, path
    own = await affiliate.get(f"/links/{mine[0]['id']}")
    assert own.status_code == 200 and f"{TRACKER}/c/{mine[0]['slug']}" in own.text
    assert 'action="/links/' not in own.text  # read-only: no edit, pause or delete forms
    affiliate_api = await manager.api("affiliate")
    assert (await affiliate_api.get("/api/v1/advertisers")).status_code == 403
    assert (await affiliate_api.post(f"/api/v1/links/{mine[0]['id']}/pause")).status_code == 403


async def test_an_affiliate_user_without_an_affiliate_sees_no_links(manager: Manager) -> None:
    """An affiliate user whose affiliate id is gone (a row edited by hand) is confined to nothing, not widened to
    every affiliate's links."""
    api = await manager.api("manager")
    theirs = await manager.create_link(
        api, "theirs1", affiliate_id=manager.ids["other_affiliate"], url="https://s.example/"
    )
    link_id = theirs["id"]
    affiliate = await manager.as_role("affiliate")
    affiliate_api = await manager.api("affiliate")
    async with manager.sessions() as session:
        await session.execute(update(User).where(User.id == manager.ids["affiliate_user"]).values(affiliate_id=None))
        await session.commit()
    assert "theirs1" not in (await affiliate.get("/links")).text
    assert "theirs1" not in (await affiliate.get(f"/links?affiliate_id={manager.ids['other_affiliate']}")).text
    assert (await affiliate_api.get("/api/v1/links")).json()["items"] == []
    for path in (f"/links/{link_id}", f"/links/{link_id}/qr.svg", f"/api/v1/links/{link_id}"):
        assert (await affiliate.get(path)).status_code == 404, path
    assert (await affiliate_api.get(f"/api/v1/links/{link_id}")).status_code == 404
    assert (await affiliate_api.get("/api/v1/advertisers")).status_code == 403


async def test_link_page_offers_a_copyable_tracking_url_and_a_qr_code(manager: Manager) -> None:
    client = await manager.as_role("manager")
    reply = await client.post(
        "/links",
        data=manager.link_form(
            client,
            destinations="70 https://a.example/?c={click_id}\n30 https://b.example/",
            rules='[{"countries": ["US"], "url": "https://us.example/"}]',
            cookie="on",
        ),
    )
    assert reply.status_code == 303, reply.text
    page = await client.get(reply.headers["location"])
    link_id = reply.headers["location"].rsplit("/", 1)[1]
    async with manager.sessions() as session:
        link = await session.get(Link, int(link_id))
    assert link is not None and link.config["cookie"] is True and len(link.config["destinations"]) == 2
    url = f"{TRACKER}/c/{link.slug}"
    assert f'data-copy="{url}"' in page.text and "Saved and live" not in page.text
    qr = await client.get(f"/links/{link_id}/qr.svg")
    assert qr.status_code == 200 and qr.headers["content-type"].startswith("image/svg+xml")
    assert qr.text.lstrip().startswith("<svg") and "<script" not in qr.text
    bad = await client.post(f"/links/{link_id}", data=manager.link_form(client, url="https://x.example/{nope}"))
    assert bad.status_code == 422 and "unknown macro {nope}" in bad.text


async def test_ids_and_page_numbers_beyond_their_columns_are_a_clear_422_on_every_page(manager: Manager) -> None:
    admin = await manager.as_role("admin")
    too_big = "99999999999999999999"
    reads = ["advertisers", "affiliates", "offers", "links", "users"]
    paths = [f"/{kind}/{too_big}" for kind in reads] + [f"/links/{too_big}/qr.svg"]
    paths += [f"/{kind}?page={too_big}" for kind in reads] + [
        f"/links?offer_id={too_big}",
        f"/links?affiliate_id={too_big}",
    ]
    for path in paths:
        reply = await admin.get(path)
        assert reply.status_code == 422 and "less than or equal to" in reply.text, (path, reply.status_code)
    writes = [f"/{kind}/{too_big}" for kind in ("advertisers", "affiliates", "offers", "links", "users")]
    writes += [f"/links/{too_big}/pause", f"/offers/{too_big}/delete", f"/tokens/{too_big}/delete"]
    writes += [f"/offers/{manager.ids['offer']}/overrides/{too_big}/delete"]
    for path in writes:
        reply = await admin.post(path, data=form(admin))
        assert reply.status_code == 422, (path, reply.status_code)
    for path in (f"/advertisers/{2**31 - 1}", f"/links/{2**40 - 1}", f"/users/{2**31 - 1}"):
        assert (await admin.get(path)).status_code == 404, path
    override = await admin.post(
        f"/offers/{manager.ids['offer']}/overrides", data=form(admin, affiliate_id=too_big, payout_model="cpa")
    )
    assert override.status_code == 422 and "choose an affiliate" in override.text


async def test_the_offer_form_checks_its_destination_template_and_a_link_form_left_blank_follows_it(
    manager: Manager,
) -> None:
    client = await manager.as_role("manager")
    offer_page = f"/offers/{manager.ids['offer']}"
    terms = {"name": "Summer", "currency": "USD"}
    page = (await client.get(offer_page)).text
    assert 'name="destination_template"' in page and "{click_id} {link_id} {offer_id}" in page  # macro help

    bad = await client.post(offer_page, data=form(client, destination_template="https://{click_id}.example/", **terms))
    assert bad.status_code == 422 and "destination_template: " in bad.text and "scheme, host or port" in bad.text
    created = await client.post(
        "/offers",
        data=form(
            client, advertiser_id=str(manager.ids["advertiser"]), destination_template="ftp://x.example/", **terms
        ),
    )
    assert created.status_code == 422 and "destination_template: " in created.text
    async with manager.sessions() as session:
        offers = (await session.scalars(select(Offer))).all()
    assert [offer.destination_template for offer in offers] == [None]  # nothing saved

    template = "https://shop.example/lp?cid={click_id}&s1={sub1}"
    saved = await client.post(offer_page, data=form(client, destination_template=template, **terms))
    assert saved.status_code == 303, saved.text
    assert "https://shop.example/lp?cid={click_id}&amp;s1={sub1}" in (await client.get(offer_page)).text

    new_link = (await client.get(f"/links/new?offer_id={manager.ids['offer']}")).text
    assert "Blank: serve the offer's destination template" in new_link
    assert "https://shop.example/lp?cid={click_id}&amp;s1={sub1}" in new_link
    made = await client.post("/links", data=manager.link_form(client, slug="blank"))
    assert made.status_code == 303, made.text
    assert json.loads(manager.redis.client().get("adclick:link:blank"))["url"] == template
    assert "the offer's template" in (await client.get(made.headers["location"])).text

    changed = "https://shop.example/v2?cid={click_id}"
    again = await client.post(offer_page, data=form(client, destination_template=changed, **terms))
    assert again.status_code == 303
    assert "saved and live" in (await client.get(offer_page)).text
    assert json.loads(manager.redis.client().get("adclick:link:blank"))["url"] == changed
    # emptying the field would leave the link nothing to serve: refused, with the reason on the form
    emptied = await client.post(offer_page, data=form(client, destination_template="", **terms))
    assert emptied.status_code == 422 and "1 link(s) follow it" in emptied.text
