"""Batched transactions through the pipelining SMTP client (listserv.delivery.smtpwire.batched)
against servers over loopback: MAIL FROM and every RCPT TO go in one write when PIPELINING is
advertised (a server that answers only once the whole envelope arrived proves it), each
recipient's reply is recorded as its own, a refused transaction is reset, and a server
without PIPELINING is left to aiosmtplib."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import pytest

from listserv.delivery import smtpwire
from listserv.delivery.transport import Batch, Message, SmtpTransport, _Tx
from tests.sink import SmtpSink

Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(session: Session) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def transport(port: int) -> SmtpTransport:
    """A transport to 127.0.0.1:port; its workers are not started (the tests run one
    transaction at a time on a connection of their own)."""
    return SmtpTransport(f"smtp://127.0.0.1:{port}", 1, 500, "lists.example",
                         done=lambda batch: None)


def tx(sender: str, rcpts: list[str], data: bytes) -> _Tx:
    msg = Message(1, None, sender, False, data, not data.isascii())
    return _Tx(Batch(1, msg, list(rcpts), 0, None), sender, list(rcpts))


def outcome(t: _Tx) -> dict[str, object]:
    b = t.batch
    return {**{r: 250 for r in b.ok}, **{r: (c, x) for r, c, x in b.perm},
            **{r: (c, x) for r, c, x in b.temp}}


def envelope_at_once(rcpt_replies: dict[str, bytes], log: list[list[bytes]]) -> Session:
    """A server that advertises PIPELINING and answers MAIL FROM only once it has read the
    envelope's every RCPT TO (up to DATA's absence: it knows the count from the first line,
    ``MAIL FROM:<n-RCPTS@...>``). A client that waits for each reply hangs on it."""

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 strict ESMTP\r\n")
        while True:
            line = await reader.readline()
            if not line:
                return
            cmd = line.strip()
            if cmd.upper().startswith(b"EHLO"):
                writer.write(b"250-strict\r\n250-PIPELINING\r\n250-SIZE 1000000\r\n"
                             b"250 8BITMIME\r\n")
            elif cmd.upper().startswith(b"MAIL FROM:"):
                n = int(cmd.split(b"<", 1)[1].split(b"-", 1)[0])
                rcpts = [(await reader.readline()).strip() for _ in range(n)]
                log.append([cmd, *rcpts])
                replies = [b"250 2.1.0 ok\r\n"]
                for r in rcpts:
                    addr = r.split(b"<", 1)[1].rstrip(b">").decode()
                    replies.append(rcpt_replies.get(addr, b"250 2.1.5 ok\r\n"))
                writer.write(b"".join(replies))
            elif cmd.upper() == b"DATA":
                writer.write(b"354 go ahead\r\n")
                body = []
                while (part := await reader.readline()) != b".\r\n":
                    body.append(part)
                log.append(body)
                writer.write(b"250-2.0.0 queued\r\n250 2.0.0 as 42\r\n")   # multi-line
            elif cmd.upper() == b"RSET":
                writer.write(b"250 2.0.0 reset\r\n")
            elif cmd.upper() == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(b"502 5.5.2 what\r\n")
            await writer.drain()

    return session


def test_the_envelope_goes_in_one_write_and_replies_are_read_in_order() -> None:
    log: list[list[bytes]] = []
    rcpts = [f"m{i}@d{i % 7}.example" for i in range(300)]
    refused = {rcpts[3]: b"550 5.1.1 no such user\r\n",
               rcpts[150]: b"452-4.2.2 mailbox\r\n452 4.2.2 full\r\n"}
    t = tx(f"{len(rcpts)}-bounces@lists.example", rcpts,
           b"Subject: x\n\n.dot first\nbody\n\xc3\xa9\n")

    async def main() -> None:
        server, port = await serve(envelope_at_once(refused, log))
        async with server:
            wire = await smtpwire.batched(transport(port), None, t)
            assert wire is not None and wire.is_open      # kept for the next transaction
            await wire.quit(5)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert outcome(t) == {**{r: 250 for r in rcpts},
                          rcpts[3]: (550, "5.1.1 no such user"),
                          rcpts[150]: (452, "4.2.2 mailbox\n4.2.2 full")}
    envelope, body = log
    assert envelope[0] == b"MAIL FROM:<300-bounces@lists.example> SIZE=36 BODY=8BITMIME"
    assert envelope[1:] == [f"RCPT TO:<{r}>".encode() for r in rcpts]
    assert body == [b"Subject: x\r\n", b"\r\n", b"..dot first\r\n", b"body\r\n",
                    b"\xc3\xa9\r\n"]


def test_every_recipient_refused_resets_and_the_connection_goes_on() -> None:
    log: list[list[bytes]] = []
    rcpts = ["a@x.example", "b@x.example"]
    first = tx("2-x@lists.example", rcpts, b"Subject: x\r\n\r\nhi\r\n")
    second = tx("1-x@lists.example", ["c@x.example"], b"hi\r\n")

    async def main() -> None:
        server, port = await serve(envelope_at_once(
            {r: b"550 5.1.1 unknown\r\n" for r in rcpts}, log))
        async with server:
            t = transport(port)
            wire = await smtpwire.batched(t, None, first)
            assert wire is not None
            # the connection is usable again: the next transaction goes through on it
            assert await smtpwire.batched(t, wire, second) is wire
            await wire.quit(5)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert outcome(first) == {r: (550, "5.1.1 unknown") for r in rcpts}
    assert first.batch.whole == set()              # the recipients' own replies
    assert outcome(second) == {"c@x.example": 250}
    assert len(log) == 3          # two envelopes and one body: no DATA for the refused one


def test_a_bad_address_is_refused_before_anything_is_written() -> None:
    async def main() -> None:
        with SmtpSink(pipelining=True) as sink:
            t = transport(sink.port)
            bad = tx("x@lists.example", ["ok@x.example", "bad\r\nRSET@x"], b"hi")
            wire = await smtpwire.batched(t, None, bad)
            assert bad.batch.perm and not bad.batch.ok
            good = tx("x@lists.example", ["ok@x.example"], b"hi\r\n")
            assert await smtpwire.batched(t, wire, good) is wire
            assert good.batch.ok == ["ok@x.example"] and sink.recipients() == ["ok@x.example"]
            assert wire is not None
            await wire.quit(5)

    asyncio.run(asyncio.wait_for(main(), 20))


def test_refused_data_is_the_transactions_and_refusals_stay_the_recipients() -> None:
    async def main() -> None:
        with SmtpSink(pipelining=True) as sink:
            sink.fail_rcpt["gone@x.example"] = "550 5.1.1 no such user"
            sink.fail_data = lambda data, rcpts: "554 5.6.0 content refused"
            refused = tx("x@lists.example", ["a@x.example", "gone@x.example", "b@x.example"],
                         b"Subject: x\r\n\r\nhi\r\n")
            wire = await smtpwire.batched(transport(sink.port), None, refused)
            assert wire is not None
            await wire.quit(5)
            assert outcome(refused) == {"a@x.example": (554, "5.6.0 content refused"),
                                        "b@x.example": (554, "5.6.0 content refused"),
                                        "gone@x.example": (550, "5.1.1 no such user")}
            assert refused.batch.whole == {"a@x.example", "b@x.example"}
            assert sink.recipients() == []

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_refused_sender_is_the_transactions() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 picky\r\n")
        while line := await reader.readline():
            cmd = line.strip().upper()
            writer.write(b"250-picky\r\n250 PIPELINING\r\n" if cmd.startswith(b"EHLO")
                         else b"553 5.1.8 sender refused\r\n" if cmd.startswith(b"MAIL")
                         else b"221 bye\r\n" if cmd == b"QUIT"
                         else b"503 5.5.1 MAIL first\r\n")
            await writer.drain()

    refused = tx("x@lists.example", ["a@x.example", "b@x.example"], b"hi\r\n")

    async def main() -> None:
        server, port = await serve(session)
        async with server:
            wire = await smtpwire.batched(transport(port), None, refused)
            assert wire is not None
            await wire.quit(5)

    asyncio.run(asyncio.wait_for(main(), 20))
    assert outcome(refused) == {"a@x.example": (553, "5.1.8 sender refused"),
                                "b@x.example": (553, "5.1.8 sender refused")}
    assert refused.batch.whole == {"a@x.example", "b@x.example"}


def test_a_server_without_pipelining_is_left_to_aiosmtplib() -> None:
    async def main() -> None:
        with SmtpSink(pipelining=False) as sink:
            t = transport(sink.port)
            with pytest.raises(smtpwire.NoPipelining):
                await smtpwire.batched(t, None, tx("x@lists.example", ["a@x.example"], b"hi"))
            assert t.pipelining is False and sink.recipients() == []

    asyncio.run(asyncio.wait_for(main(), 20))


def test_a_server_that_hangs_up_mid_envelope_is_a_lost_connection() -> None:
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 flaky\r\n")
        await reader.readline()
        writer.write(b"250-flaky\r\n250 PIPELINING\r\n")
        await reader.readline()                # MAIL FROM
        writer.write(b"250 ok\r\n")            # ... and then nothing more
        await writer.drain()
        writer.close()

    lost = tx("x@lists.example", ["a@x.example", "b@x.example"], b"hi")

    async def main() -> None:
        server, port = await serve(session)
        async with server:
            assert await smtpwire.batched(transport(port), None, lost) is None

    asyncio.run(asyncio.wait_for(main(), 20))
    assert [(r, code) for r, code, _ in lost.batch.temp] == [("a@x.example", None),
                                                             ("b@x.example", None)]
