"""A lean SMTP client for one-recipient transactions (VERP'd copies) with RFC 2920 PIPELINING.

A VERP'd fan-out is one SMTP transaction per member: thousands per second, so the client's
cost per transaction is what limits it. aiosmtplib sends MAIL, RCPT, DATA and the message as
four writes, each awaiting its reply, parses both addresses with the email package's address
parser and runs two regular expressions over every copy; its protocol also reads one reply
per read, so it cannot take the replies of a pipelined group. Here, when the server offers
PIPELINING, one write carries a copy's content and the next transaction's
``MAIL FROM``/``RCPT TO``/``DATA`` (RFC 2920 3.1: the content may start a group, DATA ends
it), so a transaction is one write and one read; the message's line endings and dot-stuffing
are done once per message (listserv.delivery.transport.Message) instead of once per copy. Servers
without PIPELINING, and TLS, stay with aiosmtplib (listserv.delivery.transport).

``Wire`` is the connection (an asyncio protocol that parses replies as they arrive);
``send_one`` runs one transaction on it and records the outcome on the batch exactly as the
aiosmtplib path does.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import time
from typing import TYPE_CHECKING, NamedTuple, Optional

if TYPE_CHECKING:
    from listserv.delivery.transport import Batch, SmtpTransport, _Tx

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
DOWN_HOLD_SECONDS = 5.0     # as listserv.delivery.transport: fail fast after a failed connect

MAX_REPLY = 32 * 1024          # bytes of one reply (a multi-line EHLO answer is a few hundred)
_LINE_ENDINGS = re.compile(rb"\r\n|\n|\r(?!\n)")
_PERIOD = re.compile(rb"(?m)^\.")
_CONTROL = re.compile(r"[\x00-\x1f\x7f<>]")


class Reply(NamedTuple):
    code: int
    text: str


class WireClosed(ConnectionError):
    """The connection ended (or a reply was malformed) before the replies awaited came."""


def wire_form(data: bytes, end: bool) -> bytes:
    """``data`` as it goes between DATA's 354 and the end: CRLF line endings, lines starting
    with a dot doubled, and (``end``) the final CRLF and ``.`` line. Per message, not per copy."""
    data = _LINE_ENDINGS.sub(b"\r\n", data)
    if end and not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = _PERIOD.sub(b"..", data)
    return data + b".\r\n" if end else data


def envelope(sender: str, rcpt: str, options: list[str], utf8: bool) -> bytes:
    """``MAIL FROM``, ``RCPT TO`` and ``DATA`` of one transaction; ValueError for an address
    that cannot be sent (control characters or angle brackets, or not ASCII without
    SMTPUTF8)."""
    if _CONTROL.search(sender) or _CONTROL.search(rcpt):
        raise ValueError("address contains a control character or an angle bracket")
    opts = "".join(" " + o for o in options)
    text = f"MAIL FROM:<{sender}>{opts}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n"
    return text.encode("utf-8" if utf8 else "ascii")


class Wire(asyncio.Protocol):
    """One SMTP client connection whose replies are parsed as they arrive, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.buf = bytearray()
        self.lines: list[bytes] = []
        self.replies: collections.deque[Reply] = collections.deque()
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None
        self.extensions: set[str] = set()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end]).rstrip(b"\r")
            start = end + 1
            self.lines.append(line)
            if line[3:4] == b"-":
                continue
            lines, self.lines = self.lines, []
            if not line[:3].isdigit():
                self._fail(WireClosed(f"malformed SMTP reply {line[:80]!r}"))
                return
            self.replies.append(Reply(int(line[:3]), "\n".join(
                x[4:].decode("utf-8", "replace") for x in lines)))
        del buf[:start]
        if len(buf) + sum(len(x) for x in self.lines) > MAX_REPLY:
            self._fail(WireClosed("SMTP reply too long"))
            return
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.error is None:
            self.error = WireClosed(f"connection lost: {exc}" if exc else "connection closed")
        self._wake()

    # -- client side ----------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing() \
            and self.error is None

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        if self.transport is not None:
            self.transport.abort()
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done() and (len(self.replies) >= self.want or self.error):
            w.set_result(None)

    def write(self, data: bytes) -> None:
        if self.transport is None or self.error is not None:
            raise self.error or WireClosed("not connected")
        self.transport.write(data)

    async def read(self, n: int, timeout: float) -> list[Reply]:
        """The next ``n`` replies; WireClosed when the connection ends first,
        asyncio.TimeoutError after ``timeout`` seconds without them."""
        if len(self.replies) < n:
            if self.error is not None:
                raise self.error
            loop = asyncio.get_running_loop()
            self.want = n
            self.waiter = waiter = loop.create_future()
            timer = loop.call_later(timeout, _time_out, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                self.waiter = None
            if len(self.replies) < n:
                if self.error is not None:
                    raise self.error
                raise asyncio.TimeoutError("no SMTP reply in time")
        return [self.replies.popleft() for _ in range(n)]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def quit(self, timeout: float) -> None:
        """QUIT politely (bounded), then close."""
        try:
            if self.is_open:
                self.write(b"QUIT\r\n")
                await self.read(len(self.replies) + 1, timeout)
        except (OSError, asyncio.TimeoutError):
            pass
        self.close()


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)       # read() sees too few replies: a timeout


