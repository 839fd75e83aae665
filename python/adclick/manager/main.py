"""`adclick manager` (serve the app with uvicorn), `adclick create-admin` and `adclick cache-rebuild`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys

from adclick.core.logs import setup_logging
from adclick.core.settings import ManagerSettings

GRACEFUL_SHUTDOWN_SECONDS = 10


def main(argv: list[str] | None = None) -> int:
    """Serve the manager's pages and JSON API until SIGTERM or SIGINT."""
    import uvicorn

    p = argparse.ArgumentParser(prog="adclick manager", description="Serve the manager: pages, /api/v1, /health.")
    p.add_argument("--host", help="interface to bind (ADCLICK_MANAGER_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (ADCLICK_MANAGER_PORT, default 8080)")
    args = p.parse_args(argv)
    overrides = {k: v for k, v in {"manager_host": args.host, "manager_port": args.port}.items() if v is not None}
    try:
        settings = ManagerSettings(**overrides)
    except ValueError as error:
        sys.stderr.write(f"adclick manager: error: {error}\n")
        return 2
    setup_logging(settings.log_level, role="manager")
    from adclick.manager.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.manager_host,
        port=settings.manager_port,
        log_config=None,
        log_level=settings.log_level.lower(),
        server_header=False,
        proxy_headers=False,  # the client IP comes from ADCLICK_MANAGER_TRUSTED_PROXIES, not from any caller
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return 0


async def _create_admin(settings: ManagerSettings, email: str, password: str) -> str | None:
    from adclick.core.db.session import create_engine, session_factory
    from adclick.manager import accounts
    from adclick.manager.campaigns import Conflict, Invalid
    from adclick.manager.schemas import UserIn
    from adclick.manager.security import configure_passwords

    configure_passwords(settings.manager_password_time_cost, settings.manager_password_memory_kib)
    try:
        data = UserIn(email=email, password=password, role="admin")
    except ValueError as error:
        return str(error)
    engine = create_engine(settings)
    try:
        async with session_factory(engine)() as session:
            await accounts.create_user(session, data)
    except (Conflict, Invalid) as error:
        return str(error)
    finally:
        await engine.dispose()
    return None


def create_admin_main(argv: list[str] | None = None) -> int:
    """`adclick create-admin EMAIL [--password-stdin]`: make an admin user (the first one, usually)."""
    p = argparse.ArgumentParser(prog="adclick create-admin", description="Create an admin user of the manager.")
    p.add_argument("email", nargs="?", help="the admin's email (or --email)")
    p.add_argument("--email", dest="email_option", metavar="EMAIL", help="the admin's email")
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument(
        "--password",
        help="the password itself, for throwaway local set-ups (adclick dev): other users can see it in the "
        "process list, so prefer --password-stdin",
    )
    args = p.parse_args(argv)
    args.email = args.email or args.email_option
    if not args.email:
        p.error("give the admin's EMAIL")
    if args.password is not None:
        password = args.password
    elif args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            sys.stderr.write("adclick create-admin: error: the passwords differ\n")
            return 2
    settings = ManagerSettings()
    error = asyncio.run(_create_admin(settings, args.email, password))
    if error is not None:
        sys.stderr.write(f"adclick create-admin: error: {error}\n")
        return 1
    print(f"admin {args.email.strip().lower()} created")
    return 0


async def _rebuild(settings: ManagerSettings) -> str:
    from adclick.core.db.session import create_engine, session_factory
    from adclick.core.publisher import rebuild, redis_client

    engine = create_engine(settings)
    client = redis_client(settings.redis_url, max(settings.manager_redis_timeout_ms, 5000))
    try:
        result = await rebuild(session_factory(engine), client, force=True)
    finally:
        client.close()
        await engine.dispose()
    return (
        f"{result.links} links written ({result.written} keys), {result.deleted} stray keys deleted, "
        f"{result.kept_newer} keys left to newer writes, {result.advertisers_written} advertiser token versions written"
    )


def cache_rebuild_main(argv: list[str] | None = None) -> int:
    """`adclick cache-rebuild`: rewrite every link config in Redis from the database, delete the others."""
    import redis

    argparse.ArgumentParser(
        prog="adclick cache-rebuild",
        description="Rewrite every link key in Redis from the database (ADCLICK_DATABASE_URL) and delete keys of "
        "links not in it; also write advertisers' token versions.",
    ).parse_args(argv)
    settings = ManagerSettings()
    setup_logging(settings.log_level, role="cache-rebuild")
    try:
        print(asyncio.run(_rebuild(settings)))
    except redis.RedisError as error:
        sys.stderr.write(f"adclick cache-rebuild: Redis at {settings.redis_url} failed: {error}\n")
        return 3
    return 0
