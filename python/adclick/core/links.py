"""Link configs in Redis: their key and channel, and the checks a slug and a config must pass.

The one writer of link configs is the manager's code path (`adclick.core.publisher`), backed by the database,
which gives every link its id; `adclick links` goes through it too. `publish_link` writes a config straight to
Redis for what has no database: the tracker's own tests and benchmark fixtures.
"""

from __future__ import annotations

import json
import re
from typing import Any

import redis

from adclick.core.wire import INVALIDATE_CHANNEL, LINK_KEY_PREFIX, link_key

__all__ = ["INVALIDATE_CHANNEL", "LINK_KEY_PREFIX", "LinkConfigError", "check_slug", "link_key", "publish_link"]

SLUG_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class LinkConfigError(ValueError):
    """A link config that trackers would refuse; it is never written."""


def check_slug(slug: object) -> str:
    if not isinstance(slug, str) or not SLUG_RE.fullmatch(slug):
        raise LinkConfigError(f"slug must match [A-Za-z0-9_-]{{1,64}}, got {slug!r}")
    return slug


def _check_url(value: object, where: str) -> None:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise LinkConfigError(f"{where} must be an absolute http(s) URL, got {value!r}")


def validate_link(config: dict[str, Any]) -> dict[str, Any]:
    """Catch the mistakes that would break a link for every click; the tracker does the full check."""
    if not isinstance(config, dict):
        raise LinkConfigError("a link config is a JSON object")
    if config.get("v") != 1:
        raise LinkConfigError(f"unsupported link config version {config.get('v')!r} (expected 1)")
    check_slug(config.get("slug"))
    link_id = config.get("id")
    if not isinstance(link_id, int) or isinstance(link_id, bool) or not 0 < link_id < 2**40:
        raise LinkConfigError(f"id must be an integer in 1..2^40-1, got {link_id!r}")
    destinations = config.get("destinations")
    if destinations is not None:
        if not isinstance(destinations, list) or not destinations:
            raise LinkConfigError("destinations must be a non-empty list")
        for i, destination in enumerate(destinations):
            if not isinstance(destination, dict):
                raise LinkConfigError(f"destinations[{i}] must be an object")
            _check_url(destination.get("url"), f"destinations[{i}].url")
    elif config.get("url") is not None:
        _check_url(config["url"], "url")
    else:
        raise LinkConfigError("a link needs a url or destinations")
    if config.get("fallback_url") is not None:
        _check_url(config["fallback_url"], "fallback_url")
    return config


def publish_link(redis_client: redis.Redis, config: dict[str, Any]) -> dict[str, Any]:
    """Validate, store at `adclick:link:{slug}` and publish the slug on `adclick:invalidate`, atomically.

    Only for trackers without a database behind them (tests, benchmarks): a link the database does not hold is a
    stray to the manager's reconciler, which deletes it.
    """
    validate_link(config)
    body = json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.set(link_key(config["slug"]), body)
        pipe.publish(INVALIDATE_CHANNEL, config["slug"])
        pipe.execute()
    return config
