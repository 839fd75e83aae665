"""Where the manager's routers and navigation come from; each part of the manager appends its own entries.

`ROUTERS`: (module path, attribute) of a FastAPI `APIRouter`, imported when the app is built.

`NAV`: (label, path, roles) links in the page header, shown to users of those roles when an app route
with that exact path exists.
"""

from __future__ import annotations

from typing import NamedTuple


class NavItem(NamedTuple):
    label: str
    path: str
    roles: tuple[str, ...] = ("admin", "manager")


ROUTERS: list[tuple[str, str]] = [
    ("adclick.manager.access", "router"),
    ("adclick.manager.pages", "router"),
    ("adclick.manager.api", "router"),
    ("adclick.manager.reports", "router"),
    ("adclick.manager.exports", "router"),
    ("adclick.manager.conversions", "router"),
    ("adclick.manager.jobs", "router"),
    ("adclick.manager.blocklist", "router"),
]

NAV: list[NavItem] = [
    NavItem("Dashboard", "/", ("admin", "manager", "affiliate")),
    NavItem("Advertisers", "/advertisers"),
    NavItem("Offers", "/offers"),
    NavItem("Affiliates", "/affiliates"),
    NavItem("Links", "/links", ("admin", "manager", "affiliate")),
    NavItem("Reports", "/reports", ("admin", "manager", "affiliate")),
    NavItem("Conversions", "/conversions", ("admin", "manager", "affiliate")),
    NavItem("Postback", "/postback", ("affiliate",)),
    NavItem("Failed jobs", "/jobs"),
    NavItem("Blocklist", "/blocklist"),
    NavItem("Users", "/users", ("admin",)),
    NavItem("API tokens", "/tokens", ("admin", "manager", "affiliate")),
]
