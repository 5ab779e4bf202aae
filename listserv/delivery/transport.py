"""Outbound transports: a pool of reused SMTP connections and a Maildir writer.

A claimed Delivery row becomes a ``Batch``; a transport sends it as one or more SMTP
transactions (one per recipient with VERP) and records each recipient's outcome on the batch.
Nothing here touches the database: listserv.delivery.runner claims batches and records results.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Awaitable, Callable
from urllib.parse import urlsplit

import aiosmtplib

from listserv.core.addresses import verp_encode
from listserv.core.errors import ConfigError
from listserv.delivery import smtpconn, smtpwire

if TYPE_CHECKING:
    from listserv.delivery.unsubscribe import CopyMaker

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
# After a failed connection to the smarthost, fail further transactions at once for this long
# (they are retried on the schedule) instead of trying to connect once per recipient.
DOWN_HOLD_SECONDS = 5.0


@dataclass
class Message:
    """The final bytes of one OutboundMessage, read once and shared by all its batches."""

    outbound_id: int
    list_id: int | None
    envelope_from: str
    verp: bool
    data: bytes
    eight_bit: bool
    sha: str = ""
    message_id: str = ""
    # per-member copies (listserv.delivery.unsubscribe): ``data`` is then the generic signed copy,
    # and a member's own is ``sig + maker.head + fields + rest`` with (sig, fields) from
    # the batch's ``heads[rcpt]``
    maker: "CopyMaker | None" = None
    _lf: bytes | None = None
    _wire: tuple[bytes, bytes, bytes] | None = None
    _size: int | None = None

    @property
    def size(self) -> int:
        """The message's SIZE (RFC 1870) as batched transactions announce it."""
        if self._size is None:
            self._size = smtpwire.size_of(self.data)
        return self._size

    @property
    def wire(self) -> tuple[bytes, bytes, bytes]:
        """(the copy's bytes, a member's copy's head, its rest) as they go after DATA
        (smtpwire.wire_form), made once for all the copies."""
        if self._wire is None:
            m = self.maker
            self._wire = (smtpwire.wire_form(self.data, True),
                          smtpwire.wire_form(m.head, False) if m is not None else b"",
                          smtpwire.wire_form(m.rest, True) if m is not None else b"")
        return self._wire

    @property
    def lf_data(self) -> bytes:
        """The bytes with LF line endings (what a Maildir holds)."""
        if self._lf is None:
            self._lf = self.data.replace(b"\r\n", b"\n")
        return self._lf


