"""An SMTP client connection for batched transactions, with the envelope pipelined (RFC 2920).

aiosmtplib sends each RCPT TO and waits for its reply before the next one: a transaction to
500 recipients costs 500 round trips through the event loop, and a 100,000-member post
100,000. When the server advertises PIPELINING, this client writes MAIL FROM and every RCPT
TO of a transaction at once and then reads their replies in order; DATA follows when at
least one recipient was accepted. Without PIPELINING it sends one command at a time.

It answers like aiosmtplib.SMTP.sendmail (the same return value and exceptions), so the
transport (listserv.delivery.transport) records each recipient's outcome exactly as before:
a refused RCPT is that recipient's reply; a refused MAIL FROM or DATA, or every recipient
refused, raises, after which the envelope is reset (RSET).
"""

from __future__ import annotations

import asyncio
import re
from typing import Iterable, Sequence

from aiosmtplib import (
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPHeloError,
    SMTPNotSupported,
    SMTPReadTimeoutError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponse,
    SMTPSenderRefused,
    SMTPServerDisconnected,
)

LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
LEADING_DOT = re.compile(rb"(?m)^\.")
# never in an address or option on a command line (injection); an address is sent as it is
# stored (an addr-spec), not parsed again: that cost more than the rest of a transaction
CONTROL = re.compile(r"[\x00-\x1f\x7f<>]")
MAX_REPLY_LINE = 8192


def _ok(code: int) -> bool:
    return 200 <= code < 300


