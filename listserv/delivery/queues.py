"""The outbound queue in the database (the ``delivery`` table): claim ready batches, give
stale claims back, record results, and the figures of `listserv queue status`.

listserv.delivery.outbound.queue_message() fills the queue; listserv.delivery.runner runs the workers.
A claim moves rows from ``pending`` to ``sending`` in one statement (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, so several processes share one database). Results are written per
batch, never per recipient: a batch whose recipients end in different states is split (the
row keeps one group, new rows take the others).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import socket
from typing import Any, Iterable, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from listserv.bounces import process as bounces
from listserv.delivery import post_failures
from listserv.core.app import App
from listserv.core.models import (
    Delivery,
    DeliveryState,
    Domain,
    InboundMessage,
    InboundState,
    MailingList,
    OutboundMessage,
)
from listserv.delivery.transport import Batch

log = logging.getLogger(__name__)

STALE_AFTER = dt.timedelta(minutes=30)
ERROR_LINES = 20              # recipients quoted in last_error
T = cast(Table, Delivery.__table__)


def make_owner() -> str:
    """A claim owner id: HOST:PID:RANDOM (the pid lets a restart on this host spot dead claims)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


# ---------------------------------------------------------------------------- queue operations


def claim(session: Session, owner: str, now: dt.datetime, limit: int) -> list[Any]:
    """Move up to ``limit`` ready rows to ``sending`` for ``owner``; return them (id,
    outbound_id, recipients, attempts, first_attempt_at), oldest first."""
    ready = (select(T.c.id)
             .where(T.c.state == DeliveryState.pending, T.c.next_attempt_at <= now)
             .order_by(T.c.next_attempt_at, T.c.id).limit(limit))
    # A plain read first: an idle poll then never takes SQLite's write lock.
    if session.execute(ready.limit(1)).first() is None:
        return []
    if session.get_bind().dialect.name == "postgresql":
        ready = ready.with_for_update(skip_locked=True)
    stmt = (update(T).where(T.c.id.in_(ready), T.c.state == DeliveryState.pending)
            .values(state=DeliveryState.sending, locked_by=owner, locked_at=now)
            .returning(T.c.id, T.c.outbound_id, T.c.recipients, T.c.attempts,
                       T.c.first_attempt_at))
    rows = list(session.execute(stmt))
    rows.sort(key=lambda r: r.id)
    return rows


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def claim_is_dead(owner: str | None) -> bool:
    """Whether the make_owner() id ``owner`` belongs to a process of this host that is gone
    (another host's, or an unreadable, owner: only staleness can tell)."""
    parts = (owner or "").split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname()[:40] or not parts[1].isdigit():
        return False
    return not _pid_alive(int(parts[1]))


def recover(session: Session, now: dt.datetime, stale_after: dt.timedelta = STALE_AFTER) -> int:
    """Give claims of dead or stuck workers back to the queue; return how many rows."""
    rows = session.execute(select(T.c.id, T.c.locked_by, T.c.locked_at)
                           .where(T.c.state == DeliveryState.sending)).all()
    by_owner: dict[str | None, list[int]] = {}
    for r in rows:
        if (r.locked_at is None or r.locked_at <= now - stale_after
                or claim_is_dead(r.locked_by)):
            by_owner.setdefault(r.locked_by, []).append(r.id)
    count = 0
    for owner, ids in by_owner.items():
        cond = T.c.locked_by.is_(None) if owner is None else T.c.locked_by == owner
        res = cast(CursorResult[Any], session.execute(
            update(T).where(T.c.id.in_(ids), T.c.state == DeliveryState.sending, cond)
            .values(state=DeliveryState.pending, locked_by=None, locked_at=None)))
        count += res.rowcount or 0
    if count:
        log.warning("delivery: %d stale claims returned to the queue", count)
    return count


def _error_text(items: list[tuple[str, Any, str]]) -> str:
    lines = [f"{r}: {code or ''} {text}".strip() for r, code, text in items[:ERROR_LINES]]
    if len(items) > ERROR_LINES:
        lines.append(f"... and {len(items) - ERROR_LINES} more")
    return "\n".join(lines)


