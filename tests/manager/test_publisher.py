"""What trackers serve follows the whole campaign: a link is served only while it, its offer, the offer's advertiser
and its affiliate are active; and the reconciler never undoes a write published while it runs."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from adclick.core import publisher
from adclick.core.db.models import Advertiser, Affiliate, Link, Offer
from adclick.core.publisher import link_config, rebuild
from sqlalchemy import select, update
from support.manager import Manager, announced, form

pytestmark = pytest.mark.anyio

PARENTS = {"offer": Offer, "affiliate": Affiliate, "advertiser": Advertiser}


def stored(manager: Manager, slug: str) -> Any:
    raw = manager.redis.client().get(f"adclick:link:{slug}")
    return None if raw is None else json.loads(raw)


async def make_link(manager: Manager, slug: str, **fields: Any) -> dict[str, Any]:
    defaults = {"url": "https://shop.example/?c={click_id}", "fallback_url": "https://shop.example/paused"}
    link = await manager.create_link(await manager.api("manager"), slug, **{**defaults, **fields})
    assert link["live"] is True
    return link


def parent_id(manager: Manager, kind: str) -> int:
    return manager.ids[kind]


@pytest.mark.parametrize("kind", ["offer", "affiliate", "advertiser"])
async def test_pausing_a_parent_pauses_its_links_in_redis_and_resuming_restores_them(
    manager: Manager, kind: str
) -> None:
    await make_link(manager, "mine")
    await make_link(manager, "own-pause")
    await make_link(manager, "elsewhere", affiliate_id=manager.ids["other_affiliate"])
    api = await manager.api("manager")
    assert (await api.post(f"/api/v1/links/{stored(manager, 'own-pause')['id']}/pause")).status_code == 200
    pubsub = manager.listen()

    paused = await api.patch(f"/api/v1/{kind}s/{parent_id(manager, kind)}", json={"status": "paused"})
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused" and paused.json()["live"] is True
    affected = {"mine", "own-pause"} | ({"elsewhere"} if kind != "affiliate" else set())
    for slug in affected:
        assert stored(manager, slug)["status"] == "paused", slug
    assert set(announced(pubsub)) == affected
    if kind == "affiliate":
        assert stored(manager, "elsewhere")["status"] == "active"

    # archiving a paused parent changes nothing trackers serve: nothing is republished
    archived = await api.patch(f"/api/v1/{kind}s/{parent_id(manager, kind)}", json={"status": "archived"})
    assert archived.status_code == 200 and archived.json()["live"] is None
    assert set(announced(pubsub)) == set()

    resumed = await api.patch(f"/api/v1/{kind}s/{parent_id(manager, kind)}", json={"status": "active"})
    assert resumed.status_code == 200 and resumed.json()["live"] is True
    assert stored(manager, "mine")["status"] == "active"
    assert stored(manager, "own-pause")["status"] == "paused"  # its own pause stands
    assert set(announced(pubsub)) == affected

    # a rename changes nothing trackers serve
    renamed = await api.patch(f"/api/v1/{kind}s/{parent_id(manager, kind)}", json={"name": "Renamed"})
    assert renamed.status_code == 200 and renamed.json()["live"] is None
    assert set(announced(pubsub)) == set()


async def test_moving_an_offer_to_a_paused_advertiser_pauses_its_links(manager: Manager) -> None:
    await make_link(manager, "mine")
    api = await manager.api("manager")
    other = await api.post("/api/v1/advertisers", json={"name": "Closed", "status": "paused"})
    moved = await api.patch(f"/api/v1/offers/{manager.ids['offer']}", json={"advertiser_id": other.json()["id"]})
    assert moved.status_code == 200 and moved.json()["live"] is True
    assert stored(manager, "mine")["status"] == "paused"


async def test_a_link_made_or_edited_under_a_paused_offer_is_published_paused(manager: Manager) -> None:
    api = await manager.api("manager")
    await api.patch(f"/api/v1/offers/{manager.ids['offer']}", json={"status": "paused"})
    link = await make_link(manager, "late")
    assert link["status"] == "active"  # the link's own status
    assert stored(manager, "late")["status"] == "paused"
    await api.patch(f"/api/v1/links/{link['id']}", json={"url": "https://shop.example/new"})
    assert stored(manager, "late")["status"] == "paused"
    await api.post(f"/api/v1/links/{link['id']}/resume")
    assert stored(manager, "late")["status"] == "paused"


@pytest.mark.parametrize("kind", ["offer", "affiliate", "advertiser"])
async def test_status_changes_in_the_pages_republish_the_links(manager: Manager, kind: str) -> None:
    await make_link(manager, "mine")
    client = await manager.as_role("manager")
    pubsub = manager.listen()
    fields = {"offer": {"name": "Summer", "currency": "USD"}, "affiliate": {"name": "Mine"}}.get(kind, {"name": "Shop"})
    page = f"/{kind}s/{parent_id(manager, kind)}"
    reply = await client.post(page, data=form(client, status="paused", **fields))
    assert reply.status_code == 303, reply.text
    assert "saved and live" in (await client.get(page)).text
    assert stored(manager, "mine")["status"] == "paused"
    assert set(announced(pubsub)) == {"mine"}
    link_page = (await client.get(f"/links/{stored(manager, 'mine')['id']}")).text
    assert f"paused: its {kind} is not active" in link_page and "live: trackers serve this version" in link_page

    reply = await client.post(page, data=form(client, status="active", **fields))
    assert stored(manager, "mine")["status"] == "active"


async def test_a_status_change_while_redis_is_down_commits_says_not_live_and_the_reconciler_catches_up(
    manager: Manager,
) -> None:
    await make_link(manager, "mine")
    api = await manager.api("manager")
    client = await manager.as_role("manager")
    manager.redis.stop(save=True)  # its data comes back on start
    paused = await api.patch(f"/api/v1/offers/{manager.ids['offer']}", json={"status": "paused"})
    assert paused.status_code == 200 and paused.json()["live"] is False
    reply = await client.post(
        f"/affiliates/{manager.ids['affiliate']}", data=form(client, name="Mine", status="paused")
    )
    assert reply.status_code == 303
    assert "Saved, not yet live" in (await client.get(reply.headers["location"])).text
    async with manager.sessions() as session:
        assert (await session.get(Offer, manager.ids["offer"])).status == "paused"  # type: ignore[union-attr]
        assert (await session.get(Affiliate, manager.ids["affiliate"])).status == "paused"  # type: ignore[union-attr]

    manager.redis.start()
    assert stored(manager, "mine")["status"] == "active"
    result = await rebuild(manager.sessions, manager.redis.client())
    assert result.written == 1
    assert stored(manager, "mine")["status"] == "paused"


@pytest.mark.parametrize("kind", ["offer", "affiliate", "advertiser"])
async def test_the_reconciler_computes_the_same_status(manager: Manager, kind: str) -> None:
    link = await make_link(manager, "mine")
    async with manager.sessions() as session:  # behind the manager's back: only the reconciler can notice
        model = PARENTS[kind]
        await session.execute(update(model).where(model.id == parent_id(manager, kind)).values(status="archived"))
        await session.commit()
    redis = manager.redis.client()
    assert (await rebuild(manager.sessions, redis)).written == 1
    held = stored(manager, "mine")
    async with manager.sessions() as session:
        row = await session.get(Link, link["id"])
        assert row is not None
        assert held == link_config(row, parents_active=False)
        await session.execute(update(model).where(model.id == parent_id(manager, kind)).values(status="active"))
        await session.commit()
    assert (await rebuild(manager.sessions, redis)).written == 1
    assert stored(manager, "mine") == link_config(row, parents_active=True)
    # what the write path publishes and what the reconciler publishes are the same: nothing left to write
    api = await manager.api("manager")
    await api.patch(f"/api/v1/{kind}s/{parent_id(manager, kind)}", json={"status": "paused"})
    assert (await rebuild(manager.sessions, redis)).written == 0


async def test_an_affiliate_can_pause_no_offer_affiliate_or_advertiser(manager: Manager) -> None:
    await make_link(manager, "mine")
    api = await manager.api("affiliate")
    browser = await manager.as_role("affiliate")
    for kind in ("offer", "affiliate", "advertiser"):
        path = f"/{kind}s/{parent_id(manager, kind)}"
        assert (await api.patch(f"/api/v1{path}", json={"status": "paused"})).status_code == 403
        assert (await browser.post(path, data=form(browser, name="X", status="paused"))).status_code == 403
    assert stored(manager, "mine")["status"] == "active"
    async with manager.sessions() as session:
        statuses = [(await session.get(PARENTS[kind], parent_id(manager, kind))).status for kind in PARENTS]  # type: ignore[union-attr]
    assert statuses == ["active"] * 3


# -- links that follow their offer's destination template --

OFFER_TEMPLATE = "https://offer.example/lp?cid={click_id}&aff={aff_id}"


async def test_a_link_without_a_url_follows_its_offers_template_and_one_with_its_own_keeps_it(
    manager: Manager,
) -> None:
    api = await manager.api("manager")
    offer = f"/api/v1/offers/{manager.ids['offer']}"
    no_url = {"offer_id": manager.ids["offer"], "affiliate_id": manager.ids["affiliate"], "slug": "follows"}
    refused = await api.post("/api/v1/links", json=no_url)  # the seeded offer has no template yet
    assert refused.status_code == 422 and "destination template" in str(refused.json()["detail"])
    assert (await api.patch(offer, json={"destination_template": OFFER_TEMPLATE})).status_code == 200

    follows = await make_link(manager, "follows", url=None)
    assert follows["url"] is None and follows["follows_offer_template"] is True
    own = await make_link(manager, "own")
    assert own["follows_offer_template"] is False
    assert stored(manager, "follows")["url"] == OFFER_TEMPLATE
    own_config = stored(manager, "own")

    pubsub = manager.listen()
    changed = "https://offer.example/v2?cid={click_id}"
    reply = await api.patch(offer, json={"destination_template": changed})
    assert reply.status_code == 200 and reply.json()["live"] is True
    assert stored(manager, "follows")["url"] == changed
    assert stored(manager, "own") == own_config
    assert set(announced(pubsub)) == {"follows"}  # only the link that follows it is announced
    # what the write path published is what the reconciler computes: nothing left to write
    assert (await rebuild(manager.sessions, manager.redis.client())).written == 0

    # a template no link could serve is refused, and so is taking it away while a link follows it
    bad = await api.patch(offer, json={"destination_template": "https://{sub1}.example/"})
    assert bad.status_code == 422
    cleared = await api.patch(offer, json={"destination_template": None})
    assert cleared.status_code == 422 and "1 link(s) follow it" in str(cleared.json()["detail"])
    assert (await api.get(offer)).json()["destination_template"] == changed
    assert stored(manager, "follows")["url"] == changed and set(announced(pubsub)) == set()

    # given a URL of its own, the link stops following; given none again, it follows once more
    mine = await api.patch(f"/api/v1/links/{follows['id']}", json={"url": "https://mine.example/"})
    assert mine.json()["follows_offer_template"] is False
    await api.patch(offer, json={"destination_template": OFFER_TEMPLATE})
    assert stored(manager, "follows")["url"] == "https://mine.example/"
    back = await api.patch(f"/api/v1/links/{follows['id']}", json={"url": None})
    assert back.status_code == 200 and back.json()["follows_offer_template"] is True
    assert stored(manager, "follows")["url"] == OFFER_TEMPLATE


async def test_an_offer_template_changed_while_redis_is_down_commits_says_not_live_and_the_reconciler_catches_up(
    manager: Manager,
) -> None:
    api = await manager.api("manager")
    client = await manager.as_role("manager")
    offer = manager.ids["offer"]
    await api.patch(f"/api/v1/offers/{offer}", json={"destination_template": OFFER_TEMPLATE})
    await make_link(manager, "follows", url=None)
    manager.redis.stop(save=True)
    changed = "https://offer.example/v2?cid={click_id}"
    reply = await api.patch(f"/api/v1/offers/{offer}", json={"destination_template": changed})
    assert reply.status_code == 200 and reply.json()["live"] is False
    page = await client.post(
        f"/offers/{offer}", data=form(client, name="Summer", currency="USD", destination_template=changed + "&x=1")
    )
    assert page.status_code == 303
    assert "Saved, not yet live" in (await client.get(page.headers["location"])).text

    manager.redis.start()
    assert stored(manager, "follows")["url"] == OFFER_TEMPLATE
    assert (await rebuild(manager.sessions, manager.redis.client())).written == 1
    assert stored(manager, "follows")["url"] == changed + "&x=1"


# -- the reconciler and writes published while it runs --


def during_rebuild(monkeypatch: pytest.MonkeyPatch, write: Callable[[], Awaitable[None]]) -> None:
    """Run `write` (through the manager, so it commits and publishes) after the rebuild read the database and
    before it writes Redis: exactly the window in which the reconciler used to undo it."""
    snapshot = publisher._snapshot

    async def snapshot_then_write(sessions: Any) -> Any:
        taken = await snapshot(sessions)
        await write()
        return taken

    monkeypatch.setattr(publisher, "_snapshot", snapshot_then_write)


@pytest.mark.parametrize("force", [False, True])
async def test_a_pause_published_during_a_rebuild_stands(
    manager: Manager, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    await make_link(manager, "mine")
    api = await manager.api("manager")

    async def pause_offer() -> None:
        reply = await api.patch(f"/api/v1/offers/{manager.ids['offer']}", json={"status": "paused"})
        assert reply.json()["live"] is True and stored(manager, "mine")["status"] == "paused"

    during_rebuild(monkeypatch, pause_offer)
    result = await rebuild(manager.sessions, manager.redis.client(), force=force)
    assert stored(manager, "mine")["status"] == "paused"
    assert (result.written, result.kept_newer) == (0, 1)
    monkeypatch.undo()
    assert (await rebuild(manager.sessions, manager.redis.client())).written == 0  # and the database agrees


async def test_an_edit_and_a_delete_published_during_a_rebuild_stand(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited, deleted = await make_link(manager, "edited"), await make_link(manager, "deleted")
    api = await manager.api("manager")
    redis = manager.redis.client()

    async def edit_and_delete() -> None:
        reply = await api.patch(f"/api/v1/links/{edited['id']}", json={"url": "https://shop.example/new"})
        assert reply.json()["live"] is True
        assert (await api.delete(f"/api/v1/links/{deleted['id']}")).status_code == 204

    during_rebuild(monkeypatch, edit_and_delete)
    result = await rebuild(manager.sessions, redis)
    assert stored(manager, "edited")["url"] == "https://shop.example/new"
    assert stored(manager, "deleted") is None
    assert (result.written, result.deleted, result.kept_newer) == (0, 0, 2)


async def test_a_link_created_during_a_rebuild_is_no_stray(manager: Manager, monkeypatch: pytest.MonkeyPatch) -> None:
    async def create() -> None:
        await make_link(manager, "new")

    during_rebuild(monkeypatch, create)
    result = await rebuild(manager.sessions, manager.redis.client())
    assert stored(manager, "new") is not None and (result.deleted, result.kept_newer) == (0, 1)


async def test_a_token_rotated_during_a_rebuild_stays_revoked(
    manager: Manager, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = await manager.api("manager")
    advertiser = manager.ids["advertiser"]
    redis = manager.redis.client()

    async def rotate() -> None:
        assert (await api.post(f"/api/v1/advertisers/{advertiser}/rotate-token")).json()["token_version"] == 2

    during_rebuild(monkeypatch, rotate)
    await rebuild(manager.sessions, redis, force=True)
    assert json.loads(redis.get(f"adclick:advertiser:{advertiser}")) == {"token_version": 2}


async def test_a_slow_writer_with_an_older_version_does_not_undo_a_newer_one(manager: Manager) -> None:
    """Two writers of one link: the one that read the database later wins, whatever order their writes land in."""
    await make_link(manager, "mine")
    redis = manager.redis.client()
    async with manager.sessions() as session:
        row = await session.scalar(select(Link).where(Link.slug == "mine"))
        assert row is not None
        old = link_config(row, parents_active=True)
    older, newer = publisher._next_version(redis), publisher._next_version(redis)
    new = {**old, "url": "https://shop.example/newer"}
    assert publisher._set_links(redis, newer, [("mine", new)]) == [True]
    assert publisher._set_links(redis, older, [("mine", old)]) == [False]
    assert publisher._set_links(redis, older, [("mine", None)]) == [False]
    assert stored(manager, "mine") == new
    # a delete leaves its version behind, so an older write cannot bring the link back
    deleted = publisher._next_version(redis)
    assert publisher._set_links(redis, deleted, [("mine", None)]) == [True]
    assert publisher._set_links(redis, newer, [("mine", new)]) == [False]
    assert stored(manager, "mine") is None and 0 < redis.ttl("adclick:link_version:mine") <= publisher.TOMBSTONE_SECONDS
