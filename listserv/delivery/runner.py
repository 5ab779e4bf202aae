"""Delivery workers: claim ready batches from the durable outbound queue
(listserv.delivery.queues), send them through a transport (listserv.delivery.transport),
record the results.

- delivered recipients: ``done``;
- 4xx / connection failure: ``pending`` again at ``now + retry_schedule[attempts-1]`` (the last
  step repeats) until ``give_up_after_days`` after the first try, then as 5xx;
- 5xx: ``failed``, and ``bounces.record_failure(..., permanent=True)``;
- not sent because we were stopping: ``pending`` at once, attempts unchanged.

Claims are leases (listserv.delivery.queues): the Runner renews its rows' leases by a
heartbeat every third of the lease; the rows of a process that died are taken over by any
worker when their lease expires, so nothing accepted is lost. What a transaction delivered
is recorded before its connection starts the next transaction (group commits shared by the
connections), so what a crash sends twice is at most one transaction per connection. The
spooled bytes of a message are read once and shared by all its batches and recipients;
nothing is re-parsed or re-signed, except that a VERP'd post gives each member a copy with
their own one-click unsubscribe headers and DKIM signature (listserv.delivery.unsubscribe:
the body is hashed once per post).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import os
import time
from collections import OrderedDict
from typing import Any, Callable, Union

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from listserv.bounces import process as bounces
from listserv.core.app import App, site_secret
from listserv.core.models import DeliveryState, Domain, MailingList, OutboundMessage
from listserv.core.views import ListView
from listserv.delivery import post_failures, signpool, unsubscribe
from listserv.delivery.progress import Busy, ProgressWriter
from listserv.delivery.queues import (
    T,
    Ranges,
    Recorded,
    claim,
    record,
    renew,
)
from listserv.delivery.transport import Batch, MaildirTransport, Message, SmtpTransport
from listserv.jobs.engine import lease_of, new_worker_id
from listserv.message import signing

log = logging.getLogger(__name__)

POLL = 0.5                    # idle poll when nobody sets ``wake``
ERROR_PAUSE = 2.0             # after a database error in run()
RECORD_TRIES = 3              # tries to write one batch's results (others succeeding)
MESSAGE_CACHE = 64            # OutboundMessages whose bytes are kept in memory ...
MESSAGE_CACHE_BYTES = 64 << 20  # ... and at most this many bytes of them
FIRST_COPIES = 8              # per-member copies made first, on their own (_personalise)

Transport = Union[SmtpTransport, MaildirTransport]
Arrived = Callable[[list[str], list[tuple[bytes, bytes]]], None]
Work = Callable[[Batch, Union[Arrived, None]], Union[dict[str, tuple[bytes, bytes]], None]]


class Runner:
    """One delivery worker: a claim/record loop around one transport."""

    def __init__(self, app: App, owner: str | None = None) -> None:
        self.app = app
        self.owner = owner or new_worker_id()
        self.lease = lease_of(app)
        d = app.settings.delivery
        self.claim_limit = d.connections
        self.max_inflight = 2 * d.connections
        self.low_water = d.connections
        self.inflight = 0
        self.handled = 0
        self.finished: list[Batch] = []
        self.changed = asyncio.Event()
        self.messages: OrderedDict[int, Message] = OrderedDict()
        self.secret: str | None = None
        self.signing = _Pipeline()
        self.claimed: dict[int, Batch] = {}     # batches whose lease this Runner holds
        self.first_made: set[int] = set()       # messages whose first copies were made
        self.progress = _Progress(self)
        self._writer: ProgressWriter | None = None
        self.transport: Transport = self._make_transport()

    def _make_transport(self) -> Transport:
        s = self.app.settings
        out = s.outbound
        if out.startswith("maildir:"):
            return MaildirTransport(out[len("maildir:"):], self._done)
        return SmtpTransport(out, s.delivery.connections,
                             s.delivery.max_recipients_per_transaction, s.site_domain, self._done,
                             low_water=(self.low_water, self.changed.set),
                             settle=self.progress.settle)

    def _done(self, batch: Batch) -> None:
        self.finished.append(batch)
        self.changed.set()

    # -- database steps (run in a thread) -------------------------------------------------

    def _claim_sync(self, limit: int, found: Callable[[], None] | None = None
                    ) -> list[Batch]:
        now = self.app.now()
        db = self.app.db
        # On SQLite the claim commits on its own: reading and preparing the messages' bytes
        # (a DKIM signature) must not hold the write lock. PostgreSQL's claim locks only its
        # own rows: the messages are read in its transaction (a commit and a BEGIN fewer,
        # each a round trip, on the way to a post's first copy).
        with db.unit_of_work() as session:
            rows = claim(session, self.owner, now, limit, self.lease, found=found)
            have = self._messages(session, rows, now) if rows and not db.is_sqlite else {}
        if not rows:
            return []
        if db.is_sqlite:
            with db.unit_of_work() as session:
                have = self._messages(session, rows, now)
        for m in have.values():
            self._remember(m)
        batches = []
        for r in rows:
            if r.outbound_id in have:
                listed = [x for x in r.recipients.split("\n") if x]
                done = Ranges.parse(r.sent)
                b = Batch(r.id, have[r.outbound_id],
                          [x for i, x in enumerate(listed) if i not in done]
                          if done.starts else list(listed),
                          r.attempts, r.first_attempt_at,
                          already=[listed[i] for i in done if i < len(listed)])
                self.progress.track(b, listed, done)
                batches.append(b)
        return batches

    def _messages(self, session: Session, rows: list[Any], now: dt.datetime
                  ) -> dict[int, Message]:
        """The messages of claimed ``rows`` by outbound id, from the cache or read (and
        prepared); the rows whose message is missing are parked as failed."""
        need = {r.outbound_id for r in rows}
        have = {i: self.messages[i] for i in need if i in self.messages}
        if need - set(have):
            for out in session.scalars(select(OutboundMessage)
                                       .where(OutboundMessage.id.in_(need - set(have)))):
                try:
                    have[out.id] = self._load(session, out)
                except OSError as exc:
                    log.error("outbound message %s (Message-ID %s): cannot read spool "
                              "file: %s", out.id, out.message_id, exc)
        bad = [r.id for r in rows if r.outbound_id not in have]
        if bad:   # parked for a human: visible as failed in `listserv queue status`
            session.execute(update(T).where(T.c.id.in_(bad)).values(
                state=DeliveryState.failed, lease_owner=None, lease_expires=None,
                finished_at=now, last_error="spool file of the message is missing"))
        if any(m.maker is not None for m in have.values()):
            self._site_secret(session)
        return have

    def _personalise(self, batch: Batch, arrived: Arrived | None = None
                     ) -> dict[str, tuple[bytes, bytes]] | None:
        """Members' own parts of their copies of ``batch`` (unsubscribe fields + DKIM
        signature), made in worker processes (listserv.delivery.signpool) when there are many, so
        this runs in a thread; ``arrived(rcpts, owns)`` is called as each chunk is ready.
        None on any error: the members without their own part get the generic copy (never
        a lost batch).

        In the first batch of a message, the first FIRST_COPIES members' parts are looked up
        and made here first, on their own: the first copies then leave after a small query
        and a few signatures, not after the whole batch's query and a round trip through the
        workers."""
        maker, list_id = batch.message.maker, batch.message.list_id
        if maker is None or list_id is None or self.secret is None:
            return {}
        first = batch.message.outbound_id not in self.first_made
        self.first_made.add(batch.message.outbound_id)
        split = FIRST_COPIES if first and len(batch.recipients) > FIRST_COPIES else 0
        out: dict[str, tuple[bytes, bytes]] = {}
        parts = ([(batch.recipients[:split], True), (batch.recipients[split:], False)]
                 if split else [(batch.recipients, False)])
        for recipients, here_only in parts:
            got = self._own_parts(batch, maker, list_id, recipients, arrived, here_only)
            if got is None:
                return None if not out else out
            out.update(got)
        return out

    def _own_parts(self, batch: Batch, maker: unsubscribe.CopyMaker, list_id: int,
                   recipients: list[str], arrived: Arrived | None, here_only: bool
                   ) -> dict[str, tuple[bytes, bytes]] | None:
        assert self.secret is not None
        try:      # the members' memberships: one query per 500 recipients
            with self.app.db.unit_of_work() as session:
                members = unsubscribe.memberships_for(session, list_id, recipients)
        except Exception:
            log.exception("delivery batch %s: cannot look up the members; sending the list "
                          "copy", batch.id)
            return None
        rcpts = [r for r in recipients if r.lower() in members]

        def part(start: int, owns: list[tuple[bytes, bytes]]) -> None:
            if arrived is not None:
                arrived(rcpts[start:start + len(owns)], owns)
        try:
            return dict(zip(rcpts, maker.own(self.secret, [members[r.lower()] for r in rcpts],
                                             part, here_only=here_only)))
        except Exception:
            log.exception("delivery batch %s: per-member copies failed; sending the list copy",
                          batch.id)
            return None

    def _site_secret(self, session: Session) -> str:
        if self.secret is None:
            self.secret = site_secret(session)
        return self.secret

    def _load(self, session: Session, out: OutboundMessage) -> Message:
        data = next((m.data for m in self.messages.values() if m.sha == out.spool_sha
                     and m.maker is None), None)
        if data is None:
            data = self.app.spool.get(out.spool_sha)
        msg = Message(out.id, out.list_id, out.envelope_from, out.verp, data,
                      not data.isascii(), sha=out.spool_sha, message_id=out.message_id)
        ml = session.get(MailingList, out.list_id) if out.per_member and out.list_id else None
        if ml is not None:
            # ``data`` is unsigned: members get their own copies (CopyMaker); anyone
            # else the generic copy, signed here once.
            lv = unsubscribe.with_web(ListView.of(ml), self.app.settings.web)
            try:
                msg.maker = unsubscribe.CopyMaker.of(data, lv, self.app.settings.web.base_url)
            except ValueError:
                log.error("outbound message %s: no header/body separator; sent unpersonalised",
                          out.id)
            else:
                if lv.dkim_key and lv.dkim_selector:
                    msg.data = signing.sign(data, lv.domain, lv.dkim_selector, lv.dkim_key)
        return msg

    def _remember(self, m: Message) -> None:
        self.messages[m.outbound_id] = m
        self.messages.move_to_end(m.outbound_id)
        while len(self.messages) > 1 and (
                len(self.messages) > MESSAGE_CACHE
                or sum(len(x.data) for x in self.messages.values()) > MESSAGE_CACHE_BYTES):
            gone, _ = self.messages.popitem(last=False)  # batches in flight keep theirs
            self.first_made.discard(gone)

    def _record_sync(self, batches: list[Batch]) -> list[Batch]:
        """Record ``batches`` in one transaction; if that fails, one by one, so that one bad
        batch does not hold up the others. Returns the batches that could not be recorded;
        raises when none could and the database does not answer (then nothing is counted)."""
        try:
            self._record_one_transaction(batches)
            return []
        except Exception:
            if len(batches) == 1:
                log.exception("delivery batch %s: cannot record its results", batches[0].id)
        left = batches if len(batches) == 1 else []
        if len(batches) > 1:
            for b in batches:
                try:
                    self._record_one_transaction([b])
                except Exception:
                    log.exception("delivery batch %s: cannot record its results", b.id)
                    left.append(b)
        if len(left) == len(batches) and not self._db_answers():
            raise RuntimeError("database unavailable: delivery results kept for later")
        return left

    def _db_answers(self) -> bool:
        try:
            with self.app.db.unit_of_work() as session:
                session.execute(select(1))
            return True
        except Exception:
            return False

    def _record_one_transaction(self, batches: list[Batch]) -> None:
        with self.app.db.unit_of_work() as session:
            done = record(session, self.app.now(), self.app.settings.delivery, self.owner,
                          batches, post_failures.split)
            for r in done:
                report_failures(session, self.app, r)

    def _progress_writer(self) -> ProgressWriter:
        if self._writer is None:
            self._writer = ProgressWriter(self.app.db.engine)
        return self._writer

    def _progress_now(self, sent: dict[int, str]) -> set[int] | None:
        """SQLite: the progress record written right here, on the delivery loop, when the
        write lock is free (a few microseconds, no hop to a thread); None when it is not
        (or on PostgreSQL): then _progress_sync writes it from a thread."""
        if not self.app.db.is_sqlite:
            return None
        try:
            return self._progress_writer().write(self.owner, self.app.now(), sent,
                                                 self.lease, wait=False)
        except Busy:
            return None
        except Exception:
            self._close_progress()
            raise

    def _progress_sync(self, sent: dict[int, str]) -> set[int]:
        try:
            return self._progress_writer().write(self.owner, self.app.now(), sent, self.lease)
        except Exception:
            self._close_progress()
            raise

    def _close_progress(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                log.debug("closing the progress connection failed", exc_info=True)

    def _renew_sync(self) -> set[int]:
        with self.app.db.unit_of_work() as session:
            return renew(session, self.owner, self.app.now(), self.lease)

    async def _heartbeat(self) -> None:
        """Renew the leases of the rows in hand every third of the lease; a row another worker
        took over (this process stalled past its lease) is sent no further."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            ids = set(self.claimed)
            if not ids:
                continue
            try:
                held = await asyncio.to_thread(self._renew_sync)
            except Exception:
                log.exception("delivery: renewing the leases failed")
                continue
            for i in ids - held:
                b = self.claimed.get(i)
                if b is not None and not b.lost:
                    b.lost = True
                    log.warning("delivery batch %s: lease lost to another worker", i)

    # -- the loop -------------------------------------------------------------------------

    async def _record(self) -> None:
        batches, self.finished = self.finished, []
        try:
            left = await asyncio.to_thread(self._record_sync, batches)
        except Exception:
            self.finished[:0] = batches   # keep them; try again
            raise
        kept = {id(b) for b in left}
        for b in batches:
            if id(b) not in kept:
                self.claimed.pop(b.id, None)
                self.progress.forget(b)
        for b in left:
            b.record_tries += 1
        dropped = [b for b in left if b.record_tries >= RECORD_TRIES]
        for b in dropped:
            self.claimed.pop(b.id, None)
            self.progress.forget(b)
            log.error("delivery batch %s: results not recorded after %d tries; the row is "
                      "taken over when its lease expires", b.id, RECORD_TRIES)
        self.finished[:0] = [b for b in left if b.record_tries < RECORD_TRIES]
        self.inflight -= len(batches) - len(left) + len(dropped)
        self.handled += len(batches) - len(left)

    async def _claim(self, limit: int) -> int:
        found = None
        if isinstance(self.transport, SmtpTransport):
            # once the claim has found work: a connection opens while it takes the rows and
            # reads their messages (transport.warm)
            loop, warm = asyncio.get_running_loop(), self.transport.warm

            def found() -> None:
                loop.call_soon_threadsafe(warm)
        batches = await asyncio.to_thread(self._claim_sync, limit, found)
        if batches:
            log.debug("delivery: claimed %d batches", len(batches))
        self.claimed.update((b.id, b) for b in batches)
        plain = [b for b in batches if b.message.maker is None]
        personal = [b for b in batches if b.message.maker is not None]
        for b in plain:
            self.inflight += 1
            self.transport.submit(b)
        if personal:
            self.inflight += len(personal)
            self.signing = self.signing.then(personal, self._personalise, self.transport.submit,
                                             self.transport.streams)
        return len(batches)

    async def serve(self, stop: asyncio.Event, wake: asyncio.Event,
                    until_idle: bool = False) -> None:
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await self._serve(stop, wake, until_idle)
        finally:
            heartbeat.cancel()
            await asyncio.gather(heartbeat, return_exceptions=True)
            await asyncio.to_thread(self._close_progress)
            log.info("delivery: stopped after %d transactions, %d progress commits (%d from "
                     "a thread)", self.transport.transactions, self.progress.commits,
                     self.progress.threaded)

    async def _serve(self, stop: asyncio.Event, wake: asyncio.Event, until_idle: bool) -> None:
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
            await self.signing.drain()    # copies being signed still go to the transport,
        # which has finished what was in progress and handed back what was not.
        while self.finished:
            try:
                await self._record()
            except Exception:
                if until_idle:
                    raise
                log.exception("delivery: cannot record results at stop; retrying")
                await asyncio.sleep(ERROR_PAUSE)


