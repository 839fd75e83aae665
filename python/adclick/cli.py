"""The `adclick` command: `adclick <command> ...` dispatches to a role's or a tool's `main(argv)`."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

from adclick import __version__


class Command(NamedTuple):
    """A subcommand, imported only when it runs so that roles never load each other's dependencies."""

    module: str
    function: str
    help: str = ""


# Name -> where its `main(argv: list[str]) -> int | None` lives. Add roles and tools here.
COMMANDS: dict[str, Command] = {
    "tracker": Command("adclick.tracker.main", "main", "run the click tracker (Robyn + Rust core)"),
    "dev": Command("adclick.dev", "main", "run the whole system locally on embedded Redis and SQS"),
    "links": Command("adclick.cli", "links_main", "put, get or delete link configs in Redis"),
    "migrate": Command("adclick.core.db.migrate", "main", "upgrade the database schema (ADCLICK_DATABASE_URL)"),
    "postback": Command("adclick.postback.main", "main", "receive advertisers' postbacks and pixels into SQS"),
    "postback-token": Command("adclick.postback.main", "token_main", "print an advertiser's postback token and URL"),
    "worker": Command("adclick.worker.main", "main", "consume click and conversion queues into the database"),
    "manager": Command("adclick.manager.main", "main", "serve the manager: campaign pages, JSON API, users"),
    "create-admin": Command("adclick.manager.main", "create_admin_main", "create an admin user of the manager"),
    "cache-rebuild": Command(
        "adclick.manager.main", "cache_rebuild_main", "rewrite Redis link configs from the database, drop the others"
    ),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: adclick [-h] [--version] <command> [args...]",
        "",
        "Ad and affiliate click tracker. Run `adclick <command> --help` for a command's options.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in sorted(COMMANDS.items())]
    return "\n".join(lines) + "\n"


def load_command(name: str) -> Callable[[list[str]], int | None]:
    command = COMMANDS[name]
    module = importlib.import_module(command.module)
    function: Callable[[list[str]], int | None] = getattr(module, command.function)
    return function


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `adclick` script (and of `python -m adclick.cli`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if args else 2
    if args[0] == "--version":
        print(f"adclick {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        sys.stderr.write(_usage())
        sys.stderr.write(f"adclick: error: unknown command {name!r}\n")
        return 2
    try:
        function = load_command(name)
    except ImportError as error:
        sys.stderr.write(f"adclick: error: command {name!r} is not available: {error}\n")
        return 2
    code = function(rest)
    return int(code or 0)


# -- adclick links --


def _links_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adclick links", description="Manage link configs in Redis.")
    parser.add_argument("--redis-url", help="Redis to use (default: ADCLICK_REDIS_URL)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="{put,get,delete}")

    put = sub.add_parser("put", help="create or replace a link", description="Create or replace a link config.")
    put.add_argument("slug", help="the path segment of /c/{slug}: [A-Za-z0-9_-]{1,64}")
    put.add_argument("url", nargs="?", help="destination URL template, e.g. https://shop.example/?c={click_id}")
    put.add_argument("--id", type=int, dest="link_id", help="link id (default: allocate a new one in Redis)")
    put.add_argument("--offer", type=int, dest="offer_id", help="offer id")
    put.add_argument("--affiliate", type=int, dest="affiliate_id", help="affiliate id")
    put.add_argument("--fallback", dest="fallback_url", help="URL for paused, expired or unmatched clicks")
    put.add_argument("--cookie", action="store_true", help="set a first-party ClickID cookie")
    put.add_argument("--paused", action="store_true", help="store the link paused (clicks go to the fallback)")
    put.add_argument(
        "--json",
        dest="json_file",
        metavar="FILE",
        help="read the whole v1 config from FILE ('-' for stdin); other options override its fields",
    )

    get = sub.add_parser("get", help="print a link config as JSON", description="Print a link config as JSON.")
    get.add_argument("slug")

    delete = sub.add_parser("delete", help="remove a link", description="Remove a link config.")
    delete.add_argument("slug")
    return parser


def _build_config(args: argparse.Namespace, redis_client: Any) -> dict[str, Any]:
    from adclick.core.links import allocate_link_id

    config: dict[str, Any] = {}
    if args.json_file:
        text = sys.stdin.read() if args.json_file == "-" else open(args.json_file, encoding="utf-8").read()
        config = json.loads(text)
        if not isinstance(config, dict):
            raise ValueError("--json must hold a JSON object")
    elif not args.url:
        raise ValueError("give a URL or --json")
    config.setdefault("v", 1)
    config["slug"] = args.slug
    for key in ("offer_id", "affiliate_id", "status", "expires_at", "fallback_url"):
        config.setdefault(key, "active" if key == "status" else None)
    config.setdefault("cookie", False)
    if args.url:
        config["url"] = args.url
        config.pop("destinations", None)
    for key in ("offer_id", "affiliate_id", "fallback_url"):
        if getattr(args, key) is not None:
            config[key] = getattr(args, key)
    if args.cookie:
        config["cookie"] = True
    if args.paused:
        config["status"] = "paused"
    if args.link_id is not None:
        config["id"] = args.link_id
    elif "id" not in config:
        config["id"] = allocate_link_id(redis_client)
    return config


def links_main(argv: list[str]) -> int:
    """`adclick links put|get|delete`: the command-line writer of link configs."""
    import redis

    from adclick.core.links import LinkConfigError, delete_link, get_link, publish_link
    from adclick.core.settings import get_settings

    args = _links_parser().parse_args(argv)
    url = args.redis_url or get_settings().redis_url
    client = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5, socket_timeout=5)
    try:
        if args.action == "put":
            config = publish_link(client, _build_config(args, client))
            print(json.dumps(config, indent=2))
        elif args.action == "get":
            found = get_link(client, args.slug)
            if found is None:
                sys.stderr.write(f"adclick links: no link {args.slug!r}\n")
                return 1
            print(json.dumps(found, indent=2))
        elif args.action == "delete":
            if not delete_link(client, args.slug):
                sys.stderr.write(f"adclick links: no link {args.slug!r}\n")
                return 1
    except (LinkConfigError, ValueError, OSError) as error:
        sys.stderr.write(f"adclick links: error: {error}\n")
        return 2
    except redis.RedisError as error:
        sys.stderr.write(f"adclick links: Redis at {url} failed: {error}\n")
        return 3
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
