"""Held posts and the moderation queue. OWNED BY the moderation issue (#4); this is the seam.

Seam used by the posting pipeline:
    hold(session, app, inbound, msg, reasons) -> HeldMessage
The moderation work adds notices, tokens, approve/reject/discard, the log and tick().
"""

from __future__ import annotations

from email.message import EmailMessage

from sqlalchemy.orm import Session

from listserv.app import App
from listserv.models import HeldMessage, InboundMessage, InboundState


def hold(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage,
         reasons: list[str]) -> HeldMessage:
    """Park a post for moderators with every reason collected by the rules."""
    held = HeldMessage(inbound_id=inbound.id, list_id=inbound.list_id,
                       sender=inbound.from_addr or inbound.mail_from,
                       subject=inbound.subject, size=inbound.size, reasons=list(reasons),
                       held_at=app.now())
    session.add(held)
    inbound.state = InboundState.held
    inbound.outcome = "; ".join(reasons)
    session.flush()
    return held


def tick(app: App) -> None:
    """Periodic work (expire old holds). Called by the daemon's scheduler."""