class _Pipeline:
    """Batches waiting for their members' own parts: made in a thread
    (listserv.delivery.signpool: in worker processes), in chunks. A transport that
    ``streams`` gets each batch at once and each chunk as it is ready (a transaction waits
    for its recipient's part: the first copies leave after one chunk); otherwise a batch is
    handed over when all its parts are made, one batch after the other.

    Streamed, the next batch's parts are asked for once the current batch's first chunk
    is back (all its chunks are in the workers' queue by then, ahead of the next ones), so
    the workers do not wait at the end of every batch for its last chunk; at most AHEAD
    batches are being made at once."""

    AHEAD = 2

    def __init__(self) -> None:
        # the batches last handed over, in order: (first chunk back or done, being made)
        self.chain: list[tuple[asyncio.Event, asyncio.Task[None]]] = []

    def then(self, batches: list[Batch], work: Work, submit: Callable[[Batch], None],
             streams: bool) -> "_Pipeline":
        for b in batches:
            before = self.chain[-self.AHEAD:]
            started = asyncio.Event()
            task = asyncio.create_task(self._make(b, before, started, work, submit, streams))
            self.chain = [*before, (started, task)][-self.AHEAD:]
        return self

    @staticmethod
    async def _make(b: Batch, before: list[tuple[asyncio.Event, asyncio.Task[None]]],
                    started: asyncio.Event, work: Work, submit: Callable[[Batch], None],
                    streams: bool) -> None:
        try:
            if before:
                if not streams or len(before) >= _Pipeline.AHEAD:
                    await asyncio.gather(before[-1 if not streams else 0][1],
                                         return_exceptions=True)
                if streams:
                    await before[-1][0].wait()
            if not streams:
                try:
                    b.heads = await asyncio.to_thread(work, b, None) or None
                except Exception:         # work() logs its own; never lose the batch
                    b.heads = None
                submit(b)
                return
            loop = asyncio.get_running_loop()
            b.heads, b.making = {}, True
            submit(b)

            def add(rcpts: list[str], owns: list[tuple[bytes, bytes]]) -> None:
                assert b.heads is not None
                b.heads.update(zip(rcpts, owns))
                b.own_arrived()
                started.set()

            def arrived(rcpts: list[str], owns: list[tuple[bytes, bytes]]) -> None:
                loop.call_soon_threadsafe(add, rcpts, owns)   # from the work thread
            try:
                await asyncio.to_thread(work, b, arrived)
            except Exception:
                pass                      # work() logs its own; the rest: generic copy
            finally:
                b.making = False
                b.own_arrived()
        finally:
            started.set()

    async def drain(self) -> None:
        for _, task in self.chain:
            await asyncio.gather(task, return_exceptions=True)


