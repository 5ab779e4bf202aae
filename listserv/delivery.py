"""Delivery workers: claim ready batches from the durable outbound queue, send them through a
transport (listserv.transport), record the results.

The queue is the ``delivery`` table (see listserv.outbound.queue_message). A worker claims rows
by moving them from ``pending`` to ``sending`` in one statement (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so several ``listserv serve`` processes share one database), sends, then records
what happened to every recipient in one transaction per group of finished batches:

- delivered recipients: ``done``;
- 4xx / connection failure: ``pending`` again at ``now + retry_schedule[attempts-1]`` (the last
  step repeats) until ``give_up_after_days`` after the first try, then as 5xx;
- 5xx: ``failed``, and ``bounces.record_failure(..., permanent=True)``;
- not sent because we were stopping: ``pending`` at once, attempts unchanged.

A batch whose recipients end in different states is split: the row keeps one group, new rows
take the others. Rows left in ``sending`` by a killed process (dead pid on this host, or
``locked_at`` older than STALE_AFTER) go back to ``pending``: nothing accepted is lost, and what
may be sent twice is bounded by the batches that were in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import secrets
import socket
import time
from collections import OrderedDict
from typing import Any, Iterable, Union, cast

from sqlalchemy import Table, insert, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session

from listserv import bounces
from listserv.app import App
from listserv.models import Delivery, DeliveryState, OutboundMessage
from listserv.transport import Batch, MaildirTransport, Message, SmtpTransport

log = logging.getLogger(__name__)

STALE_AFTER = dt.timedelta(minutes=30)
RECOVER_EVERY = 60.0          # seconds between stale-claim sweeps in run()
POLL = 0.5                    # idle poll when nobody sets ``wake``
ERROR_PAUSE = 2.0             # after a database error in run()
MESSAGE_CACHE = 64            # OutboundMessages whose bytes are kept in memory ...
MESSAGE_CACHE_BYTES = 64 << 20  # ... and at most this many bytes of them
ERROR_LINES = 20              # recipients quoted in last_error

Transport = Union[SmtpTransport, MaildirTransport]
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


def _is_dead_claim(owner: str | None, host: str) -> bool:
    parts = (owner or "").split(":")
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    return not _pid_alive(int(parts[1]))


def recover(session: Session, now: dt.datetime, stale_after: dt.timedelta = STALE_AFTER) -> int:
    """Give claims of dead or stuck workers back to the queue; return how many rows."""
    host = socket.gethostname()[:40]
    rows = session.execute(select(T.c.id, T.c.locked_by, T.c.locked_at)
                           .where(T.c.state == DeliveryState.sending)).all()
    by_owner: dict[str | None, list[int]] = {}
    for r in rows:
        if (r.locked_at is None or r.locked_at <= now - stale_after
                or _is_dead_claim(r.locked_by, host)):
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
        for item in b.temp:
            if now - first >= give_up:
                failed.append((item[0], item[1] if item[1] and item[1] >= 500 else 550,
                               f"gave up after {d.give_up_after_days:g} days: {item[2]}"))
            else:
                retry.append(item)
        delay = d.retry_schedule[min(tries, len(d.retry_schedule)) - 1]
        groups: list[dict[str, Any]] = []
        base = {"outbound_id": b.message.outbound_id, "locked_by": None, "locked_at": None,
                "first_attempt_at": first}
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
        if failed:
            groups.append({**base, "recipients": [r for r, _, _ in failed],
                           "state": DeliveryState.failed, "attempts": tries,
                           "next_attempt_at": now, "last_code": failed[0][1],
                           "last_error": _error_text(failed), "finished_at": now})
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
        _report_failures(session, app, b, failed)
        log.info("delivery batch %s list_id=%s Message-ID=%s: %d delivered, %d to retry, "
                 "%d failed, %d not sent", b.id, b.message.list_id, b.message.message_id,
                 len(b.ok), len(retry), len(failed), len(b.unsent))


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


# ---------------------------------------------------------------------------- the worker


class Runner:
    """One delivery worker: a claim/record loop around one transport."""

    def __init__(self, app: App, owner: str | None = None) -> None:
        self.app = app
        self.owner = owner or make_owner()
        d = app.settings.delivery
        self.claim_limit = d.connections
        self.max_inflight = 2 * d.connections
        self.low_water = d.connections
        self.inflight = 0
        self.handled = 0
        self.finished: list[Batch] = []
        self.changed = asyncio.Event()
        self.messages: OrderedDict[int, Message] = OrderedDict()
        self.transport: Transport = self._make_transport()

    def _make_transport(self) -> Transport:
        s = self.app.settings
        out = s.outbound
        if out.startswith("maildir:"):
            return MaildirTransport(out[len("maildir:"):], self._done)
        return SmtpTransport(out, s.delivery.connections,
                             s.delivery.max_recipients_per_transaction, s.site_domain, self._done,
                             low_water=(self.low_water, self.changed.set))

    def _done(self, batch: Batch) -> None:
        self.finished.append(batch)
        self.changed.set()

    # -- database steps (run in a thread) -------------------------------------------------

    def _claim_sync(self, limit: int) -> list[Batch]:
        now = self.app.now()
        with self.app.db.unit_of_work() as session:
            rows = claim(session, self.owner, now, limit)
            need = {r.outbound_id for r in rows}
            have = {i: self.messages[i] for i in need if i in self.messages}
            if need - set(have):
                for out in session.scalars(select(OutboundMessage)
                                           .where(OutboundMessage.id.in_(need - set(have)))):
                    try:
                        have[out.id] = self._load(out)
                    except OSError as exc:
                        log.error("outbound message %s (Message-ID %s): cannot read spool "
                                  "file: %s", out.id, out.message_id, exc)
            bad = [r.id for r in rows if r.outbound_id not in have]
            if bad:   # parked for a human: visible as failed in `listserv queue status`
                session.execute(update(T).where(T.c.id.in_(bad)).values(
                    state=DeliveryState.failed, locked_by=None, locked_at=None,
                    finished_at=now, last_error="spool file of the message is missing"))
        for m in have.values():
            self._remember(m)
        return [Batch(r.id, have[r.outbound_id], [x for x in r.recipients.split("\n") if x],
                      r.attempts, r.first_attempt_at)
                for r in rows if r.outbound_id in have]

    def _load(self, out: OutboundMessage) -> Message:
        data = next((m.data for m in self.messages.values() if m.sha == out.spool_sha), None)
        if data is None:
            data = self.app.spool.get(out.spool_sha)
        return Message(out.id, out.list_id, out.envelope_from, out.verp, data,
                       not data.isascii(), sha=out.spool_sha, message_id=out.message_id)

    def _remember(self, m: Message) -> None:
        self.messages[m.outbound_id] = m
        self.messages.move_to_end(m.outbound_id)
        while len(self.messages) > 1 and (
                len(self.messages) > MESSAGE_CACHE
                or sum(len(x.data) for x in self.messages.values()) > MESSAGE_CACHE_BYTES):
            self.messages.popitem(last=False)   # batches in flight keep their own reference

    def _record_sync(self, batches: list[Batch]) -> None:
        with self.app.db.unit_of_work() as session:
            record(session, self.app, self.owner, batches)

    def _recover_sync(self) -> int:
        with self.app.db.unit_of_work() as session:
            return recover(session, self.app.now())

    # -- the loop -------------------------------------------------------------------------

    async def _record(self) -> None:
        batches, self.finished = self.finished, []
        try:
            await asyncio.to_thread(self._record_sync, batches)
        except Exception:
            self.finished[:0] = batches   # keep them; try again
            raise
        self.inflight -= len(batches)
        self.handled += len(batches)

    async def _claim(self, limit: int) -> int:
        batches = await asyncio.to_thread(self._claim_sync, limit)
        if batches:
            log.debug("delivery: claimed %d batches", len(batches))
        for b in batches:
            self.inflight += 1
            self.transport.submit(b)
        return len(batches)

    async def serve(self, stop: asyncio.Event, wake: asyncio.Event,
                    until_idle: bool = False) -> None:
        await asyncio.to_thread(self._recover_sync)
        last_recover = time.monotonic()
        last_claim = -POLL
        exhausted = False         # the last claim found less than it asked for
        async with self.transport:
            while not stop.is_set():
                try:
                    if self.finished:
                        await self._record()
                    room = (self.transport.backlog < self.low_water
                            and self.inflight < self.max_inflight)
                    idle = until_idle and not self.inflight and not self.finished
                    due = time.monotonic() - last_claim >= POLL
                    if room and (not exhausted or wake.is_set() or due or idle):
                        wake.clear()
                        limit = min(self.claim_limit, self.max_inflight - self.inflight)
                        claimed = await self._claim(limit)
                        last_claim = time.monotonic()
                        exhausted = claimed < limit
                        if claimed:
                            continue
                        if idle:
                            break
                    if time.monotonic() - last_recover > RECOVER_EVERY:
                        last_recover = time.monotonic()
                        await asyncio.to_thread(self._recover_sync)
                except Exception:
                    if until_idle:
                        raise
                    log.exception("delivery: queue error; pausing")
                    await _wait_any([stop], ERROR_PAUSE)
                    continue
                self.changed.clear()
                if self.finished:
                    continue
                if room:
                    left = max(0.0, POLL - (time.monotonic() - last_claim))
                    await _wait_any([stop, wake, self.changed], left)
                else:
                    await _wait_any([stop, self.changed], POLL)
        # The transport has finished what was in progress and handed back what was not.
        while self.finished:
            try:
                await self._record()
            except Exception:
                if until_idle:
                    raise
                log.exception("delivery: cannot record results at stop; retrying")
                await asyncio.sleep(ERROR_PAUSE)


async def _wait_any(events: list[asyncio.Event], timeout: float) -> None:
    if any(e.is_set() for e in events) or timeout <= 0:
        await asyncio.sleep(0)
        return
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def run(app: App, stop: asyncio.Event, wake: asyncio.Event) -> None:
    """The daemon's delivery loop: deliver what is ready, wait on ``wake`` (set after a
    message is queued) or a short poll; on ``stop`` finish transactions in progress, give the
    rest back to the queue and return."""
    await Runner(app).serve(stop, wake)


def deliver_pending(app: App) -> int:
    """Deliver everything that is ready now (synchronously); return the number of batches."""

    async def go() -> int:
        runner = Runner(app)
        await runner.serve(asyncio.Event(), asyncio.Event(), until_idle=True)
        return runner.handled

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    with concurrent.futures.ThreadPoolExecutor(1) as pool:   # called from inside a loop
        return pool.submit(asyncio.run, go()).result()
