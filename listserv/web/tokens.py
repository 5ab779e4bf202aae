"""Reading a confirmation/moderation token (models.PendingToken) for a page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from listserv.core import tokens
from listserv.core.app import App
from listserv.core.models import HeldMessage, PendingToken, TokenKind


@dataclass
class Checked:
    row: PendingToken | None
    state: str                 # ok | unknown | used | expired
    detail: str = ""           # for 'used': what was done, by whom


def check(session: Session, app: App, token: str, kinds: tuple[TokenKind, ...]) -> Checked:
    row = tokens.lookup(session, token)
    if row is None or row.kind not in kinds:
        return Checked(None, "unknown")
    if row.used_at is not None:
        return Checked(row, "used", _used(session, row))
    if tokens.is_expired(app, row):
        return Checked(row, "expired")
    return Checked(row, "ok")


def _used(session: Session, row: PendingToken) -> str:
    if row.held_id is not None:
        held = session.get(HeldMessage, row.held_id)
        if held is not None and held.decision is not None:
            from listserv.pipeline.moderation import Outcome

            return f"Already handled: {Outcome(held, False).describe()}."
    return f"Already handled by {row.used_by or 'someone else'}."


STATE_PAGES = {
    "unknown": (404, "This link is not valid. It may have been mistyped or replaced by a "
                     "newer one."),
    "expired": (410, "This link has expired: nothing was done."),
}
