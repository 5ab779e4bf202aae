"""Confirmation and moderation tokens (models.PendingToken).

A token is 160 random bits from ``secrets`` written as 32 lower-case base32 characters
(``[a-z2-7]``): it lives in the local part of ``NAME-confirm+TOKEN@DOMAIN``, where an MTA may
change the case, so it is case-insensitive by construction. Only its SHA-256 is stored.

Rules (interface.md, "Moderation by reply" and "Confirmations"): a token is bound to one list,
one kind, one address (the person it was sent to) and, for moderation, one held post; it
expires; it is single-use (consume() is an atomic ``UPDATE ... WHERE used_at IS NULL``).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from listserv.core.app import App
from listserv.core.models import MailingList, PendingToken, TokenKind

TOKEN_BYTES = 20                      # 160 bits
TOKEN_RE = re.compile(r"^[a-z2-7]{32}$")           # what new_token() makes
ACCEPT_RE = re.compile(r"^[a-z0-9]{32,64}$")        # what lookup() accepts (hex tokens too)
RESEND_INTERVAL = dt.timedelta(hours=1)


def new_token() -> str:
    return base64.b32encode(secrets.token_bytes(TOKEN_BYTES)).decode("ascii").lower()


def normalise(token: str) -> str | None:
    """The canonical form of a token as it came back (any case), or None when malformed."""
    t = token.strip().lower()
    return t if ACCEPT_RE.match(t) else None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def lifetime(app: App) -> dt.timedelta:
    return dt.timedelta(days=app.settings.moderation.token_lifetime_days)


def create(session: Session, app: App, kind: TokenKind, ml: MailingList, email: str, *,
           held_id: int | None = None, payload: dict[str, Any] | None = None,
           token: str | None = None, now: dt.datetime | None = None
           ) -> tuple[str, PendingToken]:
    """A new token (returned in clear once, never stored) and its row. ``token`` and ``now``:
    made earlier with new_token() and app.now() (a notice that shows them composed before
    its transaction writes)."""
    token = token or new_token()
    now = now or app.now()
    row = PendingToken(token_hash=hash_token(token), kind=kind, list_id=ml.id, email=email,
                       held_id=held_id, payload=dict(payload or {}), created_at=now,
                       last_sent_at=now, expires_at=now + lifetime(app))
    session.add(row)
    session.flush()
    return token, row


@dataclass
class Issued:
    """Result of issue(): ``token`` is None when a mail went out less than an hour ago."""

    row: PendingToken
    token: str | None
    reissued: bool


def outstanding(session: Session, app: App, kind: TokenKind, ml: MailingList, email: str,
                match: dict[str, Any] | None = None) -> PendingToken | None:
    """The open (unused, unexpired) token of this kind for ``email`` on ``ml``, if any.
    ``match`` further requires equal payload values (e.g. the subscriber of an approval)."""
    rows = session.scalars(select(PendingToken).where(
        PendingToken.list_id == ml.id, PendingToken.kind == kind, PendingToken.email == email,
        PendingToken.used_at.is_(None), PendingToken.expires_at > app.now()
    ).order_by(PendingToken.id))
    for row in rows:
        if all((row.payload or {}).get(k) == v for k, v in (match or {}).items()):
            return row
    return None


def issue(session: Session, app: App, kind: TokenKind, ml: MailingList, email: str, *,
          payload: dict[str, Any] | None = None, match: dict[str, Any] | None = None) -> Issued:
    """At most one outstanding confirmation per (list, kind, address[, match]).

    When one is open and was sent less than an hour ago, nothing new is issued (token None: send
    nothing). When one is open but older, it is re-issued in place: a fresh token replaces the
    stored hash (the old one stops working), its lifetime restarts and last_sent_at is set.
    """
    row = outstanding(session, app, kind, ml, email, match)
    now = app.now()
    if row is None:
        token, row = create(session, app, kind, ml, email, payload=payload)
        return Issued(row, token, False)
    if now - row.last_sent_at < RESEND_INTERVAL:
        return Issued(row, None, False)
    token = new_token()
    row.token_hash = hash_token(token)
    row.last_sent_at = now
    row.expires_at = now + lifetime(app)
    if payload is not None:
        row.payload = dict(payload)
    session.flush()
    return Issued(row, token, True)


def lookup(session: Session, token: str) -> PendingToken | None:
    """The row for a token as received (any case), used or not, expired or not."""
    t = normalise(token)
    if t is None:
        return None
    h = hash_token(t)
    row = session.scalar(select(PendingToken).where(PendingToken.token_hash == h))
    if row is None or not hmac.compare_digest(row.token_hash, h):
        return None
    return row


def is_expired(app: App, row: PendingToken) -> bool:
    return row.expires_at <= app.now()


def consume(session: Session, app: App, row: PendingToken, *, by: str, outcome: str) -> bool:
    """Mark the token used, atomically: True for the one caller that wins."""
    res = session.execute(update(PendingToken).where(
        PendingToken.id == row.id, PendingToken.used_at.is_(None)
    ).values(used_at=app.now(), used_by=by, outcome=outcome[:64]))
    assert isinstance(res, CursorResult)
    won = res.rowcount == 1
    session.refresh(row)
    return won


def close_for_held(session: Session, app: App, held_id: int, *, by: str, outcome: str) -> None:
    """Mark every still-open token of a held post as used (the post was decided)."""
    session.execute(update(PendingToken).where(
        PendingToken.held_id == held_id, PendingToken.used_at.is_(None)
    ).values(used_at=app.now(), used_by=by, outcome=outcome[:64]))


def close_open(session: Session, now: dt.datetime, *, list_id: int, email: str,
               kind: TokenKind, outcome: str) -> None:
    """Mark every still-open token of ``kind`` sent to ``email`` on a list as used."""
    session.execute(update(PendingToken).where(
        PendingToken.list_id == list_id, PendingToken.email == email,
        PendingToken.kind == kind, PendingToken.used_at.is_(None)
    ).values(used_at=now, outcome=outcome[:64]))


def purge(session: Session, app: App, *, keep: dt.timedelta = dt.timedelta(days=30)) -> int:
    """Delete tokens that expired more than ``keep`` ago."""
    from sqlalchemy import delete

    res = session.execute(delete(PendingToken).where(
        PendingToken.expires_at < app.now() - keep))
    assert isinstance(res, CursorResult)
    return res.rowcount
