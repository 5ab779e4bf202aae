"""Queue depth figures for `listserv queue status`: the outbound (delivery) and incoming queues."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listserv.models import Delivery, DeliveryState, InboundMessage, InboundState


def _counts(session: Session, *where: Any) -> dict[str, int]:
    row = session.execute(select(func.count(Delivery.id),
                                 func.coalesce(func.sum(Delivery.count), 0)).where(*where)).one()
    return {"batches": int(row[0]), "recipients": int(row[1])}


def queue_status(session: Session, now: dt.datetime) -> dict[str, Any]:
    """Figures of both queues as plain data (the CLI prints them as text or JSON)."""
    D = Delivery
    pending = D.state == DeliveryState.pending
    outbound: dict[str, Any] = {
        "pending": _counts(session, pending),
        "ready": _counts(session, pending, D.next_attempt_at <= now),
        "retrying": _counts(session, pending, D.attempts > 0),
        "in_flight": _counts(session, D.state == DeliveryState.sending),
        "failed": _counts(session, D.state == DeliveryState.failed),
        "failed_24h": _counts(session, D.state == DeliveryState.failed,
                              D.finished_at >= now - dt.timedelta(hours=24)),
        "done_24h": _counts(session, D.state == DeliveryState.done,
                            D.finished_at >= now - dt.timedelta(hours=24)),
    }
    oldest = session.scalar(select(func.min(D.next_attempt_at)).where(pending))
    next_retry = session.scalar(select(func.min(D.next_attempt_at))
                                .where(pending, D.attempts > 0))
    outbound["oldest_pending_at"] = oldest.isoformat() if oldest else None
    outbound["next_retry_at"] = next_retry.isoformat() if next_retry else None
    rows = session.execute(select(InboundMessage.state, func.count(InboundMessage.id))
                           .group_by(InboundMessage.state)).all()
    by_state = {state.value: n for state, n in rows}
    incoming = {s.value: int(by_state.get(s.value, 0))
                for s in (InboundState.new, InboundState.processing, InboundState.failed)}
    return {"outbound": outbound, "incoming": incoming}
