"""Accepted mail whose processing failed: held for the list owners, listed, retried.

A message whose processing raises (a bug, hostile structure nobody foresaw) is parked in
state 'failed' with the error as the reason, and the list owners are told (rate-limited per
owner and list per day, so a flood of failing mail is not a flood of notices). `listserv queue
failed` lists such items and `listserv queue retry ID` processes one again (a fresh
``incoming`` job).

Rows carry a ``kind``: "incoming" (an InboundMessage) or "job" (a dead job of the job
engine, listserv.jobs: a periodic pass that failed MAX_ATTEMPTS times in a row).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv import jobs
from listserv.core import members, ratelimit
from listserv.core.app import App
from listserv.core.errors import UsageError
from listserv.core.models import InboundMessage, InboundState, MailingList
from listserv.core.views import ListView
from listserv.delivery import notices
from listserv.message import untrusted
from listserv.pipeline import inbound as inbound_jobs

log = logging.getLogger(__name__)

TEMPLATE = "notice/owner/failed.txt.j2"
DAILY_NOTICES = 20       # failure notices one owner gets from one list per day
KINDS = ("incoming", "job")
MAX_ID = 2**31 - 1


def tell_owners(app: App, inbound_id: int) -> int:
    """Tell the owners (moderators when it has none) of the list about failed message
    ``inbound_id``; returns how many were told. Never raises: this runs on the failure path."""
    try:
        with app.db.unit_of_work() as session:
            return _tell(session, app, inbound_id)
    except Exception:  # noqa: BLE001 - the failure itself is recorded; the notice is a courtesy
        log.exception("message %d: could not tell the owners about its failure", inbound_id)
        return 0


def _tell(session: Session, app: App, inbound_id: int) -> int:
    inbound = session.get(InboundMessage, inbound_id)
    if inbound is None or inbound.state is not InboundState.failed:
        return 0
    ml = session.get_one(MailingList, inbound.list_id)
    people = members.owners(session, ml) or members.moderators_and_owners(session, ml)
    people = [p for p in people if ratelimit.allow(session, app, ml.id, p, "failed",
                                                   limit=DAILY_NOTICES)]
    if not people:
        log.warning("list_id=%s message_id=%s failed; no owner to tell (or told enough today)",
                    ml.list_id, inbound.message_id)
        return 0
    lv = ListView.of(ml)
    notice = notices.build_notice(app, lv, TEMPLATE, people, {
        "id": inbound.id, "rcpt": untrusted.one_line(inbound.rcpt),
        "sender": untrusted.one_line(inbound.from_addr or inbound.mail_from or "(none)"),
        "subject": untrusted.one_line(inbound.subject),
        "message_id": untrusted.one_line(inbound.message_id),
        "received_at": inbound.received_at.strftime("%Y-%m-%d %H:%M UTC"),
        "error": untrusted.one_line(inbound.outcome or "", 500)})
    notices.send_notice(session, app, lv, notice, people)
    return len(people)


def item_json(inbound: InboundMessage, list_address: str) -> dict[str, Any]:
    return {"kind": "incoming", "id": inbound.id, "list": list_address,
            "rcpt": inbound.rcpt, "sender": inbound.from_addr or inbound.mail_from,
            "subject": inbound.subject, "message_id": inbound.message_id,
            "received_at": inbound.received_at.isoformat(), "attempts": inbound.attempts,
            "error": inbound.outcome or ""}


def failed_items(session: Session, kind: str | None = None) -> list[dict[str, Any]]:
    """Every failed item (of ``kind``), oldest first, as JSON-able rows with a ``kind``."""
    items: list[dict[str, Any]] = []
    if kind in (None, "incoming"):
        rows = session.execute(select(InboundMessage, MailingList).join(MailingList).where(
            InboundMessage.state == InboundState.failed).order_by(InboundMessage.id)).all()
        items += [item_json(inbound, ml.address) for inbound, ml in rows]
    return items


def retry(session: Session, app: App, item_id: int, kind: str = "incoming") -> str:
    """Put failed item ``item_id`` back in its queue; a description of what was done."""
    if kind not in KINDS:
        raise UsageError(f"unknown kind {kind!r}; kinds are: {', '.join(KINDS)}")
    if kind == "job":
        return jobs.retry_dead(session, app, item_id)
    if not 0 < item_id <= MAX_ID:
        raise UsageError(f"no failed {kind} message with id {item_id}")
    row = session.get(InboundMessage, item_id, with_for_update=True)
    if row is None or row.state is not InboundState.failed:
        raise UsageError(f"no failed {kind} message with id {item_id}")
    row.state, row.attempts, row.outcome = InboundState.new, 0, None
    inbound_jobs.enqueue(session, app, row.id, row.list_id, row.subaddress)
    log.warning("message %d: queued again for processing (queue retry)", item_id)
    return f"message {item_id} queued again for processing"
