"""`adclick links` and `adclick bench-links` as a user runs them (real processes), beside the manager on one database
and one Redis: one writer of link configs, ids from the database only, and links the reconciler keeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from adclick.core.db.models import Advertiser, Affiliate, Link, Offer
from adclick.core.publisher import rebuild, serving_configs
from sqlalchemy import func, select
from support.manager import Manager, announced

pytestmark = pytest.mark.anyio

URL = "https://shop.example/lp?cid={click_id}&s1={sub1}"


def cli_env(manager: Manager) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADCLICK_")}
    return {**env, "ADCLICK_DATABASE_URL": manager.settings.database_url, "ADCLICK_REDIS_URL": manager.redis.url}


async def adclick(
    manager: Manager, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`adclick ARGS` in a process of its own, on the manager's database and Redis."""
    argv = [sys.executable, "-m", "adclick.cli", *args]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, input=stdin, capture_output=True, text=True, env=env or cli_env(manager), timeout=120, check=False
        )

    return await anyio.to_thread.run_sync(run)


async def put(manager: Manager, slug: str, *args: str, stdin: str | None = None) -> dict[str, Any]:
    done = await adclick(manager, "links", "put", slug, *args, stdin=stdin)
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def owners(manager: Manager) -> list[str]:
    return ["--offer", str(manager.ids["offer"]), "--affiliate", str(manager.ids["affiliate"])]


async def manager_link(manager: Manager, slug: str) -> dict[str, Any]:
    """A link made through the manager's JSON API, as staff or a script would."""
    link = await manager.create_link(await manager.api("manager"), slug, url=URL)
    assert link["live"] is True
    return link


def redis_configs(manager: Manager) -> dict[str, Any]:
    with manager.redis.client() as client:
        keys = sorted(client.scan_iter(match="adclick:link:*"))
        return {key.removeprefix("adclick:link:"): json.loads(client.get(key)) for key in keys}


async def database_configs(manager: Manager) -> dict[str, Any]:
    """What trackers should serve for every link, as the manager computes it from the database."""
    async with manager.sessions() as session:
        return {config["slug"]: config for config in await serving_configs(session)}


async def link_rows(manager: Manager) -> int:
    async with manager.sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(Link)) or 0)


async def test_cli_and_manager_links_never_share_an_id_and_both_survive_the_reconciler(manager: Manager) -> None:
    # Before, the CLI counted ids in Redis from 1 and the manager in the database from 1: the first of each clashed.
    made = {
        "cli-a": (await put(manager, "cli-a", URL, *owners(manager)))["id"],
        "mgr-b": (await manager_link(manager, "mgr-b"))["id"],
        "cli-c": (await put(manager, "cli-c", URL, *owners(manager)))["id"],
        "mgr-d": (await manager_link(manager, "mgr-d"))["id"],
    }
    assert len(set(made.values())) == 4, made
    async with manager.sessions() as session:
        rows = {link.slug: link.id for link in await session.scalars(select(Link))}
    assert rows == made  # every id is the database's

    published = redis_configs(manager)
    assert published == await database_configs(manager)
    assert {slug: config["id"] for slug, config in published.items()} == made

    result = await rebuild(manager.sessions, manager.redis.client())  # the manager's reconciler, one pass
    assert (result.links, result.written, result.deleted) == (4, 0, 0)
    assert redis_configs(manager) == published


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--offer", "999", "--affiliate", "AFFILIATE"], "offer 999 does not exist"),
        (["--offer", "OFFER", "--affiliate", "999"], "affiliate 999 does not exist"),
        (["--affiliate", "AFFILIATE"], "give --offer"),
        ([], "give --offer and --affiliate"),
    ],
)
async def test_put_without_an_existing_offer_or_affiliate_fails_and_writes_nothing(
    manager: Manager, options: list[str], named: str
) -> None:
    known = {"OFFER": str(manager.ids["offer"]), "AFFILIATE": str(manager.ids["affiliate"])}
    pubsub = manager.listen()
    done = await adclick(manager, "links", "put", "orphan", URL, *[known.get(option, option) for option in options])
    assert done.returncode == 2, done.stderr
    assert named in done.stderr and done.stdout == ""
    assert await link_rows(manager) == 0
    assert redis_configs(manager) == {}
    assert announced(pubsub) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad/slug", URL], "slug must match"),
        (["x" * 65, URL], "slug must match"),
        (["ok", "javascript:alert(1)"], "url"),
        (["ok", "ftp://files.example/{click_id}"], "url"),
        (["ok", URL, "--fallback", "not a url"], "fallback_url"),
        (["ok"], "a link needs a url or destinations, or an offer with a destination template"),
    ],
)
async def test_put_refuses_bad_input_and_writes_nothing(manager: Manager, args: list[str], message: str) -> None:
    done = await adclick(manager, "links", "put", *args, *owners(manager))
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "error" in done.stderr
    assert await link_rows(manager) == 0
    assert redis_configs(manager) == {}


