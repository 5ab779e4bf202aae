"""Bounce processing. OWNED BY issue #6; this is the seam.

    handle_mail(session, app, inbound, msg) -> None       mail to -bounces / -bounces+VERP
    record_failure(session, app, list_id, recipients, code, text, permanent) -> None
        called by delivery for a synchronous 5xx, or when retries are exhausted
    tick(app) -> None                                      periodic (warnings, removal, staleness)
"""

from __future__ import annotations

import logging
from email.message import EmailMessage

from sqlalchemy.orm import Session

from listserv.app import App
from listserv.models import InboundMessage, InboundState

log = logging.getLogger(__name__)


def handle_mail(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage) -> None:
    inbound.state = InboundState.handled
    inbound.outcome = "bounce processing not implemented"


def record_failure(session: Session, app: App, list_id: int | None, recipients: list[str],
                   code: int, text: str, permanent: bool) -> None:
    log.warning("delivery failure %s for %d recipients: %s", code, len(recipients), text)


def tick(app: App) -> None:
    """Periodic bounce work."""
