"""Every Redis key, channel and message prefix that crosses a process boundary, in one place (docs/contracts.md).

The names the tracker uses come from its Rust core through the binding, so Python and Rust cannot drift apart; the
rest (written and read by Python roles only) are spelled here once.
"""

from __future__ import annotations

from adclick import _native

# Link configs: `adclick:link:{slug}`, and the channel that tells trackers one changed (`*`: all of them).
LINK_KEY_PREFIX: str = _native.LINK_KEY_PREFIX
INVALIDATE_CHANNEL: str = _native.INVALIDATE_CHANNEL
# The IP blocklist, `{"v": 1, "cidrs": [...]}`, and the message that tells trackers it changed.
IPBLOCK_KEY: str = _native.IPBLOCK_KEY
IPBLOCK_MESSAGE: str = _native.IPBLOCK_MESSAGE
# Click messages (`c1:` + base64 of zlib of JSON lines) and the spill list the trackers keep when SQS fails.
CLICKS_PREFIX: str = _native.CLICKS_PREFIX
SPILL_KEY: str = _native.SPILL_KEY
# Conversion messages, from the postback role to the worker: `v1:` + JSON.
CONVERSION_PREFIX = "v1:"
# The postback role's view of an advertiser: `{"token_version": N, "postback_ips": [...]}`, written by the manager.
ADVERTISER_KEY_PREFIX = "adclick:advertiser:"


def link_key(slug: str) -> str:
    return f"{LINK_KEY_PREFIX}{slug}"


def advertiser_key(advertiser_id: int) -> str:
    return f"{ADVERTISER_KEY_PREFIX}{advertiser_id}"
