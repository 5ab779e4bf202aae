"""The Starlette application behind `listserv serve` / `listserv web`.

create_app(app) builds it for one App: the page routes of each web module (a literal tuple,
mounted under base_url's path), the stylesheet, error pages that never show a traceback, and the
security headers middleware. Handlers that touch the database are plain functions run in
Starlette's thread pool, like the daemon's workers.
"""

from __future__ import annotations

import hashlib
import http
import logging
from typing import Any, Sequence

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from listserv.core import templating
from listserv.core.app import App
from listserv.web import (
    archive,
    confirm,
    directory,
    moderate,
    modlog,
    pages,
    security,
    unsubscribe,
)
from listserv.web.pages import Web

log = logging.getLogger(__name__)

STYLESHEET = "web/style.css"
TITLES = {400: "Bad request", 403: "Forbidden", 404: "Not found", 405: "Method not allowed",
          413: "Too large", 429: "Too many requests", 500: "Something went wrong"}


def stylesheet(request: Request) -> Response:
    """templates/web/style.css, overridable like every template, served as is."""
    w = pages.web(request)
    env = templating.environment(w.app.settings.data_dir)
    try:
        source, _, _ = env.loader.get_source(env, STYLESHEET)  # type: ignore[union-attr]
    except jinja2.TemplateNotFound:
        raise HTTPException(404) from None
    etag = '"' + hashlib.sha256(source.encode()).hexdigest()[:16] + '"'
    headers = {"Cache-Control": "public, max-age=3600", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(source, media_type="text/css", headers=headers)


def page_routes() -> list[BaseRoute]:
    """Every page, in matching order. Each web module contributes its ROUTES."""
    return [
        *directory.ROUTES,
        Route("/static/style.css", stylesheet, methods=["GET", "HEAD"]),
        *unsubscribe.ROUTES,
        *confirm.ROUTES,
        *moderate.ROUTES,
        *archive.ROUTES,
        *modlog.ROUTES,
    ]


def error_page(request: Request, status: int, detail: str) -> Response:
    title = TITLES.get(status, "Error")
    try:
        return pages.render(request, "web/error.html.j2",
                            {"status": status, "title": title, "detail": detail}, status)
    except Exception:                    # the database or a template is broken: still no trace
        log.exception("rendering the error page failed")
        return PlainTextResponse(f"{status} {title}\n", status_code=status)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    default = {TITLES.get(exc.status_code, ""), _phrase(exc.status_code)}
    detail = exc.detail if exc.detail and exc.detail not in default else ""
    if exc.status_code == 404 and not detail:
        detail = "There is no page at this address. A link may have expired or been mistyped."
    response = error_page(request, exc.status_code, detail)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


async def server_error(request: Request, exc: Exception) -> Response:
    log.error("web: %s %s failed", request.method, request.url.path, exc_info=exc)
    response = error_page(request, 500, "The page could not be shown. Please try again later.")
    # Starlette answers 500s outside the middleware stack: add the headers here
    for name, value in (*security.HEADERS, (b"cache-control", b"no-store")):
        response.headers[name.decode()] = value.decode()
    return response


def create_app(app: App, *, base_url: str | None = None,
               routes: Sequence[BaseRoute] | None = None) -> Starlette:
    """The ASGI application serving ``app``'s pages (base_url from the settings by default)."""
    w = Web(app=app, base_url=(base_url or app.settings.web.base_url).rstrip("/"))
    inner: list[BaseRoute] = list(routes if routes is not None else page_routes())
    mounted: list[BaseRoute] = [Mount(w.prefix, routes=inner)] if w.prefix else inner
    handlers: dict[Any, Any] = {HTTPException: http_error, Exception: server_error}
    asgi = Starlette(routes=mounted, exception_handlers=handlers,
                     middleware=[Middleware(security.SecurityHeaders)])
    asgi.state.web = w
    return asgi
