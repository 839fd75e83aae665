"""The postback role's HTTP app (FastAPI): /postback, /pixel.gif, /health, /metrics over one `Intake`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from adclick.core.logs import setup_logging
from adclick.core.settings import PostbackSettings, get_postback_settings
from adclick.postback.intake import GIF, Incoming, Intake, Rejected

NO_STORE = {"Cache-Control": "no-store"}
PIXEL_HEADERS = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache"}


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to pass `limit` bytes, without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Rejected(400, "malformed_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise Rejected(413, "body_too_large", f"body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise Rejected(413, "body_too_large", f"body is larger than {limit} bytes")
    return bytes(body)


def create_app(settings: PostbackSettings) -> FastAPI:
    """The app for one process; its SQS and Redis clients open on the first postback, close at shutdown."""
    intake = Intake(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await intake.aclose()

    app = FastAPI(title="adclick postback", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.intake = intake

    @app.api_route("/postback", methods=["GET", "POST"])
    async def postback(request: Request) -> Response:
        try:
            body = await read_body(request, settings.postback_max_body_bytes)
        except Rejected as rejection:
            reply = intake.refused(rejection, source="s2s")
        else:
            incoming = Incoming(
                query=request.scope.get("query_string", b""),
                body=body,
                content_type=request.headers.get("content-type"),
                peer=request.client.host if request.client else None,
                forwarded_for=request.headers.get("x-forwarded-for"),
            )
            reply = await intake.postback(incoming, source="s2s")
        return JSONResponse(reply.body, status_code=reply.status, headers={**NO_STORE, **reply.headers})

    @app.get("/pixel.gif")
    async def pixel(request: Request) -> Response:
        incoming = Incoming(
            query=request.scope.get("query_string", b""),
            cookies=request.cookies,
            origin=request.headers.get("origin"),
            referer=request.headers.get("referer"),
        )
        await intake.pixel(incoming)
        return Response(GIF, media_type="image/gif", headers=PIXEL_HEADERS)

    @app.get("/health")
    async def health() -> Response:
        # Liveness only: an SQS outage answers 503 per postback, and restarting the pod would not end it.
        return JSONResponse({"status": "ok"}, headers=NO_STORE)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(intake.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def create_app_from_env() -> FastAPI:
    """Factory for uvicorn's worker processes, which read their settings from the environment."""
    settings = get_postback_settings()
    setup_logging(settings.log_level, role="postback")  # a spawned worker starts with no log handlers
    return create_app(settings)
