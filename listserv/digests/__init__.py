"""Digests: MIME (RFC 2046) and plain-text (RFC 1153) digests, on schedule, by size
and on demand.

Seams used by the rest of listserv:
    add_post(session, app, ml, seq, prepared_sha, msg) -> None
        called for every accepted post, in the same transaction as its fan-out;
    tick(app) -> list[SendResult]
        called periodically (~30 s) by the daemon's scheduler.
``build`` holds the pure builders, ``service`` the database side (see its docstring for the
rules: when a digest is due, numbering, crash safety).
"""

from __future__ import annotations

from listserv.digests.build import DigestItem, build_mime_digest, build_plain_digest
from listserv.digests.service import (
    DigestConflict,
    SendResult,
    add_post,
    due,
    due_reason,
    send,
    send_now,
    tick,
)

__all__ = ["DigestItem", "build_mime_digest", "build_plain_digest",
           "DigestConflict", "SendResult", "add_post", "due", "due_reason", "send", "send_now",
           "tick"]