class _Progress:
    """Group commits of what transactions delivered. A connection that finished a
    transaction waits (``settle``) for the commit that records its delivered recipients in
    the row's ``sent`` before it starts its next transaction; connections that finish while
    a commit runs share the next one. A crash then re-sends at most the one transaction per
    connection that was on the wire or waiting for its commit."""

    def __init__(self, runner: "Runner") -> None:
        self.runner = runner
        self.rows: dict[int, tuple[dict[str, int], Ranges]] = {}   # batch id -> positions, sent
        self.listed: dict[int, list[str]] = {}
        self.dirty: dict[int, Batch] = {}
        self.waiters: list[asyncio.Future[None]] = []
        self.task: asyncio.Task[None] | None = None
        self.commits = 0
        self.threaded = 0             # of them written from a thread
        self.loop: asyncio.AbstractEventLoop | None = None    # (get_running_loop: a getpid)

    def track(self, batch: Batch, listed: list[str], done: Ranges) -> None:
        """A claimed batch: ``listed`` its row's recipients, ``done`` the positions sent."""
        self.listed[batch.id] = listed
        self.rows[batch.id] = ({}, done)

    def forget(self, batch: Batch) -> None:
        self.listed.pop(batch.id, None)
        self.rows.pop(batch.id, None)

    async def settle(self, batch: Batch) -> None:
        if batch.lost or len(batch.ok) <= batch.saved or batch.id not in self.rows:
            return                      # nothing delivered to record (failures are retried)
        self.dirty[batch.id] = batch
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = self.loop.create_future()
        self.waiters.append(waiter)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._commits())
        await waiter

    def _text(self, b: Batch, mark: int) -> str:
        pos, done = self.rows[b.id]
        if not pos:
            pos.update((r, i) for i, r in enumerate(self.listed[b.id]))
        for r in b.ok[b.saved:mark]:
            i = pos.get(r)
            if i is not None:
                done.add(i)
        return str(done)

    async def _commits(self) -> None:
        while self.waiters:
            # one more turn of the loop first: the replies read in this turn settle too, and
            # share this commit (a quarter fewer commits in a VERP'd fan-out)
            await asyncio.sleep(0)
            batches = [b for b in self.dirty.values() if b.id in self.rows]
            waiters, self.waiters, self.dirty = self.waiters, [], {}
            marks = {b.id: len(b.ok) for b in batches}
            try:
                sent = {b.id: self._text(b, marks[b.id]) for b in batches}
                for b in batches:
                    b.saved = marks[b.id]
                lost = self.runner._progress_now(sent)
                if lost is None:
                    self.threaded += 1
                    lost = await asyncio.to_thread(self.runner._progress_sync, sent)
            except Exception:   # go on sending: only the bound on duplicates is at stake
                log.exception("delivery: cannot record progress (a crash now may send these "
                              "copies twice)")
            else:
                self.commits += 1
                for b in batches:
                    if b.id in lost and not b.lost:
                        b.lost = True
                        log.warning("delivery batch %s: lease lost to another worker", b.id)
            finally:
                for w in waiters:
                    if not w.done():
                        w.set_result(None)


