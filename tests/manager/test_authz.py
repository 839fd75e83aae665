"""The authorisation matrix: every route of the app, tried anonymously, as affiliate, as manager and as admin.

A route that is not in the matrix fails `test_every_route_is_in_the_matrix`. The parts of the manager that other
test modules own (tests/manager/test_reports*.py, test_exports*, test_conversions*, test_jobs*,
test_affiliate_postbacks*) add their routes by defining
`AUTHZ_MATRIX = {("GET", "/reports"): (anonymous, affiliate, manager, admin), ...}` there.
Unknown path parameters are filled with 1.

Writes are sent with a valid CSRF token and an empty body, so an allowed caller gets the route's own answer
(often 422: nothing to save) and a refused one 401/303 (anonymous) or 403/404 (wrong role, someone else's row).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from adclick.core.db.models import Advertiser, Affiliate, ApiToken, Link, Offer, OfferAffiliateOverride, User
from adclick.manager.app import route_table
from adclick.manager.security import hash_api_token, hash_password
from support.manager import Manager

pytestmark = pytest.mark.anyio

ROLES = ("anonymous", "affiliate", "manager", "admin")
L, F = 303, 403  # anonymous on a page: redirect to /login; wrong role: forbidden
A = 401  # anonymous on the API
N = 404  # another affiliate's (or user's) row: not even its existence is shown

MATRIX: dict[tuple[str, str], tuple[int, int, int, int]] = {
    # public
    ("GET", "/health"): (200, 200, 200, 200),
    ("GET", "/static"): (200, 200, 200, 200),
    ("GET", "/api/v1/openapi.json"): (200, 200, 200, 200),
    ("GET", "/login"): (200, 303, 303, 303),
    ("POST", "/login"): (401, 401, 401, 401),  # empty form: wrong email or password
    ("POST", "/logout"): (303, 303, 303, 303),
    # any signed-in user
    ("GET", "/"): (L, 200, 200, 200),
    ("GET", "/tokens"): (L, 200, 200, 200),
    ("POST", "/tokens"): (L, 422, 422, 422),
    ("POST", "/tokens/{token_id}/delete"): (L, N, N, N),
    ("GET", "/links"): (L, 200, 200, 200),
    ("GET", "/links/{link_id}"): (L, N, 200, 200),
    ("GET", "/links/{link_id}/qr.svg"): (L, N, 200, 200),
    # staff pages
    ("GET", "/advertisers"): (L, F, 200, 200),
    ("POST", "/advertisers"): (L, F, 422, 422),
    ("GET", "/advertisers/{advertiser_id}"): (L, F, 200, 200),
    ("POST", "/advertisers/{advertiser_id}"): (L, F, 303, 303),
    ("POST", "/advertisers/{advertiser_id}/rotate-token"): (L, F, 303, 303),
    ("POST", "/advertisers/{advertiser_id}/delete"): (L, F, 303, 303),
    ("GET", "/affiliates"): (L, F, 200, 200),
    ("POST", "/affiliates"): (L, F, 422, 422),
    ("GET", "/affiliates/{affiliate_id}"): (L, F, 200, 200),
    ("POST", "/affiliates/{affiliate_id}"): (L, F, 303, 303),
    ("POST", "/affiliates/{affiliate_id}/delete"): (L, F, 303, 303),
    ("GET", "/offers"): (L, F, 200, 200),
    ("POST", "/offers"): (L, F, 422, 422),
    ("GET", "/offers/{offer_id}"): (L, F, 200, 200),
    ("POST", "/offers/{offer_id}"): (L, F, 303, 303),
    ("POST", "/offers/{offer_id}/delete"): (L, F, 303, 303),
    ("POST", "/offers/{offer_id}/overrides"): (L, F, 422, 422),
    ("POST", "/offers/{offer_id}/overrides/{affiliate_id}/delete"): (L, F, 303, 303),
    ("GET", "/links/new"): (L, F, 200, 200),
    ("POST", "/links"): (L, F, 422, 422),
    ("POST", "/links/{link_id}"): (L, F, 422, 422),
    ("POST", "/links/{link_id}/pause"): (L, F, 303, 303),
    ("POST", "/links/{link_id}/resume"): (L, F, 303, 303),
    ("POST", "/links/{link_id}/delete"): (L, F, 303, 303),
    # admin pages
    ("GET", "/users"): (L, F, F, 200),
    ("POST", "/users"): (L, F, F, 422),
    ("GET", "/users/{user_id}"): (L, F, F, 200),
    ("POST", "/users/{user_id}"): (L, F, F, 303),
    ("POST", "/users/{user_id}/delete"): (L, F, F, 303),
    # API: any signed-in user
    ("GET", "/api/v1/me"): (A, 200, 200, 200),
    ("GET", "/api/v1/tokens"): (A, 200, 200, 200),
    ("POST", "/api/v1/tokens"): (A, 422, 422, 422),
    ("DELETE", "/api/v1/tokens/{token_id}"): (A, N, N, N),
    ("GET", "/api/v1/links"): (A, 200, 200, 200),
    ("GET", "/api/v1/links/{link_id}"): (A, N, 200, 200),
    # API: staff
    ("GET", "/api/v1/advertisers"): (A, F, 200, 200),
    ("POST", "/api/v1/advertisers"): (A, F, 422, 422),
    ("GET", "/api/v1/advertisers/{advertiser_id}"): (A, F, 200, 200),
    ("PATCH", "/api/v1/advertisers/{advertiser_id}"): (A, F, 200, 200),
    ("POST", "/api/v1/advertisers/{advertiser_id}/rotate-token"): (A, F, 200, 200),
    ("DELETE", "/api/v1/advertisers/{advertiser_id}"): (A, F, 204, 204),
    ("GET", "/api/v1/affiliates"): (A, F, 200, 200),
    ("POST", "/api/v1/affiliates"): (A, F, 422, 422),
    ("GET", "/api/v1/affiliates/{affiliate_id}"): (A, F, 200, 200),
    ("PATCH", "/api/v1/affiliates/{affiliate_id}"): (A, F, 200, 200),
    ("DELETE", "/api/v1/affiliates/{affiliate_id}"): (A, F, 204, 204),
    ("GET", "/api/v1/offers"): (A, F, 200, 200),
    ("POST", "/api/v1/offers"): (A, F, 422, 422),
    ("GET", "/api/v1/offers/{offer_id}"): (A, F, 200, 200),
    ("PATCH", "/api/v1/offers/{offer_id}"): (A, F, 200, 200),
    ("DELETE", "/api/v1/offers/{offer_id}"): (A, F, 204, 204),
    ("GET", "/api/v1/offers/{offer_id}/overrides"): (A, F, 200, 200),
    ("PUT", "/api/v1/offers/{offer_id}/overrides/{affiliate_id}"): (A, F, 200, 200),
    ("DELETE", "/api/v1/offers/{offer_id}/overrides/{affiliate_id}"): (A, F, 204, 204),
    ("POST", "/api/v1/links"): (A, F, 422, 422),
    ("PATCH", "/api/v1/links/{link_id}"): (A, F, 200, 200),
    ("POST", "/api/v1/links/{link_id}/pause"): (A, F, 200, 200),
    ("POST", "/api/v1/links/{link_id}/resume"): (A, F, 200, 200),
    ("DELETE", "/api/v1/links/{link_id}"): (A, F, 204, 204),
    # the IP blocklist: staff only (an affiliate must not unblock itself, nor learn what is blocked)
    ("GET", "/blocklist"): (L, F, 200, 200),
    ("POST", "/blocklist"): (L, F, 422, 422),
    ("POST", "/blocklist/{entry_id}/delete"): (L, F, 303, 303),
    ("GET", "/api/v1/blocklist"): (A, F, 200, 200),
    ("POST", "/api/v1/blocklist"): (A, F, 422, 422),
    ("DELETE", "/api/v1/blocklist/{entry_id}"): (A, F, N, N),
    # API: admin
    ("GET", "/api/v1/users"): (A, F, F, 200),
    ("POST", "/api/v1/users"): (A, F, F, 422),
    ("GET", "/api/v1/users/{user_id}"): (A, F, F, 200),
    ("PATCH", "/api/v1/users/{user_id}"): (A, F, F, 200),
    ("DELETE", "/api/v1/users/{user_id}"): (A, F, F, 204),
}

CONCRETE = {"/static": "/static/manager.css"}
CONTRIBUTORS = (
    "test_reports*.py",
    "test_exports*.py",
    "test_conversions*.py",
    "test_jobs*.py",
    "test_affiliate_postbacks*.py",
)


def full_matrix() -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """MATRIX plus the AUTHZ_MATRIX of every test module of the other parts of the manager."""
    matrix = dict(MATRIX)
    here = Path(__file__).parent
    for pattern in CONTRIBUTORS:
        for path in sorted(here.glob(pattern)):
            module = importlib.import_module(path.stem)
            matrix.update(getattr(module, "AUTHZ_MATRIX", {}))
    return matrix


def app_routes(manager: Manager) -> set[tuple[str, str]]:
    routes = set()
    for path, methods in route_table(manager.app):
        for method in methods - {"HEAD"} or {"GET"}:  # a mount (static files) has no methods: GET
            routes.add((method, path))
    return routes


async def test_every_route_is_in_the_matrix(manager: Manager) -> None:
    routes, matrix = app_routes(manager), full_matrix()
    missing = sorted(routes - set(matrix))
    assert not missing, f"routes without an authorisation expectation (add them to a MATRIX): {missing}"
    assert not sorted(set(matrix) - routes), "the matrix lists routes the app does not have"


async def targets(manager: Manager) -> dict[str, int]:
    """Rows for the path parameters: an advertiser and affiliate with nothing attached (so deletes succeed),
    an offer with an override, the other affiliate's link, and another user with an API token."""
    async with manager.sessions() as session:
        advertiser, affiliate, spare = Advertiser(name="Target"), Affiliate(name="Target"), Advertiser(name="Spare")
        session.add_all([advertiser, affiliate, spare])
        await session.flush()
        offer = Offer(advertiser_id=spare.id, name="Target")
        victim = User(email=f"victim{advertiser.id}@example.com", password_hash=hash_password("x" * 12), role="manager")
        session.add_all([offer, victim])
        await session.flush()
        link = Link(
            slug=f"target{advertiser.id}",
            offer_id=manager.ids["offer"],
            affiliate_id=manager.ids["other_affiliate"],
            template="https://shop.example/",
            config={},
        )
        token = ApiToken(user_id=victim.id, name="victim's", token_hash=hash_api_token(f"t{advertiser.id}"))
        session.add_all([OfferAffiliateOverride(offer_id=offer.id, affiliate_id=affiliate.id), link, token])
        await session.commit()
        return {
            "advertiser_id": advertiser.id,
            "affiliate_id": affiliate.id,
            "offer_id": offer.id,
            "link_id": link.id,
            "user_id": victim.id,
            "token_id": token.id,
        }


