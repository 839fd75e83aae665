"""The database is the truth, Redis what trackers read: write link configs after each commit, and converge.

A link write commits first and then publishes; if Redis is down the write stands and the reconciler
(`adclick cache-rebuild`, and a loop inside the manager) brings Redis back in line with the database.

A link is served (`"status": "active"` in its config) only while the link, its offer, the offer's advertiser and
its affiliate are all active; otherwise trackers get it as paused (its fallback URL, or a 404). While a cap of its
offer is full (adclick.core.capping) its config says until when (`capped_until`) and where its clicks go meanwhile
(`cap_url`, the offer's cap fallback); the tracker's clock ends it, so a reset needs no writer.

The manager publishes after its edits, the worker after a conversion fills or frees a cap.

Every writer of link configs (an edit, a pause, a delete, a cascade from an offer, affiliate or advertiser, and
the reconciler) does the same three steps, so that a slow writer never undoes a newer one:

1. take a version, `INCR adclick:link_version_seq`, *after* its own commit;
2. read the configs it publishes from the database *after* taking the version;
3. write each key with a compare-and-set (one Lua script per key): only if the version stored beside the key
   (`adclick:link_version:{slug}`) is lower than its own; a delete leaves its version behind as a tombstone.

Whoever holds the higher version read the database later than every writer with a lower one took its version,
hence after their commits: the last write standing carries every commit. In particular the reconciler, which
reads a snapshot of the whole table and writes it out many milliseconds later, can no longer overwrite an edit,
pause or delete published in between: that writer took a higher version after the snapshot and the reconciler's
compare-and-set leaves its key alone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import anyio
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import ColumnElement, Select, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick import _native
from adclick.core.db.models import Advertiser, Affiliate, BlockedNetwork, Link, Offer, OfferAffiliateOverride
from adclick.core.networks import NetworkListError, parse_networks
from adclick.core.wire import (
    INVALIDATE_CHANNEL,
    IPBLOCK_KEY,
    IPBLOCK_MESSAGE,
    LINK_KEY_PREFIX,
    advertiser_key,
    link_key,
)

log = logging.getLogger(__name__)

RECONCILE_LOCK_KEY = "adclick:manager:reconcile:lock"
# Outside the adclick:link:{slug} namespace, which trackers read and the reconciler SCANs.
LINK_VERSION_PREFIX = "adclick:link_version:"
LINK_VERSION_SEQ = "adclick:link_version_seq"
# How long a deleted link's version outlives it: far longer than any writer can stall between taking a version
# and writing (and the reconciler deletes whatever such a writer would bring back).
TOMBSTONE_SECONDS = 7 * 24 * 3600
BATCH = 500

# KEYS: the link key, its version key. ARGV: version, config JSON ("" deletes), slug, channel, tombstone seconds.
# 1: written and announced; 0: a write with this version or a newer one is already there.
_SET_LINK = """
local stored = tonumber(redis.call('GET', KEYS[2])) or 0
if stored >= tonumber(ARGV[1]) then return 0 end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[2], ARGV[1], 'EX', tonumber(ARGV[5]))
else
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], ARGV[1])
end
redis.call('PUBLISH', ARGV[4], ARGV[3])
return 1
"""

# KEYS: adclick:advertiser:{id}. ARGV: token version, the advertiser's JSON. Token versions only go up (a lower one
# would bring back a revoked token), so a write never lowers what is there; at the same version it replaces a
# different document (a new postback allowlist). 1 if written.
_RAISE_TOKEN_VERSION = """
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' and tonumber(doc.token_version) then
    local stored = tonumber(doc.token_version)
    if stored > tonumber(ARGV[1]) or (stored == tonumber(ARGV[1]) and raw == ARGV[2]) then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""


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


@dataclass(frozen=True)
class Cap:
    """A full cap on a link's offer: until when (UTC) and where its clicks go meanwhile (None: the link's fallback)."""

    until: datetime
    url: str | None = None

    @classmethod
    def of(cls, *until: datetime | None, url: str | None, now: datetime | None = None) -> Cap | None:
        """The latest of the offer's and the affiliate's `capped_until`, if still to come; None when not capped."""
        latest = max((u for u in until if u is not None), default=None)
        if latest is None or latest <= (now or datetime.now(UTC)):
            return None
        return cls(latest, url)