def report_failures(session: Session, app: App, r: Recorded) -> None:
    """Permanent failures of a recorded batch: the recipients' own to bounce scoring, the
    message's to listserv.post_failures (owners told once per message). In the caller's
    transaction, each in a savepoint: a failure here never loses the batch's result."""
    b = r.batch
    by_reply: dict[tuple[int, str], list[str]] = {}
    for rcpt, code, text in r.recipient_failures:
        by_reply.setdefault((int(code or 550), text), []).append(rcpt)
    for (code, text), rcpts in by_reply.items():
        try:
            with session.begin_nested():
                bounces.record_failure(session, app, b.message.list_id, rcpts, code, text, True)
        except Exception:
            log.exception("delivery batch %s: bounce processing failed", b.id)
    if not r.message_failures:
        return
    m = b.message
    try:
        with session.begin_nested():
            kind = session.scalar(select(OutboundMessage.kind)
                                  .where(OutboundMessage.id == m.outbound_id)) or ""
            post_failures.report(session, app, m.outbound_id, m.list_id, kind, m.message_id,
                                 m.data, r.message_failures)
    except Exception:
        log.exception("delivery batch %s: reporting the message failure failed", b.id)


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
    if app.settings.delivery.verp and await asyncio.to_thread(_signs, app):
        signpool.start()         # members' own copies: many RSA signatures per post
    await Runner(app).serve(stop, wake)


def _signs(app: App) -> bool:
    """Does any domain sign its mail (DKIM key)? Then VERP'd posts need the signing
    workers, started now; otherwise they start on first use (a key added while running)."""
    try:
        with app.db.unit_of_work() as session:
            return session.scalar(select(Domain.id).where(Domain.dkim_private_key.is_not(None))
                                  .limit(1)) is not None
    except Exception:
        log.exception("delivery: cannot tell whether any domain signs; starting the signing "
                      "processes")
        return True


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
