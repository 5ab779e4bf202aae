"""The SMTP client of delivery: RFC 2920 PIPELINING, one client for every transaction.

A VERP'd fan-out is one SMTP transaction per member, thousands per second, and a batched one
sends hundreds of RCPT TO per transaction: both are limited by the round trips and the
client's own work per transaction. aiosmtplib sends each command and waits for its reply,
parses both addresses with the email package's parser and reads one reply per read, so it
cannot take the replies of a pipelined group. This client, when the server offers
PIPELINING:

- batched transactions (``batched``): MAIL FROM and every RCPT TO in one write, their
  replies read in order, then DATA and the message;
- one-recipient transactions (VERP'd copies, ``transact``): one write carries a copy's
  content and the next transaction's ``MAIL FROM``/``RCPT TO``/``DATA`` (RFC 2920 3.1: the
  content may start a group, DATA ends it), so a copy is one write and one read.

The message's line endings and dot-stuffing are done once per message
(listserv.delivery.transport.Message), not per copy. Servers without PIPELINING (found at
the first connection: NoPipelining) are served by aiosmtplib, one command at a time
(listserv.delivery.transport). No TLS and no AUTH: the next hop is the local MTA.

The connection, ``Wire`` (an asyncio protocol that parses replies as they arrive), is in
listserv.delivery.smtpconn; ``batched`` and ``transact`` here run a transaction on it and record
its outcome on the batch: MAIL FROM's and DATA's replies are about the transaction, RCPT TO's
about the recipient.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING, Callable, Optional

from listserv.delivery.smtpconn import Reply, Wire, WireClosed, open_wire
from listserv.message.lines import LINE_END

if TYPE_CHECKING:
    from listserv.delivery.transport import Batch, SmtpTransport, _Tx

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 30.0
COMMAND_TIMEOUT = 120.0
DOWN_HOLD_SECONDS = 5.0     # as listserv.delivery.transport: fail fast after a failed connect

_PERIOD = re.compile(rb"(?m)^\.")
# never in an address or option on a command line (injection); an address is sent as it is
# stored (an addr-spec), not parsed again: that cost more than the rest of a transaction
_CONTROL = re.compile(r"[\x00-\x1f\x7f<>]")


class NoPipelining(Exception):
    """The server does not offer PIPELINING (or refused EHLO): aiosmtplib serves it."""


def wire_form(data: bytes, end: bool) -> bytes:
    """``data`` as it goes between DATA's 354 and the end: CRLF line endings, lines starting
    with a dot doubled, and (``end``) the final CRLF and ``.`` line. Per message, not per copy."""
    data = LINE_END.sub(b"\r\n", data)
    if end and not data.endswith(b"\r\n"):
        data += b"\r\n"
    data = _PERIOD.sub(b"..", data)
    return data + b".\r\n" if end else data


def envelope(extensions: set[str], sender: str, rcpts: list[str], eight_bit: bool,
             size: int | None = None, data: bool = False) -> bytes:
    """``MAIL FROM`` and every ``RCPT TO`` of a transaction to a server offering
    ``extensions`` (and ``DATA``, pipelined behind them for one-recipient copies);
    ValueError for an address that cannot be sent: a control character or an angle bracket
    (injection), or not ASCII without SMTPUTF8."""
    opts = f" SIZE={size}" if size is not None and "SIZE" in extensions else ""
    utf8 = not (sender.isascii() and all(map(str.isascii, rcpts)))
    if utf8:
        if "SMTPUTF8" not in extensions:
            raise ValueError("the server does not offer SMTPUTF8 for a non-ASCII address")
        opts += " SMTPUTF8"
    if eight_bit and "8BITMIME" in extensions:
        opts += " BODY=8BITMIME"
    if _CONTROL.search(sender) or any(map(_CONTROL.search, rcpts)):
        raise ValueError("address contains a control character or an angle bracket")
    text = "".join([f"MAIL FROM:<{sender}>{opts}\r\n", *[f"RCPT TO:<{r}>\r\n" for r in rcpts],
                    "DATA\r\n" if data else ""])
    return text.encode("utf-8" if utf8 else "ascii")


def group(wire: Wire, batch: "Batch", sender: str, rcpt: str) -> bytes:
    """The commands of a one-recipient transaction up to DATA (ValueError: see envelope);
    envelope()'s result, built directly for the usual ASCII addresses (once per copy)."""
    if sender.isascii() and rcpt.isascii() and not (_CONTROL.search(sender)
                                                    or _CONTROL.search(rcpt)):
        opts = " BODY=8BITMIME" if batch.message.eight_bit and "8BITMIME" in wire.extensions \
            else ""
        return f"MAIL FROM:<{sender}>{opts}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode("ascii")
    return envelope(wire.extensions, sender, [rcpt], batch.message.eight_bit, data=True)


