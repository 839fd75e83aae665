"""The `adclick` command: `adclick <command> ...` dispatches to a role's or a tool's `main(argv)`."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import NamedTuple

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
    "links": Command(
        "adclick.manager.link_commands", "links_main", "put, get or delete a link: in the database, then in Redis"
    ),
    "bench-links": Command(
        "adclick.manager.link_commands", "bench_links_main", "create or reuse N links on a bench offer, for load tests"
    ),
    "geoip-fetch": Command(
        "adclick.geoip",
        "main",
        "download the tracker's country database (pinned, CC0) unless it is there; print its path",
    ),
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


if __name__ == "__main__":
    sys.exit(main())