def link_config(
    link: Link, *, parents_active: bool, offer_template: str | None = None, cap: Cap | None = None
) -> dict[str, Any]:
    """The v1 Redis config of a link row (docs/contracts.md); rotation replaces the single URL when present.

    `parents_active`: whether its offer, the offer's advertiser and its affiliate are all active; if not, the
    link is published paused whatever its own status. `offer_template`: its offer's destination template, the
    URL of a link that has no template of its own. `cap`: the offer's caps (or the affiliate's on it) are full.
    """
    extra = dict(link.config or {})
    config: dict[str, Any] = {
        "v": 1,
        "id": link.id,
        "slug": link.slug,
        "offer_id": link.offer_id,
        "affiliate_id": link.affiliate_id,
        "status": link.status if parents_active else "paused",
        "expires_at": int(link.expires_at.timestamp()) if link.expires_at is not None else None,
    }
    if extra.get("destinations"):
        config["destinations"] = extra["destinations"]
    else:
        config["url"] = link.template if link.template is not None else offer_template
    config["rules"] = extra.get("rules") or []
    config["fallback_url"] = extra.get("fallback_url")
    config["cookie"] = bool(extra.get("cookie", False))
    if cap is not None:
        config["capped_until"] = int(cap.until.timestamp())
        if cap.url:
            config["cap_url"] = cap.url
    return config


def check_link_config(config: dict[str, Any]) -> None:
    """Decode the config with the tracker's own Rust decoder, so a link that saves is a link that serves."""
    try:
        _native.validate_link(json.dumps(config).encode())
    except (_native.InvalidLink, _native.InvalidTemplate) as error:
        raise InvalidLinkConfig(str(error).removeprefix("invalid link config: ")) from error


def check_template(template: str) -> None:
    """Check a destination template on its own (an offer's) with the decoder links go through."""
    probe = Link(id=1, slug="template", offer_id=1, affiliate_id=1, template=template, config={}, status="active")
    check_link_config(link_config(probe, parents_active=True))


# What a link's config needs from its parents, in the order `_config_of` reads them.
_PARENT_COLUMNS = (
    Offer.destination_template,
    Offer.status,
    Advertiser.status,
    Affiliate.status,
    Offer.capped_until,
    Offer.cap_fallback_url,
    OfferAffiliateOverride.capped_until,
)
_Query = TypeVar("_Query", bound=Select)
_OVERRIDE_JOIN = (OfferAffiliateOverride.offer_id == Link.offer_id) & (
    OfferAffiliateOverride.affiliate_id == Link.affiliate_id
)


def _with_parents(query: _Query) -> _Query:
    """`query` over links, outer-joined with each link's parents: a missing parent pauses a link, never hides it."""
    return (
        query.outerjoin(Offer, Offer.id == Link.offer_id)
        .outerjoin(Advertiser, Advertiser.id == Offer.advertiser_id)
        .outerjoin(Affiliate, Affiliate.id == Link.affiliate_id)
        .outerjoin(OfferAffiliateOverride, _OVERRIDE_JOIN)
    )


def serving_query(
    where: ColumnElement[bool] | None = None,
) -> Select[Link, str | None, str, str, str, datetime | None, str | None, datetime | None]:
    """Links (all, or those matching `where`) with their offer's template, the statuses of their parents, and their
    caps: the offer's `capped_until` and cap fallback, the affiliate's `capped_until` on the offer.

    One statement, so PostgreSQL reads it from one snapshot; outer joins, so a missing parent pauses a link
    rather than hiding it. Rows already in the session are refreshed: a publish must send what the database
    holds now, not what this session last saw.
    """
    query = _with_parents(select(Link, *_PARENT_COLUMNS)).order_by(Link.id).execution_options(populate_existing=True)
    return query if where is None else query.where(where)


def _config_of(link: Link, parents: tuple[Any, ...], now: datetime) -> tuple[dict[str, Any], list[str]]:
    template, offer_status, advertiser_status, affiliate_status, offer_until, cap_url, affiliate_until = parents
    held = held_by(offer_status, advertiser_status, affiliate_status)
    cap = Cap.of(offer_until, affiliate_until, url=cap_url, now=now)
    return link_config(link, parents_active=not held, offer_template=template, cap=cap), held


def held_by(offer: str | None, advertiser: str | None, affiliate: str | None) -> list[str]:
    """Which parents keep a link from being served: e.g. ['offer', 'affiliate']; empty when all are active."""
    statuses = {"offer": offer, "advertiser": advertiser, "affiliate": affiliate}
    return [name for name, status in statuses.items() if status != "active"]


