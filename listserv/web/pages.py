"""Helpers shared by the page modules: the per-site web context, rendering, forms, CSRF."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse

from listserv.core import templating
from listserv.core.app import App, site_secret
from listserv.web import security

MAX_FORM_BYTES = 64 * 1024        # every form of ours is a few fields


@dataclass
class Web:
    """What every request handler needs: the App, the public URL, the site secret, limits."""

    app: App
    base_url: str
    limits: dict[str, security.RateLimiter] = field(default_factory=dict)
    _secret: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def prefix(self) -> str:
        """The path part of base_url ('' or '/lists'): where the pages are mounted."""
        return urlsplit(self.base_url).path.rstrip("/")

    def url(self, path: str) -> str:
        """The public URL of one of our paths (for links in mail)."""
        return self.base_url.rstrip("/") + path

    @property
    def secret(self) -> str:
        if self._secret is None:
            with self._lock:
                if self._secret is None:
                    with self.app.db.unit_of_work() as session:
                        self._secret = site_secret(session)
        return self._secret

    def limiter(self, name: str, limit: int, window: float) -> security.RateLimiter:
        with self._lock:
            lim = self.limits.get(name)
            if lim is None:
                lim = self.limits[name] = security.RateLimiter(limit, window)
            return lim


def web(request: Request) -> Web:
    w: Web = request.app.state.web
    return w


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def render(request: Request, name: str, context: dict[str, Any], status: int = 200, *,
           domain: str | None = None, list_address: str | None = None,
           csrf_scope: str | None = None) -> HTMLResponse:
    """Render templates/NAME (overridable per site, domain and list) as an HTML page.
    With ``csrf_scope`` the page's forms get a CSRF token for that scope (``csrf``)."""
    w = web(request)
    page = {"prefix": w.prefix, "base_url": w.base_url,
            "csrf": security.csrf_token(w.secret, csrf_scope) if csrf_scope else ""}
    text = templating.render(w.app.settings.data_dir, name, {"web": page, **context},
                             domain=domain, list_address=list_address)
    return HTMLResponse(text, status_code=status)


async def read_form(request: Request) -> FormData:
    """The urlencoded form of a POST (bounded), 400 otherwise."""
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > MAX_FORM_BYTES:
        raise HTTPException(413, "This form is too large.")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise HTTPException(400, "This address expects a form.")
    try:
        return await request.form(max_files=0, max_fields=50)
    except Exception:
        raise HTTPException(400, "This form could not be read.") from None


def check_csrf(request: Request, form: FormData, scope: str) -> None:
    """403 unless the form carries a fresh CSRF token for ``scope`` from a same-site page."""
    w = web(request)
    value = form.get("csrf")
    if not security.same_site(request.headers, w.base_url) or not security.csrf_valid(
            w.secret, scope, value if isinstance(value, str) else None):
        raise HTTPException(403, "This form has expired or did not come from this site. "
                                 "Reload the page and try again.")


def rate_limit(request: Request, name: str, key: str, limit: int, window: float) -> None:
    """429 when ``key`` has used ``name`` more than ``limit`` times in ``window`` seconds."""
    if not web(request).limiter(name, limit, window).allow(key):
        raise HTTPException(429, "Too many requests. Please wait a little and try again.")
