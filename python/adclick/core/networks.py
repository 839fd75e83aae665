"""Lists of IP addresses and networks, as staff type them: advertisers' postback allowlists, the click blocklist.

A list is text with entries separated by commas, spaces or new lines; an entry is an address (`198.51.100.7`,
`2001:db8::1`) or a network in CIDR notation (`203.0.113.0/24`). Host bits set in a network are refused, so that
`10.0.0.1/8` is a typo, not a silent `10.0.0.0/8`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_ENTRIES = 10_000
_SEPARATORS = re.compile(r"[\s,]+")


class NetworkListError(ValueError):
    """An entry that is no address or network; the message names it."""


def parse_network(entry: str) -> Network:
    """One address or CIDR network; NetworkListError otherwise."""
    text = entry.strip()
    if not text or len(text) > 64:
        raise NetworkListError(f"{entry[:64]!r} is not an IP address or network")
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise NetworkListError(f"{text!r} is not an IP address or network ({error})") from None


def parse_networks(text: str | None) -> tuple[Network, ...] | None:
    """The networks of a list, None for an empty or missing list (which means "no list")."""
    if text is None:
        return None
    entries = [entry for entry in _SEPARATORS.split(text) if entry]
    if not entries:
        return None
    if len(entries) > MAX_ENTRIES:
        raise NetworkListError(f"at most {MAX_ENTRIES} entries")
    return tuple(parse_network(entry) for entry in entries)


def canonical(networks: Iterable[Network]) -> str:
    """A list as it is stored: one entry per network, in canonical form, comma separated."""
    return ", ".join(str(network) for network in networks)


def contains(networks: Iterable[Network], address: str | None) -> bool:
    """Whether `address` is in one of the networks; an absent or malformed address is in none."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:198.51.100.7 from a dual-stack socket is 198.51.100.7
    return any(ip in network for network in networks)


def client_ip(peer: str | None, forwarded_for: str | None, trusted_proxies: int) -> str | None:
    """The client's address: the entry `trusted_proxies` from the right of X-Forwarded-For (what the outermost
    trusted proxy saw), else the peer; as the tracker reads it (rust/core/src/targeting.rs)."""
    if trusted_proxies and forwarded_for:
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        if len(hops) >= trusted_proxies:
            return hops[-trusted_proxies]
    return peer or None
