"""Retention: forget finished work and the stored messages nobody needs any more.

    prune(app, now=None, dry_run=False, budget=None) -> Stats   (`listserv queue prune`)
    run(app)                                 (the daemon's "retention" job, every INTERVAL)

What goes (the periods are the module constants below; Postfix keeps nothing once delivered,
Mailman keeps its queue files until processed and its message store until the request is
handled, so these are on the generous side):

- ``delivery`` rows ``done`` or ``failed`` finished more than DELIVERY_DAYS ago, and an
  ``outbound_message`` older than that once none of its delivery rows is left to do.
- ``inbound_message`` rows in a final state (accepted, rejected, discarded, handled) received
  more than INBOUND_DAYS ago; ``failed`` ones (parked for a human) after FAILED_INBOUND_DAYS;
  never ``new``/``processing``/``held``, never one an open held_message refers to, nor one whose
  held post still has moderation tokens (tokens.purge drops them 30 days after they expire, so
  a late moderator reply is still told who handled the post). Deleting it deletes its decided
  held_message rows (and their tokens); bounce_event.inbound_id and moderation_log.held_id
  become NULL. The moderation log itself is kept for ever.
- The newest outbound_message and held_message are always kept, so that their ids are never
  handed out again (SQLite re-uses the highest id once it is deleted).
- ``digest_entry`` rows of a digest sent more than DIGEST_ENTRY_DAYS ago (pending ones stay).
- processed ``bounce_event`` rows older than BOUNCE_EVENT_DAYS or the list's
  ``bounce_info_stale_after_days`` * BOUNCE_STALE_FACTOR, whichever is longer.
- ``fanout`` rows (cross-list duplicate suppression, and the cursor of a post's fan-out job)
  older than FANOUT_DAYS whose fan-out is complete. An outbound message whose fan-out is not
  complete (its job waits for a retry, or is dead in `queue failed`) is kept, whatever its age.
- ``auto_response`` and ``pending_token`` rows are already purged by moderation.tick
  (ratelimit.purge, tokens.purge): not repeated here.

Then the spool (stored message bytes, table spool_blob, listserv.core.spool): a message goes when
no row refers to its sha (inbound_message, outbound_message, digest_entry, archive_entry) and
it was not stored or used again (Spool.put moves ``stored_at`` on) for SPOOL_GRACE. The sweep
reads BATCH blobs at a time in sha order, checks which are referenced, and deletes the others
with a DELETE that repeats both conditions; so bytes that a transaction committed after the
check refers to are never lost: that transaction called Spool.put, which either made the
blob recent again or, after the DELETE, stored it anew.

Rows are deleted in batches of BATCH, each in its own transaction, and every DELETE repeats its
conditions: a row another worker claimed or changed meanwhile is not deleted. A crash at any
point leaves a consistent state that the next run finishes.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import (
    ColumnElement,
    and_,
    delete,
    exists,
    false,
    func,
    or_,
    select,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from listserv import jobs
from listserv.core.app import App
from listserv.core.models import (
    ArchiveEntry,
    BounceEvent,
    Delivery,
    DeliveryState,
    Digest,
    DigestEntry,
    Fanout,
    HeldMessage,
    InboundMessage,
    InboundState,
    MailingList,
    OutboundMessage,
    PendingToken,
    SiteSetting,
    SpoolBlob,
)

log = logging.getLogger(__name__)

DELIVERY_DAYS = 7            # delivered / failed delivery batches, and their outbound message
INBOUND_DAYS = 30            # inbound mail in a final state (accepted, rejected, ...)
FAILED_INBOUND_DAYS = 90     # inbound mail whose processing failed (waits for a human)
DIGEST_ENTRY_DAYS = 30       # posts of a digest already sent
BOUNCE_EVENT_DAYS = 90       # bounce events (at least; see BOUNCE_STALE_FACTOR)
BOUNCE_STALE_FACTOR = 4      # ... or bounce_info_stale_after_days * 4 when longer
FANOUT_DAYS = 90             # cross-list duplicate suppression by Message-ID
SPOOL_GRACE = dt.timedelta(hours=1)    # a message stored this recently is never removed
INTERVAL = dt.timedelta(hours=1)       # the daemon prunes this often (one job, all processes)
TICK_BUDGET = 30.0           # seconds one daemon run may take; the next run goes on
BATCH = 500
BACKLOG_PAUSE = dt.timedelta(minutes=5)  # after a run stopped by its budget, go on this soon
JOB_KIND = "retention"                 # the periodic job (listserv.workers)
SPOOL_CURSOR = "retention_spool_cursor"  # SiteSetting row: where a budgeted sweep goes on

FINAL_STATES = (InboundState.accepted, InboundState.rejected, InboundState.discarded,
                InboundState.handled)
ROW_KINDS = ("delivery", "outbound_message", "inbound_message", "digest_entry",
             "bounce_event", "fanout")
_SHA = re.compile(r"[0-9a-f]{64}")


@dataclass
class Stats:
    """What one prune removed (or, for a dry run, would remove)."""

    dry_run: bool = False
    rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ROW_KINDS, 0))
    spool_messages: int = 0      # stored messages (spool_blob rows) removed
    spool_bytes: int = 0
    spool_kept: int = 0          # stored messages still referenced or too recent
    complete: bool = True        # False when the time budget ran out (the next run goes on)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "rows": dict(self.rows),
                "spool": {"messages": self.spool_messages, "bytes": self.spool_bytes,
                          "kept": self.spool_kept},
                "complete": self.complete, "seconds": round(self.seconds, 3)}

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        out = [f"{verb}:"]
        for kind in ROW_KINDS:
            out.append(f"  {kind:<18} {self.rows[kind]:>9} rows")
        out.append(f"  {'spooled messages':<18} {self.spool_messages:>9} "
                   f"({_size(self.spool_bytes)}); "
                   f"{self.spool_kept} kept")
        if not self.complete:
            out.append("stopped at the time budget: the next run goes on")
        return out


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB"):
        value /= 1024
        if value < 1024 or unit == "GiB":
            break
    return f"{value:.1f} {unit}"


# ---------------------------------------------------------------------------- what may go
# Each predicate is a WHERE clause on its table: the same one selects, counts (dry run),
# deletes (repeated in the DELETE, so a row changed meanwhile stays) and, negated, tells the
# dry run which references remain.


def delivery_gone(now: dt.datetime) -> ColumnElement[bool]:
    return and_(Delivery.state.in_([DeliveryState.done, DeliveryState.failed]),
                func.coalesce(Delivery.finished_at, Delivery.next_attempt_at)
                < now - dt.timedelta(days=DELIVERY_DAYS))


def _newest(model: Any) -> Any:
    """The highest id of ``model``'s table. That row is never deleted: SQLite (without
    AUTOINCREMENT) would hand its id out again, and some ids must stay unique for good
    (the delivery workers cache messages by outbound id; held ids are shown to people)."""
    other = aliased(model)
    return select(func.max(other.id)).scalar_subquery()


def outbound_gone(now: dt.datetime) -> ColumnElement[bool]:
    left = exists().where(Delivery.outbound_id == OutboundMessage.id, ~delivery_gone(now))
    expanding = exists().where(Fanout.outbound_id == OutboundMessage.id,
                               Fanout.expanded_at.is_(None))
    return and_(OutboundMessage.created_at < now - dt.timedelta(days=DELIVERY_DAYS), ~left,
                ~expanding, OutboundMessage.id < _newest(OutboundMessage))


def inbound_gone(now: dt.datetime) -> ColumnElement[bool]:
    I = InboundMessage
    final = and_(I.state.in_(FINAL_STATES), I.received_at < now - dt.timedelta(days=INBOUND_DAYS))
    failed = and_(I.state == InboundState.failed,
                  I.received_at < now - dt.timedelta(days=FAILED_INBOUND_DAYS))
    tokens = exists().where(PendingToken.held_id == HeldMessage.id)
    needed = exists().where(HeldMessage.inbound_id == I.id,
                            or_(HeldMessage.decision.is_(None), tokens,
                                HeldMessage.id == _newest(HeldMessage)))
    return and_(or_(final, failed), ~needed)


def digest_entry_gone(now: dt.datetime) -> ColumnElement[bool]:
    sent = select(Digest.id).where(Digest.sent_at < now - dt.timedelta(days=DIGEST_ENTRY_DAYS))
    return and_(DigestEntry.digest_id.is_not(None), DigestEntry.digest_id.in_(sent))


def archive_entry_gone(now: dt.datetime) -> ColumnElement[bool]:
    """None: an archive_entry waits to be archived, and the archive job deletes it when it
    is. Archived messages (archive_message, archive_raw) are kept for ever."""
    return false()


def bounce_days(stale_after_days: int) -> int:
    return max(BOUNCE_EVENT_DAYS, BOUNCE_STALE_FACTOR * max(0, stale_after_days))


def bounce_event_gone(session: Session, now: dt.datetime) -> ColumnElement[bool]:
    """One clause per distinct bounce_info_stale_after_days among the lists."""
    values = session.scalars(select(MailingList.bounce_info_stale_after_days).distinct()).all()
    clauses = [and_(BounceEvent.at < now - dt.timedelta(days=bounce_days(v)),
                    BounceEvent.list_id.in_(select(MailingList.id).where(
                        MailingList.bounce_info_stale_after_days == v)))
               for v in sorted(values)]
    if not clauses:
        return false()
    return and_(BounceEvent.processed.is_(True), or_(*clauses))


def fanout_gone(now: dt.datetime) -> ColumnElement[bool]:
    return and_(Fanout.at < now - dt.timedelta(days=FANOUT_DAYS), Fanout.expanded_at.is_not(None))


# ---------------------------------------------------------------------------- rows


class _Budget:
    def __init__(self, seconds: float | None) -> None:
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def out(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


def _delete_in_batches(app: App, model: Any, where: Callable[[Session], ColumnElement[bool]],
                       budget: _Budget) -> tuple[int, bool]:
    """Delete the rows of ``model`` matching ``where``, BATCH at a time, one transaction each,
    in id order (so it ends even when rows are skipped). Returns (deleted, finished)."""
    total, last = 0, 0
    while True:
        if last and budget.out():       # at least one batch per run: progress is certain
            return total, False
        with app.db.unit_of_work() as session:
            cond = where(session)
            ids = list(session.scalars(
                select(model.id).where(model.id > last, cond).order_by(model.id).limit(BATCH)
                .with_for_update(skip_locked=True)))
            if not ids:
                return total, True
            res = session.execute(delete(model).where(model.id.in_(ids), cond)
                                  .execution_options(synchronize_session=False))
            total += int(getattr(res, "rowcount", 0) or 0)
        last = ids[-1]
        if len(ids) < BATCH:
            return total, True


def _count(app: App, model: Any, where: Callable[[Session], ColumnElement[bool]]) -> int:
    with app.db.unit_of_work() as session:
        return int(session.scalar(select(func.count(model.id)).where(where(session))) or 0)


def _row_rules(now: dt.datetime) -> list[tuple[str, Any, Callable[[Session], ColumnElement[bool]]]]:
    # Order matters: deliveries before their outbound message (no big cascades), and every
    # row before the spool sweep.
    return [
        ("delivery", Delivery, lambda s: delivery_gone(now)),
        ("outbound_message", OutboundMessage, lambda s: outbound_gone(now)),
        ("inbound_message", InboundMessage, lambda s: inbound_gone(now)),
        ("digest_entry", DigestEntry, lambda s: digest_entry_gone(now)),
        ("bounce_event", BounceEvent, lambda s: bounce_event_gone(s, now)),
        ("fanout", Fanout, lambda s: fanout_gone(now)),
    ]


# ---------------------------------------------------------------------------- spool

# Every column that holds a spool sha (grep spool_sha and spool.put across listserv/ when
# adding one: bytes referenced only by a column missing here would be deleted).
SHA_COLUMNS = (InboundMessage.spool_sha, OutboundMessage.spool_sha, DigestEntry.spool_sha,
               ArchiveEntry.spool_sha)


def _referencing(now: dt.datetime, dry_run: bool) -> list[tuple[Any, ColumnElement[bool] | None]]:
    """(spool_sha column, clause of the rows that keep referring to it). In a dry run the rows
    that the run would have deleted do not count."""
    rules = (inbound_gone, outbound_gone, digest_entry_gone, archive_entry_gone)
    return [(col, ~gone(now) if dry_run else None) for col, gone in zip(SHA_COLUMNS, rules)]


def referenced(session: Session, shas: list[str], now: dt.datetime | None = None,
               dry_run: bool = False) -> set[str]:
    """Which of ``shas`` some row refers to now (in a dry run: some row the run keeps)."""
    out: set[str] = set()
    for i in range(0, len(shas), BATCH):
        chunk = shas[i:i + BATCH]
        selects = []
        for col, keep in _referencing(now or dt.datetime.now(dt.timezone.utc), dry_run):
            q = select(col.label("sha")).where(col.in_(chunk))
            selects.append(q.where(keep) if keep is not None else q)
        out.update(session.execute(union_all(*selects)).scalars())
    return out


def _unreferenced() -> list[ColumnElement[bool]]:
    """The DELETE's own check, repeated: no row refers to the blob (at the DELETE's time)."""
    return [~exists().where(col == SpoolBlob.sha) for col in SHA_COLUMNS]


def _sweep_batch(app: App, after: str, upto: str | None, now: dt.datetime,
                 cutoff: dt.datetime, dry_run: bool, stats: Stats) -> str | None:
    """Sweep the next BATCH blobs in sha order after ``after`` (up to ``upto``); the last
    sha seen, or None when there were none."""
    with app.db.unit_of_work() as session:
        query = select(SpoolBlob.sha, SpoolBlob.size, SpoolBlob.stored_at).where(
            SpoolBlob.sha > after)
        if upto is not None:
            query = query.where(SpoolBlob.sha <= upto)
        rows = session.execute(query.order_by(SpoolBlob.sha).limit(BATCH)).all()
        if not rows:
            return None
        refs = referenced(session, [r.sha for r in rows], now, dry_run)
        old = {r.sha: r.size for r in rows if r.sha not in refs and r.stored_at < cutoff}
        if dry_run:
            stats.spool_kept += len(rows) - len(old)
            stats.spool_messages += len(old)
            stats.spool_bytes += sum(old.values())
        elif old:
            # Both conditions again, in the DELETE: a transaction that referred to a blob
            # after the check above called Spool.put, which moved its stored_at on.
            gone = session.execute(
                delete(SpoolBlob).where(SpoolBlob.sha.in_(list(old)),
                                        SpoolBlob.stored_at < cutoff, *_unreferenced())
                .returning(SpoolBlob.sha, SpoolBlob.size)
                .execution_options(synchronize_session=False)).all()
            stats.spool_messages += len(gone)
            stats.spool_bytes += sum(g.size for g in gone)
            stats.spool_kept += len(rows) - len(gone)
        else:
            stats.spool_kept += len(rows)
        return str(rows[-1].sha)


def sweep_spool(app: App, now: dt.datetime, *, dry_run: bool, stats: Stats,
                budget: _Budget, wall_clock: Callable[[], float] = time.time) -> bool:
    """Remove stored message bytes (table spool_blob) that no row refers to and that were not
    stored or used again for SPOOL_GRACE; True when every blob was visited. The grace is
    measured on the wall clock, like stored_at (listserv.core.spool).

    A run stopped by its budget resumes after the last sha it saw (SPOOL_CURSOR), so a spool
    too big to sweep within one budget is still swept whole over a few runs."""
    cutoff = (dt.datetime.fromtimestamp(wall_clock(), dt.timezone.utc) - SPOOL_GRACE)
    start = "" if dry_run else _get_cursor(app)
    # from the cursor to the end, then from the beginning up to the cursor
    ranges: list[tuple[str, str | None]] = [(start, None)] + ([("", start)] if start else [])
    first = True
    for after, upto in ranges:
        last = after
        while True:
            if not first and budget.out():
                _set_cursor(app, last)
                return False
            first = False
            seen = _sweep_batch(app, last, upto, now, cutoff, dry_run, stats)
            if seen is None:
                break
            last = seen
    if not dry_run and start:
        _set_cursor(app, "")
    return True


def _get_cursor(app: App) -> str:
    with app.db.unit_of_work() as session:
        value = session.scalar(select(SiteSetting.value).where(SiteSetting.name == SPOOL_CURSOR))
    return value if value and _SHA.fullmatch(value) else ""


def _set_cursor(app: App, sha: str) -> None:
    with app.db.unit_of_work() as session:
        row = session.get(SiteSetting, SPOOL_CURSOR)
        if row is None:
            session.add(SiteSetting(name=SPOOL_CURSOR, value=sha))
        else:
            row.value = sha


# ---------------------------------------------------------------------------- entry points


def prune(app: App, *, now: dt.datetime | None = None, dry_run: bool = False,
          budget: float | None = None) -> Stats:
    """Delete what the retention rules allow (see the module docstring), then sweep the spool.

    ``dry_run`` deletes nothing and reports what would go. ``budget`` (seconds) stops between
    batches when exceeded; Stats.complete is then False and the next run goes on."""
    started = time.monotonic()
    now = now or app.now()
    stats = Stats(dry_run=dry_run)
    clock = _Budget(budget)
    for kind, model, where in _row_rules(now):
        if dry_run:
            stats.rows[kind] = _count(app, model, where)
            continue
        stats.rows[kind], finished = _delete_in_batches(app, model, where, clock)
        if not finished:
            stats.complete = False
            break
    if stats.complete:
        stats.complete = sweep_spool(app, now, dry_run=dry_run, stats=stats, budget=clock)
    stats.seconds = time.monotonic() - started
    if not dry_run:
        log.info("retention: %s", "; ".join(line.strip() for line in stats.lines()[1:]))
    return stats


def record_run(app: App, now: dt.datetime) -> None:
    """After a manual run (``listserv queue prune``) the daemon's next run waits an INTERVAL."""
    with app.db.unit_of_work() as session:
        jobs.postpone(session, app, JOB_KIND, now + INTERVAL)


def run(app: App) -> Stats:
    """The daemon's retention job (every INTERVAL, one job for all processes sharing the
    database): prune for at most TICK_BUDGET seconds; while a backlog remains (the first run
    on an old installation) the next run follows after BACKLOG_PAUSE."""
    now = app.now()
    stats = prune(app, now=now, budget=TICK_BUDGET)
    if not stats.complete:
        with app.db.unit_of_work() as session:
            jobs.schedule(session, app, JOB_KIND, now + BACKLOG_PAUSE)
    return stats
