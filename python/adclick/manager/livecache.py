"""The database is the truth, Redis what trackers read: write link configs after each commit, and converge.

A link write commits first and then publishes; if Redis is down the write stands and the reconciler
(`adclick cache-rebuild`, and a loop inside the manager) brings Redis back in line with the database.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick import _native
from adclick.core.db.models import Advertiser, Link
from adclick.core.links import INVALIDATE_CHANNEL, LINK_KEY_PREFIX, link_key, publish_link

log = logging.getLogger(__name__)

ADVERTISER_KEY_PREFIX = "adclick:advertiser:"
RECONCILE_LOCK_KEY = "adclick:manager:reconcile:lock"
BATCH = 500


class InvalidLinkConfig(ValueError):
    """The tracker would refuse this link config; the message says why."""


def redis_client(url: str, timeout_ms: int) -> redis.Redis:
    """A sync client that fails fast: a manager page must not hang on a Redis outage."""
    seconds = timeout_ms / 1000
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=seconds,
        socket_timeout=seconds,
        retry=Retry(NoBackoff(), 0),
    )


def link_config(link: Link) -> dict[str, Any]:
    """The v1 Redis config of a link row (docs/contracts.md); rotation replaces the single URL when present."""
    extra = dict(link.config or {})
    config: dict[str, Any] = {
        "v": 1,
        "id": link.id,
        "slug": link.slug,
        "offer_id": link.offer_id,
        "affiliate_id": link.affiliate_id,
        "status": link.status,
        "expires_at": int(link.expires_at.timestamp()) if link.expires_at is not None else None,
    }
    if extra.get("destinations"):
        config["destinations"] = extra["destinations"]
    else:
        config["url"] = link.template
    config["rules"] = extra.get("rules") or []
    config["fallback_url"] = extra.get("fallback_url")
    config["cookie"] = bool(extra.get("cookie", False))
    return config


def check_link_config(config: dict[str, Any]) -> None:
    """Decode the config with the tracker's own Rust decoder, so a link that saves is a link that serves."""
    try:
        _native.validate_link(json.dumps(config).encode())
    except (_native.InvalidLink, _native.InvalidTemplate) as error:
        raise InvalidLinkConfig(str(error).removeprefix("invalid link config: ")) from error


def _publish(client: redis.Redis, config: dict[str, Any], previous_slug: str | None) -> None:
    publish_link(client, config)
    if previous_slug is not None and previous_slug != config["slug"]:
        _unpublish(client, previous_slug)  # a renamed link must stop answering on its old slug


async def publish(client: redis.Redis, link: Link, previous_slug: str | None = None) -> bool:
    """Write and announce a committed link's config (and drop its old slug after a rename).

    False (logged) if Redis failed: the write stands and the reconciler publishes it later.
    """
    config = link_config(link)
    try:
        await anyio.to_thread.run_sync(_publish, client, config, previous_slug)
    except redis.RedisError as error:
        log.warning("link %s saved but not published, Redis failed: %s", link.slug, error)
        return False
    return True


def _unpublish(client: redis.Redis, slug: str) -> None:
    with client.pipeline(transaction=True) as pipe:
        pipe.delete(link_key(slug))
        pipe.publish(INVALIDATE_CHANNEL, slug)
        pipe.execute()


async def unpublish(client: redis.Redis, slug: str) -> bool:
    """Remove a deleted link's config; False if Redis failed (the reconciler deletes it later)."""
    try:
        await anyio.to_thread.run_sync(_unpublish, client, slug)
    except redis.RedisError as error:
        log.warning("link %s deleted but still in Redis, Redis failed: %s", slug, error)
        return False
    return True


def advertiser_key(advertiser_id: int) -> str:
    return f"{ADVERTISER_KEY_PREFIX}{advertiser_id}"


async def publish_token_version(client: redis.Redis, advertiser: Advertiser) -> bool:
    """Tell the postback role the lowest token version it may accept; False if Redis failed."""
    body = json.dumps({"token_version": advertiser.token_version})
    try:
        await anyio.to_thread.run_sync(client.set, advertiser_key(advertiser.id), body)
    except redis.RedisError as error:
        log.warning("advertiser %s token rotated but not published, Redis failed: %s", advertiser.id, error)
        return False
    return True


async def published_state(client: redis.Redis, link: Link) -> str:
    """'live' if Redis holds exactly this link's config, 'stale' if it holds another, 'missing', or 'unknown'."""
    try:
        raw = await anyio.to_thread.run_sync(client.get, link_key(link.slug))
    except redis.RedisError:
        return "unknown"
    if raw is None:
        return "missing"
    try:
        return "live" if json.loads(raw) == link_config(link) else "stale"
    except ValueError:
        return "stale"


