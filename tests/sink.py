"""A real SMTP sink over loopback for tests: captures every transaction it accepts.

    with SmtpSink() as sink:           # listens on 127.0.0.1:<ephemeral>
        ... deliver to ("127.0.0.1", sink.port) ...
        sink.wait_for(lambda msgs: len(msgs) >= 3, timeout=10)

The sink offers PIPELINING (RFC 2920; aiosmtpd reads pipelined commands in order but does not
say so itself); ``SmtpSink(pipelining=False)`` does not, for the client's other path.
``sink.fail_rcpt`` maps a recipient to an SMTP reply (e.g. "450 4.2.0 busy") for tests of
retries and bounces; ``fail_times`` limits how often that reply is given. ``fail_data``
(data, recipients) -> reply or None answers the end of DATA (e.g. "552 5.3.4 too big"; a 421
also closes the connection).
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Callable

from aiosmtpd.controller import Controller


@dataclass
class Captured:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


@dataclass
class _Handler:
    sink: "SmtpSink"

    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # type: ignore[no-untyped-def]
        session.host_name = hostname
        if self.sink.pipelining:      # aiosmtpd reads commands one by one: pipelining works
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        reply = self.sink._failure_for(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        data = bytes(envelope.original_content or envelope.content)
        if self.sink.fail_data is not None:
            reply = self.sink.fail_data(data, list(envelope.rcpt_tos))
            if reply:
                if reply.startswith("421"):      # and close the connection, as MTAs do
                    asyncio.get_running_loop().call_soon(server.transport.close)
                return reply
        self.sink._record(Captured(envelope.mail_from, list(envelope.rcpt_tos),
                                   bytes(envelope.original_content or envelope.content)))
        return "250 Message accepted"


class _Controller(Controller):
    def _trigger_server(self) -> None:
        # aiosmtpd connects to self.port to check the server: with port 0, use the bound one.
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpSink:
    def __init__(self, *, pipelining: bool = True) -> None:
        self.pipelining = pipelining         # advertise PIPELINING (RFC 2920) in EHLO
        self.messages: list[Captured] = []
        self.fail_rcpt: dict[str, str] = {}
        self.fail_times: dict[str, int] = {}
        self.fail_data: Callable[[bytes, list[str]], str | None] | None = None
        self._cond = threading.Condition()
        self.controller = _Controller(_Handler(self), hostname="127.0.0.1", port=0,
                                     decode_data=False, data_size_limit=0)

    @property
    def port(self) -> int:
        return self.controller.server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> "SmtpSink":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> "SmtpSink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _failure_for(self, address: str) -> str | None:
        with self._cond:
            reply = self.fail_rcpt.get(address.lower())
            if reply is None:
                return None
            left = self.fail_times.get(address.lower())
            if left is not None:
                if left <= 0:
                    return None
                self.fail_times[address.lower()] = left - 1
            return reply

    def _record(self, captured: Captured) -> None:
        with self._cond:
            self.messages.append(captured)
            self._cond.notify_all()

    def recipients(self) -> list[str]:
        with self._cond:
            return [r for m in self.messages for r in m.rcpt_tos]

    def wait_for(self, predicate: Callable[[list[Captured]], bool], timeout: float = 10.0
                 ) -> list[Captured]:
        """Block until predicate(messages) is true; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"sink: condition not met in {timeout}s; "
                                         f"{len(self.messages)} messages captured")
                self._cond.wait(left)
            return list(self.messages)
