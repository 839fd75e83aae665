"""The manager and the tracker as real processes on one Redis: what staff change in the manager is what a click gets."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from adclick.core.db.models import ApiToken, User
from adclick.core.db.session import create_engine, session_factory
from adclick.manager.security import hash_api_token, hash_password, new_api_token
from support.procs import ProcessGuard, free_port, wait_until
from support.tracker import UA_DESKTOP, TrackerProc, request

LANDING = "https://shop.example/lp?cid={click_id}"
FALLBACK = "https://shop.example/sold-out"


async def make_admin_token(database_url: str) -> str:
    token = new_api_token()
    engine = create_engine(database_url)
    try:
        async with session_factory(engine)() as session:
            admin = User(email="e2e-admin@example.com", password_hash=hash_password("x" * 16), role="admin")
            session.add(admin)
            await session.flush()
            session.add(ApiToken(user_id=admin.id, name="e2e", token_hash=hash_api_token(token)))
            await session.commit()
    finally:
        await engine.dispose()
    return token


class ManagerApi:
    """The manager's JSON API over HTTP with an API token, as a script or integration would use it."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token

    def __call__(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        with urllib.request.urlopen(req, timeout=10) as reply:
            return json.loads(reply.read())

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False


def click(tracker: TrackerProc, slug: str) -> tuple[int, str | None]:
    reply = request(tracker.port, "GET", f"/c/{slug}", headers={"User-Agent": UA_DESKTOP})
    return reply.status, reply.location


def within_a_second(answer: Callable[[], bool]) -> float:
    """How long until `answer()` holds, polled every 10 ms; fails if it takes a second or more."""
    start = time.monotonic()
    while not answer():
        assert time.monotonic() - start < 1.0, "the tracker still served the old state a second later"
        time.sleep(0.01)
    return time.monotonic() - start


def test_a_click_on_a_link_whose_offer_was_paused_in_the_manager_stops_reaching_the_offer_within_a_second(
    process_guard: ProcessGuard, adclick_env: dict[str, str], clicks_queue: str, database_url: str
) -> None:
    token = asyncio.run(make_admin_token(database_url))
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

    advertiser = api("POST", "/api/v1/advertisers", {"name": "Shop"})
    offer = api("POST", "/api/v1/offers", {"advertiser_id": advertiser["id"], "name": "Spring"})
    affiliate = api("POST", "/api/v1/affiliates", {"name": "Blog"})
    common = {"offer_id": offer["id"], "affiliate_id": affiliate["id"], "url": LANDING}
    assert api("POST", "/api/v1/links", {**common, "slug": "spring", "fallback_url": FALLBACK})["live"] is True
    assert api("POST", "/api/v1/links", {**common, "slug": "spring-bare"})["live"] is True
    for slug in ("spring", "spring-bare"):  # served, and now in the tracker's own cache
        status, location = click(tracker, slug)
        assert status == 302 and location is not None and location.startswith("https://shop.example/lp?cid="), slug

    paused = api("PATCH", f"/api/v1/offers/{offer['id']}", {"status": "paused"})
    assert paused["status"] == "paused" and paused["live"] is True
    # what a paused link gets: its fallback URL, or a 404 without one; never the offer's landing page
    within_a_second(lambda: click(tracker, "spring") == (302, FALLBACK))
    within_a_second(lambda: click(tracker, "spring-bare")[0] == 404)
    for _ in range(20):
        assert click(tracker, "spring") == (302, FALLBACK)

    resumed = api("PATCH", f"/api/v1/offers/{offer['id']}", {"status": "active"})
    assert resumed["live"] is True
    within_a_second(lambda: (click(tracker, "spring")[1] or "").startswith("https://shop.example/lp?cid="))
    within_a_second(lambda: click(tracker, "spring-bare")[0] == 302)
