"""`adclick migrate`: bring the database at ADCLICK_DATABASE_URL to the newest schema (Alembic `upgrade head`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import URL

from .session import database_url, is_sqlite_memory


def alembic_config(url: str | URL) -> Config:
    """Alembic configured in code, scripts found inside the installed package: no alembic.ini."""
    config = Config()
    config.set_main_option("script_location", "adclick:migrations")
    # Passed as an attribute, not an option: ConfigParser would choke on '%' in a password.
    config.attributes["database_url"] = database_url(url)
    return config


def include_object_for(dialect_name: str) -> Callable[[Any, str | None, str, bool, Any], bool]:
    """Alembic `include_object` that skips schema items meant for other databases (`info={"dialects": ...}`)."""

    def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        dialects = getattr(obj, "info", {}).get("dialects")
        return dialects is None or dialect_name in dialects

    return include_object


def ensure_sqlite_directory(url: str | URL) -> None:
    """SQLite creates the file but not its directory."""
    parsed = database_url(url)
    if parsed.get_backend_name() == "sqlite" and not is_sqlite_memory(parsed) and parsed.database:
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)


def upgrade(url: str | URL, revision: str = "head") -> None:
    """Migrate the database at `url` up to `revision` (synchronous; runs its own event loop)."""
    ensure_sqlite_directory(url)
    command.upgrade(alembic_config(url), revision)


def main(argv: list[str]) -> int:
    from adclick.core.settings import get_settings

    parser = argparse.ArgumentParser(prog="adclick migrate", description="Upgrade the database schema.")
    parser.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    parser.add_argument("--database-url", help="database to migrate (default: ADCLICK_DATABASE_URL)")
    args = parser.parse_args(argv)
    try:
        url = database_url(args.database_url or get_settings().database_url)
    except ValueError as error:
        sys.stderr.write(f"adclick migrate: error: {error}\n")
        return 2
    shown = url.render_as_string(hide_password=True)
    try:
        upgrade(url, args.revision)
    except Exception as error:
        sys.stderr.write(f"adclick migrate: {shown}: {type(error).__name__}: {error}\n")
        return 1
    print(f"adclick migrate: {shown} is at {args.revision}")
    return 0