@dataclass
class RebuildResult:
    links: int = 0
    written: int = 0
    deleted: int = 0
    advertisers_written: int = 0


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _converge_links(client: redis.Redis, configs: list[dict[str, Any]], force: bool) -> int:
    """SET (and announce) every config that differs from what Redis holds; all of them when `force`."""
    written = 0
    for chunk in _chunks(configs, BATCH):
        current = [None] * len(chunk) if force else client.mget([link_key(c["slug"]) for c in chunk])
        with client.pipeline(transaction=False) as pipe:
            for config, raw in zip(chunk, current, strict=True):
                try:
                    same = raw is not None and json.loads(raw) == config
                except ValueError:
                    same = False
                if not same:
                    pipe.set(link_key(config["slug"]), json.dumps(config, separators=(",", ":"), ensure_ascii=False))
                    pipe.publish(INVALIDATE_CHANNEL, config["slug"])
                    written += 1
            pipe.execute()
    return written


def _find_strays(client: redis.Redis, slugs: set[str]) -> list[str]:
    """Slugs with a link key in Redis but not in `slugs` (the database's links when the rebuild read them)."""
    found = (key[len(LINK_KEY_PREFIX) :] for key in client.scan_iter(match=f"{LINK_KEY_PREFIX}*", count=1000))
    return [slug for slug in found if slug not in slugs]


def _delete_slugs(client: redis.Redis, slugs: list[str]) -> None:
    for chunk in _chunks(slugs, BATCH):
        with client.pipeline(transaction=False) as pipe:
            for slug in chunk:
                pipe.delete(link_key(slug))
                pipe.publish(INVALIDATE_CHANNEL, slug)
            pipe.execute()


def _converge_advertisers(client: redis.Redis, versions: dict[int, int]) -> int:
    written = 0
    ids = list(versions)
    for chunk in _chunks(ids, BATCH):
        current = client.mget([advertiser_key(i) for i in chunk])
        with client.pipeline(transaction=False) as pipe:
            for advertiser_id, raw in zip(chunk, current, strict=True):
                try:
                    stored = int(json.loads(raw)["token_version"]) if raw is not None else 1
                except (ValueError, KeyError, TypeError):
                    stored = 0
                if stored != versions[advertiser_id]:
                    pipe.set(advertiser_key(advertiser_id), json.dumps({"token_version": versions[advertiser_id]}))
                    written += 1
            pipe.execute()
    return written


async def rebuild(
    sessions: async_sessionmaker[AsyncSession], client: redis.Redis, *, force: bool = False
) -> RebuildResult:
    """Converge Redis to the database: every link's config, no stray link keys, every advertiser's token version.

    Links whose stored config the tracker would refuse are skipped and logged (they cannot be saved that way).
    """
    result = RebuildResult()
    configs: list[dict[str, Any]] = []
    async with sessions() as session:
        for link in (await session.scalars(select(Link).order_by(Link.id))).all():
            config = link_config(link)
            try:
                check_link_config(config)
            except InvalidLinkConfig as error:
                log.error("link %s (%s) not published: %s", link.id, link.slug, error)
                continue
            configs.append(config)
        versions = {row[0]: row[1] for row in await session.execute(select(Advertiser.id, Advertiser.token_version))}
    result.links = len(configs)
    result.written = await anyio.to_thread.run_sync(_converge_links, client, configs, force)
    strays = await anyio.to_thread.run_sync(_find_strays, client, {c["slug"] for c in configs})
    if strays:
        # A link created since we read the table is no stray: ask the database again before deleting.
        created: set[str] = set()
        async with sessions() as session:
            for chunk in _chunks(strays, BATCH):
                created.update((await session.scalars(select(Link.slug).where(Link.slug.in_(chunk)))).all())
        strays = [slug for slug in strays if slug not in created]
        await anyio.to_thread.run_sync(_delete_slugs, client, strays)
    result.deleted = len(strays)
    result.advertisers_written = await anyio.to_thread.run_sync(_converge_advertisers, client, versions)
    return result


async def reconcile_forever(sessions: async_sessionmaker[AsyncSession], client: redis.Redis, interval: float) -> None:
    """The manager's background reconciler: one replica at a time (a Redis lock), every `interval` seconds."""
    while True:
        await asyncio.sleep(interval)
        try:
            locked = await anyio.to_thread.run_sync(
                lambda: client.set(RECONCILE_LOCK_KEY, "1", nx=True, px=max(int(interval * 900), 1000))
            )
            if not locked:
                continue
            result = await rebuild(sessions, client)
            if result.written or result.deleted or result.advertisers_written:
                log.info("reconciled Redis with the database: %s", result)
        except redis.RedisError as error:
            log.warning("reconcile skipped, Redis failed: %s", error)
        except Exception:
            log.exception("reconcile failed")