async def test_put_replaces_a_link_in_place_keeping_its_id_and_announces_it(manager: Manager) -> None:
    first = await put(manager, "summer", URL, *owners(manager), "--fallback", "https://shop.example/", "--cookie")
    assert first["cookie"] is True and first["fallback_url"] == "https://shop.example/"
    assert first["offer_id"] == manager.ids["offer"] and first["affiliate_id"] == manager.ids["affiliate"]
    pubsub = manager.listen()

    # No --offer or --affiliate: the link keeps its own; every other field is replaced.
    second = await put(manager, "summer", "https://shop.example/new?c={click_id}", "--paused")
    assert second["id"] == first["id"]
    assert second["url"] == "https://shop.example/new?c={click_id}"
    assert second["status"] == "paused" and second["cookie"] is False and second["fallback_url"] is None
    assert (second["offer_id"], second["affiliate_id"]) == (first["offer_id"], first["affiliate_id"])
    assert announced(pubsub) == ["summer"]
    assert redis_configs(manager) == {"summer": second}
    assert await link_rows(manager) == 1

    # Another affiliate that exists: the link moves; one that does not: nothing changes.
    moved = await put(manager, "summer", URL, "--affiliate", str(manager.ids["other_affiliate"]))
    assert moved["affiliate_id"] == manager.ids["other_affiliate"] and moved["id"] == first["id"]
    refused = await adclick(manager, "links", "put", "summer", "https://elsewhere.example/", "--affiliate", "999")
    assert refused.returncode == 2 and "affiliate 999 does not exist" in refused.stderr
    assert redis_configs(manager) == {"summer": moved}


async def test_put_from_json_keeps_destinations_and_rules_and_refuses_a_foreign_id(
    manager: Manager, tmp_path: Path
) -> None:
    config: dict[str, Any] = {
        "v": 1,
        "slug": "ignored-the-argument-wins",
        "offer_id": 999,  # --offer overrides it
        "affiliate_id": manager.ids["affiliate"],
        "destinations": [
            {"url": "https://a.example/?c={click_id}", "weight": 70},
            {"url": "https://b.example/?c={click_id}", "weight": 30},
        ],
        "rules": [{"countries": ["US"], "url": "https://us.example/?c={click_id}"}],
        "expires_at": 4102444800,
    }
    stored = await put(manager, "rot", "--json", "-", "--offer", str(manager.ids["offer"]), stdin=json.dumps(config))
    assert stored["slug"] == "rot" and stored["offer_id"] == manager.ids["offer"]
    assert stored["destinations"] == config["destinations"]
    assert stored["rules"] == config["rules"]
    assert stored["expires_at"] == 4102444800
    assert "url" not in stored
    assert redis_configs(manager) == {"rot": stored}

    # What `links get` prints goes back in as it is, its id included; an id that is not the link's does not.
    got = await adclick(manager, "links", "get", "rot")
    path = tmp_path / "rot.json"
    path.write_text(got.stdout)
    assert (await put(manager, "rot", "--json", str(path)))["id"] == stored["id"]
    path.write_text(json.dumps({**json.loads(got.stdout), "id": stored["id"] + 1}))
    refused = await adclick(manager, "links", "put", "rot", "--json", str(path))
    assert refused.returncode == 2 and "ids come from the database" in refused.stderr
    fresh = await adclick(manager, "links", "put", "fresh", "--json", str(path))
    assert fresh.returncode == 2 and "ids come from the database" in fresh.stderr
    path.write_text(json.dumps({"v": 1, "url": URL, "weight": 3}))
    unknown = await adclick(manager, "links", "put", "rot", "--json", str(path))
    assert unknown.returncode == 2 and "unknown field(s) weight" in unknown.stderr
    assert redis_configs(manager) == {"rot": stored}
    assert await link_rows(manager) == 1


async def test_get_reads_the_database_and_says_whether_redis_holds_the_same_config(manager: Manager) -> None:
    link = await manager_link(manager, "made-in-manager")
    got = await adclick(manager, "links", "get", "made-in-manager")
    assert got.returncode == 0, got.stderr
    config = json.loads(got.stdout)
    assert config["id"] == link["id"] and config == redis_configs(manager)["made-in-manager"]
    assert "redis: live" in got.stderr

    with manager.redis.client() as client:
        client.set("adclick:link:made-in-manager", json.dumps({**config, "url": "https://tampered.example/"}))
    stale = await adclick(manager, "links", "get", "made-in-manager")
    assert json.loads(stale.stdout) == config and "redis: stale" in stale.stderr
    with manager.redis.client() as client:
        client.delete("adclick:link:made-in-manager")
    missing = await adclick(manager, "links", "get", "made-in-manager")
    assert json.loads(missing.stdout) == config and "redis: missing" in missing.stderr

    async with manager.sessions() as session:  # a paused offer: the config says so, and so does the command
        offer = await session.get(Offer, manager.ids["offer"])
        assert offer is not None
        offer.status = "paused"
        await session.commit()
    held = await adclick(manager, "links", "get", "made-in-manager")
    assert json.loads(held.stdout)["status"] == "paused" and "its offer is not active" in held.stderr

    nothing = await adclick(manager, "links", "get", "nope")
    assert nothing.returncode == 1 and nothing.stdout == "" and "no link 'nope'" in nothing.stderr


