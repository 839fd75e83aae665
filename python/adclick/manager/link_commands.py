"""`adclick links put|get|delete` and `adclick bench-links`: the command line's way to the manager's link writes.

There is one writer of link configs: a link is a row in the database (ADCLICK_DATABASE_URL, migrated with
`adclick migrate`), its id comes from the database, and its config reaches Redis the way the manager publishes
it (`publisher`), so the reconciler keeps it and no two links ever share an id. These commands call the same
domain steps as the manager's JSON API; they only translate arguments and errors.

Exit codes: 0 done, 1 no such link, 2 bad input (or an offer or affiliate that does not exist), 3 the database or
Redis failed (after a saved write, Redis failing means "saved, not yet live": the reconciler publishes it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from adclick.core.db.models import Link
from adclick.core.db.session import create_engine, database_url, is_sqlite_memory, session_factory
from adclick.core.links import LinkConfigError, check_slug, link_key
from adclick.core.publisher import (
    publish,
    publish_links_of,
    published_state,
    redis_client,
    serving_config,
    unpublish,
)
from adclick.core.settings import ManagerSettings
from adclick.manager import campaigns
from adclick.manager.bench_links import BENCH_OFFER, DEFAULT_PREFIX, DEFAULT_URL, MAX_LINKS, ensure_bench_links
from adclick.manager.campaigns import Conflict, Invalid, NotFound
from adclick.manager.schemas import LinkIn

# The fields of a v1 link config (docs/contracts.md) that `links put --json` reads.
CONFIG_FIELDS = frozenset(
    {"v", "id", "slug", "offer_id", "affiliate_id", "status", "expires_at"}
    | {"url", "destinations", "rules", "fallback_url", "cookie"}
)
REDIS_STATES = {
    "live": "Redis holds this config: trackers serve it",
    "stale": "Redis holds another config: the manager's reconciler (or `adclick cache-rebuild`) replaces it",
    "missing": "not in Redis yet: the manager's reconciler (or `adclick cache-rebuild`) publishes it",
    "unknown": "Redis did not answer: whether trackers serve it is unknown",
}


class CommandError(Exception):
    """A failure to report on stderr with this exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Backends:
    """The database and Redis of one command run."""

    sessions: async_sessionmaker[AsyncSession]
    redis: redis.Redis
    redis_url: str


# -- arguments --


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--database-url", help="database to use (default: ADCLICK_DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis to publish to (default: ADCLICK_REDIS_URL)")


def links_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adclick links",
        description="Create, change, read or delete a link in the database, and publish it to Redis as the manager "
        "does (the database gives its id; the manager's reconciler keeps it).",
    )
    _connection_options(parser)
    sub = parser.add_subparsers(dest="action", required=True, metavar="{put,get,delete}")

    put = sub.add_parser(
        "put",
        help="create or replace a link",
        description="Create a link, or replace every field of an existing one (the slug names it), then publish it. "
        "A new link needs --offer and --affiliate, both existing; an existing one keeps its own unless given.",
    )
    put.add_argument("slug", help="the path segment of /c/{slug}: [A-Za-z0-9_-]{1,64}")
    put.add_argument(
        "url",
        nargs="?",
        help="destination URL template, e.g. https://shop.example/?c={click_id}; without one (or --json "
        "destinations) the link follows its offer's destination template",
    )
    put.add_argument("--offer", type=int, dest="offer_id", help="id of an existing offer")
    put.add_argument("--affiliate", type=int, dest="affiliate_id", help="id of an existing affiliate")
    put.add_argument("--fallback", dest="fallback_url", help="URL for paused, expired or unmatched clicks")
    put.add_argument("--cookie", action="store_true", help="set a first-party ClickID cookie")
    put.add_argument("--paused", action="store_true", help="store the link paused (clicks go to the fallback)")
    put.add_argument(
        "--json",
        dest="json_file",
        metavar="FILE",
        help="read a v1 link config from FILE ('-' for stdin): url or destinations, rules, fallback_url, cookie, "
        'status, expires_at, offer_id, affiliate_id; other options override its fields, and an "id" must be '
        "the link's own",
    )

    get = sub.add_parser(
        "get",
        help="print a link's config as JSON",
        description="Print the config trackers should serve for a link, from the database, and say on stderr "
        "whether Redis holds it.",
    )
    get.add_argument("slug")

    delete = sub.add_parser(
        "delete", help="delete a link", description="Delete a link from the database and its config from Redis."
    )
    delete.add_argument("slug")
    return parser


