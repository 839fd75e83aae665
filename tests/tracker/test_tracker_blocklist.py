"""The IP blocklist and ClickID flags, end to end: a real tracker, Redis and SQS endpoint, used over HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable

from adclick import _native
from adclick.core.links import INVALIDATE_CHANNEL, publish_link
from support.procs import wait_until, within_a_second
from support.roles import Reply, request
from support.servers import RedisServer, SqsServer
from support.tracker import UA_DESKTOP, UA_SLACKBOT, TrackerProc, click_id_from, click_path, collect_events, events_in

CODEC = _native.ClickIdCodec(1, b"dev-only-click-secret-change-me")
URL = "https://shop.example/landing?cid={click_id}&s1={sub1}"
FALLBACK = "https://fallback.example/?cid={click_id}"


def link(slug: str, link_id: int, **extra: object) -> dict[str, object]:
    return {"v": 1, "id": link_id, "slug": slug, "offer_id": 7, "affiliate_id": 3, "url": URL, **extra}


def set_blocklist(redis_server: RedisServer, cidrs: list[str], *, announce: bool = True) -> None:
    """What the manager does: write the whole list, then announce it on the invalidation channel."""
    client = redis_server.client()
    client.set(_native.IPBLOCK_KEY, json.dumps({"v": 1, "cidrs": cidrs}))
    if announce:
        client.publish(INVALIDATE_CHANNEL, _native.IPBLOCK_MESSAGE)


def proxied(tracker: TrackerProc, slug: str, client_ip: str, ua: str = UA_DESKTOP, **params: str) -> Reply:
    """A click through one trusted proxy that saw `client_ip`."""
    headers = {"X-Forwarded-For": client_ip, "User-Agent": ua}
    return request(tracker.port, "GET", click_path(slug, **params), headers=headers)


def click(tracker: TrackerProc, slug: str, client_ip: str, ua: str = UA_DESKTOP, **params: str) -> tuple[int, str]:
    """A click through one trusted proxy that saw `client_ip`: (status, Location or "")."""
    reply = proxied(tracker, slug, client_ip, ua, **params)
    return reply.status, reply.location or ""


def flags_of(location: str) -> tuple[int, int]:
    """(version, flags) of the ClickID in a location; verifying it proves the flags were sealed by the tracker."""
    version, _key_id, _ts_ms, _link_id, flags = CODEC.verify(click_id_from(location))
    return version, flags


def test_a_blocked_address_gets_the_fallback_its_event_says_blocked_and_unblocking_takes_under_a_second(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    client = redis_server.client()
    publish_link(client, link("summer", 42, fallback_url=FALLBACK))
    publish_link(client, link("nofb", 43))
    tracker = start_tracker(trusted_proxies=1)
    assert click(tracker, "summer", "203.0.113.9")[1].startswith("https://shop.example/"), "nothing blocked yet"

    set_blocklist(redis_server, ["203.0.113.0/24", "2001:db8::/32", "198.51.100.7"])
    within_a_second(
        lambda: click(tracker, "summer", "203.0.113.10")[1].startswith("https://fallback.example/"),
        message="the published blocklist in force",
    )

    status, blocked = click(tracker, "summer", "203.0.113.9", sub1="blocked")
    assert status == 302 and blocked.startswith("https://fallback.example/?cid=")
    assert flags_of(blocked) == (2, _native.FLAG_BLOCKED)
    status, blocked_v6 = click(tracker, "summer", "2001:db8::5")
    assert status == 302 and flags_of(blocked_v6) == (2, _native.FLAG_BLOCKED)
    status, blocked_bot = click(tracker, "summer", "198.51.100.7", ua=UA_SLACKBOT)
    assert status == 302 and flags_of(blocked_bot) == (2, _native.FLAG_BLOCKED | _native.FLAG_BOT)
    # A link without a fallback: 403, and the click is recorded all the same.
    reply = proxied(tracker, "nofb", "203.0.113.9")
    assert reply.status == 403 and "location" not in reply.headers

    # Unblocked addresses, the blocked one's neighbours among them, are served as ever; a bot's ClickID says bot.
    status, human = click(tracker, "summer", "198.51.100.8", sub1="human")
    assert status == 302 and human.startswith("https://shop.example/landing?cid=") and human.endswith("&s1=human")
    assert flags_of(human) == (1, 0)
    status, bot = click(tracker, "summer", "192.0.2.1", ua=UA_SLACKBOT)
    assert status == 302 and bot.startswith("https://shop.example/landing?cid=")
    assert flags_of(bot) == (2, _native.FLAG_BOT)

    cids = {click_id_from(loc) for loc in (blocked, blocked_v6, blocked_bot, human, bot)}
    events = {str(e["click_id"]): e for e in collect_events(sqs_server, clicks_queue, cids)}
    event = events[click_id_from(blocked)]
    assert (event["blocked"], event["fallback"], event["bot"]) == (True, True, False)
    assert (event["ip"], event["sub1"], event["link_id"]) == ("203.0.113.9", "blocked", 42)
    assert events[click_id_from(blocked_v6)]["blocked"] is True
    assert (events[click_id_from(blocked_bot)]["blocked"], events[click_id_from(blocked_bot)]["bot"]) == (True, True)
    assert "blocked" not in events[click_id_from(human)], "the field is written only when true"
    assert events[click_id_from(bot)]["bot"] is True and "blocked" not in events[click_id_from(bot)]
    refused = [e for e in events.values() if e["link_id"] == 43]
    assert len(refused) == 1 and refused[0]["blocked"] is True and refused[0]["fallback"] is False
    assert CODEC.verify(str(refused[0]["click_id"]))[4] == _native.FLAG_BLOCKED

    m = tracker.metrics()
    assert m['adclick_click_requests_total{outcome="blocked"}'] == 5  # the wait's clicks, 3 above, and the 403
    assert m["adclick_ipblock_entries"] == 3 and m["adclick_ipblock_loaded"] == 1
    assert m["adclick_ipblock_invalid_total"] == 0

    # Taking the network off the list serves its addresses again within a second.
    set_blocklist(redis_server, ["2001:db8::/32", "198.51.100.7"])
    within_a_second(
        lambda: click(tracker, "summer", "203.0.113.9")[1].startswith("https://shop.example/"),
        message="the address served again",
    )
    assert flags_of(click(tracker, "summer", "203.0.113.9")[1]) == (1, 0)
    assert click(tracker, "summer", "2001:db8::5")[1].startswith("https://fallback.example/")
    assert tracker.metrics()["adclick_ipblock_entries"] == 2


def test_blocked_action_403_from_the_list_read_at_startup_and_a_bad_list_keeps_the_last_good_one(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    publish_link(redis_server.client(), link("summer", 42, fallback_url=FALLBACK))
    set_blocklist(redis_server, ["203.0.113.0/24"], announce=False)
    tracker = start_tracker(trusted_proxies=1, blocked_action="403")
    # Ready means the list has been read: the very first click is checked against it.
    reply = proxied(tracker, "summer", "203.0.113.9")
    assert reply.status == 403 and "location" not in reply.headers and "set-cookie" not in reply.headers
    status, served = click(tracker, "summer", "203.0.114.9")
    assert status == 302 and served.startswith("https://shop.example/")

    # A value no tracker can read (a typo, a format from the future) changes nothing, and is counted.
    redis_server.client().set(_native.IPBLOCK_KEY, json.dumps({"v": 1, "cidrs": ["203.0.113.0/24", "no-such-ip"]}))
    redis_server.client().publish(INVALIDATE_CHANNEL, _native.IPBLOCK_MESSAGE)
    wait_until(lambda: tracker.metrics()["adclick_ipblock_invalid_total"] == 1, timeout=2, message="the bad list")
    assert click(tracker, "summer", "203.0.113.9")[0] == 403
    assert tracker.metrics()["adclick_ipblock_entries"] == 1

    bodies: list[str] = []

    def both_refused_clicks_shipped() -> bool:
        bodies.extend(sqs_server.drain(clicks_queue))
        return sum(1 for e in events_in(bodies) if e.get("blocked")) >= 2

    wait_until(both_refused_clicks_shipped, timeout=30, interval=0.2, message="both refused clicks in SQS")
    refused = [e for e in events_in(bodies) if e.get("blocked")]
    assert len(refused) == 2
    for event in refused:
        assert (event["fallback"], event["ip"], event["link_id"]) == (False, "203.0.113.9", 42)
        assert CODEC.verify(str(event["click_id"]))[4] == _native.FLAG_BLOCKED
    assert tracker.metrics()['adclick_click_requests_total{outcome="blocked"}'] == 2
