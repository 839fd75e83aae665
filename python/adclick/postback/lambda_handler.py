"""AWS Lambda entry point: `adclick.postback.lambda_handler.handler` for API Gateway and Function URL events.

Takes HTTP API and Function URL events (payload 2.0) and REST API events (1.0) and hands them to the same
`Intake` as the HTTP app. One event loop, SQS client and Redis client per container, reused by every
invocation; they are built on the first one, not at import.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from adclick.core.logs import setup_logging
from adclick.core.settings import PostbackSettings, get_postback_settings
from adclick.postback.intake import GIF, Incoming, Intake, Rejected, Reply

JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store"}
PIXEL_HEADERS = {
    "Content-Type": "image/gif",
    "Cache-Control": "no-store, no-cache, must-revalidate, max-age=0",
    "Pragma": "no-cache",
}


def _json_response(reply: Reply) -> dict[str, Any]:
    return {
        "statusCode": reply.status,
        "headers": {**JSON_HEADERS, **reply.headers},
        "body": json.dumps(reply.body, separators=(",", ":")),
        "isBase64Encoded": False,
    }


def _headers(event: Mapping[str, Any]) -> dict[str, str]:
    """Request headers with lower-case names (payload 2.0 has them so already; 1.0 keeps the client's case)."""
    headers = event.get("headers") or {}
    return {str(name).lower(): str(value) for name, value in headers.items()}


def _source_ip(event: Mapping[str, Any], v2: bool) -> str | None:
    """The caller's address as API Gateway saw it: requestContext.http.sourceIp (v2), .identity.sourceIp (v1)."""
    context = event.get("requestContext")
    if not isinstance(context, Mapping):
        return None
    holder = context.get("http") if v2 else context.get("identity")
    value = holder.get("sourceIp") if isinstance(holder, Mapping) else None
    return value if isinstance(value, str) and value else None


def _cookies(event: Mapping[str, Any], headers: Mapping[str, str]) -> dict[str, str]:
    """Payload 2.0 moves cookies to a `cookies` array; 1.0 leaves them in the Cookie header."""
    parts: list[str] = list(event.get("cookies") or [])
    if "cookie" in headers:
        parts += headers["cookie"].split(";")
    cookies: dict[str, str] = {}
    for part in parts:
        name, sep, value = part.strip().partition("=")
        if sep and name:
            cookies.setdefault(name, value.strip().strip('"'))
    return cookies


def _body(event: Mapping[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    if event.get("isBase64Encoded"):
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise Rejected(400, "malformed_body", "body is not valid base64") from None
    return str(body).encode("utf-8")


def _query_pairs_v1(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    multi = event.get("multiValueQueryStringParameters")
    if multi:
        return [(name, value) for name, values in multi.items() for value in values or []]
    single = event.get("queryStringParameters") or {}
    return [(name, value) for name, value in single.items() if value is not None]


def _route(path: str) -> str:
    """Which endpoint a path asks for; the stage prefix (`/prod/postback`) and a bare Function URL are fine."""
    if path in ("", "/") or path.endswith("/postback"):
        return "postback"
    if path.endswith("/pixel.gif"):
        return "pixel"
    if path.endswith("/health"):
        return "health"
    return ""


class LambdaRuntime:
    """One container's state: a persistent event loop and the intake whose clients live on it."""

    def __init__(self, settings: PostbackSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.intake = Intake(settings)

    def handle(self, event: Mapping[str, Any], context: object = None) -> dict[str, Any]:
        """Answer one API Gateway or Function URL event."""
        return self.loop.run_until_complete(self._handle(event))

    async def _handle(self, event: Mapping[str, Any]) -> dict[str, Any]:
        v2 = str(event.get("version", "")).startswith("2")
        if v2:
            http = event.get("requestContext", {}).get("http", {})
            method = str(http.get("method", "GET")).upper()
            path = str(event.get("rawPath") or http.get("path") or "")
        else:
            method = str(event.get("httpMethod", "GET")).upper()
            path = str(event.get("path") or "")
        route = _route(path)
        if route == "health":
            return _json_response(Reply(200, {"status": "ok"}))
        if not route:
            return _json_response(Reply(404, {"status": "rejected", "reason": "not_found", "detail": "no such path"}))
        allowed = ("GET", "POST") if route == "postback" else ("GET",)
        if method not in allowed:
            reply = Reply(405, {"status": "rejected", "reason": "method_not_allowed", "detail": f"use {allowed}"})
            return _json_response(reply)

        headers = _headers(event)
        source = "lambda" if route == "postback" else "pixel"
        try:
            body = _body(event)
        except Rejected as rejection:
            if route == "pixel":
                return self._gif()
            return _json_response(self.intake.refused(rejection, source=source))
        incoming = Incoming(
            query=str(event.get("rawQueryString") or "") if v2 else "",
            query_pairs=None if v2 else _query_pairs_v1(event),
            body=body,
            content_type=headers.get("content-type"),
            cookies=_cookies(event, headers),
            # API Gateway and Function URLs put the caller's address here themselves (no header can forge it).
            peer=_source_ip(event, v2),
            origin=headers.get("origin"),
            referer=headers.get("referer"),
        )
        if route == "pixel":
            await self.intake.pixel(incoming)
            return self._gif()
        return _json_response(await self.intake.postback(incoming, source=source))

    @staticmethod
    def _gif() -> dict[str, Any]:
        return {
            "statusCode": 200,
            "headers": dict(PIXEL_HEADERS),
            "body": base64.b64encode(GIF).decode(),
            "isBase64Encoded": True,
        }

    def close(self) -> None:
        """Close the clients and the loop (tests; a Lambda container just gets frozen and dropped)."""
        self.loop.run_until_complete(self.intake.aclose())
        self.loop.close()


_runtime: LambdaRuntime | None = None


def handler(event: Mapping[str, Any], context: object) -> dict[str, Any]:
    """The Lambda handler: settings from ADCLICK_* variables, clients reused across invocations."""
    global _runtime
    if _runtime is None:
        settings = get_postback_settings()
        setup_logging(settings.log_level, role="postback-lambda")
        _runtime = LambdaRuntime(settings)
    return _runtime.handle(event, context)