def bench_links_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adclick bench-links",
        description="Create or reuse N links {prefix}0 .. {prefix}N-1 for load tests, on a bench advertiser, offer "
        "and affiliate (made if missing), in the database, and publish them to Redis. A second run reuses the "
        "same links and ids.",
    )
    parser.add_argument("count", type=int, metavar="N", help=f"how many links (1..{MAX_LINKS:,})")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help=f"slug prefix (default: {DEFAULT_PREFIX})")
    parser.add_argument(
        "--url",
        default=DEFAULT_URL,
        metavar="TEMPLATE",
        help=f"destination URL template of every bench link, kept on the bench offer (default: {DEFAULT_URL})",
    )
    _connection_options(parser)
    return parser


def _read_json(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise CommandError(f"cannot read --json {path}: {error.strerror or error}", 2) from error
    try:
        config = json.loads(text)
    except ValueError as error:
        raise CommandError(f"--json {path} is not JSON: {error}", 2) from error
    if not isinstance(config, dict):
        raise CommandError("--json must hold a JSON object (a v1 link config)", 2)
    return config


def _fields_of_config(config: dict[str, Any]) -> dict[str, Any]:
    """LinkIn fields (and "id") from a v1 link config; its slug is ignored (the argument names the link)."""
    unknown = sorted(set(config) - CONFIG_FIELDS)
    if unknown:
        raise Invalid(f"--json: unknown field(s) {', '.join(unknown)}")
    if config.get("v", 1) != 1:
        raise Invalid(f"--json: unsupported link config version {config.get('v')!r} (expected 1)")
    fields = {key: value for key, value in config.items() if key not in ("v", "slug")}
    if fields.get("destinations"):
        fields.pop("url", None)  # a rotation replaces the single URL, as in the config trackers read
    expires = fields.get("expires_at")
    if isinstance(expires, int) and not isinstance(expires, bool):
        fields["expires_at"] = datetime.fromtimestamp(expires, tz=UTC)  # Unix seconds in a link config
    return fields


def put_fields(args: argparse.Namespace) -> dict[str, Any]:
    """What `links put` was given, as LinkIn fields plus an optional "id"; options override --json."""
    fields = _fields_of_config(_read_json(args.json_file)) if args.json_file else {}
    if args.url:
        fields["url"] = args.url
        fields.pop("destinations", None)
    for name in ("offer_id", "affiliate_id", "fallback_url"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.cookie:
        fields["cookie"] = True
    if args.paused:
        fields["status"] = "paused"
    return fields


def _slug(slug: str) -> str:
    try:
        return check_slug(slug)
    except LinkConfigError as error:
        raise Invalid(str(error)) from error


def _link_in(fields: dict[str, Any]) -> LinkIn:
    try:
        return LinkIn.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc']) or 'link'}: {problem['msg']}"
            for problem in error.errors()
        )
        raise Invalid(problems) from None


# -- the steps, on the manager's domain functions --


async def find_link(session: AsyncSession, slug: str) -> Link | None:
    return await session.scalar(select(Link).where(Link.slug == slug))


async def put_link(backends: Backends, slug: str, fields: dict[str, Any]) -> tuple[dict[str, Any], list[str], bool]:
    """Create or replace the link `slug` as the manager's API does, then publish it.

    Returns the config trackers should serve, the parents that hold it paused, and whether Redis took it.
    """
    fields = dict(fields)
    given_id = fields.pop("id", None)
    async with backends.sessions() as session:
        link = await find_link(session, slug)
        if given_id is not None and (link is None or link.id != given_id):
            owner = "it has none yet" if link is None else f"it is {link.id}"
            raise Invalid(
                f'--json: "id" {given_id!r} is not the id of link {slug!r} ({owner}); ids come from the '
                'database: drop "id"'
            )
        if link is None:
            missing = [
                flag
                for flag, name in (("--offer", "offer_id"), ("--affiliate", "affiliate_id"))
                if fields.get(name) is None
            ]
            if missing:
                raise Invalid(
                    f"link {slug!r} is new: give {' and '.join(missing)} (the id of an existing "
                    f"{' and '.join(flag[2:] for flag in missing)})"
                )
            link = await campaigns.create_link(session, _link_in({**fields, "slug": slug}))
        else:
            fields.setdefault("offer_id", link.offer_id)
            fields.setdefault("affiliate_id", link.affiliate_id)
            link = await campaigns.replace_link(session, link.id, _link_in({**fields, "slug": slug}))
        live = await publish(backends.redis, session, link)
        config, held = await serving_config(session, link)
    return config, held, live


async def get_link(backends: Backends, slug: str) -> tuple[dict[str, Any], list[str], str]:
    """The config trackers should serve for `slug` (from the database), the parents holding it, and Redis's state."""
    async with backends.sessions() as session:
        link = await find_link(session, slug)
        if link is None:
            raise NotFound(f"no link {slug!r}{await _stray_note(backends, slug)}")
        config, held = await serving_config(session, link)
    return config, held, await published_state(backends.redis, config)


async def _stray_note(backends: Backends, slug: str) -> str:
    """A hint when Redis still holds a config the database lacks (the reconciler deletes such strays)."""
    try:
        present = await asyncio.to_thread(backends.redis.exists, link_key(slug))
    except redis.RedisError:
        return ""
    return "; Redis still holds a config for it, which the manager's reconciler deletes" if present else ""


async def delete_link(backends: Backends, slug: str) -> tuple[int, bool]:
    """Delete the link `slug` as the manager does; its id and whether Redis dropped the config."""
    async with backends.sessions() as session:
        link = await find_link(session, slug)
        if link is None:
            raise NotFound(f"no link {slug!r}{await _stray_note(backends, slug)}")
        link_id = link.id
        await campaigns.delete_link(session, link_id)
        return link_id, await unpublish(backends.redis, session, slug)


# -- running a command --


def _settings(args: argparse.Namespace) -> ManagerSettings:
    overrides = {"database_url": args.database_url, "redis_url": args.redis_url}
    try:
        return ManagerSettings(**{name: value for name, value in overrides.items() if value is not None})
    except ValueError as error:
        raise CommandError(str(error), 2) from error


def _shown(url: str) -> str:
    try:
        return database_url(url).render_as_string(hide_password=True)
    except ValueError:
        return url


def _check_database(settings: ManagerSettings) -> None:
    """Refuse a SQLite file that does not exist: opening it would create an empty database."""
    try:
        url = database_url(settings)
    except ValueError as error:
        raise CommandError(str(error), 2) from error
    if url.get_backend_name() == "sqlite" and not is_sqlite_memory(url) and url.database:
        if not Path(url.database).expanduser().exists():
            raise CommandError(f"no database at {url.database}: run `adclick migrate` (or `adclick dev`) first", 2)


def run(settings: ManagerSettings, step: Callable[[Backends], Awaitable[int]]) -> int:
    """Run `step` on the database and Redis of `settings`; a failure of either becomes a CommandError."""
    _check_database(settings)
    # Publishing failures come back as results that these commands report; the log line would say it twice.
    logging.getLogger("adclick.core.publisher").setLevel(logging.ERROR)

    async def main() -> int:
        engine = create_engine(settings)
        client = redis_client(settings.redis_url, max(settings.manager_redis_timeout_ms, 5000))
        try:
            return await step(Backends(session_factory(engine), client, settings.redis_url))
        finally:
            client.close()
            await engine.dispose()

    try:
        return asyncio.run(main())
    except redis.RedisError as error:
        raise CommandError(f"Redis at {settings.redis_url} failed: {error}", 3) from error
    except (SQLAlchemyError, OSError) as error:
        text = (str(getattr(error, "orig", None) or error).strip().splitlines() or [""])[0]
        hint = " (is it migrated? run `adclick migrate`)" if "table" in text or "relation" in text else ""
        shown = _shown(settings.database_url)
        raise CommandError(f"database at {shown} failed: {type(error).__name__}: {text}{hint}", 3) from error


def _command(prog: str, body: Callable[[], int]) -> int:
    """Run a command's body; report what went wrong on stderr and return its exit code."""
    try:
        return body()
    except CommandError as error:
        code, message = error.code, str(error)
    except NotFound as error:
        code, message = 1, str(error)
    except (Invalid, Conflict) as error:
        code, message = 2, str(error)
    sys.stderr.write(f"{prog}: {'error: ' if code == 2 else ''}{message}\n")
    return code


def _held(held: list[str], them: str = "it") -> str:
    """The note for a link (or links) that its parents keep paused."""
    parents = " and ".join(held) + (" is" if len(held) == 1 else " are")
    return f"note: trackers serve {them} paused (the fallback URL, or 404): its {parents} not active\n"


def _not_live(redis_url: str) -> str:
    return (
        f"saved in the database, but Redis at {redis_url} failed: trackers get it when the manager's reconciler "
        "(or `adclick cache-rebuild`) reaches Redis"
    )


def links_main(argv: list[str]) -> int:
    """`adclick links put|get|delete`."""
    args = links_parser().parse_args(argv)

    def body() -> int:
        slug = _slug(args.slug)
        fields = put_fields(args) if args.action == "put" else {}  # bad input fails before the database is touched

        async def step(backends: Backends) -> int:
            if args.action == "put":
                config, held, live = await put_link(backends, slug, fields)
                print(json.dumps(config, indent=2))
                if held:
                    sys.stderr.write(_held(held))
                if not live:
                    raise CommandError(_not_live(backends.redis_url), 3)
            elif args.action == "get":
                config, held, state = await get_link(backends, slug)
                print(json.dumps(config, indent=2))
                if held:
                    sys.stderr.write(_held(held))
                sys.stderr.write(f"redis: {state}: {REDIS_STATES[state]}\n")
            else:
                link_id, live = await delete_link(backends, slug)
                print(f"deleted link {link_id} ({slug})")
                if not live:
                    raise CommandError(
                        f"deleted from the database, but Redis at {backends.redis_url} failed: trackers serve it "
                        "until the manager's reconciler (or `adclick cache-rebuild`) reaches Redis",
                        3,
                    )
            return 0

        return run(_settings(args), step)

    return _command("adclick links", body)


def bench_links_main(argv: list[str]) -> int:
    """`adclick bench-links N [--prefix bench-] [--url TEMPLATE]`."""
    args = bench_links_parser().parse_args(argv)

    async def step(backends: Backends) -> int:
        started = time.monotonic()
        async with backends.sessions() as session:
            made = await ensure_bench_links(session, args.count, args.prefix, args.url)
            saved = time.monotonic()
            live = await publish_links_of(backends.redis, session, offer_id=made.offer_id)
        published = time.monotonic()
        span = made.slugs[0] if len(made.slugs) == 1 else f"{made.slugs[0]} .. {made.slugs[-1]}"
        changed = " (changed: every bench link serves it now)" if made.url_changed else ""
        print(
            f"bench links {span}: {made.created:,} created, {len(made.slugs) - made.created:,} reused, "
            f"ids {min(made.ids)} .. {max(made.ids)}\n"
            f"  offer {made.offer_id} ({BENCH_OFFER}, advertiser {made.advertiser_id}), "
            f"affiliate {made.affiliate_id}\n"
            f"  url {args.url}{changed}\n"
            f"  database {saved - started:.2f} s, Redis {published - saved:.2f} s{'' if live else ' (failed)'}"
        )
        if made.held_by:
            sys.stderr.write(_held(made.held_by, "them"))
        if not live:
            raise CommandError(_not_live(backends.redis_url), 3)
        return 0

    return _command("adclick bench-links", lambda: run(_settings(args), step))
