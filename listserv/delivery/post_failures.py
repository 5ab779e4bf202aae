"""Delivery failures that are about the message or the next hop, not about a recipient.

A permanent refusal is blamed on the message (and no member is scored) when
- its enhanced status is about the message or the receiving system: 5.3.x (5.3.4 message too
  big), 5.6.x (content), 5.7.x (policy);
- it answered the whole transaction (connection, EHLO, MAIL FROM, DATA): only the next hop,
  our own relay ``delivery.outbound``, gives those, never a member's mailbox;
- every recipient of a batch of two or more got the same reply (a mailbox refusal names its
  mailbox or differs between domains; an identical one is the relay talking).
A temporary failure given up after ``give_up_after_days`` is blamed on the message when it was
about the transaction or the connection. Everything else is the recipient's failure and goes
to bounce scoring.

The first message failure of an outbound message tells the list owners, once per message
(``outbound_message.failure_noticed_at``); every failed batch is listed by
``listserv queue failed``.
"""

from __future__ import annotations

import logging
from typing import AbstractSet, Any, Sequence

from sqlalchemy import update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from listserv.message import untrusted
from listserv.core.app import App
from listserv.bounces.parse import find_status
from listserv.bounces.report import notify_owners
from listserv.core.models import MailingList, OutboundMessage
from listserv.message.parse import parse_headers

log = logging.getLogger(__name__)

MESSAGE_CLASSES = frozenset({"3", "6", "7"})     # x.3.x system, x.6.x content, x.7.x policy
NOTIFY_KINDS = frozenset({"post", "digest"})     # a failed notice does not beget a notice

Item = tuple[str, Any, str]                      # (recipient, code, reply text)


def about_message(text: str) -> bool:
    """Whether the enhanced status in ``text`` is about the message, not the mailbox."""
    parts = find_status(text).split(".")
    return len(parts) == 3 and parts[0] == "5" and parts[1] in MESSAGE_CLASSES


def split(recipients: Sequence[str], failed: Sequence[Item], whole: AbstractSet[str],
          gave_up: AbstractSet[str] = frozenset()) -> tuple[list[Item], list[Item]]:
    """(the recipients' own failures, failures of the message) among ``failed``.

    ``whole``: recipients whose reply answered the transaction; ``gave_up``: recipients whose
    failure is a temporary one given up (then only a transaction-level one is the message's).
    """
    same = (len(failed) >= 2 and len(failed) == len(recipients)
            and len({(code, text) for _, code, text in failed}) == 1)
    mine: list[Item] = []
    message: list[Item] = []
    for item in failed:
        rcpt, code, text = item
        if rcpt in gave_up:
            (message if rcpt in whole or code is None else mine).append(item)
        elif same or rcpt in whole or about_message(f"{code or ''} {text}"):
            message.append(item)
        else:
            mine.append(item)
    return mine, message


def subject_of(data: bytes) -> str:
    """The Subject of final message bytes (headers only are parsed)."""
    head = parse_headers(data)
    return untrusted.one_line(head.get("subject", "") or "")


def report(session: Session, app: App, outbound_id: int, list_id: int | None, kind: str,
           message_id: str, data: bytes, failed: Sequence[Item]) -> bool:
    """Log the message failure and, the first time for this outbound message, tell the list's
    owners with the reply. True when the owners were told now."""
    code, text = failed[0][1], failed[0][2]
    reply = f"{code or ''} {text}".strip()
    log.warning("delivery failed for the message, not its recipients: list_id=%s "
                "Message-ID=%s, %d recipients: %s", list_id, message_id, len(failed), reply)
    if kind not in NOTIFY_KINDS or list_id is None:
        return False
    res: CursorResult[Any] = session.execute(   # type: ignore[assignment]
        update(OutboundMessage).where(OutboundMessage.id == outbound_id,
                                      OutboundMessage.failure_noticed_at.is_(None))
        .values(failure_noticed_at=app.now()))
    if not res.rowcount:
        return False
    ml = session.get(MailingList, list_id)
    if ml is None:
        return False
    notify_owners(session, app, ml, "notice/owner/delivery_failed.txt.j2", {
        "message_id": message_id, "subject": subject_of(data)[:200], "kind": kind,
        "count": len(failed), "reply": reply[:2000], "outbound": app.settings.outbound,
        "recipients": [r for r, _, _ in failed[:5]]})
    return True
