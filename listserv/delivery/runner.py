"""Delivery workers: claim ready batches from the durable outbound queue (listserv.delivery.queues),
send them through a transport (listserv.delivery.transport), record the results.

- delivered recipients: ``done``;
- 4xx / connection failure: ``pending`` again at ``now + retry_schedule[attempts-1]`` (the last
  step repeats) until ``give_up_after_days`` after the first try, then as 5xx;
- 5xx: ``failed``, and ``bounces.record_failure(..., permanent=True)``;
- not sent because we were stopping: ``pending`` at once, attempts unchanged.

Rows left in ``sending`` by a killed process (dead pid on this host, or ``locked_at`` older
than queues.STALE_AFTER) go back to ``pending``: nothing accepted is lost, and what may be
sent twice is bounded by the batches that were in flight. The spooled bytes of a message are
read once and shared by all its batches and recipients; nothing is re-parsed or re-signed,
except that a VERP'd post gives each member a copy with their own one-click unsubscribe
headers and DKIM signature (listserv.delivery.unsubscribe: the body is hashed once per post).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import time
from collections import OrderedDict
from typing import Callable, Union

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from listserv.delivery import signpool, unsubscribe
from listserv.message import signing
from listserv.core.app import App, site_secret
from listserv.core.models import DeliveryState, MailingList, OutboundMessage
from listserv.delivery.queues import T, claim, make_owner, record, recover
from listserv.delivery.transport import Batch, MaildirTransport, Message, SmtpTransport
from listserv.core.views import ListView

log = logging.getLogger(__name__)

RECOVER_EVERY = 60.0          # seconds between stale-claim sweeps in run()
POLL = 0.5                    # idle poll when nobody sets ``wake``
ERROR_PAUSE = 2.0             # after a database error in run()
RECORD_TRIES = 3              # tries to write one batch's results (others succeeding)
MESSAGE_CACHE = 64            # OutboundMessages whose bytes are kept in memory ...
MESSAGE_CACHE_BYTES = 64 << 20  # ... and at most this many bytes of them

Transport = Union[SmtpTransport, MaildirTransport]
Arrived = Callable[[list[str], list[tuple[bytes, bytes]]], None]
Work = Callable[[Batch, Union[Arrived, None]], Union[dict[str, tuple[bytes, bytes]], None]]


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
        self.secret: str | None = None
        self.signing = _Pipeline()
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
                        have[out.id] = self._load(session, out)
                    except OSError as exc:
                        log.error("outbound message %s (Message-ID %s): cannot read spool "
                                  "file: %s", out.id, out.message_id, exc)
            bad = [r.id for r in rows if r.outbound_id not in have]
            if bad:   # parked for a human: visible as failed in `listserv queue status`
                session.execute(update(T).where(T.c.id.in_(bad)).values(
                    state=DeliveryState.failed, locked_by=None, locked_at=None,
                    finished_at=now, last_error="spool file of the message is missing"))
            if any(m.maker is not None for m in have.values()):
                self._site_secret(session)
        for m in have.values():
            self._remember(m)
        batches = [Batch(r.id, have[r.outbound_id], [x for x in r.recipients.split("\n") if x],
                         r.attempts, r.first_attempt_at)
                   for r in rows if r.outbound_id in have]
        return batches

    def _personalise(self, batch: Batch, arrived: Arrived | None = None
                     ) -> dict[str, tuple[bytes, bytes]] | None:
        """Members' own parts of their copies of ``batch`` (unsubscribe fields + DKIM
        signature), made in worker processes (listserv.delivery.signpool) when there are many, so
        this runs in a thread; ``arrived(rcpts, owns)`` is called as each chunk is ready.
        None on any error: the members without their own part get the generic copy (never
        a lost batch)."""
        maker, list_id = batch.message.maker, batch.message.list_id
        if maker is None or list_id is None or self.secret is None:
            return {}
        try:      # the members' memberships: one query per 500 recipients
            with self.app.db.unit_of_work() as session:
                members = unsubscribe.memberships_for(session, list_id, batch.recipients)
        except Exception:
            log.exception("delivery batch %s: cannot look up the members; sending the list "
                          "copy", batch.id)
            return None
        rcpts = [r for r in batch.recipients if r.lower() in members]

        def part(start: int, owns: list[tuple[bytes, bytes]]) -> None:
            if arrived is not None:
                arrived(rcpts[start:start + len(owns)], owns)
        try:
            return dict(zip(rcpts, maker.own(self.secret, [members[r.lower()] for r in rcpts],
                                             part)))
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
            self.messages.popitem(last=False)   # batches in flight keep their own reference

    def _record_sync(self, batches: list[Batch]) -> list[Batch]:
        """Record ``batches`` in one transaction; if that fails, one by one, so that one bad
        batch does not hold up the others. Returns the batches that could not be recorded;
        raises when none could and the database does not answer (then nothing is counted)."""
        try:
            with self.app.db.unit_of_work() as session:
                record(session, self.app, self.owner, batches)
            return []
        except Exception:
            if len(batches) == 1:
                log.exception("delivery batch %s: cannot record its results", batches[0].id)
        left = batches if len(batches) == 1 else []
        if len(batches) > 1:
            for b in batches:
                try:
                    with self.app.db.unit_of_work() as session:
                        record(session, self.app, self.owner, [b])
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

    def _recover_sync(self) -> int:
        with self.app.db.unit_of_work() as session:
            return recover(session, self.app.now())

    # -- the loop -------------------------------------------------------------------------

    async def _record(self) -> None:
        batches, self.finished = self.finished, []
        try:
            left = await asyncio.to_thread(self._record_sync, batches)
        except Exception:
            self.finished[:0] = batches   # keep them; try again
            raise
        for b in left:
            b.record_tries += 1
        dropped = [b for b in left if b.record_tries >= RECORD_TRIES]
        for b in dropped:
            log.error("delivery batch %s: results not recorded after %d tries; the row stays "
                      "claimed until it is recovered as stale", b.id, RECORD_TRIES)
        self.finished[:0] = [b for b in left if b.record_tries < RECORD_TRIES]
        self.inflight -= len(batches) - len(left) + len(dropped)
        self.handled += len(batches) - len(left)

    async def _claim(self, limit: int) -> int:
        batches = await asyncio.to_thread(self._claim_sync, limit)
        if batches:
            log.debug("delivery: claimed %d batches", len(batches))
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
    """Batches waiting for their members' own parts: made one batch at a time in a thread
    (listserv.delivery.signpool: in worker processes), in chunks. A transport that ``streams`` gets
    each batch at once and each chunk as it is ready (a transaction waits for its
    recipient's part: the first copies leave after one chunk); otherwise a batch is handed
    over when all its parts are made."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None

    def then(self, batches: list[Batch], work: Work, submit: Callable[[Batch], None],
             streams: bool) -> "_Pipeline":
        before = self.task

        async def run() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            loop = asyncio.get_running_loop()
            for b in batches:
                if not streams:
                    try:
                        b.heads = await asyncio.to_thread(work, b, None) or None
                    except Exception:         # work() logs its own; never lose the batch
                        b.heads = None
                    submit(b)
                    continue
                b.heads, b.making = {}, True
                submit(b)

                def add(rcpts: list[str], owns: list[tuple[bytes, bytes]],
                        b: Batch = b) -> None:
                    assert b.heads is not None
                    b.heads.update(zip(rcpts, owns))
                    b.own_arrived()

                def arrived(rcpts: list[str], owns: list[tuple[bytes, bytes]]) -> None:
                    loop.call_soon_threadsafe(add, rcpts, owns)   # from the work thread
                try:
                    await asyncio.to_thread(work, b, arrived)
                except Exception:
                    pass                      # work() logs its own; the rest: generic copy
                finally:
                    b.making = False
                    b.own_arrived()

        self.task = asyncio.create_task(run())
        return self

    async def drain(self) -> None:
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)


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
    if app.settings.delivery.verp:
        signpool.start()         # members' own copies: many RSA signatures per post
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
