"""Jinja2 pages (autoescaped) with what every page needs: the user, a CSRF token, the navigation and flashes.

Other manager modules render through `render(request, "reports.html", {...})`; their templates extend
`base.html` (blocks: `title`, `head`, `content`, `scripts`) and put a form's token in with `{{ csrf_field() }}`.
The CSP allows no inline script or style: put JavaScript and CSS in static/ and link them (`static_url`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from markupsafe import Markup, escape
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.responses import HTMLResponse, RedirectResponse

from adclick.manager.campaigns import page as page_of
from adclick.manager.routers import NAV
from adclick.manager.security import new_csrf_token

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=HERE / "templates")
templates.env.autoescape = True  # every template, whatever its file name


def csrf_token(request: Request) -> str:
    """The session's CSRF token, made on first use (anonymous sessions get one too: the login form needs it)."""
    token = request.session.get("csrf")
    if not isinstance(token, str):
        token = new_csrf_token()
        request.session["csrf"] = token
    return token


def flash(request: Request, text: str, kind: str = "info") -> None:
    """A message shown once, on the next page this session renders (after a redirect)."""
    request.session.setdefault("flash", []).append([kind, text])


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200) -> HTMLResponse:
    user = getattr(request.state, "user", None)
    token = csrf_token(request)
    paths: frozenset[str] = getattr(request.app.state, "page_paths", frozenset())
    nav = [item for item in NAV if user is not None and user.role in item.roles and item.path in paths]
    full = {
        "user": user,
        "csrf_token": token,
        "csrf_field": lambda: Markup('<input type="hidden" name="csrf_token" value="{}">').format(escape(token)),
        "nav": nav,
        "current_path": request.url.path,
        "flashes": request.session.pop("flash", []),
        **(context or {}),
    }
    return templates.TemplateResponse(request, name, full, status_code=status_code)


def see_other(request: Request, url: str, message: str | None = None, kind: str = "info") -> RedirectResponse:
    """Post/redirect/get: a 303 to `url`, with `message` flashed for the page it shows."""
    if message is not None:
        flash(request, message, kind)
    return RedirectResponse(url, status_code=303)


def render_form(request: Request, name: str, context: dict[str, Any]) -> HTMLResponse:
    """A page that shows a form again: 422 when `context` holds errors, else 200."""
    return render(request, name, context, status_code=422 if context.get("errors") else 200)


async def listing(request: Request, session: AsyncSession, model: Any, key: str, page: int = 1, **extra: Any) -> Any:
    """The page `<key>.html` listing a model's rows by id, `extra` added to its context (a create form's errors
    show on it again, with 422)."""
    rows, total = await page_of(session, select(model).order_by(model.id), page)
    return render_form(request, f"{key}.html", {key: rows, "total": total, "page": page, **extra})