def settle(batch: "Batch", rcpts: list[str], mail: Reply, rcpt: Reply, data: Reply | None,
           end: Reply | None) -> None:
    """Record the outcome of one transaction from its replies, as the aiosmtplib path does:
    MAIL FROM and DATA replies are about the transaction, RCPT TO's about the recipient
    (552 there counts as 452, RFC 5321 4.5.3.1.10)."""
    if not 200 <= mail.code < 300:
        batch.outcome(rcpts, mail.code, mail.text, whole=True)
    elif not 200 <= rcpt.code < 300:
        batch.outcome(rcpts, rcpt_code(rcpt.code), rcpt.text)
    elif data is not None and data.code != 354:
        batch.outcome(rcpts, data.code, data.text, whole=True)
    elif end is not None and not 200 <= end.code < 300:
        batch.outcome(rcpts, end.code, end.text, whole=True)
    else:
        batch.ok.extend(rcpts)


def size_of(data: bytes) -> int:
    """The SIZE (RFC 1870) of a message: its bytes with CRLF line endings, ending in one."""
    crlf = LINE_END.sub(b"\r\n", data)
    return len(crlf) + (0 if crlf.endswith(b"\r\n") else 2)


async def connect(t: "SmtpTransport", wire: Wire | None, batch: "Batch",
                  rcpts: list[str]) -> Wire | None:
    """``wire`` when it is open, else a new connection to ``t``'s smarthost; None when
    connecting fails (recorded on ``batch`` for ``rcpts``). NoPipelining when the server
    does not offer it (``t.pipelining`` is then False)."""
    if wire is not None:
        if wire.is_open:
            return wire
        wire.close()
    try:
        wire = (await t.take_spare()) or (await open_wire(t.host, t.port, t.helo,
                                                          CONNECT_TIMEOUT))
    except (OSError, asyncio.TimeoutError) as exc:
        t.down_until = time.monotonic() + DOWN_HOLD_SECONDS
        batch.conn_failed = True
        batch.outcome(rcpts, None, f"cannot connect to {t.host}:{t.port}: {exc}", whole=True)
        return None
    if "PIPELINING" not in wire.extensions:
        t.pipelining = False
        await wire.quit(5)
        raise NoPipelining()
    t.pipelining = True
    return wire


def rcpt_code(code: int) -> int:
    """RFC 5321 4.5.3.1.10: 552 "too many recipients" at RCPT is to be treated as 452."""
    return 452 if code == 552 else code


def unavailable(t: "SmtpTransport", batch: "Batch", rcpts: list[str]) -> bool:
    """Is the smarthost known to be down (recorded on ``batch`` when so)?"""
    if batch.conn_failed or time.monotonic() < t.down_until:
        batch.outcome(rcpts, None, f"smarthost {t.host}:{t.port} unavailable", whole=True)
        return True
    return False


async def _reset(wire: Wire) -> Wire | None:
    """RSET after a refused transaction; the connection to keep (None: it failed)."""
    try:
        wire.write(b"RSET\r\n")
        await wire.read(1, COMMAND_TIMEOUT)
        return wire
    except OSError:                  # WireClosed and timeouts are; the next one reconnects
        wire.close()
        return None


