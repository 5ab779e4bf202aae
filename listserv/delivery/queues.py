"""The outbound queue in the database (the ``delivery`` table): claim ready batches by lease,
renew leases, record progress and results, and the figures of `listserv queue status`.

listserv.delivery.outbound.queue_message() fills the queue; listserv.delivery.runner runs the
workers. Claims follow the job engine's lease rule (listserv.jobs.engine): a claimed row is
``sending`` with ``lease_owner`` and ``lease_expires``; its worker renews the lease by a
heartbeat; a row whose lease expired is anyone's (its worker died or hung), and is taken
over by the next claim. No hostname or pid is ever consulted. A claim reads its candidates
with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (several processes share one database) and
takes them with an ``UPDATE ... RETURNING`` that checks again that each is due (SQLite has
one writer at a time: of two racing claims, the second finds the rows taken).

While a batch is sent, the positions of the recipients delivered so far are written to the
row's ``sent`` column as transactions complete (PROGRESS_UPDATE, in group commits; Ranges):
a worker that takes over an expired lease sends only to the others. Results are written
per batch, never per recipient: a batch whose recipients end in different states is split
(the row keeps one group, new rows take the others). Reporting failures (bounce scoring,
telling owners) is the caller's business: record() returns what failed.
"""

from __future__ import annotations

import bisect
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence, cast

from sqlalchemy import Integer, Table, Text, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.engine import Connection, CursorResult, Engine
from sqlalchemy.orm import Session

from listserv.core.config import DeliverySettings
from listserv.jobs.engine import LEASE
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

ERROR_LINES = 20              # recipients quoted in last_error
T = cast(Table, Delivery.__table__)

Item = tuple[str, Any, str]   # (recipient, code, reply text)
# (recipients, failed, whole, gave_up) -> (the recipients' own failures, the message's)
Blame = Callable[[Sequence[str], Sequence[Item], set[str], set[str]],
                 tuple[list[Item], list[Item]]]


# ---------------------------------------------------------------------------- claims


# Built once (``now`` and the rest are parameters): a claim is on the path from a post's
# 250 to its first copy.
_NOW = bindparam("now", type_=T.c.next_attempt_at.type)
_DUE = or_(and_(T.c.state == DeliveryState.pending, T.c.next_attempt_at <= _NOW),
           and_(T.c.state == DeliveryState.sending, T.c.lease_expires <= _NOW))
_READY = (select(T.c.id, T.c.state).where(_DUE).order_by(T.c.next_attempt_at, T.c.id)
          .limit(bindparam("limit", type_=Integer)))
_READY_LOCKED = _READY.with_for_update(skip_locked=True)
_TAKE = (update(T).where(T.c.id.in_(bindparam("ids", expanding=True)), _DUE)
         .values(state=DeliveryState.sending, lease_owner=bindparam("owner"),
                 lease_expires=bindparam("expires", type_=T.c.lease_expires.type))
         .returning(T.c.id, T.c.outbound_id, T.c.recipients, T.c.sent, T.c.attempts,
                    T.c.first_attempt_at))


def claim(session: Session, owner: str, now: dt.datetime, limit: int,
          lease: dt.timedelta = LEASE, found: Callable[[], None] | None = None
          ) -> list[Any]:
    """Lease up to ``limit`` due rows to ``owner`` until ``now + lease``: ready ``pending``
    rows and ``sending`` rows whose lease expired. Returns them (id, outbound_id,
    recipients, sent, attempts, first_attempt_at), in id order.

    The candidates are read first (on PostgreSQL locked, skipping rows another claim has
    locked; an idle poll finds none and so locks nothing; on SQLite the read takes no
    lock); the UPDATE checks again that each is due, so that of two claims racing for a
    row (SQLite) only one gets it. ``found()`` is called when the read finds candidates,
    before they are taken."""
    params: dict[str, Any] = {"now": now, "limit": limit}
    locking = session.get_bind().dialect.name == "postgresql"
    seen = session.execute(_READY_LOCKED if locking else _READY, params).all()
    if not seen:
        return []
    if found is not None:
        found()
    rows = list(session.execute(_TAKE, {"now": now, "ids": [r.id for r in seen],
                                        "owner": owner, "expires": now + lease}))
    rows.sort(key=lambda r: r.id)
    expired = {r.id for r in seen if r.state is DeliveryState.sending}
    taken = [r.id for r in rows if r.id in expired]
    if taken:
        log.warning("delivery: took over %d batches whose lease expired (%s)",
                    len(taken), ", ".join(map(str, taken[:10])))
    return rows


