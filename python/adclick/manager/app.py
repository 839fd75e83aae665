"""The manager's FastAPI app: sessions, CSRF, security headers, error pages, /health, and the routers in ROUTERS."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import AsyncIterator
from typing import Any

import redis
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.routing import iter_route_contexts
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adclick.core.db.session import create_engine, session_factory
from adclick.core.publisher import reconcile_forever, redis_client
from adclick.core.settings import ManagerSettings
from adclick.manager import routers as routers_module
from adclick.manager.campaigns import Conflict, Invalid, NotFound
from adclick.manager.deps import LoginRequired, csrf_protect, is_api
from adclick.manager.security import LoginLimiter, configure_passwords
from adclick.manager.templating import HERE, render

SESSION_COOKIE = "adclick_session"
HEALTH_TIMEOUT_SECONDS = 2.0
CSP = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


class SecurityHeaders:
    """Pure ASGI middleware on every response: CSP, no framing, no sniffing, no referrer leaks, no cached pages."""

    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.headers = [
            (b"content-security-policy", CSP.encode()),
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
            (b"cross-origin-opener-policy", b"same-origin"),
        ]
        if hsts:
            self.headers.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in self.headers if name not in present]
                if not static and b"cache-control" not in present:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _include_routers(app: FastAPI) -> None:
    """Include every router listed in ROUTERS (a missing one is an ImportError: every part is written)."""
    for module_path, attribute in routers_module.ROUTERS:
        app.include_router(getattr(importlib.import_module(module_path), attribute))


def route_table(app: FastAPI) -> list[tuple[str, frozenset[str]]]:
    """(path, methods) of every HTTP route, with included routers' prefixes applied; mounts have no methods."""
    table = []
    for context in iter_route_contexts(app.routes):
        if context.path is not None:
            table.append((context.path, frozenset(context.methods or ())))
    return table


def _api_openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI of the JSON API only (pages are not part of it, even if a router forgets include_in_schema)."""
    schema = FastAPI.openapi(app)
    schema["paths"] = {path: item for path, item in schema.get("paths", {}).items() if path.startswith("/api/")}
    schema["info"]["title"] = "adclick manager API"
    return schema


def _error(request: Request, status: int, detail: Any, headers: dict[str, str] | None = None) -> Response:
    if is_api(request):
        return JSONResponse({"detail": detail}, status_code=status, headers=headers)
    message = detail if isinstance(detail, str) else "The request is not valid."
    return render(request, "error.html", {"status": status, "message": message}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def login_required(request: Request, _exc: LoginRequired) -> Response:
        if is_api(request):
            return JSONResponse(
                {"detail": "sign in or send an API token"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error(request, 404, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> Response:
        return _error(request, 409, str(exc))

    @app.exception_handler(Invalid)
    async def invalid(request: Request, exc: Invalid) -> Response:
        # The API's 422 has one documented shape (FastAPI's HTTPValidationError), whoever found the problem.
        if is_api(request):
            detail = [{"loc": ["body"], "msg": str(exc), "type": "value_error"}]
            return JSONResponse({"detail": detail}, status_code=422)
        return _error(request, 422, str(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(request, exc.status_code, exc.detail, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        errors = [
            {"loc": list(error.get("loc", ())), "msg": error.get("msg", ""), "type": error.get("type", "")}
            for error in exc.errors()
        ]
        if is_api(request):
            return JSONResponse({"detail": errors}, status_code=422)
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in errors)
        return render(request, "error.html", {"status": 422, "message": message}, status_code=422)


def _quote(path: str) -> str:
    from urllib.parse import quote

    return quote(path, safe="/")


def create_app(
    settings: ManagerSettings,
    *,
    sessions: async_sessionmaker[AsyncSession] | None = None,
    redis_connection: redis.Redis | None = None,
) -> FastAPI:
    """The app for one process; the database engine and Redis client open lazily and close at shutdown."""
    configure_passwords(settings.manager_password_time_cost, settings.manager_password_memory_kib)
    engine = None
    if sessions is None:
        engine = create_engine(settings)
        sessions = session_factory(engine)
    client = redis_connection or redis_client(settings.redis_url, settings.manager_redis_timeout_ms)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = None
        if settings.manager_reconcile_seconds > 0:
            task = asyncio.create_task(reconcile_forever(sessions, client, settings.manager_reconcile_seconds))
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if redis_connection is None:
                client.close()
            if engine is not None:
                await engine.dispose()

    app = FastAPI(
        title="adclick manager",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load from a CDN; the schema is at /api/v1/openapi.json
        redoc_url=None,
        openapi_url="/api/v1/openapi.json",
        dependencies=[Depends(csrf_protect)],
    )
    app.openapi = lambda: _api_openapi(app)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.session_factory = sessions
    app.state.redis = client
    app.state.login_limiter = LoginLimiter(client, settings.manager_login_attempts_per_minute)

    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.manager_secret.get_secret_value(),
        session_cookie=SESSION_COOKIE,
        max_age=int(settings.manager_session_hours * 3600),
        same_site="lax",
        https_only=settings.secure_cookie,
    )
    app.add_middleware(SecurityHeaders, hsts=settings.secure_cookie)
    _install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        """Readiness: the database answers `SELECT 1` within a couple of seconds."""
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_SECONDS), sessions() as session:
                await session.execute(text("SELECT 1"))
        except Exception as error:  # any failure means "not ready"; say which
            return JSONResponse({"status": "unavailable", "error": type(error).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    _include_routers(app)
    app.state.page_paths = frozenset(path for path, methods in route_table(app) if "GET" in methods)
    return app


def create_app_from_env() -> FastAPI:
    """For `uvicorn --factory`: settings from the environment."""
    from adclick.core.settings import get_manager_settings

    return create_app(get_manager_settings())
