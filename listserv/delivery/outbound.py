"""Put final message bytes on the durable outbound queue (OutboundMessage + Delivery batches).

Everything the list sends — posts, notices, digests, forwards — goes through queue_message().
The delivery workers (listserv.delivery.runner) take it from there.
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


def queue_message(session: Session, app: App, data: bytes, recipients: Iterable[str], *,
                  kind: str, envelope_from: str, list_id: int | None = None,
                  verp: bool = False, message_id: str = "",
                  per_member: bool = False) -> OutboundMessage:
    """Store ``data`` (final, signed bytes) and queue it for ``recipients``.

    ``recipients`` may be a lazy iterator (a 100,000-member list is streamed). With ``verp``,
    ``envelope_from`` is the list's base -bounces address and each recipient gets its own
    transaction with a VERP'd envelope sender. With ``per_member`` (VERP'd posts), ``data``
    is unsigned: each member's copy gets its own unsubscribe headers and DKIM signature at
    delivery (listserv.delivery.unsubscribe). Returns the OutboundMessage (flushed).
    """
    sha = app.spool.put(data, session=session)
    out = OutboundMessage(list_id=list_id, kind=kind, spool_sha=sha,
                          envelope_from=envelope_from, verp=verp, message_id=message_id,
                          created_at=app.now(), per_member=per_member and verp)
    session.add(out)
    session.flush()
    now = app.now()
    size = app.settings.delivery.max_recipients_per_transaction
    rows = [
        {"outbound_id": out.id, "recipients": "\n".join(b), "count": len(b),
         "state": DeliveryState.pending, "next_attempt_at": now, "attempts": 0}
        for b in _batches(recipients, size)
    ]
    for i in range(0, len(rows), 500):
        session.execute(insert(Delivery), rows[i:i + 500])
    return out