def renew(session: Session, owner: str, now: dt.datetime,
          lease: dt.timedelta = LEASE) -> set[int]:
    """The heartbeat: extend the leases of every row ``owner`` holds; their ids (a row
    missing from the answer was taken over by another worker)."""
    res = session.execute(update(T).where(T.c.lease_owner == owner,
                                          T.c.state == DeliveryState.sending)
                          .values(lease_expires=now + lease).returning(T.c.id))
    return {r.id for r in res}


# A row's ``sent`` (Ranges text of the recipients delivered so far) and a renewed lease, if
# ``owner`` still holds it; run by listserv.delivery.progress.ProgressWriter.
PROGRESS_UPDATE = (update(T).where(T.c.id == bindparam("rid"),
                                   T.c.lease_owner == bindparam("owner"),
                                   T.c.state == DeliveryState.sending)
                   .values(sent=bindparam("sent"), lease_expires=bindparam("exp")))


class Ranges:
    """A set of recipient positions in a row's ``recipients``, kept and written as sorted
    ranges ("0-211,213-250"): transactions complete almost in order, so the text stays a
    few ranges long however many recipients a row has."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []           # exclusive

    @classmethod
    def parse(cls, text: str | None) -> "Ranges":
        r = cls()
        for part in (text or "").split(","):
            a, _, b = part.partition("-")
            if a.strip().isdigit():
                end = int(b) + 1 if b.strip().isdigit() else int(a) + 1
                r.starts.append(int(a))
                r.ends.append(max(end, int(a) + 1))
        return r

    def add(self, i: int) -> None:
        k = bisect.bisect_right(self.starts, i) - 1
        if k >= 0 and i < self.ends[k]:
            return
        left = k >= 0 and self.ends[k] == i
        right = k + 1 < len(self.starts) and self.starts[k + 1] == i + 1
        if left and right:
            self.ends[k] = self.ends[k + 1]
            del self.starts[k + 1], self.ends[k + 1]
        elif left:
            self.ends[k] = i + 1
        elif right:
            self.starts[k + 1] = i
        else:
            self.starts.insert(k + 1, i)
            self.ends.insert(k + 1, i + 1)

    def __contains__(self, i: object) -> bool:
        if not isinstance(i, int):
            return False
        k = bisect.bisect_right(self.starts, i) - 1
        return k >= 0 and i < self.ends[k]

    def __iter__(self) -> Iterator[int]:
        for a, b in zip(self.starts, self.ends):
            yield from range(a, b)

    def __str__(self) -> str:
        return ",".join(f"{a}-{b - 1}" if b - a > 1 else str(a)
                        for a, b in zip(self.starts, self.ends))


def progress_connection(engine: Engine) -> Connection:
    """A connection for progress records (PROGRESS_UPDATE), kept open by a worker: its commits wait for the
    operating system, not the disk. Progress exists to survive a crash of this process,
    which such a commit does; a power cut (SQLite) or a database server crash (PostgreSQL)
    may lose the last moments of progress, and then more copies are sent twice (none is
    lost: the row itself stays claimed). Invalidate it when done: it must not go back to the
    pool with that setting."""
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn.exec_driver_sql("PRAGMA synchronous=NORMAL")
    else:
        conn.exec_driver_sql("SET synchronous_commit TO off")
    conn.commit()
    return conn


def _whose(recipients: Sequence[str], failed: Sequence[Item], whole: set[str],
           gave_up: set[str]) -> tuple[list[Item], list[Item]]:
    return list(failed), []


def _error_text(items: list[tuple[str, Any, str]]) -> str:
    lines = [f"{r}: {code or ''} {text}".strip() for r, code, text in items[:ERROR_LINES]]
    if len(items) > ERROR_LINES:
        lines.append(f"... and {len(items) - ERROR_LINES} more")
    return "\n".join(lines)


@dataclass
class Recorded:
    """A batch whose outcome was written, with the permanent failures to report."""

    batch: Batch
    recipient_failures: list[Item]      # the recipients' own (bounce scoring)
    message_failures: list[Item]        # the message's or the next hop's (nobody scored)


def record(session: Session, now: dt.datetime, d: DeliverySettings, owner: str,
           batches: Iterable[Batch], blame: Blame = _whose) -> list[Recorded]:
    """Write the outcome of finished batches (see the module docstring) and end their
    claims; what was recorded. ``blame`` splits permanent failures into the recipients'
    own and the message's (listserv.delivery.post_failures.split)."""
    give_up = dt.timedelta(days=d.give_up_after_days)
    out: list[Recorded] = []
    for b in batches:
        tries = b.attempts + 1
        first = b.first_attempt_at or now
        retry: list[Item] = []
        failed: list[Item] = list(b.perm)
        gave_up: set[str] = set()
        for item in b.temp:
            if now - first >= give_up:
                failed.append((item[0], item[1] if item[1] and item[1] >= 500 else 550,
                               f"gave up after {d.give_up_after_days:g} days: {item[2]}"))
                gave_up.add(item[0])
            else:
                retry.append(item)
        rcpt_failed, msg_failed = blame(b.recipients, failed, b.whole, gave_up)
        delay = d.retry_schedule[min(tries, len(d.retry_schedule)) - 1]
        groups: list[dict[str, Any]] = []
        base = {"outbound_id": b.message.outbound_id, "lease_owner": None,
                "lease_expires": None, "sent": None, "first_attempt_at": first, "blame": None}
        ok = b.already + b.ok
        if ok:
            groups.append({**base, "recipients": ok, "state": DeliveryState.done,
                           "attempts": tries, "next_attempt_at": now, "last_code": 250,
                           "last_error": None, "finished_at": now})
        if retry:
            groups.append({**base, "recipients": [r for r, _, _ in retry],
                           "state": DeliveryState.pending, "attempts": tries,
                           "next_attempt_at": now + dt.timedelta(seconds=delay),
                           "last_code": retry[0][1], "last_error": _error_text(retry),
                           "finished_at": None})
        for kind, items in (("recipient", rcpt_failed), ("message", msg_failed)):
            if items:
                groups.append({**base, "recipients": [r for r, _, _ in items],
                               "state": DeliveryState.failed, "attempts": tries,
                               "next_attempt_at": now, "last_code": items[0][1],
                               "last_error": _error_text(items), "finished_at": now,
                               "blame": kind})
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
            update(T).where(T.c.id == b.id, T.c.lease_owner == owner,
                            T.c.state == DeliveryState.sending)
            .values(**{k: v for k, v in head.items() if k != "outbound_id"})))
        if not res.rowcount:
            log.warning("delivery batch %s: its lease was lost (taken over by another worker); "
                        "its result is not recorded", b.id)
            continue
        if rest:
            session.execute(insert(T), rest)
        out.append(Recorded(b, rcpt_failed, msg_failed))
        log.info("delivery batch %s list_id=%s Message-ID=%s: %d delivered, %d to retry, "
                 "%d failed (%d of them the message's), %d not sent", b.id, b.message.list_id,
                 b.message.message_id, len(ok), len(retry), len(failed), len(msg_failed),
                 len(b.unsent))
    return out


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