async def open_wire(host: str, port: int, helo: str, timeout: float) -> Wire:
    """Connect, read the greeting and say EHLO; OSError/asyncio.TimeoutError when that fails
    (WireClosed, a ConnectionError, when the server refuses)."""
    loop = asyncio.get_running_loop()
    _, wire = await asyncio.wait_for(loop.create_connection(Wire, host, port), timeout)
    try:
        greeting, = await wire.read(1, timeout)
        if greeting.code != 220:
            raise WireClosed(f"greeting {greeting.code} {greeting.text}")
        wire.write(f"EHLO {helo}\r\n".encode("ascii"))
        ehlo, = await wire.read(1, timeout)
        if ehlo.code != 250:
            raise WireClosed(f"EHLO refused: {ehlo.code} {ehlo.text}")
    except BaseException:
        wire.close()
        raise
    wire.extensions = {line.split(" ", 1)[0].upper()
                       for line in ehlo.text.split("\n")[1:] if line.strip()}
    return wire


def options(wire: Wire, sender: str, rcpt: str, eight_bit: bool) -> tuple[list[str], bool]:
    """MAIL FROM parameters of a transaction and whether its addresses go as UTF-8;
    ValueError when they need SMTPUTF8 and the server lacks it."""
    opts: list[str] = []
    utf8 = not (sender.isascii() and rcpt.isascii())
    if utf8:
        if "SMTPUTF8" not in wire.extensions:
            raise ValueError("the server does not offer SMTPUTF8 for a non-ASCII address")
        opts.append("SMTPUTF8")
    if eight_bit and "8BITMIME" in wire.extensions:
        opts.append("BODY=8BITMIME")
    return opts, utf8


def group(wire: Wire, batch: "Batch", sender: str, rcpt: str) -> bytes:
    """The envelope commands of one transaction (ValueError: see options)."""
    opts, utf8 = options(wire, sender, rcpt, batch.message.eight_bit)
    return envelope(sender, rcpt, opts, utf8)


def settle(batch: "Batch", rcpts: list[str], mail: Reply, rcpt: Reply, data: Reply | None,
           end: Reply | None) -> None:
    """Record the outcome of one transaction from its replies, as the aiosmtplib path does:
    MAIL FROM and DATA replies are about the transaction, RCPT TO's about the recipient
    (552 there counts as 452, RFC 5321 4.5.3.1.10)."""
    if not 200 <= mail.code < 300:
        batch.outcome(rcpts, mail.code, mail.text, whole=True)
    elif not 200 <= rcpt.code < 300:
        batch.outcome(rcpts, 452 if rcpt.code == 552 else rcpt.code, rcpt.text)
    elif data is not None and data.code != 354:
        batch.outcome(rcpts, data.code, data.text, whole=True)
    elif end is not None and not 200 <= end.code < 300:
        batch.outcome(rcpts, end.code, end.text, whole=True)
    else:
        batch.ok.extend(rcpts)


Sent = Optional[tuple[Optional[Wire], "Optional[_Tx]", bool]]


