"""VERP'd copies through the pipelined SMTP client (listserv.delivery.smtpwire) against a real sink:
the same bytes, envelopes and per-recipient outcomes as the aiosmtplib path, replies taken
in order, a dropped connection reopened, servers without PIPELINING served as before."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from listserv.core import config
from listserv.core.app import App
from listserv.core.models import Delivery
from listserv.delivery import runner as delivery
from listserv.delivery import smtpconn, smtpwire
from listserv.delivery.outbound import queue_message
from listserv.delivery.transport import Batch, Message, SmtpTransport
from tests.sink import SmtpSink

MSG = (b"From: Alice <alice@example.net>\r\nTo: dev@lists.example.org\r\n"
       b"Subject: [dev] hello\r\nMessage-ID: <w1@example.net>\r\n"
       b"List-Id: <dev.lists.example.org>\r\n\r\n.leading dot\r\nHello list.\r\n..two\r\n.\r\n"
       b"end\r\n")
BOUNCES = "dev-bounces@lists.example.org"


def with_sink(app: App, sink: SmtpSink, connections: int = 2) -> App:
    s = config.replace(app.settings, delivery__outbound=sink.url,
                       delivery__connections=connections)
    return dataclasses.replace(app, settings=s)


def enqueue(app: App, rcpts: list[str], data: bytes = MSG) -> None:
    with app.db.unit_of_work() as session:
        queue_message(session, app, data, rcpts, kind="post", envelope_from=BOUNCES,
                      verp=True, message_id="<w1@example.net>")


def states(app: App) -> dict[str, str]:
    with app.db.unit_of_work() as session:
        out: dict[str, str] = {}
        for d in session.scalars(select(Delivery)):
            for r in d.recipients.split("\n"):
                out[r] = d.state.value
        return out


@pytest.fixture
def plain_sink() -> Iterator[SmtpSink]:
    with SmtpSink(pipelining=False) as s:
        yield s


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


def copies(sink: SmtpSink) -> dict[str, tuple[str, bytes]]:
    return {m.rcpt_tos[0]: (m.mail_from, m.data) for m in sink.messages}


def test_pipelined_copies_equal_the_unpipelined_ones(app: App, sink: SmtpSink,
                                                     plain_sink: SmtpSink) -> None:
    rcpts = [f"m{i}@d{i % 3}.example" for i in range(40)]
    enqueue(with_sink(app, sink), rcpts)
    assert delivery.deliver_pending(with_sink(app, sink)) >= 1
    enqueue(with_sink(app, plain_sink), rcpts)
    assert delivery.deliver_pending(with_sink(app, plain_sink)) >= 1
    got, want = copies(sink), copies(plain_sink)
    assert len(got) == 40 and got == want
    assert got["m1@d1.example"] == ("dev-bounces+m1=d1.example@lists.example.org", MSG)
    assert set(states(app).values()) == {"done"}


def test_refusals_on_the_pipelined_path(app: App, sink: SmtpSink) -> None:
    a = with_sink(app, sink, connections=1)     # one connection: every reply in one stream
    sink.fail_rcpt["gone@example.com"] = "550 5.1.1 no such user"
    sink.fail_rcpt["busy@example.com"] = "450 4.2.1 try later"
    sink.fail_rcpt["full@example.com"] = "552 5.2.2 too many recipients"  # as 452
    sink.fail_data = lambda data, rcpts: ("554 5.7.1 no thanks"
                                          if rcpts == ["spam@example.com"] else None)
    rcpts = ["a@example.com", "gone@example.com", "b@example.com", "busy@example.com",
             "spam@example.com", "full@example.com", "c@example.com"]
    enqueue(a, rcpts)
    delivery.deliver_pending(a)
    assert sorted(sink.recipients()) == ["a@example.com", "b@example.com", "c@example.com"]
    assert states(a) == {"a@example.com": "done", "b@example.com": "done",
                         "c@example.com": "done", "gone@example.com": "failed",
                         "spam@example.com": "failed", "busy@example.com": "pending",
                         "full@example.com": "pending"}


def test_a_dropped_connection_is_reopened(app: App, sink: SmtpSink) -> None:
    # the sink closes the connection after its reply to the second message (421): the copy
    # whose commands were written behind it is retried (it may have been taken before the
    # close, then its outcome is unknown: temporary) and the rest go on a new connection
    a = with_sink(app, sink, connections=1)
    seen: list[str] = []

    def fail_data(data: bytes, rcpts: list[str]) -> str | None:
        seen.append(rcpts[0])
        return "421 4.3.2 closing" if len(seen) == 2 else None
    sink.fail_data = fail_data
    rcpts = [f"u{i}@example.com" for i in range(5)]
    enqueue(a, rcpts)
    delivery.deliver_pending(a)
    st = states(a)
    assert st["u0@example.com"] == st["u3@example.com"] == st["u4@example.com"] == "done"
    assert st["u1@example.com"] == "pending" and st["u2@example.com"] in ("done", "pending")
    assert sorted(sink.recipients()) == sorted(r for r in rcpts if st[r] == "done")


def test_a_connection_opened_ahead_carries_the_first_transaction(sink: SmtpSink) -> None:
    """warm() (the runner calls it once its claim has found work) opens one connection in
    the background; the first transaction goes out on it; when every worker holds an open
    connection, none is opened ahead."""
    done: list[Batch] = []

    async def go() -> None:
        finished = asyncio.Event()

        def batch_done(b: Batch) -> None:
            done.append(b)
            finished.set()
        t = SmtpTransport(sink.url, 1, 100, "test.example", batch_done)
        async with t:
            t.warm()
            t.warm()                          # at most one ahead
            ahead = t.spare
            assert ahead is not None
            wire = await ahead                # greeting and EHLO done
            assert wire.is_open and "PIPELINING" in wire.extensions
            msg = Message(1, None, BOUNCES, True, MSG, False)
            t.submit(Batch(1, msg, ["u0@example.com"], 0, None))
            await asyncio.wait_for(finished.wait(), 10)
            assert any(w is wire for w in t.wires) and t.spare is None
            t.warm()                          # the one worker holds an open connection
            assert t.spare is None
    asyncio.run(go())
    assert done[0].ok == ["u0@example.com"] and sink.recipients() == ["u0@example.com"]


def test_a_connection_is_opened_ahead_while_a_worker_has_none(sink: SmtpSink) -> None:
    """The next transaction may go to any idle worker: one without a connection takes the
    one opened ahead."""
    async def go() -> None:
        finished = asyncio.Event()
        t = SmtpTransport(sink.url, 2, 100, "test.example", lambda b: finished.set())
        async with t:
            msg = Message(1, None, BOUNCES, True, MSG, False)
            t.submit(Batch(1, msg, ["u0@example.com"], 0, None))
            await asyncio.wait_for(finished.wait(), 10)
            assert sum(w is not None and w.is_open for w in t.wires) == 1
            t.warm()
            assert t.spare is not None
    asyncio.run(go())


def test_a_connection_opened_ahead_and_closed_since_is_opened_again(sink: SmtpSink) -> None:
    async def go() -> None:
        t = SmtpTransport(sink.url, 2, 100, "test.example", lambda b: None)
        t.warm()
        first = t.spare
        assert first is not None
        (await first).close()               # e.g. the server's idle timeout
        t.warm()
        assert t.spare is not None and t.spare is not first
        assert (await t.spare).is_open
        await t.close()
        assert t.spare is None
    asyncio.run(go())


def test_a_claim_that_finds_nothing_opens_no_connection(app: App, sink: SmtpSink) -> None:
    async def go() -> None:
        r = delivery.Runner(with_sink(app, sink))
        assert await r._claim(2) == 0
        assert isinstance(r.transport, SmtpTransport) and r.transport.spare is None
        enqueue(with_sink(app, sink), ["u1@example.com"])
        assert await r._claim(2) == 1
        assert r.transport.spare is not None      # opened while the claim took the row
        await r.transport.close()
    asyncio.run(go())


def test_replies_split_and_joined_arbitrarily() -> None:
    # The protocol object alone: replies arriving in pieces, several in one read, and a
    # multi-line one, come out whole and in order.
    async def go() -> list[Any]:
        wire = smtpconn.Wire()
        for piece in (b"250 2.1.0 O", b"k\r\n250-first\r\n250-sec", b"ond\r\n250 last\r\n354 go",
                      b" ahead\r\n"):
            wire.data_received(piece)
        return await wire.read(3, 1)
    assert asyncio.run(go()) == [(250, "2.1.0 Ok"), (250, "first\nsecond\nlast"),
                                 (354, "go ahead")]


def test_envelope_refuses_injection() -> None:
    with pytest.raises(ValueError):
        smtpwire.envelope(set(), "a@x.example", ["b@y.example>\r\nRCPT TO:<c@z.example"], False)
    with pytest.raises(ValueError):
        smtpwire.envelope(set(), "a@x.example", ["jörg@y.example"], False)   # no SMTPUTF8
    assert smtpwire.envelope({"8BITMIME", "SMTPUTF8"}, "a@x.example", ["jörg@y.example"],
                             True, data=True) == (
        "MAIL FROM:<a@x.example> SMTPUTF8 BODY=8BITMIME\r\nRCPT TO:<jörg@y.example>\r\n"
        "DATA\r\n").encode()
    assert smtpwire.envelope({"SIZE"}, "a@x.example", ["b@y.example", "c@y.example"], True,
                             size=10) == (b"MAIL FROM:<a@x.example> SIZE=10\r\n"
                                          b"RCPT TO:<b@y.example>\r\nRCPT TO:<c@y.example>\r\n")


@pytest.mark.parametrize("extensions", [set(), {"8BITMIME"}, {"8BITMIME", "SMTPUTF8"}])
@pytest.mark.parametrize("eight_bit", [False, True])
@pytest.mark.parametrize("sender,rcpt", [
    ("dev-bounces+b=y.example@x.example", "b@y.example"),
    ("dev-bounces+j=y.example@x.example", "jörg@y.example"),
    ("a@x.example", "b@y.example>\r\nRCPT TO:<c@z.example"),
    ("a@x.example\x00", "b@y.example"),
])
def test_a_copys_commands_are_the_envelopes(extensions: set[str], eight_bit: bool, sender: str,
                                            rcpt: str) -> None:
    # group() builds a VERP'd copy's commands itself for ASCII addresses: the same bytes,
    # and the same refusals, as envelope()
    wire = smtpconn.Wire()
    wire.extensions = extensions
    batch = Batch(1, Message(1, 1, BOUNCES, True, MSG, eight_bit), [rcpt], 0, None)
    try:
        expected: bytes | type[ValueError] = smtpwire.envelope(extensions, sender, [rcpt],
                                                               eight_bit, data=True)
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            smtpwire.group(wire, batch, sender, rcpt)
    else:
        assert smtpwire.group(wire, batch, sender, rcpt) == expected