async def serving_configs(session: AsyncSession, where: ColumnElement[bool] | None = None) -> list[dict[str, Any]]:
    """The configs trackers should serve for the links matching `where`, as the database holds them now."""
    rows = await session.execute(serving_query(where))
    now = datetime.now(UTC)
    return [_config_of(link, tuple(parents), now)[0] for link, *parents in rows]


async def serving_config(session: AsyncSession, link: Link) -> tuple[dict[str, Any], list[str]]:
    """The config trackers should serve for `link` (as this session holds it), and the parents that pause it."""
    query = _with_parents(select(*_PARENT_COLUMNS).select_from(Link)).where(Link.id == link.id)
    found = (await session.execute(query)).one_or_none()
    if found is None:
        return link_config(link, parents_active=False), ["offer", "advertiser", "affiliate"]
    return _config_of(link, tuple(found), datetime.now(UTC))


def version_key(slug: str) -> str:
    return f"{LINK_VERSION_PREFIX}{slug}"


def _body(config: dict[str, Any]) -> str:
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False)


def _next_version(client: redis.Redis) -> int:
    return int(client.incr(LINK_VERSION_SEQ))


def _set_links(client: redis.Redis, version: int, writes: list[tuple[str, dict[str, Any] | None]]) -> list[bool]:
    """Compare-and-set each (slug, config or None to delete) at `version`; True where it was written."""
    script = client.register_script(_SET_LINK)
    done: list[bool] = []
    for chunk in _chunks(writes, BATCH):
        with client.pipeline(transaction=False) as pipe:
            for slug, config in chunk:
                body = "" if config is None else _body(config)
                args = [version, body, slug, INVALIDATE_CHANNEL, TOMBSTONE_SECONDS]
                script(keys=[link_key(slug), version_key(slug)], args=args, client=pipe)
            done.extend(bool(result) for result in pipe.execute())
    return done


async def _sync(
    client: redis.Redis, session: AsyncSession, where: ColumnElement[bool], slugs: Collection[str] = ()
) -> bool:
    """Publish what the database holds now for the links matching `where`, and delete those of `slugs` it has not.

    False (logged) if Redis failed: the database stands and the reconciler publishes it later.
    """
    # End any transaction the caller left open (it has committed its write), so that the read below starts a new
    # one after our version is taken: a fresh snapshot on SQLite and under any isolation level.
    await session.commit()
    try:
        version = await anyio.to_thread.run_sync(_next_version, client)
    except redis.RedisError as error:
        log.warning("links saved but not published, Redis failed: %s", error)
        return False
    configs = await serving_configs(session, where)  # read only now: after our version, so after older writers'
    found = {config["slug"] for config in configs}
    writes: list[tuple[str, dict[str, Any] | None]] = [(config["slug"], config) for config in configs]
    writes += [(slug, None) for slug in dict.fromkeys(slugs) if slug not in found]
    try:
        await anyio.to_thread.run_sync(_set_links, client, version, writes)
    except redis.RedisError as error:
        log.warning("%d link(s) saved but not published, Redis failed: %s", len(writes), error)
        return False
    return True


async def publish(client: redis.Redis, session: AsyncSession, link: Link, previous_slug: str | None = None) -> bool:
    """Write and announce a committed link's config (and drop its old slug after a rename).

    False (logged) if Redis failed: the write stands and the reconciler publishes it later.
    """
    slugs = [link.slug] if previous_slug is None else [link.slug, previous_slug]
    return await _sync(client, session, Link.slug.in_(slugs), slugs)


async def unpublish(client: redis.Redis, session: AsyncSession, slug: str) -> bool:
    """Remove a deleted link's config; False if Redis failed (the reconciler deletes it later)."""
    return await _sync(client, session, Link.slug == slug, [slug])


async def publish_links_of(
    client: redis.Redis,
    session: AsyncSession,
    *,
    offer_id: int | None = None,
    affiliate_id: int | None = None,
    advertiser_id: int | None = None,
    inheriting_only: bool = False,
) -> bool:
    """Republish every link of an offer, affiliate or advertiser whose status changed; False if Redis failed.

    `inheriting_only` (with `offer_id`): only the links that follow the offer's template, after it changed.
    """
    if offer_id is not None:
        where = Link.offer_id == offer_id
        if inheriting_only:
            where = where & Link.template.is_(None)
    elif affiliate_id is not None:
        where = Link.affiliate_id == affiliate_id
    elif advertiser_id is not None:
        where = Link.offer_id.in_(select(Offer.id).where(Offer.advertiser_id == advertiser_id))
    else:
        raise TypeError("publish_links_of needs offer_id, affiliate_id or advertiser_id")
    return await _sync(client, session, where)