@dataclass
class Batch:
    """One claimed Delivery row and what happened to each of its recipients on this try."""

    id: int
    message: Message
    recipients: list[str]
    attempts: int                       # before this try
    first_attempt_at: dt.datetime | None
    ok: list[str] = field(default_factory=list)
    temp: list[tuple[str, int | None, str]] = field(default_factory=list)
    perm: list[tuple[str, int, str]] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)
    # recipients whose reply was for the whole transaction (connection, EHLO, MAIL FROM, DATA):
    # given by the next hop itself, never about one recipient's mailbox
    whole: set[str] = field(default_factory=set)
    pending_tx: int = 0
    conn_failed: bool = False
    record_tries: int = 0
    # delivered under an earlier claim whose lease expired (the row's ``sent``): not sent again
    already: list[str] = field(default_factory=list)
    saved: int = 0                      # ok[:saved] is recorded as the row's progress
    lost: bool = False                  # the lease was taken over: send nothing more
    # recipient -> (DKIM-Signature field, own List-Unsubscribe fields) of their own copy
    heads: dict[str, tuple[bytes, bytes]] | None = None
    # own parts still arriving (listserv.delivery.runner): a transaction waits for its recipient's
    making: bool = False
    _arrived: asyncio.Event | None = None

    def own_arrived(self) -> None:
        """More of ``heads`` is there, or ``making`` ended: wake the waiting transactions."""
        ev, self._arrived = self._arrived, None
        if ev is not None:
            ev.set()

    async def own_ready(self, rcpts: list[str]) -> None:
        """Wait until the own parts for ``rcpts`` are there or no more are coming."""
        while self.making and not (self.heads is not None
                                   and all(r in self.heads for r in rcpts)):
            if self._arrived is None:
                self._arrived = asyncio.Event()
            await self._arrived.wait()

    def own_ready_now(self, rcpts: list[str]) -> bool:
        """Would own_ready(rcpts) return at once?"""
        return not self.making or (self.heads is not None and all(r in self.heads
                                                                  for r in rcpts))

    def wire_data(self, rcpts: list[str]) -> bytes:
        """data_for(rcpts) as it goes after DATA, up to and with the final dot line."""
        m = self.message
        data, head, rest = m.wire
        if self.heads and m.maker is not None and len(rcpts) == 1:
            own = self.heads.get(rcpts[0])
            if own is not None:
                sig, fields = own
                if b"\n." in sig or b"\n." in fields:
                    sig, fields = smtpwire.wire_form(sig, False), smtpwire.wire_form(fields, False)
                return b"".join((sig, head, fields, rest))
        return data

    def data_for(self, rcpts: list[str]) -> bytes:
        """The bytes to send to ``rcpts``: a member's own copy when there is one."""
        m = self.message
        if self.heads and m.maker is not None and len(rcpts) == 1:
            own = self.heads.get(rcpts[0])
            if own is not None:
                return b"".join((own[0], m.maker.head, own[1], m.maker.rest))
        return m.data

    def outcome(self, rcpts: list[str], code: int | None, text: str,
                whole: bool = False) -> None:
        """Record one reply for ``rcpts``: 2xx delivered, 5xx permanent, anything else temporary.
        ``whole``: the reply was to the transaction, not to a RCPT command."""
        if whole and not (code is not None and 200 <= code < 300):
            self.whole.update(rcpts)
        if code is not None and 200 <= code < 300:
            self.ok.extend(rcpts)
        elif code is not None and 500 <= code < 600:
            self.perm.extend((r, code, text) for r in rcpts)
        else:
            self.temp.extend((r, code, text) for r in rcpts)


def envelope_sender(envelope_from: str, verp: bool, rcpt: str) -> str:
    """The envelope sender for ``rcpt``: NAME-bounces+user=host@DOMAIN with VERP."""
    if not verp or "@" not in envelope_from or "@" not in rcpt:
        return envelope_from
    local, _, domain = envelope_from.rpartition("@")
    if local.endswith("-bounces"):
        return verp_encode(local[: -len("-bounces")], domain, rcpt)
    user, _, host = rcpt.rpartition("@")
    return f"{local}+{user}={host}@{domain}"


def transactions(batch: Batch, max_rcpts: int) -> list[tuple[str, list[str]]]:
    """(envelope sender, recipients) of each SMTP transaction needed for ``batch``."""
    msg = batch.message
    if msg.verp and msg.envelope_from:
        return [(envelope_sender(msg.envelope_from, True, r), [r]) for r in batch.recipients]
    rc = batch.recipients
    return [(msg.envelope_from, rc[i:i + max_rcpts]) for i in range(0, len(rc), max_rcpts)]


Done = Callable[[Batch], None]
# awaited by a connection after each transaction, before it starts the next one: returns
# once what the transaction delivered is recorded (listserv.delivery.runner's group
# commits), so a crash re-sends at most one transaction per connection
Settle = Callable[[Batch], Awaitable[None]]


# ---------------------------------------------------------------------------- SMTP


def parse_smtp_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "smtp" or not parts.hostname:
        raise ConfigError(f"delivery.outbound: {url!r} is not smtp://HOST:PORT")
    return parts.hostname, parts.port or 25


@dataclass
class _Tx:
    batch: Batch
    sender: str
    rcpts: list[str]