async def transact(t: "SmtpTransport", wire: Wire | None, tx: "_Tx", sent: bool) -> Sent:
    """Run one VERP'd transaction ``tx`` (one recipient) of transport ``t`` on ``wire``
    (connecting when it is None or closed); ``sent``: its envelope commands were written
    already, behind the previous copy. Returns (the connection to keep, the next
    transaction when one was taken from the queue, whether its envelope commands were
    written), or None when the server does not offer PIPELINING (``t.pipelining`` is then
    False and the caller sends it with aiosmtplib)."""
    batch, rcpts = tx.batch, tx.rcpts
    if not sent and (batch.conn_failed or time.monotonic() < t.down_until):
        batch.outcome(rcpts, None, f"smarthost {t.host}:{t.port} unavailable", whole=True)
        return wire, None, False
    for attempt in (1, 2):
        reused = sent or (wire is not None and wire.is_open)
        try:
            if not sent:
                if wire is None or not wire.is_open:
                    if wire is not None:
                        wire.close()
                    wire = None
                    try:
                        wire = await open_wire(t.host, t.port, t.helo, CONNECT_TIMEOUT)
                    except (OSError, asyncio.TimeoutError) as exc:
                        t.down_until = time.monotonic() + DOWN_HOLD_SECONDS
                        batch.conn_failed = True
                        batch.outcome(rcpts, None,
                                      f"cannot connect to {t.host}:{t.port}: {exc}", whole=True)
                        return None, None, False
                    if "PIPELINING" not in wire.extensions:
                        t.pipelining = False
                        await wire.quit(5)
                        return None
                    t.pipelining = True
                if batch.making:
                    await batch.own_ready(rcpts)
                try:
                    commands = group(wire, batch, tx.sender, rcpts[0])
                except ValueError as exc:
                    batch.outcome(rcpts, 550, f"cannot send: {exc}", whole=True)
                    return wire, None, False
                wire.write(commands)
            assert wire is not None
            mail, rcpt, data = await wire.read(3, COMMAND_TIMEOUT)
            break
        except WireClosed as exc:
            if wire is not None:
                wire.close()
            wire, sent = None, False
            if attempt == 1 and reused:
                continue      # a kept connection the server had dropped: try a fresh one
            batch.outcome(rcpts, None, f"connection lost: {exc}", whole=True)
            return None, None, False
        except OSError as exc:          # asyncio.TimeoutError is one
            if wire is not None:
                wire.close()
            batch.outcome(rcpts, None, f"timeout or network error: {exc}", whole=True)
            return None, None, False
    else:                                # pragma: no cover - the loop breaks or returns
        return None, None, False
    if data.code != 354:
        settle(batch, rcpts, mail, rcpt, data, None)
        if 200 <= mail.code < 300:       # the server still holds the envelope: reset it
            try:
                wire.write(b"RSET\r\n")
                await wire.read(1, COMMAND_TIMEOUT)
            except OSError:              # WireClosed is one; the next transaction reconnects
                wire.close()
                return None, None, False
        return wire, None, False
    accepted = 200 <= mail.code < 300 and 200 <= rcpt.code < 300
    nxt = t.next_ready() if accepted else None
    ahead = b""
    try:
        if nxt is not None and t._wired(nxt) and not nxt.batch.conn_failed \
                and nxt.batch.own_ready_now(nxt.rcpts):
            try:
                ahead = group(wire, nxt.batch, nxt.sender, nxt.rcpts[0])
            except ValueError:
                pass                     # it fails on its own, in its own turn
        # a server that said 354 with no recipient accepted gets an empty message
        wire.write((batch.wire_data(rcpts) if accepted else b".\r\n") + ahead)
        end, = await wire.read(1, COMMAND_TIMEOUT)
    except (WireClosed, OSError) as exc:
        wire.close()
        batch.outcome(rcpts, None, f"connection lost after the message: {exc}", whole=True)
        return None, nxt, False
    except Exception:        # a bug: the next transaction is not lost with this one
        wire.close()
        log.exception("delivery batch %s: transaction failed", batch.id)
        batch.outcome(rcpts, None, "internal error", whole=True)
        return None, nxt, False
    settle(batch, rcpts, mail, rcpt, data, end)
    return wire, nxt, bool(ahead)
