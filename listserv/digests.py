"""Digests. OWNED BY issue #5; this is the seam.

    add_post(session, app, ml, seq, prepared_sha, msg) -> None
is called for every accepted post (in the same transaction as its fan-out);
    tick(app) -> None
is called periodically by the daemon's scheduler.
"""

from __future__ import annotations

from email.message import EmailMessage

from sqlalchemy.orm import Session

from listserv.app import App
from listserv.models import MailingList


def add_post(session: Session, app: App, ml: MailingList, seq: int, prepared_sha: str,
             msg: EmailMessage) -> None:
    """Record an accepted post for the list's next digest."""


def tick(app: App) -> None:
    """Send digests that are due."""