class SmtpTransport:
    """``connections`` worker tasks, each owning one reused SMTP connection to the smarthost,
    take transactions from one queue. ``submit`` never blocks; ``done(batch)`` is called when
    every transaction of a batch has finished. A batch may be submitted while its members'
    own parts are still being made (``Batch.making``): each transaction waits for its own."""

    streams = True

    def __init__(self, url: str, connections: int, max_rcpts: int, helo: str, done: Done,
                 low_water: tuple[int, Callable[[], None]] | None = None,
                 settle: Settle | None = None) -> None:
        self.host, self.port = parse_smtp_url(url)
        self.connections = connections
        self.max_rcpts = max_rcpts
        self.helo = helo
        self.done = done
        self.queue: asyncio.Queue[_Tx | None] = asyncio.Queue()
        self.workers: list[asyncio.Task[None]] = []
        self.down_until = 0.0
        self.transactions = 0
        self.low_water = low_water      # (n, callback): called when the backlog drops below n
        self.settle = settle
        self.pipelining: bool | None = None     # does the server offer it (None: not known)
        self.wires: list[smtpconn.Wire | None] = [None] * connections   # each worker's
        self.spare: asyncio.Task[smtpconn.Wire] | None = None     # opened ahead (warm())

    @property
    def backlog(self) -> int:
        """Transactions queued and not yet started."""
        return self.queue.qsize()

    async def __aenter__(self) -> "SmtpTransport":
        self.workers = [asyncio.create_task(self._worker(i)) for i in range(self.connections)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def warm(self) -> None:
        """Open one connection ahead, in the background, when a worker has none open (the
        next transaction may go to it): the runner calls this when its claim has found work,
        so that the first transaction finds a connection (greeting and EHLO done) instead of
        opening one after the claim. At most one such connection is opened ahead; it is the
        next connection a worker needs."""
        spare = self.spare
        if spare is not None and spare.done() and (
                spare.cancelled() or spare.exception() is not None
                or not spare.result().is_open):          # it failed, or the server closed it
            if not spare.cancelled() and spare.exception() is None:
                spare.result().close()
            spare = self.spare = None
        if self.pipelining is False or spare is not None \
                or time.monotonic() < self.down_until \
                or all(w is not None and w.is_open for w in self.wires):
            return
        self.spare = asyncio.create_task(smtpconn.open_wire(self.host, self.port, self.helo,
                                                            CONNECT_TIMEOUT))

    async def take_spare(self) -> smtpconn.Wire | None:
        """The connection warm() opened, when it is open; None otherwise."""
        task, self.spare = self.spare, None
        if task is None:
            return None
        try:
            wire = await task
        except Exception as exc:    # noqa: BLE001 - the caller connects itself, and reports
            log.debug("delivery: the connection opened ahead failed: %r", exc)
            return None
        if wire.is_open:
            return wire
        wire.close()
        return None

    def submit(self, batch: Batch) -> None:
        txs = transactions(batch, self.max_rcpts)
        batch.pending_tx = len(txs)
        if not txs:
            self.done(batch)
        for sender, rcpts in txs:
            self.queue.put_nowait(_Tx(batch, sender, rcpts))

    async def close(self) -> None:
        """Finish transactions in progress; give back (unsent) those not started."""
        task, self.spare = self.spare, None
        if task is not None:
            task.cancel()                 # (none of it when it is done)
            wire, = await asyncio.gather(task, return_exceptions=True)
            if isinstance(wire, smtpconn.Wire):
                await wire.quit(5)
        while not self.queue.empty():
            tx = self.queue.get_nowait()
            if tx is not None:
                tx.batch.unsent.extend(tx.rcpts)
                self._finish(tx.batch)
        for _ in self.workers:
            self.queue.put_nowait(None)
        if self.workers:
            await asyncio.gather(*self.workers, return_exceptions=True)
        self.workers = []

    def _finish(self, batch: Batch) -> None:
        batch.pending_tx -= 1
        if batch.pending_tx == 0:
            self.done(batch)

    def _took(self) -> None:
        """A transaction left the queue: tell the runner when the backlog runs low."""
        if self.low_water and self.queue.qsize() == self.low_water[0] - 1:
            self.low_water[1]()

    @staticmethod
    def single(tx: _Tx) -> bool:
        """One VERP'd copy (smtpwire.transact pipelines the next one's envelope behind it)?"""
        return tx.batch.message.verp and len(tx.rcpts) == 1

    def next_ready(self) -> _Tx | None:
        """The next transaction when one is queued (for smtpwire to pipeline behind a copy)."""
        try:
            tx = self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return None
        if tx is None:                 # a worker's stop mark: leave it for the queue
            self.queue.put_nowait(None)
            return None
        self._took()
        return tx

    async def _worker(self, n: int) -> None:
        smtp: aiosmtplib.SMTP | None = None   # for a server without PIPELINING
        wire: smtpconn.Wire | None = None
        carried: _Tx | None = None     # taken by the pipelined client behind the last copy,
        sent = False                   # its envelope commands already written
        try:
            while True:
                if carried is not None:
                    tx, carried = carried, None
                else:
                    got = await self.queue.get()
                    if got is None:
                        return
                    tx = got
                    self._took()
                if tx.batch.lost and not sent:   # (written envelopes go on: the wire's order)
                    tx.batch.unsent.extend(tx.rcpts)
                    self._finish(tx.batch)
                    continue
                try:
                    piped = self.pipelining is not False
                    if piped:
                        try:
                            if self.single(tx):
                                wire, carried, sent = await smtpwire.transact(self, wire, tx,
                                                                              sent)
                            else:
                                wire, sent = await smtpwire.batched(self, wire, tx), False
                        except smtpwire.NoPipelining:
                            wire, sent, piped = None, False, False
                    if not piped:
                        smtp = await self._send(smtp, tx)
                except Exception as exc:  # never lose a batch to a bug in one transaction
                    log.exception("delivery batch %s: transaction failed", tx.batch.id)
                    tx.batch.outcome(tx.rcpts, None, f"internal error: {exc!r}", whole=True)
                self.wires[n] = wire
                self.transactions += 1
                if self.settle is not None:
                    await self.settle(tx.batch)
                self._finish(tx.batch)
        finally:
            if wire is not None:
                await wire.quit(5)
            if smtp is not None and smtp.is_connected:
                try:
                    await asyncio.wait_for(smtp.quit(), 5)
                except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                    smtp.close()

    async def _connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname=self.host, port=self.port, local_hostname=self.helo,
                               timeout=COMMAND_TIMEOUT, start_tls=False, use_tls=False)
        await smtp.connect(timeout=CONNECT_TIMEOUT)
        return smtp

    async def _send(self, smtp: aiosmtplib.SMTP | None, tx: _Tx) -> aiosmtplib.SMTP | None:
        """Run one transaction with aiosmtplib (a server without PIPELINING), recording each
        recipient's outcome; return the connection."""
        batch = tx.batch
        if smtpwire.unavailable(self, batch, tx.rcpts):
            return smtp
        for attempt in (1, 2):
            reused = smtp is not None and smtp.is_connected
            try:
                if not reused:
                    smtp = await self._connect()
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                self.down_until = time.monotonic() + DOWN_HOLD_SECONDS
                batch.conn_failed = True
                batch.outcome(tx.rcpts, None,
                              f"cannot connect to {self.host}:{self.port}: {exc}", whole=True)
                return None
            assert smtp is not None
            try:
                await self._transaction(smtp, tx)
                return smtp
            except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
                smtp.close()
                smtp = None
                if attempt == 1 and reused:
                    continue  # a reused connection the server had dropped: try a fresh one
                batch.outcome(tx.rcpts, None, f"connection lost: {exc}", whole=True)
                return None
            except (aiosmtplib.SMTPTimeoutError, asyncio.TimeoutError, OSError) as exc:
                smtp.close()
                batch.outcome(tx.rcpts, None, f"timeout or network error: {exc}", whole=True)
                return None
        return smtp

    async def _transaction(self, smtp: aiosmtplib.SMTP, tx: _Tx) -> None:
        batch, msg = tx.batch, tx.batch.message
        opts: list[str] = []
        if not (tx.sender.isascii() and all(r.isascii() for r in tx.rcpts)):
            opts.append("SMTPUTF8")
        if msg.eight_bit and smtp.supports_extension("8bitmime"):
            opts.append("BODY=8BITMIME")
        if batch.making:
            await batch.own_ready(tx.rcpts)
        try:
            errors, _reply = await smtp.sendmail(tx.sender, tx.rcpts, batch.data_for(tx.rcpts),
                                                 mail_options=opts)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            for err in exc.recipients:
                batch.outcome([err.recipient], smtpwire.rcpt_code(err.code), err.message)
            return
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
            raise
        except aiosmtplib.SMTPHeloError as exc:
            batch.outcome(tx.rcpts, None, f"EHLO refused: {exc.code} {exc.message}", whole=True)
            return
        except aiosmtplib.SMTPResponseException as exc:   # MAIL FROM or DATA refused
            batch.outcome(tx.rcpts, exc.code, exc.message, whole=True)
            return
        except (aiosmtplib.SMTPNotSupported, ValueError) as exc:  # e.g. SMTPUTF8 unsupported
            batch.outcome(tx.rcpts, 550, f"cannot send: {exc}", whole=True)
            return
        if errors:
            for rcpt, resp in errors.items():
                batch.outcome([rcpt], smtpwire.rcpt_code(resp.code), resp.message)
            batch.ok.extend(r for r in tx.rcpts if r not in errors)
        else:
            batch.ok.extend(tx.rcpts)


