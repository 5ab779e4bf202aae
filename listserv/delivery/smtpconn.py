"""The SMTP client's connection: an asyncio protocol that parses replies as they arrive.

``Wire`` takes the server's replies in order as they come in, whole replies from one read in
the usual case, so that the replies of a pipelined group (RFC 2920) are read in one go;
``read(n)`` waits for the next ``n`` of them, with one timer per connection. ``open_wire``
connects and says EHLO. The transactions run on it are listserv.delivery.smtpwire's.
"""

from __future__ import annotations

import asyncio
import collections
from typing import NamedTuple, cast

MAX_REPLY = 32 * 1024          # bytes of one reply (a multi-line EHLO answer is a few hundred)


class Reply(NamedTuple):
    code: int
    text: str


_reply = tuple.__new__        # Reply(code, text) without the generated __new__'s call


class WireClosed(ConnectionError):
    """The connection ended (or a reply was malformed) before the replies awaited came."""


class Wire(asyncio.Protocol):
    """One SMTP client connection whose replies are parsed as they arrive, in order."""

    def __init__(self) -> None:
        self.transport: asyncio.WriteTransport | None = None
        self.buf = bytearray()
        self.lines: list[bytes] = []       # the lines of a multi-line reply so far
        self.replies: collections.deque[Reply] = collections.deque()
        self.want = 0
        self.waiter: asyncio.Future[None] | None = None
        self.error: Exception | None = None
        self.extensions: set[str] = set()
        self.deadline = 0.0                # of the read waiting now (loop time)
        self.timer: asyncio.TimerHandle | None = None
        # the loop it runs on (asyncio.get_running_loop() costs a getpid(2) per call)
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.WriteTransport, transport)   # (any loop's TCP transport)
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        if not buf and data[-1:] == b"\n":         # whole replies: the usual case
            whole = data[:-1]
        else:
            buf += data
            end = buf.rfind(b"\n")
            if end < 0:
                if len(buf) > MAX_REPLY:
                    self._fail(WireClosed("SMTP reply too long"))
                return
            whole = bytes(buf[:end])
            del buf[:end + 1]
        replies = self.replies
        for line in whole.split(b"\n"):
            if line[3:4] == b"-":                  # a multi-line reply goes on
                self.lines.append(line)
                if sum(map(len, self.lines)) > MAX_REPLY:
                    self._fail(WireClosed("SMTP reply too long"))
                    return
                continue
            code = line[:3]
            if not code.isdigit():
                self._fail(WireClosed(f"malformed SMTP reply {line[:80]!r}"))
                return
            if self.lines:
                self.lines.append(line)
                text = "\n".join(x[4:].rstrip(b"\r").decode("utf-8", "replace")
                                 for x in self.lines)
                self.lines = []
            else:
                text = line[4:].rstrip(b"\r").decode("utf-8", "replace")
            replies.append(_reply(Reply, (int(code), text)))
        if len(buf) > MAX_REPLY:
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

    def _check_time(self) -> None:
        """The connection's one timer: fires at a read's deadline (a read that ended
        earlier leaves it running, and the next read moves the deadline on)."""
        self.timer = None
        w = self.waiter
        if w is None or w.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() >= self.deadline:
            w.set_result(None)               # read() sees too few replies: a timeout
        else:
            self.timer = loop.call_at(self.deadline, self._check_time)

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
            loop = self.loop or asyncio.get_running_loop()
            self.want = n
            self.waiter = waiter = loop.create_future()
            self.deadline = loop.time() + timeout
            if self.timer is None:
                self.timer = loop.call_at(self.deadline, self._check_time)
            try:
                await waiter
            finally:
                self.waiter = None
            if len(self.replies) < n:
                if self.error is not None:
                    raise self.error
                raise asyncio.TimeoutError("no SMTP reply in time")
        popleft = self.replies.popleft
        return [popleft() for _ in range(n)]

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
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


async def open_wire(host: str, port: int, helo: str, timeout: float) -> Wire:
    """Connect, read the greeting and say EHLO; OSError/asyncio.TimeoutError when that fails
    (WireClosed, a ConnectionError, when the server refuses). A server that refuses EHLO
    gets no extensions (so the caller finds no PIPELINING)."""
    loop = asyncio.get_running_loop()
    _, wire = await asyncio.wait_for(loop.create_connection(Wire, host, port), timeout)
    try:
        greeting, = await wire.read(1, timeout)
        if greeting.code != 220:
            raise WireClosed(f"greeting {greeting.code} {greeting.text}")
        wire.write(f"EHLO {helo}\r\n".encode("ascii"))
        ehlo, = await wire.read(1, timeout)
    except BaseException:
        wire.close()
        raise
    if ehlo.code == 250:
        wire.extensions = {line.split(" ", 1)[0].upper()
                           for line in ehlo.text.split("\n")[1:] if line.strip()}
    return wire
