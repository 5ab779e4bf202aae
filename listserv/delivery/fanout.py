"""Staged fan-out: accepting a post records it; a ``fanout`` job queues its recipients.

Accepting a post (listserv.pipeline.posting.accept_post) only numbers it and records, under
the list's lock, what belongs to it: the prepared and final bytes in the spool, the
OutboundMessage, the digest and archive entries, the Fanout row and ONE job of kind
``fanout`` (start()). The job (run()) then reads the recipients outside the lock, in chunks
in address id order (listserv.delivery.recipients.next_chunk, keyset-paginated), and in one
transaction per chunk queues their Delivery rows (one per SMTP transaction's worth of
recipients, listserv.delivery.outbound) and moves the Fanout row's cursor past them. After
each commit it wakes the delivery loop (App.wake_delivery), so the first copies leave while
the rest are still being queued; the first chunk is one transaction's worth of recipients,
so that they leave at once. Between chunks nothing is locked: `member set`, `member add` or
a digest of the list go ahead.

A list's fan-outs share one job partition (partition()), so its posts go out in arrival order;
different lists fan out in parallel.

A crash resumes from the cursor: a chunk's Delivery rows and the cursor's move commit
together, and the cursor moves by compare-and-set (a worker whose lease was taken over cannot
queue a chunk the other one queued), so no recipient is queued twice and none is lost. The
job's lease and retries are the job engine's (listserv.jobs).

Who gets the post: the members when it was accepted (memberships with an id up to
Fanout.members_upto) who are still enabled members on regular delivery when their chunk is
queued. Someone who leaves, is disabled or switches to digests before their chunk is queued
does not get it; someone who joins after the post was accepted does not either. A person on
several lists that distribute one Message-ID gets it from the list that accepted it first
(fanout rows with a lower id; listserv.recipients).

A digest to many readers is fanned out the same way, by a job of the same kind in the same
partition (listserv.digests.chunks: it reads its chunks, this module moves the cursor).
"""

from __future__ import annotations

import datetime as dt
import logging
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from listserv.core.app import App
from listserv.core.models import Fanout, InboundMessage, InboundState, Membership
from listserv.delivery import outbound, recipients
from listserv.jobs import engine

log = logging.getLogger(__name__)

KIND = "fanout"
CHUNK = 5000        # recipients queued per transaction (after the first transaction's worth)


class CursorMoved(Exception):
    """Another worker queued this chunk meanwhile (its lease on the job was taken over)."""


def partition(list_id: int) -> str:
    return f"fanout:list:{list_id}"


def record(session: Session, app: App, list_id: int, message_hash: str, outbound_id: int
           ) -> Fanout:
    """The Fanout row of a post being accepted (in the caller's transaction, under the list
    lock): the memberships that exist now are the ones the post can reach."""
    upto = session.scalar(select(func.max(Membership.id)))
    fan = Fanout(message_id_hash=message_hash, list_id=list_id, at=app.now(),
                 outbound_id=outbound_id, members_upto=upto or 0)
    session.add(fan)
    session.flush()
    return fan


def start(session: Session, app: App, fan: Fanout, *, inbound_id: int | None, seq: int,
          skip_remote: Iterable[str] = (), approved_by: str | None = None) -> int | None:
    """In the caller's transaction (the accept's, under the list lock): queue the first
    transaction's worth of recipients at once, when no earlier post of the list is still
    fanning out (its copies go first), and enqueue the fan-out job for the rest. Returns how
    many recipients were queued when that was all of them (no job: a list of up to one
    transaction's worth of members), else None.

    The first chunk commits with the accept itself: the delivery loop, woken when the accept
    commits, sends the first copies while the job is still to be claimed, with no commit in
    between. It is a bounded amount of work under the lock (one keyset read of at most
    max_recipients_per_transaction members and one Delivery row)."""
    payload: dict[str, Any] = {"fanout": fan.id, "inbound": inbound_id, "seq": seq,
                               "skip_remote": sorted(skip_remote), "approved_by": approved_by}
    busy = session.scalar(select(Fanout.id).where(
        Fanout.list_id == fan.list_id, Fanout.id != fan.id, Fanout.expanded_at.is_(None))
        .limit(1))
    if busy is None and fan.outbound_id is not None:
        chunk = recipients.next_chunk(
            session, fan.list_id, fan.message_id_hash, after=0,
            limit=app.settings.delivery.max_recipients_per_transaction, before=fan.id,
            upto=fan.members_upto, skip_remote=payload["skip_remote"])
        added = outbound.add_recipients(session, app, fan.outbound_id,
                                        [*chunk.people, *chunk.remote])
        fan.after_address_id, fan.queued = chunk.last, added
        if chunk.complete:
            fan.expanded_at = app.now()
            session.flush()
            log.info("list_id %s: post %s queued for %d recipients", fan.list_id, seq, added)
            return added
        session.flush()
    engine.enqueue(session, app, KIND, payload, partition_key=partition(fan.list_id))
    return None


def outcome(seq: int | None, total: int, approved_by: str | None) -> str:
    """The inbound message's outcome once its post is queued for everyone."""
    return (f"accepted as post {seq} to {total} recipients"
            + (f", approved by {approved_by}" if approved_by else ""))


def run(app: App, payload: dict[str, Any]) -> None:
    """Queue every chunk of a post (the job kind's handler, listserv.workers, hands a
    digest's payload to listserv.digests.chunks instead)."""
    expand(app, payload)


