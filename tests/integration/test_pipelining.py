"""The batched transactions' SMTP client (listserv.pipelining) against servers over loopback:
it pipelines MAIL FROM and every RCPT TO when PIPELINING is advertised (a server that answers
only once the whole envelope arrived proves it), keeps to one command at a time otherwise,
and reports each reply as aiosmtplib does."""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

import aiosmtplib
import pytest

from listserv.delivery.pipelining import PipeliningSMTP
from tests.sink import SmtpSink

Session = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(session: Session) -> tuple[asyncio.AbstractServer, int]:
    server = await asyncio.start_server(session, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


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

    async def main() -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        server, port = await serve(envelope_at_once(refused, log))
        async with server:
            smtp = PipeliningSMTP("127.0.0.1", port, "lists.example", timeout=10)
            await smtp.connect(timeout=10)
            assert smtp.supports_extension("pipelining")
            result = await smtp.sendmail(f"{len(rcpts)}-bounces@lists.example", rcpts,
                                         b"Subject: x\n\n.dot first\nbody\n",
                                         mail_options=["BODY=8BITMIME"])
            await smtp.quit()
            return result

    errors, reply = asyncio.run(asyncio.wait_for(main(), 20))
    assert reply == "2.0.0 queued\n2.0.0 as 42"
    assert {r: (e.code, e.message) for r, e in errors.items()} == {
        rcpts[3]: (550, "5.1.1 no such user"), rcpts[150]: (452, "4.2.2 mailbox\n4.2.2 full")}
    envelope, body = log
    assert envelope[0] == b"MAIL FROM:<300-bounces@lists.example> SIZE=32 BODY=8BITMIME"
    assert envelope[1:] == [f"RCPT TO:<{r}>".encode() for r in rcpts]
    assert body == [b"Subject: x\r\n", b"\r\n", b"..dot first\r\n", b"body\r\n"]


def test_every_recipient_refused_raises_as_aiosmtplib_and_resets() -> None:
    log: list[list[bytes]] = []
    rcpts = ["a@x.example", "b@x.example"]

    async def main() -> None:
        server, port = await serve(envelope_at_once(
            {r: b"550 5.1.1 unknown\r\n" for r in rcpts}, log))
        async with server:
            smtp = PipeliningSMTP("127.0.0.1", port, "lists.example", timeout=10)
            await smtp.connect(timeout=10)
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as exc:
                await smtp.sendmail("2-x@lists.example", rcpts, b"Subject: x\r\n\r\nhi\r\n")
            assert [(e.recipient, e.code) for e in exc.value.recipients] == [
                ("a@x.example", 550), ("b@x.example", 550)]
            # the connection is usable again: the next transaction goes through
            errors, _ = await smtp.sendmail("1-x@lists.example", ["c@x.example"], b"hi\r\n")
            assert errors == {}
            await smtp.quit()

    asyncio.run(asyncio.wait_for(main(), 20))
    assert len(log) == 3          # two envelopes and one body: no DATA for the refused one


def test_a_bad_address_is_refused_before_anything_is_written() -> None:
    async def main() -> None:
        with SmtpSink(pipelining=True) as sink:
            smtp = PipeliningSMTP("127.0.0.1", sink.port, "lists.example", timeout=10)
            await smtp.connect(timeout=10)
            with pytest.raises(ValueError):
                await smtp.sendmail("x@lists.example", ["ok@x.example", "bad\r\nRSET@x"], b"hi")
            errors, _ = await smtp.sendmail("x@lists.example", ["ok@x.example"], b"hi\r\n")
            assert errors == {} and sink.recipients() == ["ok@x.example"]
            await smtp.quit()

    asyncio.run(asyncio.wait_for(main(), 20))


@pytest.mark.parametrize("pipelining", [False, True], ids=["one-by-one", "pipelining"])
def test_refused_sender_and_refused_data_raise_response_errors(pipelining: bool) -> None:
    async def main() -> None:
        with SmtpSink(pipelining=pipelining) as sink:
            sink.fail_data = lambda data, rcpts: "554 5.6.0 content refused"
            smtp = PipeliningSMTP("127.0.0.1", sink.port, "lists.example", timeout=10)
            await smtp.connect(timeout=10)
            assert smtp.supports_extension("pipelining") is pipelining
            with pytest.raises(aiosmtplib.SMTPDataError) as data_exc:
                await smtp.sendmail("x@lists.example", ["a@x.example", "b@x.example"],
                                    b"Subject: x\r\n\r\nhi\r\n")
            assert data_exc.value.code == 554
            with pytest.raises(aiosmtplib.SMTPResponseException) as mail_exc:
                await smtp.sendmail("x@lists.example", ["a@x.example"], b"hi\r\n",
                                    mail_options=["X-UNKNOWN"])
            assert mail_exc.value.code == 555 or mail_exc.value.code == 501
            await smtp.quit()

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

    async def main() -> None:
        server, port = await serve(session)
        async with server:
            smtp = PipeliningSMTP("127.0.0.1", port, "lists.example", timeout=10)
            await smtp.connect(timeout=10)
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await smtp.sendmail("x@lists.example", ["a@x.example", "b@x.example"], b"hi")
            assert not smtp.is_connected

    asyncio.run(asyncio.wait_for(main(), 20))