class PipeliningSMTP:
    """One connection to the smarthost (no TLS, no AUTH: the next hop is the local MTA)."""

    def __init__(self, hostname: str, port: int, local_hostname: str,
                 timeout: float) -> None:
        self.hostname, self.port = hostname, port
        self.local_hostname = local_hostname
        self.timeout = timeout
        self.extensions: dict[str, str] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.buffer = bytearray()
        self._message: bytes | None = None     # the last message sent, and its wire form
        self._wire = b""
        self._size = 0

    # -- connection ---------------------------------------------------------------------

    async def connect(self, timeout: float) -> None:
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection(self.hostname, self.port), timeout)
        greeting = (await self._replies(1))[0]
        if greeting.code != 220:
            self.close()
            raise SMTPConnectResponseError(greeting.code, greeting.message)
        self._command(f"EHLO {self.local_hostname}".encode())
        reply = (await self._replies(1))[0]
        if _ok(reply.code):
            self.extensions = _extensions(reply.message)
            return
        self._command(f"HELO {self.local_hostname}".encode())
        reply = (await self._replies(1))[0]
        if not _ok(reply.code):
            raise SMTPHeloError(reply.code, reply.message)
        self.extensions = {}

    @property
    def is_connected(self) -> bool:
        return self.writer is not None and not self.writer.is_closing()

    def supports_extension(self, name: str) -> bool:
        return name.lower() in self.extensions

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.writer = self.reader = None
        self.buffer.clear()

    async def quit(self) -> None:
        try:
            self._command(b"QUIT")
            await self._replies(1)
        finally:
            self.close()

    # -- one transaction ----------------------------------------------------------------

    async def sendmail(self, sender: str, recipients: Sequence[str], message: bytes, *,
                       mail_options: Iterable[str] = ()) -> tuple[dict[str, SMTPResponse], str]:
        """MAIL FROM, RCPT TO each recipient, DATA: (refused recipients -> reply, the final
        reply's text), as aiosmtplib's sendmail."""
        options = list(mail_options)
        utf8 = any(o.lower() == "smtputf8" for o in options)
        if utf8 and not self.supports_extension("smtputf8"):
            raise SMTPNotSupported("SMTPUTF8 is not supported by this server")
        encoding = "utf-8" if utf8 else "ascii"
        wire, size = self._wire_form(message)
        if self.supports_extension("size"):
            options.insert(0, f"SIZE={size}")
        # every address checked (and encoded) before anything is written
        for value in (sender, *recipients, *options):
            if CONTROL.search(value):
                raise ValueError(f"control character or angle bracket in {value!r}")
        mail = " ".join([f"MAIL FROM:<{sender}>", *options]).encode(encoding)
        rcpts = [f"RCPT TO:<{r}>".encode(encoding) for r in recipients]
        if self.supports_extension("pipelining"):
            self._write(b"".join(c + b"\r\n" for c in (mail, *rcpts)))
            replies = await self._replies(1 + len(rcpts))
        else:
            self._command(mail)
            replies = await self._replies(1)
            for cmd in rcpts if _ok(replies[0].code) else ():
                self._command(cmd)
                replies += await self._replies(1)
        if not _ok(replies[0].code):
            await self._reset()
            raise SMTPSenderRefused(replies[0].code, replies[0].message, sender)
        errors = {r: reply for r, reply in zip(recipients, replies[1:]) if not _ok(reply.code)}
        if len(errors) == len(recipients):
            await self._reset()
            raise SMTPRecipientsRefused([SMTPRecipientRefused(e.code, e.message, r)
                                         for r, e in errors.items()])
        self._command(b"DATA")
        reply = (await self._replies(1))[0]
        if reply.code != 354:
            await self._reset()
            raise SMTPDataError(reply.code, reply.message)
        self._write(wire)
        assert self.writer is not None
        await self.writer.drain()
        reply = (await self._replies(1))[0]
        if reply.code != 250:
            await self._reset()
            raise SMTPDataError(reply.code, reply.message)
        return errors, reply.message

    def _wire_form(self, message: bytes) -> tuple[bytes, int]:
        """(the DATA content: CRLF line ends, leading dots doubled, the final dot; the
        message's SIZE) of ``message``; the last message's is kept (a post's transactions
        all send the same bytes)."""
        if message is not self._message:
            data = LINE_ENDS.sub(b"\r\n", message)
            if not data.endswith(b"\r\n"):
                data += b"\r\n"
            self._message, self._size = message, len(data)
            self._wire = LEADING_DOT.sub(b"..", data) + b".\r\n"
        return self._wire, self._size

    async def _reset(self) -> None:
        """RSET after a refused transaction; a failure here is not the transaction's."""
        try:
            self._command(b"RSET")
            await self._replies(1)
        except (SMTPServerDisconnected, SMTPReadTimeoutError, ConnectionError, OSError):
            pass

    # -- the wire -----------------------------------------------------------------------

    def _command(self, line: bytes) -> None:
        self._write(line + b"\r\n")

    def _write(self, data: bytes) -> None:
        if self.writer is None or self.writer.is_closing():
            raise SMTPServerDisconnected("Connection lost")
        self.writer.write(data)

    async def _replies(self, n: int) -> list[SMTPResponse]:
        """The next ``n`` replies, in order (multi-line replies joined by newlines)."""
        if self.reader is None:
            raise SMTPServerDisconnected("Connection lost")
        out: list[SMTPResponse] = []
        lines: list[bytes] = []
        buf = self.buffer
        pos = 0
        try:
            async with asyncio.timeout(self.timeout):
                while True:
                    end = buf.find(b"\n", pos)
                    if end < 0:
                        del buf[:pos]
                        pos = 0
                        if len(buf) > MAX_REPLY_LINE:
                            raise SMTPServerDisconnected("reply line too long")
                        chunk = await self.reader.read(65536)
                        if not chunk:
                            self.close()
                            raise SMTPServerDisconnected("Connection lost")
                        buf += chunk
                        continue
                    line = bytes(buf[pos:end]).rstrip(b"\r")
                    pos = end + 1
                    lines.append(line[4:].strip())
                    if line[3:4] == b"-":
                        continue
                    try:
                        code = int(line[:3])
                    except ValueError:
                        self.close()
                        raise SMTPServerDisconnected(
                            f"malformed reply: {line[:100]!r}") from None
                    out.append(SMTPResponse(code, b"\n".join(lines).decode(
                        "utf-8", "surrogateescape")))
                    lines = []
                    if len(out) == n:
                        del buf[:pos]
                        return out
        except TimeoutError:
            self.close()
            raise SMTPReadTimeoutError("Timed out waiting for server response") from None


def _extensions(ehlo: str) -> dict[str, str]:
    """EHLO keywords (lower case) -> their parameters; the first line is the greeting."""
    out: dict[str, str] = {}
    for line in ehlo.split("\n")[1:]:
        keyword, _, params = line.strip().partition(" ")
        if keyword:
            out[keyword.lower()] = params
    return out