async def _open(t: "SmtpTransport", wire: Wire | None, tx: "_Tx", sent: bool, n: int,
                commands: Callable[[Wire], bytes]) -> tuple[Wire | None, list[Reply] | None]:
    """The start of transaction ``tx`` of transport ``t``, shared by batched() and
    transact(): on ``wire`` (connecting when it is None or closed), ``commands(wire)``
    written, unless ``sent`` (written already, behind the previous copy), and their ``n``
    replies read; a kept connection that the server had dropped is replaced by a fresh one,
    once. Returns (the connection to keep, the replies); the replies are None when the
    transaction ended here, its outcome recorded on the batch. NoPipelining: see
    connect()."""
    batch, rcpts = tx.batch, tx.rcpts
    if not sent and unavailable(t, batch, rcpts):
        return wire, None
    for attempt in (1, 2):
        reused = sent or (wire is not None and wire.is_open)
        try:
            if not sent:
                wire = await connect(t, wire, batch, rcpts)
                if wire is None:
                    return None, None
                if batch.making:
                    await batch.own_ready(rcpts)
                try:
                    data = commands(wire)
                except ValueError as exc:
                    batch.outcome(rcpts, 550, f"cannot send: {exc}", whole=True)
                    return wire, None
                wire.write(data)
            assert wire is not None
            return wire, await wire.read(n, COMMAND_TIMEOUT)
        except WireClosed as exc:
            if wire is not None:
                wire.close()
            wire, sent = None, False
            if attempt == 1 and reused:
                continue      # a kept connection the server had dropped: try a fresh one
            batch.outcome(rcpts, None, f"connection lost: {exc}", whole=True)
            return None, None
        except OSError as exc:          # asyncio.TimeoutError is one
            if wire is not None:
                wire.close()
            batch.outcome(rcpts, None, f"timeout or network error: {exc}", whole=True)
            return None, None
    raise AssertionError("not reached: the second attempt returns")    # pragma: no cover


async def batched(t: "SmtpTransport", wire: Wire | None, tx: "_Tx") -> Wire | None:
    """Run transaction ``tx`` (any number of recipients) of transport ``t`` on ``wire``
    (connecting when it is None or closed): MAIL FROM and every RCPT TO in one write, then
    DATA and the message when a recipient was accepted. Records each recipient's outcome
    on the batch; returns the connection to keep. NoPipelining: see connect()."""
    batch, rcpts = tx.batch, tx.rcpts
    wire, replies = await _open(t, wire, tx, False, 1 + len(rcpts), lambda w: envelope(
        w.extensions, tx.sender, rcpts, batch.message.eight_bit, batch.message.size))
    if replies is None:
        return wire
    assert wire is not None
    mail = replies[0]
    if not 200 <= mail.code < 300:
        batch.outcome(rcpts, mail.code, mail.text, whole=True)
        return wire
    accepted: list[str] = []
    for rcpt, reply in zip(rcpts, replies[1:]):
        if 200 <= reply.code < 300:
            accepted.append(rcpt)
        else:
            batch.outcome([rcpt], rcpt_code(reply.code), reply.text)
    if not accepted:
        return await _reset(wire)
    try:
        wire.write(b"DATA\r\n")
        data, = await wire.read(1, COMMAND_TIMEOUT)
        if data.code != 354:
            batch.outcome(accepted, data.code, data.text, whole=True)
            return await _reset(wire)
        wire.write(batch.wire_data(accepted))
        end, = await wire.read(1, COMMAND_TIMEOUT)
    except OSError as exc:               # WireClosed and timeouts are
        wire.close()
        batch.outcome(accepted, None, f"connection lost during DATA: {exc}", whole=True)
        return None
    if 200 <= end.code < 300:
        batch.ok.extend(accepted)
    else:
        batch.outcome(accepted, end.code, end.text, whole=True)
    return wire


Sent = tuple[Optional[Wire], "Optional[_Tx]", bool]


async def transact(t: "SmtpTransport", wire: Wire | None, tx: "_Tx", sent: bool) -> Sent:
    """Run one VERP'd transaction ``tx`` (one recipient) of transport ``t`` on ``wire``
    (connecting when it is None or closed); ``sent``: its envelope commands were written
    already, behind the previous copy. Returns (the connection to keep, the next
    transaction when one was taken from the queue, whether its envelope commands were
    written). NoPipelining: see connect()."""
    batch, rcpts = tx.batch, tx.rcpts
    wire, replies = await _open(t, wire, tx, sent, 3,
                                lambda w: group(w, batch, tx.sender, rcpts[0]))
    if replies is None:
        return wire, None, False
    assert wire is not None
    mail, rcpt, data = replies
    if data.code != 354:
        settle(batch, rcpts, mail, rcpt, data, None)
        if 200 <= mail.code < 300:       # the server still holds the envelope: reset it
            return await _reset(wire), None, False
        return wire, None, False
    accepted = 200 <= mail.code < 300 and 200 <= rcpt.code < 300
    nxt = t.next_ready() if accepted else None
    ahead = b""
    try:
        if nxt is not None and t.single(nxt) and not nxt.batch.conn_failed \
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
