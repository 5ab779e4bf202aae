"""Put final message bytes on the durable outbound queue (OutboundMessage + Delivery batches).

Notices, digests and forwards go through queue_message() (message and recipients in the
caller's transaction); a post's message is created at accept and its recipients are added
chunk by chunk by its fan-out job (listserv.delivery.fanout). The delivery workers
(listserv.delivery.runner) take it from there.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from sqlalchemy import insert
from sqlalchemy.orm import Session

from listserv.core.app import App
from listserv.core.models import Delivery, DeliveryState, OutboundMessage


def _batches(recipients: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for r in recipients:
        batch.append(r)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def create_message(session: Session, app: App, data: bytes, *, kind: str,
                   envelope_from: str, list_id: int | None = None, verp: bool = False,
                   message_id: str = "", per_member: bool = False) -> OutboundMessage:
    """Store ``data`` and record it as an OutboundMessage (flushed) with no recipients yet."""
    sha = app.spool.put(data, session=session)
    out = OutboundMessage(list_id=list_id, kind=kind, spool_sha=sha,
                          envelope_from=envelope_from, verp=verp, message_id=message_id,
                          created_at=app.now(), per_member=per_member and verp)
    session.add(out)
    session.flush()
    return out


def add_recipients(session: Session, app: App, outbound_id: int,
                   recipients: Iterable[str]) -> int:
    """Queue ``recipients`` of a message: one Delivery row per SMTP transaction's worth
    (max_recipients_per_transaction), never one per recipient. Returns how many."""
    now = app.now()
    size = app.settings.delivery.max_recipients_per_transaction
    count = 0
    rows: list[dict[str, object]] = []
    for b in _batches(recipients, size):
        count += len(b)
        rows.append({"outbound_id": outbound_id, "recipients": "\n".join(b), "count": len(b),
                     "state": DeliveryState.pending, "next_attempt_at": now, "attempts": 0})
        if len(rows) >= 500:
            session.execute(insert(Delivery), rows)
            rows = []
    if rows:
        session.execute(insert(Delivery), rows)
    return count


def queue_message(session: Session, app: App, data: bytes, recipients: Iterable[str], *,
                  kind: str, envelope_from: str, list_id: int | None = None,
                  verp: bool = False, message_id: str = "",
                  per_member: bool = False) -> OutboundMessage:
    """Spool ``data`` (final, signed bytes) and queue it for ``recipients`` in the caller's
    transaction (notices, digests, forwards; a post's members are queued by its fan-out job,
    listserv.delivery.fanout).

    ``recipients`` may be a lazy iterator. With ``verp``, ``envelope_from`` is the list's base
    -bounces address and each recipient gets its own transaction with a VERP'd envelope
    sender. With ``per_member`` (VERP'd posts), ``data`` is unsigned: each member's copy gets
    its own unsubscribe headers and DKIM signature at delivery (listserv.delivery.unsubscribe).
    Returns the OutboundMessage (flushed).
    """
    out = create_message(session, app, data, kind=kind, envelope_from=envelope_from,
                         list_id=list_id, verp=verp, message_id=message_id,
                         per_member=per_member)
    add_recipients(session, app, out.id, recipients)
    return out