def order(key: tuple[str, str]) -> tuple[int, int]:
    """Reads, then writes, then deletes (sub-resources before their parents), and signing out last."""
    method, path = key
    if path == "/logout":
        return (3, 0)
    if method == "DELETE" or path.endswith("/delete"):
        return (2, -len(path))
    return (0 if method == "GET" else 1, 0)


def fill(path: str, ids: dict[str, Any]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: str(ids.get(m.group(1), 1)), path)


async def request(client: httpx.AsyncClient, csrf: str, method: str, path: str) -> httpx.Response:
    if method == "GET":
        return await client.get(path)
    if path.startswith("/api/"):
        headers = {"X-CSRF-Token": csrf}
        if method == "DELETE":
            return await client.delete(path, headers=headers)
        return await client.request(method, path, json={}, headers=headers)
    return await client.request(method, path, data={"csrf_token": csrf})


@pytest.mark.parametrize("role", ROLES)
async def test_authorisation_matrix(manager: Manager, role: str) -> None:
    client = await (manager.anonymous() if role == "anonymous" else manager.as_role(role))
    matrix = full_matrix()
    column = ROLES.index(role)
    # Pages and API get their own rows, so a page's delete does not leave the API nothing to delete.
    page_ids, api_ids = await targets(manager), await targets(manager)
    wrong = []
    for method, path in sorted(matrix, key=order):
        ids: dict[str, Any] = api_ids if path.startswith("/api/") else page_ids
        url = CONCRETE.get(path) or fill(path, ids)
        reply = await request(client, client.csrf, method, url)  # type: ignore[attr-defined]
        expected = matrix[(method, path)][column]
        if reply.status_code != expected:
            wrong.append(f"{method} {url}: expected {expected}, got {reply.status_code} {reply.text[:120]!r}")
        if role == "anonymous" and reply.status_code == 303 and path != "/logout" and method == "GET":
            assert reply.headers["location"].startswith("/login?next="), (method, url)
    assert not wrong, f"as {role}:\n" + "\n".join(wrong)
