"""What an affiliate network needs every day (issue 17), through the whole running system over HTTP.

Every role runs as a real process; the affiliate's own server is a real HTTP receiver on 127.0.0.1. Staff set the
campaign up through the manager's API, a visitor clicks, the advertiser posts the conversion back, and the
affiliate's server is told, carrying the traffic source's own click id that came in on the click.
"""

from __future__ import annotations

import http.server
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from adclick.core.settings import DEFAULT_POSTBACK_SECRET
from adclick.core.tokens import make_token
from support.procs import ProcessGuard, wait_until
from support.roles import request
from support.seeding import seed_campaign_api
from support.system import System
from support.tracker import UA_IPHONE, geoip_database


class Receiver(http.server.ThreadingHTTPServer):
    """The affiliate's postback endpoint: keeps every query it gets."""

    def __init__(self) -> None:
        self.queries: list[dict[str, str]] = []
        self.headers_seen: list[dict[str, str]] = []
        got = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.urlsplit(self.path).query
                got.queries.append(dict(urllib.parse.parse_qsl(query, keep_blank_values=True)))
                got.headers_seen.append(dict(self.headers))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def system(process_guard: ProcessGuard, adclick_env: dict[str, str], database_url: str) -> System:
    running = System(
        process_guard,
        adclick_env,
        database_url,
        affiliate_postback_allow_private="true",  # the affiliate's server is on this machine
        affiliate_postback_first_retry_seconds="0.5",
        geoip_db=str(geoip_database()),  # what `make dev` points the tracker at
        trusted_proxies=1,  # behind the ALB of the EKS set-up: the client's address is in X-Forwarded-For
    )
    running.start()
    return running


def click(system: System, path: str, **headers: str) -> tuple[int, str]:
    reply = request(system.tracker.port, "GET", path, headers={"User-Agent": UA_IPHONE, **headers})
    return reply.status, reply.location or ""


def test_a_sources_click_id_is_forwarded_and_comes_back_in_the_affiliates_postback_with_the_payout(
    system: System, receiver: Receiver
) -> None:
    campaign = seed_campaign_api(
        system.api,
        offer={"payout_amount": "3.50", "revenue_amount": "5.00", "default_status": "approved"},
        affiliate={"name": "Network partner"},
    )
    template = f"http://127.0.0.1:{receiver.port}/pb?src={{p:clickid}}&payout={{payout}}&tx={{txid}}&s={{status}}"
    system.api("PATCH", f"/api/v1/affiliates/{campaign.affiliate_id}", {"postback_url": template})
    link = {
        "offer_id": campaign.offer_id,
        "affiliate_id": campaign.affiliate_id,
        "slug": "net-1",
        "url": "https://shop.example/lp?cid={click_id}&src={p:clickid}",
    }
    assert system.api("POST", "/api/v1/links", link)["live"] is True
    wait_until(lambda: click(system, "/c/net-1")[0] == 302, timeout=30, message="/c/net-1 served")

    # The traffic source's own click id rides on the click and is forwarded to the offer.
    status, location = click(system, "/c/net-1?clickid=abc&sub1=s")
    assert status == 302
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert query["src"] == "abc"
    click_id = query["cid"]

    # The advertiser's postback: the worker stores the conversion and tells the affiliate, once, with `abc`.
    token = make_token(DEFAULT_POSTBACK_SECRET, campaign.advertiser_id, 1)
    postback = urllib.parse.urlencode({"token": token, "click_id": click_id, "txid": "NET-1", "status": "approved"})
    assert request(system.postback.port, "GET", f"/postback?{postback}").status == 200
    wait_until(lambda: len(receiver.queries) >= 1, timeout=60, message="the affiliate's postback")
    wait_until(lambda: conversions(system, "NET-1"), timeout=30, message="the conversion in the manager")
    (conversion,) = conversions(system, "NET-1")
    assert conversion["status"] == "approved"
    deliveries_url = f"/api/v1/conversions/{conversion['id']}/deliveries"
    wait_until(
        lambda: [d["state"] for d in system.api("GET", deliveries_url)] == ["delivered"],
        timeout=30,
        message="the delivery recorded as delivered",
    )
    (delivery,) = system.api("GET", deliveries_url)
    (got,) = receiver.queries
    assert got["src"] == "abc" and got["tx"] == "NET-1" and got["s"] == "approved"
    assert Decimal(got["payout"]) == Decimal("3.50")
    assert receiver.headers_seen[0]["X-Adclick-Delivery"] == str(delivery["id"])
    assert delivery["trigger"] == "approved" and delivery["last_status"] == 200


