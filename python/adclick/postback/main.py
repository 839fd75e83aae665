"""`adclick postback` (serve the postback app with uvicorn) and `adclick postback-token` (mint a token)."""

from __future__ import annotations

import argparse
import os
import sys
import urllib.parse
from typing import Any

from adclick.core.logs import setup_logging
from adclick.core.settings import PostbackSettings, get_postback_settings

GRACEFUL_SHUTDOWN_SECONDS = 10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="adclick postback",
        description="Serve GET|POST /postback, GET /pixel.gif, /health and /metrics; queue conversions to SQS.",
    )
    p.add_argument("--host", help="interface to bind (ADCLICK_POSTBACK_HOST, default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port (ADCLICK_POSTBACK_PORT, default 8001)")
    p.add_argument(
        "--workers",
        type=int,
        help="uvicorn processes (ADCLICK_POSTBACK_WORKERS, default 1); each keeps its own /metrics, "
        "so on Kubernetes prefer 1 per pod and more pods",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run uvicorn until SIGTERM or SIGINT, then finish in-flight postbacks and close the SQS client."""
    import uvicorn

    args = parse_args(argv)
    overrides = {
        k: v
        for k, v in {"postback_host": args.host, "postback_port": args.port, "postback_workers": args.workers}.items()
        if v is not None
    }
    settings = PostbackSettings(**overrides)
    setup_logging(settings.log_level, role="postback")
    common: dict[str, Any] = {
        "host": settings.postback_host,
        "port": settings.postback_port,
        "log_config": None,  # keep the role's log format
        "log_level": settings.log_level.lower(),
        "access_log": False,  # access lines would carry advertisers' tokens
        "server_header": False,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
    }
    if settings.postback_workers > 1:
        # Worker processes build their own app from the environment, so pass the settings on through it.
        for name, value in overrides.items():
            os.environ[f"ADCLICK_{name.upper()}"] = str(value)
        uvicorn.run(
            "adclick.postback.app:create_app_from_env", factory=True, workers=settings.postback_workers, **common
        )
    else:
        from adclick.postback.app import create_app

        uvicorn.run(create_app(settings), **common)
    return 0


# -- adclick postback-token --

URL_FIELDS = "click_id={click_id}&txid={txid}&amount={amount}&currency={currency}&status={status}"


def postback_url(base_url: str, token: str) -> str:
    """The postback URL an advertiser configures: our fields as {macros} to replace with theirs, and its token."""
    return f"{base_url.rstrip('/')}/postback?{URL_FIELDS}&token={urllib.parse.quote(token, safe='')}"


def token_main(argv: list[str] | None = None) -> int:
    """`adclick postback-token ADVERTISER_ID [--version N]`: print the token and a postback URL template."""
    from adclick.core.tokens import make_token

    p = argparse.ArgumentParser(
        prog="adclick postback-token",
        description="Print an advertiser's postback token (signed with ADCLICK_POSTBACK_SECRET) and its URL.",
    )
    p.add_argument("advertiser_id", type=int, help="the advertiser's id")
    p.add_argument(
        "--version",
        type=int,
        default=1,
        help="token version (default 1); bump it and store it in Redis adclick:advertiser:{id} to revoke older ones",
    )
    p.add_argument(
        "--base-url",
        help="public URL of the postback role (default http://localhost:ADCLICK_POSTBACK_PORT)",
    )
    args = p.parse_args(argv)
    settings = get_postback_settings()
    try:
        token = make_token(settings.postback_secret.get_secret_value(), args.advertiser_id, args.version)
    except ValueError as error:
        sys.stderr.write(f"adclick postback-token: error: {error}\n")
        return 2
    base_url = args.base_url or f"http://localhost:{settings.postback_port}"
    print(f"token: {token}")
    print(f"url:   {postback_url(base_url, token)}")
    return 0
