"""Link configs in Redis: the one place that writes them, and tells every tracker to drop its cached copy."""

from __future__ import annotations

import json
import re
from typing import Any

import redis

LINK_KEY_PREFIX = "adclick:link:"
INVALIDATE_CHANNEL = "adclick:invalidate"
# Outside the adclick:link:{slug} namespace: "next_id" is a valid slug, and SCANs of link keys must not see it.
NEXT_ID_KEY = "adclick:next_link_id"
SLUG_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class LinkConfigError(ValueError):
    """A link config that trackers would refuse; it is never written."""


def link_key(slug: str) -> str:
    return f"{LINK_KEY_PREFIX}{slug}"


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
    """Validate, store at `adclick:link:{slug}` and publish the slug on `adclick:invalidate`, atomically."""
    validate_link(config)
    body = json.dumps(config, separators=(",", ":"), ensure_ascii=False)
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.set(link_key(config["slug"]), body)
        pipe.publish(INVALIDATE_CHANNEL, config["slug"])
        pipe.execute()
    return config


def get_link(redis_client: redis.Redis, slug: str) -> dict[str, Any] | None:
    """The stored config of `slug`, or None."""
    raw = redis_client.get(link_key(check_slug(slug)))
    if raw is None:
        return None
    config: dict[str, Any] = json.loads(raw)
    return config


def delete_link(redis_client: redis.Redis, slug: str) -> bool:
    """Remove the link and tell trackers; True if it existed."""
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.delete(link_key(check_slug(slug)))
        pipe.publish(INVALIDATE_CHANNEL, slug)
        deleted, _ = pipe.execute()
    return bool(deleted)


def allocate_link_id(redis_client: redis.Redis) -> int:
    """A new link id, unique across every writer (INCR `adclick:next_link_id`)."""
    return int(redis_client.incr(NEXT_ID_KEY))