@dataclass(frozen=True)
class AdvertiserDoc:
    """What the postback role reads at adclick:advertiser:{id}: the lowest token version, the postback allowlist."""

    token_version: int
    postback_ips: tuple[str, ...] | None = None  # canonical networks; None: from anywhere

    @classmethod
    def of(cls, token_version: int, postback_ips: str | None) -> AdvertiserDoc:
        try:
            networks = parse_networks(postback_ips)
        except NetworkListError:
            networks = ()  # the manager validates lists; one that no longer parses lets nothing through
        return cls(token_version, None if networks is None else tuple(str(n) for n in networks))

    def body(self) -> str:
        doc: dict[str, Any] = {"token_version": self.token_version}
        if self.postback_ips is not None:
            doc["postback_ips"] = list(self.postback_ips)
        return json.dumps(doc, separators=(",", ":"))


def _raise_token_versions(client: redis.Redis, docs: dict[int, AdvertiserDoc]) -> int:
    script = client.register_script(_RAISE_TOKEN_VERSION)
    written = 0
    for chunk in _chunks(list(docs.items()), BATCH):
        with client.pipeline(transaction=False) as pipe:
            for advertiser_id, doc in chunk:
                script(keys=[advertiser_key(advertiser_id)], args=[doc.token_version, doc.body()], client=pipe)
            written += sum(pipe.execute())
    return written


async def publish_token_version(client: redis.Redis, advertiser: Advertiser) -> bool:
    """Tell the postback role the advertiser's lowest valid token version and its allowlist; False if Redis failed."""
    doc = AdvertiserDoc.of(advertiser.token_version, advertiser.postback_ips)
    try:
        await anyio.to_thread.run_sync(_raise_token_versions, client, {advertiser.id: doc})
    except redis.RedisError as error:
        log.warning("advertiser %s changed but not published, Redis failed: %s", advertiser.id, error)
        return False
    return True


async def blocklist_entries(session: AsyncSession) -> list[BlockedNetwork]:
    return list((await session.scalars(select(BlockedNetwork).order_by(BlockedNetwork.id))).all())


def blocklist_document(cidrs: list[str]) -> str:
    return json.dumps({"v": 1, "cidrs": cidrs}, separators=(",", ":"))


def _write_blocklist(client: redis.Redis, body: str, only_if_different: bool) -> bool:
    if only_if_different:
        held = client.get(IPBLOCK_KEY)
        # No key and an empty list block the same nothing: a network that never blocked anyone writes nothing.
        if held == body or (held is None and body == blocklist_document([])):
            return False
    with client.pipeline(transaction=True) as pipe:
        pipe.set(IPBLOCK_KEY, body)
        pipe.publish(INVALIDATE_CHANNEL, IPBLOCK_MESSAGE)
        pipe.execute()
    return True


async def publish_blocklist(client: redis.Redis, session: AsyncSession) -> bool:
    """Write the IP blocklist to Redis and tell trackers; False if Redis failed (the reconciler will, later)."""
    body = blocklist_document([row.cidr for row in await blocklist_entries(session)])
    try:
        await anyio.to_thread.run_sync(_write_blocklist, client, body, False)
    except redis.RedisError as error:
        log.warning("IP blocklist changed but not published, Redis failed: %s", error)
        return False
    return True


async def published_state(client: redis.Redis, config: dict[str, Any]) -> str:
    """'live' if Redis holds exactly this config, 'stale' if it holds another, 'missing', or 'unknown'."""
    try:
        raw = await anyio.to_thread.run_sync(client.get, link_key(config["slug"]))
    except redis.RedisError:
        return "unknown"
    if raw is None:
        return "missing"
    try:
        return "live" if json.loads(raw) == config else "stale"
    except ValueError:
        return "stale"