# ---------------------------------------------------------------------------- Maildir


class MaildirTransport:
    """Writes one file per recipient to a Maildir (tmp -> new rename), with the envelope in
    ``Return-Path:`` and ``X-Envelope-To:`` lines, so a site without an MTA still sees mail."""

    streams = False         # batches come with all their own parts made

    def __init__(self, path: str, done: Done) -> None:
        self.root = Path(path)
        self.done = done
        self.tasks: set[asyncio.Task[None]] = set()
        self.transactions = 0
        self._seq = 0
        self._host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")

    @property
    def backlog(self) -> int:
        return 0

    async def __aenter__(self) -> "MaildirTransport":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def submit(self, batch: Batch) -> None:
        task = asyncio.create_task(self._run(batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, batch: Batch) -> None:
        try:
            await asyncio.to_thread(self.write_batch, batch)
        except Exception as exc:
            log.exception("delivery batch %s: maildir write failed", batch.id)
            done = set(batch.ok)
            batch.outcome([r for r in batch.recipients if r not in done], None,
                          f"maildir write failed: {exc!r}")
        self.done(batch)

    async def close(self) -> None:
        if self.tasks:
            await asyncio.gather(*list(self.tasks), return_exceptions=True)

    def write_batch(self, batch: Batch) -> None:
        for sub in ("tmp", "new", "cur"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        msg = batch.message
        body = msg.lf_data
        now = time.time()
        pid = os.getpid()
        for rcpt in batch.recipients:
            sender = envelope_sender(msg.envelope_from, msg.verp, rcpt)
            head = f"Return-Path: <{sender}>\nX-Envelope-To: <{rcpt}>\n".encode()
            self._seq += 1
            name = (f"{int(now)}.M{int(now * 1e6) % 1000000}P{pid}Q{self._seq}"
                    f"B{batch.id}.{self._host}")
            tmp = self.root / "tmp" / name
            own = body if not batch.heads or rcpt not in batch.heads else \
                batch.data_for([rcpt]).replace(b"\r\n", b"\n")
            with open(tmp, "wb") as fh:
                fh.write(head)
                fh.write(own)
            os.rename(tmp, self.root / "new" / name)
            batch.ok.append(rcpt)
            self.transactions += 1