async def test_delete_removes_the_row_and_the_config_and_announces_it(manager: Manager) -> None:
    await put(manager, "gone", URL, *owners(manager))
    await manager_link(manager, "also-gone")
    pubsub = manager.listen()
    for slug in ("gone", "also-gone"):
        deleted = await adclick(manager, "links", "delete", slug)
        assert deleted.returncode == 0, deleted.stderr
        assert announced(pubsub) == [slug]
    assert redis_configs(manager) == {} and await link_rows(manager) == 0
    again = await adclick(manager, "links", "delete", "gone")
    assert again.returncode == 1 and "no link 'gone'" in again.stderr
    assert (await rebuild(manager.sessions, manager.redis.client())).written == 0


async def test_put_while_redis_is_down_saves_says_so_and_the_reconciler_publishes_it(manager: Manager) -> None:
    manager.redis.stop()
    done = await adclick(manager, "links", "put", "offline", URL, *owners(manager))
    assert done.returncode == 3
    assert "saved in the database" in done.stderr and json.loads(done.stdout)["slug"] == "offline"
    assert await link_rows(manager) == 1
    manager.redis.start()
    assert redis_configs(manager) == {}
    assert (await rebuild(manager.sessions, manager.redis.client())).written == 1
    assert redis_configs(manager) == await database_configs(manager)


async def bench_ids(manager: Manager, prefix: str = "bench-") -> dict[str, int]:
    async with manager.sessions() as session:
        rows = await session.execute(select(Link.slug, Link.id).where(Link.slug.startswith(prefix)))
        return {slug: link_id for slug, link_id in rows}


async def test_bench_links_twice_gives_the_same_links_and_ids_all_published(manager: Manager) -> None:
    mine = await manager_link(manager, "staff-link")
    first = await adclick(manager, "bench-links", "50")
    assert first.returncode == 0, first.stderr
    assert "bench links bench-0 .. bench-49: 50 created, 0 reused" in first.stdout
    ids = await bench_ids(manager)
    assert sorted(ids) == sorted(f"bench-{i}" for i in range(50))
    assert len(set(ids.values())) == 50 and mine["id"] not in ids.values()
    published = redis_configs(manager)
    assert published == await database_configs(manager)
    assert {slug: published[slug]["id"] for slug in ids} == ids
    assert all(published[slug]["status"] == "active" for slug in ids)

    async with manager.sessions() as session:  # on a bench advertiser, offer and affiliate of their own
        offer = await session.get(Offer, published["bench-0"]["offer_id"])
        affiliate = await session.get(Affiliate, published["bench-0"]["affiliate_id"])
        assert offer is not None and affiliate is not None
        advertiser = await session.get(Advertiser, offer.advertiser_id)
        assert advertiser is not None
        assert (offer.name, affiliate.name, advertiser.name) == ("Bench offer", "Bench affiliate", "Bench advertiser")
        assert offer.id != manager.ids["offer"] and affiliate.id != manager.ids["affiliate"]

    second = await adclick(manager, "bench-links", "50")
    assert second.returncode == 0, second.stderr
    assert "0 created, 50 reused" in second.stdout
    assert await bench_ids(manager) == ids
    assert redis_configs(manager) == published

    # Another URL: the same links and ids, every one serving it.
    new_url = "https://lp.example/bench?c={click_id}"
    third = await adclick(manager, "bench-links", "50", "--url", new_url)
    assert third.returncode == 0, third.stderr
    assert await bench_ids(manager) == ids
    now = redis_configs(manager)
    assert {now[slug]["url"] for slug in ids} == {new_url}
    assert {slug: now[slug]["id"] for slug in ids} == ids

    result = await rebuild(manager.sessions, manager.redis.client())
    assert (result.links, result.written, result.deleted) == (51, 0, 0)


async def test_bench_links_leave_other_links_alone(manager: Manager) -> None:
    await manager_link(manager, "bench-3")  # staff's, on a real offer
    taken = await adclick(manager, "bench-links", "5")
    assert taken.returncode == 2 and "bench-3" in taken.stderr and "another prefix" in taken.stderr
    assert await bench_ids(manager) == {"bench-3": (await database_configs(manager))["bench-3"]["id"]}

    other = await adclick(manager, "bench-links", "5", "--prefix", "lt-")
    assert other.returncode == 0, other.stderr
    assert len(await bench_ids(manager, "lt-")) == 5
    for args in (["0"], ["5", "--prefix", "bad/"], ["5", "--url", "javascript:alert(1)"]):
        refused = await adclick(manager, "bench-links", *args)
        assert refused.returncode == 2 and "error" in refused.stderr, args
    assert await link_rows(manager) == 6