@dataclass
class RebuildResult:
    links: int = 0
    written: int = 0
    deleted: int = 0
    advertisers_written: int = 0
    blocklist_written: bool = False
    kept_newer: int = 0  # keys a write published after the snapshot had already changed: left as they are


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _differing(client: redis.Redis, configs: list[dict[str, Any]], force: bool) -> list[dict[str, Any]]:
    """The configs that differ from what Redis holds (all of them when `force`)."""
    if force:
        return configs
    out: list[dict[str, Any]] = []
    for chunk in _chunks(configs, BATCH):
        for config, raw in zip(chunk, client.mget([link_key(c["slug"]) for c in chunk]), strict=True):
            try:
                same = raw is not None and json.loads(raw) == config
            except ValueError:
                same = False
            if not same:
                out.append(config)
    return out


def _find_strays(client: redis.Redis, slugs: set[str]) -> list[str]:
    """Slugs with a link key in Redis but not in `slugs` (the database's links when the rebuild read them)."""
    found = (key[len(LINK_KEY_PREFIX) :] for key in client.scan_iter(match=f"{LINK_KEY_PREFIX}*", count=1000))
    return [slug for slug in found if slug not in slugs]


@dataclass
class Snapshot:
    configs: list[dict[str, Any]]  # every link's config as trackers should serve it, but those they would refuse
    slugs: set[str]  # every link's slug, refused or not: their keys are no strays
    advertisers: dict[int, AdvertiserDoc]  # advertiser id: what the postback role reads
    blocklist: str = ""  # the IP blocklist's document


async def _snapshot(sessions: async_sessionmaker[AsyncSession]) -> Snapshot:
    snapshot = Snapshot([], set(), {})
    async with sessions() as session:
        for config in await serving_configs(session):
            snapshot.slugs.add(config["slug"])
            try:
                check_link_config(config)
            except InvalidLinkConfig as error:
                log.error("link %s (%s) not published: %s", config["id"], config["slug"], error)
                continue
            snapshot.configs.append(config)
        query = select(Advertiser.id, Advertiser.token_version, Advertiser.postback_ips)
        snapshot.advertisers = {row[0]: AdvertiserDoc.of(row[1], row[2]) for row in await session.execute(query)}
        snapshot.blocklist = blocklist_document([row.cidr for row in await blocklist_entries(session)])
    return snapshot


def _converge(client: redis.Redis, version: int, snapshot: Snapshot, force: bool, result: RebuildResult) -> None:
    changed = _differing(client, snapshot.configs, force)
    written = _set_links(client, version, [(config["slug"], config) for config in changed])
    strays = _find_strays(client, snapshot.slugs)
    deleted = _set_links(client, version, [(slug, None) for slug in strays])
    result.written = sum(written)
    result.deleted = sum(deleted)
    result.kept_newer = written.count(False) + deleted.count(False)


async def rebuild(
    sessions: async_sessionmaker[AsyncSession], client: redis.Redis, *, force: bool = False
) -> RebuildResult:
    """Converge Redis to the database: every link's config, no stray link keys, every advertiser's token version.

    Writes only what differs (everything when `force`), each key by compare-and-set at a version taken before the
    snapshot, so a write published while the rebuild runs stands (see the module docstring).
    """
    version = await anyio.to_thread.run_sync(_next_version, client)
    snapshot = await _snapshot(sessions)
    result = RebuildResult(links=len(snapshot.configs))
    await anyio.to_thread.run_sync(_converge, client, version, snapshot, force, result)
    result.advertisers_written = await anyio.to_thread.run_sync(_converge_advertisers, client, snapshot.advertisers)
    result.blocklist_written = await anyio.to_thread.run_sync(_write_blocklist, client, snapshot.blocklist, True)
    return result


def _converge_advertisers(client: redis.Redis, docs: dict[int, AdvertiserDoc]) -> int:
    """Bring every advertiser's document in Redis to the database's; never lower a token version (a newer rotation)."""
    behind: dict[int, AdvertiserDoc] = {}
    ids = list(docs)
    for chunk in _chunks(ids, BATCH):
        for advertiser_id, raw in zip(chunk, client.mget([advertiser_key(i) for i in chunk]), strict=True):
            want = docs[advertiser_id]
            try:
                stored = int(json.loads(raw)["token_version"]) if raw is not None else 1
            except (ValueError, KeyError, TypeError):
                stored = 0
            if stored < want.token_version or (stored == want.token_version and raw != want.body()):
                behind[advertiser_id] = want
    return _raise_token_versions(client, behind)


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
            if result.written or result.deleted or result.advertisers_written or result.blocklist_written:
                log.info("reconciled Redis with the database: %s", result)
        except redis.RedisError as error:
            log.warning("reconcile skipped, Redis failed: %s", error)
        except Exception:
            log.exception("reconcile failed")
