"""Country from the IP, end to end: a real tracker with the real country database, Redis and SQS endpoint."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from adclick.core.links import publish_link
from support.procs import wait_until
from support.roles import request
from support.servers import RedisServer, SqsServer
from support.tracker import UA_DESKTOP, TrackerProc, click_id_from, click_path, collect_events, geoip_database

URL = "https://shop.example/landing?cid={click_id}&c={country}"
US_URL = "https://us.example/landing?cid={click_id}&c={country}"
# Addresses whose country the pinned database (and any other) agrees on.
GOOGLE_DNS, UK_ADDRESS = "8.8.8.8", "81.2.69.142"


def geo_link(slug: str = "geo") -> dict[str, object]:
    """A link with a US rule: US clicks go to us.example, the others to shop.example."""
    return {"v": 1, "id": 42, "slug": slug, "offer_id": 7, "affiliate_id": 3, "url": URL,
            "rules": [{"countries": ["US"], "url": US_URL}]}  # fmt: skip


def through_proxy(tracker: TrackerProc, client_ip: str, **headers: str) -> str:
    """A click through the one trusted proxy, which saw `client_ip`; its Location."""
    reply = request(
        tracker.port,
        "GET",
        click_path("geo"),
        headers={"X-Forwarded-For": client_ip, "User-Agent": UA_DESKTOP, **headers},
    )
    assert reply.status == 302, reply
    assert reply.location is not None
    return reply.location


def test_a_us_address_without_a_cdn_header_gets_the_us_rule_and_a_cdn_header_still_wins(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    publish_link(redis_server.client(), geo_link())
    tracker = start_tracker(trusted_proxies=1, geoip_db=str(geoip_database()))

    us = through_proxy(tracker, GOOGLE_DNS)
    assert us.startswith("https://us.example/landing?cid=") and us.endswith("&c=US"), us
    # The trusted CDN header wins over the address.
    de = through_proxy(tracker, GOOGLE_DNS, **{"CloudFront-Viewer-Country": "DE"})
    assert de.startswith("https://shop.example/landing?cid=") and de.endswith("&c=DE"), de
    uk = through_proxy(tracker, UK_ADDRESS)
    assert uk.startswith("https://shop.example/") and uk.endswith("&c=GB"), uk
    # A documentation address has no country, whatever the file says of it.
    unknown = through_proxy(tracker, "192.0.2.7")
    assert unknown.startswith("https://shop.example/") and unknown.endswith("&c="), unknown

    locations = {"US": us, "DE": de, "GB": uk, None: unknown}
    events = {
        str(e["click_id"]): e
        for e in collect_events(sqs_server, clicks_queue, set(map(click_id_from, locations.values())))
    }
    for country, location in locations.items():
        event = events[click_id_from(location)]
        assert event.get("country") == country, event
    assert events[click_id_from(us)]["ip"] == GOOGLE_DNS

    m = tracker.metrics()
    assert (m["adclick_geoip_lookups_total"], m["adclick_geoip_hits_total"]) == (3, 2), "no lookup under a header"
    assert m["adclick_geoip_build_timestamp"] > 1_600_000_000
    assert (m["adclick_geoip_reloads_total"], m["adclick_geoip_reload_errors_total"]) == (0, 0)


def test_without_a_database_a_click_without_a_cdn_header_has_no_country_as_before(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, sqs_server: SqsServer, clicks_queue: str
) -> None:
    publish_link(redis_server.client(), geo_link())
    tracker = start_tracker(trusted_proxies=1, geoip_db="")
    plain = through_proxy(tracker, GOOGLE_DNS)
    assert plain.startswith("https://shop.example/") and plain.endswith("&c="), plain
    header = through_proxy(tracker, GOOGLE_DNS, **{"CF-IPCountry": "us"})
    assert header.startswith("https://us.example/") and header.endswith("&c=US"), header
    want = {click_id_from(plain), click_id_from(header)}
    events = {str(e["click_id"]): e for e in collect_events(sqs_server, clicks_queue, want)}
    assert events[click_id_from(plain)].get("country") is None
    assert events[click_id_from(header)]["country"] == "US"
    m = tracker.metrics()
    assert (m["adclick_geoip_lookups_total"], m["adclick_geoip_build_timestamp"]) == (0, 0)


def replace(path: Path, data: bytes) -> None:
    """A new version of the file, written beside it and renamed over it, as an update should be."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_replaced_file_is_read_again_and_a_corrupt_one_leaves_the_database_in_force(
    start_tracker: Callable[..., TrackerProc], redis_server: RedisServer, tmp_path: Path
) -> None:
    publish_link(redis_server.client(), geo_link())
    path = tmp_path / "country.mmdb"
    shutil.copyfile(geoip_database(), path)
    good = path.read_bytes()
    tracker = start_tracker(trusted_proxies=1, geoip_db=str(path), geoip_reload_seconds=1)
    assert through_proxy(tracker, GOOGLE_DNS).endswith("&c=US")

    replace(path, good)
    wait_until(lambda: tracker.metrics()["adclick_geoip_reloads_total"] == 1, timeout=15, message="the reload")
    replace(path, good[: len(good) // 2])
    wait_until(lambda: tracker.metrics()["adclick_geoip_reload_errors_total"] == 1, timeout=15, message="the refusal")
    assert "geoip WARNING" in tracker.output()
    assert through_proxy(tracker, GOOGLE_DNS).endswith("&c=US"), "the database read before stays in force"
    m = tracker.metrics()
    assert (m["adclick_geoip_reloads_total"], m["adclick_geoip_reload_errors_total"]) == (1, 1)


def test_a_database_that_cannot_be_read_stops_the_tracker_at_start(
    start_tracker: Callable[..., TrackerProc], tmp_path: Path
) -> None:
    refused = start_tracker(wait=False, geoip_db=str(tmp_path / "missing.mmdb"))
    assert refused.proc is not None and refused.proc.wait(30) != 0
    assert "missing.mmdb" in refused.output()