def conversions(system: System, txid: str) -> list[dict[str, object]]:
    return list(system.api("GET", f"/api/v1/conversions?txid={txid}")["items"])


def test_a_click_from_a_us_address_without_cdn_headers_gets_the_us_rule(system: System) -> None:
    campaign = seed_campaign_api(system.api, affiliate={"name": "Geo partner"})
    link = {
        "offer_id": campaign.offer_id,
        "affiliate_id": campaign.affiliate_id,
        "slug": "net-geo",
        "url": "https://shop.example/lp?cid={click_id}&c={country}",
        "rules": [{"countries": ["US"], "url": "https://us.example/lp?cid={click_id}&c={country}"}],
    }
    assert system.api("POST", "/api/v1/links", link)["live"] is True
    wait_until(lambda: click(system, "/c/net-geo")[0] == 302, timeout=30, message="/c/net-geo served")

    # No CDN header, as behind the ALB: the country comes from the address the proxy saw.
    status, location = click(system, "/c/net-geo", **{"X-Forwarded-For": "8.8.8.8"})
    assert status == 302 and location.startswith("https://us.example/lp?cid=") and location.endswith("&c=US")
    status, location = click(system, "/c/net-geo", **{"X-Forwarded-For": "81.2.69.142"})  # a UK address
    assert status == 302 and location.startswith("https://shop.example/lp?cid=") and location.endswith("&c=GB")


def test_a_capped_offers_next_click_gets_the_fallback_and_counts_as_capped(system: System) -> None:
    # The backup: another offer's tracking link, where the capped offer's traffic goes (and is counted) meanwhile.
    backup = seed_campaign_api(
        system.api, offer={"name": "Backup"}, affiliate={"name": "Capped partner"}, link={"slug": "net-backup"}
    )
    fallback = f"http://127.0.0.1:{system.tracker.port}/c/net-backup?sub1={{sub1}}"
    offer = {
        "advertiser_id": backup.advertiser_id,
        "name": "Capped",
        "daily_cap": 1,
        "cap_fallback_url": fallback,
        "default_status": "approved",
    }
    offer_id = int(system.api("POST", "/api/v1/offers", offer)["id"])
    link = {
        "offer_id": offer_id,
        "affiliate_id": backup.affiliate_id,
        "slug": "net-cap",
        "url": "https://cap.example/?cid={click_id}",
    }
    assert system.api("POST", "/api/v1/links", link)["live"] is True
    wait_until(lambda: click(system, "/c/net-cap")[0] == 302, timeout=30, message="/c/net-cap served")

    status, location = click(system, "/c/net-cap?sub1=s1")
    assert status == 302 and location.startswith("https://cap.example/?cid=")
    click_id = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["cid"][0]
    # The one conversion the day's cap allows: the worker stores it and moves the offer's links to the fallback.
    token = make_token(DEFAULT_POSTBACK_SECRET, backup.advertiser_id, 1)
    postback = urllib.parse.urlencode({"token": token, "click_id": click_id, "txid": "CAP-1"})
    assert request(system.postback.port, "GET", f"/postback?{postback}").status == 200
    wait_until(
        lambda: click(system, "/c/net-cap?sub1=s2") == (302, fallback.replace("{sub1}", "s2")),
        timeout=60,
        message="the capped offer's clicks sent to its cap fallback",
    )
    # The fallback is the backup offer's link: the visitor lands there, as a click of that offer.
    assert click(system, "/c/net-backup?sub1=s2") == (302, "https://shop.example/")
    assert system.api("GET", f"/api/v1/offers/{offer_id}")["capped_until"] is not None
    today = datetime.now(UTC).date().isoformat()
    report = urllib.parse.urlencode({"group_by": "offer", "tz": "UTC", "from": today, "to": today})
    wait_until(
        lambda: capped_clicks(system, report, "Capped") >= 1, timeout=60, message="the capped click in the report"
    )


def capped_clicks(system: System, query: str, offer_name: str) -> int:
    report = system.api("GET", f"/api/v1/reports?{query}")
    return sum(int(row["capped_clicks"]) for row in report["rows"] if offer_name in str(row["labels"].get("offer")))
