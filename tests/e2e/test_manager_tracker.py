"""The manager and the tracker as real processes on one Redis: what staff change in the manager is what a click gets."""

from __future__ import annotations

import asyncio
import os
import sys

from support.manager import ManagerApi, add_api_token
from support.procs import ProcessGuard, free_port, wait_until, within_a_second
from support.roles import request
from support.seeding import seed_campaign_api
from support.tracker import UA_DESKTOP, TrackerProc

LANDING = "https://shop.example/lp?cid={click_id}"
FALLBACK = "https://shop.example/sold-out"


def click(tracker: TrackerProc, slug: str) -> tuple[int, str | None]:
    reply = request(tracker.port, "GET", f"/c/{slug}", headers={"User-Agent": UA_DESKTOP})
    return reply.status, reply.location


def test_a_click_on_a_link_whose_offer_was_paused_in_the_manager_stops_reaching_the_offer_within_a_second(
    process_guard: ProcessGuard, adclick_env: dict[str, str], clicks_queue: str, database_url: str
) -> None:
    token = asyncio.run(add_api_token(database_url, "e2e-admin@example.com", "e2e", new_user_role="admin"))
    port = free_port()
    env = {
        **os.environ,
        **adclick_env,
        "PYTHONUNBUFFERED": "1",
        "ADCLICK_DATABASE_URL": database_url,
        "ADCLICK_MANAGER_RECONCILE_SECONDS": "0",  # only the write path may bring the change to the tracker
    }
    argv = [sys.executable, "-m", "adclick.cli", "manager", "--host", "127.0.0.1", "--port", str(port)]
    manager_proc = process_guard.spawn(argv, name="manager", env=env)
    api = ManagerApi(f"http://127.0.0.1:{port}", token)
    tracker = TrackerProc(process_guard, adclick_env)
    wait_until(api.healthy, timeout=30, message="manager /health", proc=manager_proc)

    campaign = seed_campaign_api(api, offer={"name": "Spring"}, affiliate={"name": "Blog"})
    common = {"offer_id": campaign.offer_id, "affiliate_id": campaign.affiliate_id, "url": LANDING}
    assert api("POST", "/api/v1/links", {**common, "slug": "spring", "fallback_url": FALLBACK})["live"] is True
    assert api("POST", "/api/v1/links", {**common, "slug": "spring-bare"})["live"] is True
    for slug in ("spring", "spring-bare"):  # served, and now in the tracker's own cache
        status, location = click(tracker, slug)
        assert status == 302 and location is not None and location.startswith("https://shop.example/lp?cid="), slug

    paused = api("PATCH", f"/api/v1/offers/{campaign.offer_id}", {"status": "paused"})
    assert paused["status"] == "paused" and paused["live"] is True
    # what a paused link gets: its fallback URL, or a 404 without one; never the offer's landing page
    paused_state = "the tracker serving the paused state"
    within_a_second(lambda: click(tracker, "spring") == (302, FALLBACK), message=paused_state)
    within_a_second(lambda: click(tracker, "spring-bare")[0] == 404, message=paused_state)
    for _ in range(20):
        assert click(tracker, "spring") == (302, FALLBACK)

    resumed = api("PATCH", f"/api/v1/offers/{campaign.offer_id}", {"status": "active"})
    assert resumed["live"] is True
    resumed_state = "the tracker serving the resumed state"
    within_a_second(
        lambda: (click(tracker, "spring")[1] or "").startswith("https://shop.example/lp?cid="), message=resumed_state
    )
    within_a_second(lambda: click(tracker, "spring-bare")[0] == 302, message=resumed_state)