def record(session: Session, app: App, owner: str, batches: Iterable[Batch]) -> None:
    """Write the outcome of finished batches (see the module docstring). Permanent failures are
    reported to bounces.record_failure in the same transaction."""
    now = app.now()
    d = app.settings.delivery
    give_up = dt.timedelta(days=d.give_up_after_days)
    for b in batches:
        tries = b.attempts + 1
        first = b.first_attempt_at or now
        retry: list[tuple[str, Any, str]] = []
        failed: list[tuple[str, Any, str]] = list(b.perm)
        gave_up: set[str] = set()
        for item in b.temp:
            if now - first >= give_up:
                failed.append((item[0], item[1] if item[1] and item[1] >= 500 else 550,
                               f"gave up after {d.give_up_after_days:g} days: {item[2]}"))
                gave_up.add(item[0])
            else:
                retry.append(item)
        rcpt_failed, msg_failed = post_failures.split(
            b.recipients, failed, b.whole, gave_up)
        delay = d.retry_schedule[min(tries, len(d.retry_schedule)) - 1]
        groups: list[dict[str, Any]] = []
        base = {"outbound_id": b.message.outbound_id, "locked_by": None, "locked_at": None,
                "first_attempt_at": first, "blame": None}
        if b.ok:
            groups.append({**base, "recipients": b.ok, "state": DeliveryState.done,
                           "attempts": tries, "next_attempt_at": now, "last_code": 250,
                           "last_error": None, "finished_at": now})
        if retry:
            groups.append({**base, "recipients": [r for r, _, _ in retry],
                           "state": DeliveryState.pending, "attempts": tries,
                           "next_attempt_at": now + dt.timedelta(seconds=delay),
                           "last_code": retry[0][1], "last_error": _error_text(retry),
                           "finished_at": None})
        for blame, items in (("recipient", rcpt_failed), ("message", msg_failed)):
            if items:
                groups.append({**base, "recipients": [r for r, _, _ in items],
                               "state": DeliveryState.failed, "attempts": tries,
                               "next_attempt_at": now, "last_code": items[0][1],
                               "last_error": _error_text(items), "finished_at": now,
                               "blame": blame})
        if b.unsent:
            groups.append({**base, "recipients": b.unsent, "state": DeliveryState.pending,
                           "attempts": b.attempts, "next_attempt_at": now,
                           "first_attempt_at": b.first_attempt_at, "last_code": None,
                           "last_error": None, "finished_at": None})
        for g in groups:
            g["count"] = len(g["recipients"])
            g["recipients"] = "\n".join(g["recipients"])
        if not groups:
            continue
        head, rest = groups[0], groups[1:]
        res = cast(CursorResult[Any], session.execute(
            update(T).where(T.c.id == b.id, T.c.locked_by == owner,
                            T.c.state == DeliveryState.sending)
            .values(**{k: v for k, v in head.items() if k != "outbound_id"})))
        if not res.rowcount:
            log.warning("delivery batch %s: claim was lost (recovered by another worker); "
                        "its result is not recorded", b.id)
            continue
        if rest:
            session.execute(insert(T), rest)
        _report_failures(session, app, b, rcpt_failed)
        if msg_failed:
            _report_message_failure(session, app, b, msg_failed)
        log.info("delivery batch %s list_id=%s Message-ID=%s: %d delivered, %d to retry, "
                 "%d failed (%d of them the message's), %d not sent", b.id, b.message.list_id,
                 b.message.message_id, len(b.ok), len(retry), len(failed), len(msg_failed),
                 len(b.unsent))


def _report_failures(session: Session, app: App, b: Batch,
                     failed: list[tuple[str, Any, str]]) -> None:
    by_reply: dict[tuple[int, str], list[str]] = {}
    for rcpt, code, text in failed:
        by_reply.setdefault((int(code or 550), text), []).append(rcpt)
    for (code, text), rcpts in by_reply.items():
        try:
            with session.begin_nested():
                bounces.record_failure(session, app, b.message.list_id, rcpts, code, text, True)
        except Exception:
            log.exception("delivery batch %s: bounce processing failed", b.id)


def _report_message_failure(session: Session, app: App, b: Batch,
                            failed: list[tuple[str, Any, str]]) -> None:
    m = b.message
    try:
        with session.begin_nested():
            kind = session.scalar(select(OutboundMessage.kind)
                                  .where(OutboundMessage.id == m.outbound_id)) or ""
            post_failures.report(session, app, m.outbound_id, m.list_id, kind, m.message_id,
                                 m.data, failed)
    except Exception:
        log.exception("delivery batch %s: reporting the message failure failed", b.id)


# ---------------------------------------------------------------------------- status


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


def failed_deliveries(session: Session, limit: int = 100) -> list[dict[str, Any]]:
    """Failed outbound batches, newest first, as rows of `listserv queue failed` (``kind``
    "outbound"; ``blame`` "message" when the message or the next hop was refused, nobody
    scored, or "recipient" when the recipients' own failure went to bounce scoring)."""
    O = OutboundMessage
    q = (select(Delivery.id, Delivery.count, Delivery.recipients, Delivery.last_code,
                Delivery.last_error, Delivery.finished_at, Delivery.attempts, Delivery.blame,
                O.kind, O.message_id, MailingList.name, Domain.name.label("domain"))
         .join(O, Delivery.outbound_id == O.id)
         .outerjoin(MailingList, O.list_id == MailingList.id)
         .outerjoin(Domain, MailingList.domain_id == Domain.id)
         .where(Delivery.state == DeliveryState.failed)
         .order_by(Delivery.finished_at.desc(), Delivery.id.desc()).limit(limit))
    out = []
    for r in session.execute(q):
        out.append({
            "kind": "outbound", "id": r.id,
            "list": f"{r.name}@{r.domain}" if r.name else None,
            "message_id": r.message_id, "message_kind": r.kind,
            "blame": r.blame or "recipient", "recipients": r.count,
            "sample": [x for x in r.recipients.split("\n") if x][:5],
            "code": r.last_code, "error": r.last_error or "", "attempts": r.attempts,
            "failed_at": r.finished_at.isoformat() if r.finished_at else None,
        })
    return out
