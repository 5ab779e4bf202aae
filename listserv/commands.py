"""Email commands: -request, -join, -leave, -confirm+TOKEN. OWNED BY issue #4; this is the seam.

    handle_mail(session, app, inbound, msg) -> None
is called by the incoming worker for every message to those sub-addresses.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage

from sqlalchemy.orm import Session

from listserv.app import App
from listserv.models import InboundMessage, InboundState

log = logging.getLogger(__name__)


def handle_mail(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage) -> None:
    log.warning("command mail to %s not handled yet", inbound.rcpt)
    inbound.state = InboundState.handled
    inbound.outcome = "not implemented"