Step = Callable[[App, dict[str, Any]], tuple[bool, int]]


def expand(app: App, payload: dict[str, Any], *, max_chunks: int | None = None,
           after_chunk: Callable[[int], None] | None = None,
           queue_chunk: Step | None = None) -> bool:
    """Queue chunks of recipients, one transaction each, until the fan-out is complete (or
    ``max_chunks`` were queued); whether it is complete. ``after_chunk(n)`` is called after
    the n-th chunk committed (tests). ``queue_chunk``: what queues one chunk (a post's, step(),
    by default; a digest's is listserv.digests.chunks.step)."""
    n = 0
    while max_chunks is None or n < max_chunks:
        complete, added = (queue_chunk or step)(app, payload)
        n += 1
        if added:
            app.wake_delivery()
        if after_chunk is not None:
            after_chunk(n)
        if complete:
            return True
    return False


@contextmanager
def writing(app: App) -> Iterator[Session]:
    """The short write transaction of one chunk. Its commit does not wait for the disk: the
    delivery loop's claim of the chunk's rows, a durable commit, makes it durable before any
    copy is sent, and a chunk undone by a power cut is read again from the cursor. On SQLite
    the write lock is taken first (BEGIN IMMEDIATE), not on the first write."""
    with app.db.unit_of_work(durable=False) as session:
        if app.db.is_sqlite:
            session.connection().exec_driver_sql("BEGIN IMMEDIATE")
        yield session


def move_cursor(session: Session, fanout_id: int, *, after: int, queued: int, last: int,
                added: int, complete: bool, now: Any) -> None:
    """Move the fan-out's cursor past a chunk (in the chunk's transaction), only if it still
    is where the chunk was read from (``after``, ``queued``): CursorMoved otherwise, and the
    caller's transaction, the chunk's rows with it, rolls back."""
    moved = session.execute(
        update(Fanout).where(Fanout.id == fanout_id, Fanout.after_address_id == after,
                             Fanout.queued == queued, Fanout.expanded_at.is_(None))
        .values(after_address_id=last, queued=queued + added,
                expanded_at=now if complete else None)
        .execution_options(synchronize_session=False))
    if getattr(moved, "rowcount", 0) != 1:
        raise CursorMoved(f"fan-out {fanout_id}: another worker queued this chunk")


def end_pruned(session: Session, fanout_id: int, *, after: int, queued: int,
               now: dt.datetime) -> None:
    """Mark a fan-out whose message was pruned complete where its cursor is (nothing left
    to send); nothing to do if another worker ended it first."""
    try:
        move_cursor(session, fanout_id, after=after, queued=queued, last=after, added=0,
                    complete=True, now=now)
    except CursorMoved:
        pass


def step(app: App, payload: dict[str, Any]) -> tuple[bool, int]:
    """Queue a post's next chunk: (complete, recipients queued).

    The chunk is read first, outside any write transaction (on SQLite, other writers such as
    the delivery loop's claims are not held up by the read); then its Delivery rows and the
    cursor's move are written in one short transaction (writing(), move_cursor())."""
    fanout_id = int(payload["fanout"])
    app.db.let_writer_finish()      # the chunk's reading is the fan-out's computing
    with app.db.unit_of_work() as session:
        fan = session.get(Fanout, fanout_id)
        if fan is None or fan.expanded_at is not None:
            return True, 0
        outbound_id, after, queued = fan.outbound_id, fan.after_address_id, fan.queued
        list_id = fan.list_id
        if outbound_id is not None:
            size = app.settings.delivery.max_recipients_per_transaction
            chunk = recipients.next_chunk(
                session, fan.list_id, fan.message_id_hash, after=after,
                limit=size if after == 0 else max(CHUNK, size), before=fan.id,
                upto=fan.members_upto, skip_remote=payload.get("skip_remote") or ())
    with writing(app) as session:
        now = app.now()
        if outbound_id is None:               # the message was pruned: nothing left to send
            end_pruned(session, fanout_id, after=after, queued=queued, now=now)
            return True, 0
        added = outbound.add_recipients(session, app, outbound_id,
                                        [*chunk.people, *chunk.remote])
        move_cursor(session, fanout_id, after=after, queued=queued, last=chunk.last,
                    added=added, complete=chunk.complete, now=now)
        if chunk.complete:
            _finished(session, app, list_id, payload, queued + added)
    log.debug("fan-out %d: %d recipients queued (%d in all)%s", fanout_id, added,
              queued + added, ", complete" if chunk.complete else "")
    return chunk.complete, added


def _finished(session: Session, app: App, list_id: int, payload: dict[str, Any],
              total: int) -> None:
    seq, approved_by = payload.get("seq"), payload.get("approved_by")
    inbound = (session.get(InboundMessage, int(payload["inbound"]))
               if payload.get("inbound") else None)
    if inbound is not None and inbound.state is InboundState.accepted:
        inbound.outcome = outcome(seq, total, approved_by)
    log.info("list_id %s message %s: post %s queued for %d recipients", list_id,
             inbound.message_id if inbound is not None else "-", seq, total)


def pending(session: Session) -> int:
    """Fan-outs not yet completely queued."""
    return session.scalar(select(func.count()).select_from(Fanout)
                          .where(Fanout.expanded_at.is_(None))) or 0
