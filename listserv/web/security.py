"""Response headers, cross-site request protection and rate limits for the web pages.

* Every response gets a strict Content-Security-Policy (no script at all, styles from us only),
  ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (URLs carry tokens that
  must not leak to other sites) and ``X-Frame-Options: DENY``; pages are ``no-store`` unless the
  endpoint set its own Cache-Control.
* Forms that change state carry a CSRF token: an HMAC, with the site secret, of the page's scope
  (the token in its URL, or its path when it has none) and the time it was issued. A POST must
  bring back a fresh one for the same scope; a browser's cross-site POST (``Sec-Fetch-Site:
  cross-site`` or a foreign ``Origin``) is refused as well.
* RateLimiter: a per-process sliding window per key (client IP, address, token), for forms.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import threading
import time
from collections import deque
from typing import Any, Awaitable, Callable, MutableMapping
from urllib.parse import urlsplit

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = ("default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none'; "
       "frame-ancestors 'none'; form-action 'self'; img-src 'self' data:")
HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)
CSRF_MAX_AGE = 24 * 3600          # a page left open for a day can still be submitted


class SecurityHeaders:
    """Pure ASGI middleware adding the security headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                headers.extend(h for h in HEADERS if h[0] not in names)
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, wrapped)


def _mac(secret: str, scope: str, issued: int) -> str:
    digest = hmac.new(secret.encode(), f"csrf\0{scope}\0{issued}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(digest.digest()[:18]).decode("ascii")


def csrf_token(secret: str, scope: str, now: float | None = None) -> str:
    """A token for forms on the page of ``scope``: ISSUED.MAC."""
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_mac(secret, scope, issued)}"


def csrf_valid(secret: str, scope: str, value: str | None, now: float | None = None) -> bool:
    if not value or "." not in value:
        return False
    issued_text, _, mac = value.partition(".")
    if not issued_text.isdigit():
        return False
    issued = int(issued_text)
    t = time.time() if now is None else now
    if not (t - CSRF_MAX_AGE <= issued <= t + 60):
        return False
    return hmac.compare_digest(mac, _mac(secret, scope, issued))


def same_site(headers: Any, base_url: str) -> bool:
    """False for a browser's cross-site request (Fetch metadata or a foreign Origin).
    Requests without those headers (mail providers' one-click POSTs, curl) pass; so does
    ``Origin: null``, which browsers send for our own forms under ``Referrer-Policy:
    no-referrer`` (the CSRF token covers those)."""
    if headers.get("sec-fetch-site", "") == "cross-site":
        return False
    origin = headers.get("origin")
    if not origin or origin == "null":
        return True
    o = urlsplit(origin)
    allowed = {_origin(urlsplit(base_url))}
    host = headers.get("host")
    if host:
        allowed |= {f"http://{host}", f"https://{host}"}
    return _origin(o) in allowed


def _origin(u: Any) -> str:
    return f"{u.scheme}://{u.netloc}".lower()


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key, in this process."""

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self.max_keys = max_keys
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self.clock()
        with self._lock:
            q = self._events.get(key)
            if q is None:
                if len(self._events) >= self.max_keys:
                    self._prune(now)
                q = self._events[key] = deque()
            while q and q[0] <= now - self.window:
                q.popleft()
            if len(q) >= self.limit:
                return False
            q.append(now)
            return True

    def _prune(self, now: float) -> None:
        for key in [k for k, q in self._events.items() if not q or q[-1] <= now - self.window]:
            del self._events[key]
        if len(self._events) >= self.max_keys:       # still full: forget the oldest half
            for key in list(self._events)[: self.max_keys // 2]:
                del self._events[key]
