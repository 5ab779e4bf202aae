"""Delivery workers against a real SMTP sink over loopback: batches, VERP, RCPT refusals,
retries on the injected clock, give-up, bounces, connection failure, maildir output."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import select

from listserv.bounces import process as bounces
from listserv.core import config
from listserv.core.app import App
from listserv.core.lists import create_list
from listserv.core.models import BounceEvent, BounceKind, Delivery, DeliveryState, OutboundMessage
from listserv.delivery import runner as delivery
from listserv.delivery.outbound import queue_message
from tests import spooled
from tests.sink import SmtpSink

MSG = (b"From: Alice <alice@example.net>\r\nTo: dev@lists.example.org\r\n"
       b"Subject: [dev] hello\r\nMessage-ID: <m1@example.net>\r\n"
       b"List-Id: <dev.lists.example.org>\r\n\r\nHello list.\r\n.leading dot\r\n")
BOUNCES = "dev-bounces@lists.example.org"


def with_delivery(app: App, **kw: Any) -> App:
    s = config.replace(app.settings, **{f"delivery__{k}": v for k, v in kw.items()})
    return dataclasses.replace(app, settings=s)


@pytest.fixture(params=[False, True], ids=["one-by-one", "pipelining"])
def sink(request: pytest.FixtureRequest) -> Iterator[SmtpSink]:
    """Each test against a server without and with PIPELINING: the outcomes are the same."""
    with SmtpSink(pipelining=request.param) as s:
        yield s


@pytest.fixture
def list_id(app: App) -> int:
    with app.db.unit_of_work() as session:
        return create_list(session, "dev@lists.example.org").id


def enqueue(app: App, rcpts: list[str], *, verp: bool = False, list_id: int | None = None,
            data: bytes = MSG) -> int:
    with app.db.unit_of_work() as session:
        out = queue_message(session, app, data, rcpts, kind="post", envelope_from=BOUNCES,
                            list_id=list_id, verp=verp, message_id="<m1@example.net>")
        return out.id


def rows(app: App) -> list[Delivery]:
    with app.db.unit_of_work() as session:
        return list(session.scalars(select(Delivery).order_by(Delivery.id)))


def by_state(app: App) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in rows(app):
        out.setdefault(r.state.value, []).extend(r.recipients.split("\n"))
    return {k: sorted(v) for k, v in out.items()}


def test_batches_respect_max_recipients(app: App, sink: SmtpSink,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    a = with_delivery(app, outbound=sink.url, max_recipients_per_transaction=3)
    rcpts = [f"u{i}@example.com" for i in range(7)]
    enqueue(a, rcpts)
    reads: list[str] = []
    real_get = a.spool.get
    monkeypatch.setattr(a.spool, "get", lambda sha: (reads.append(sha), real_get(sha))[1])
    assert delivery.deliver_pending(a) == 3
    assert len(reads) == 1            # the spooled bytes are read once for all batches
    msgs = sink.wait_for(lambda m: len(m) == 3)
    assert sorted(len(m.rcpt_tos) for m in msgs) == [1, 3, 3]
    assert sorted(sink.recipients()) == sorted(rcpts)
    assert {m.mail_from for m in msgs} == {BOUNCES}
    # the bytes arrive unchanged (dot-stuffing undone by the server)
    assert msgs[0].data.replace(b"\r\n", b"\n") == MSG.replace(b"\r\n", b"\n")
    assert all(r.state is DeliveryState.done and r.attempts == 1 and r.last_code == 250
               and r.finished_at == app.now() for r in rows(a))
    assert delivery.deliver_pending(a) == 0


def test_verp_one_transaction_per_recipient(app: App, sink: SmtpSink) -> None:
    a = with_delivery(app, outbound=sink.url)
    rcpts = ["bob@example.com", "carol@example.org", "dave+tag@example.net"]
    enqueue(a, rcpts, verp=True)
    assert delivery.deliver_pending(a) == 1
    msgs = sink.wait_for(lambda m: len(m) == 3)
    got = {m.rcpt_tos[0]: m.mail_from for m in msgs}
    assert all(len(m.rcpt_tos) == 1 for m in msgs)
    assert got == {
        "bob@example.com": "dev-bounces+bob=example.com@lists.example.org",
        "carol@example.org": "dev-bounces+carol=example.org@lists.example.org",
        "dave+tag@example.net": "dev-bounces+dave+tag=example.net@lists.example.org",
    }
    assert by_state(a) == {"done": sorted(rcpts)}


def bounce_events(app: App) -> list[tuple[Any, ...]]:
    with app.db.unit_of_work() as session:
        return [(e.list_id, e.email, e.kind, e.source, e.status)
                for e in session.scalars(select(BounceEvent).order_by(BounceEvent.id))]


def test_rcpt_refusals_split_the_batch(app: App, sink: SmtpSink, list_id: int) -> None:
    a = with_delivery(app, outbound=sink.url)
    sink.fail_rcpt["gone@example.com"] = "550 5.1.1 no such user"
    sink.fail_rcpt["busy@example.com"] = "450 4.2.1 try later"
    enqueue(a, ["ok1@example.com", "gone@example.com", "busy@example.com", "ok2@example.com"],
            list_id=list_id)
    assert delivery.deliver_pending(a) == 1
    assert sorted(sink.recipients()) == ["ok1@example.com", "ok2@example.com"]
    assert by_state(a) == {"done": ["ok1@example.com", "ok2@example.com"],
                           "pending": ["busy@example.com"], "failed": ["gone@example.com"]}
    retry = next(r for r in rows(a) if r.state is DeliveryState.pending)
    assert retry.attempts == 1 and retry.last_code == 450
    assert retry.next_attempt_at == app.now() + dt.timedelta(seconds=60)
    assert "try later" in (retry.last_error or "")
    failed = next(r for r in rows(a) if r.state is DeliveryState.failed)
    assert failed.last_code == 550 and "no such user" in (failed.last_error or "")
    # the 5xx went to bounce processing (bounces.record_failure), the 4xx did not
    assert bounce_events(a) == [(list_id, "gone@example.com", BounceKind.hard, "smtp", "5.1.1")]


def test_all_refused_and_verp_refusal(app: App, sink: SmtpSink) -> None:
    a = with_delivery(app, outbound=sink.url)
    sink.fail_rcpt["x@example.com"] = "550 5.1.1 unknown"
    sink.fail_rcpt["y@example.com"] = "451 4.3.0 later"
    sink.fail_rcpt["w@example.com"] = "552 5.5.3 too many recipients"   # RFC 5321: as 452
    enqueue(a, ["x@example.com", "y@example.com", "w@example.com"])  # SMTPRecipientsRefused
    enqueue(a, ["x@example.com", "z@example.com"], verp=True)
    assert delivery.deliver_pending(a) == 2
    assert by_state(a) == {"failed": ["x@example.com", "x@example.com"],
                           "pending": ["w@example.com", "y@example.com"],
                           "done": ["z@example.com"]}


def test_retry_after_4xx_until_success(app: App, clock: Any, sink: SmtpSink) -> None:
    a = with_delivery(app, outbound=sink.url, retry_schedule=(60, 300))
    sink.fail_rcpt["slow@example.com"] = "452 4.2.2 mailbox full"
    sink.fail_times["slow@example.com"] = 2
    enqueue(a, ["slow@example.com"], verp=True)
    assert delivery.deliver_pending(a) == 1
    assert delivery.deliver_pending(a) == 0              # not due yet: nothing is sent
    [r] = rows(a)
    assert (r.state, r.attempts, r.next_attempt_at) == (
        DeliveryState.pending, 1, clock() + dt.timedelta(seconds=60))
    clock.advance(seconds=60)
    assert delivery.deliver_pending(a) == 1
    [r] = rows(a)
    assert (r.state, r.attempts, r.next_attempt_at) == (
        DeliveryState.pending, 2, clock() + dt.timedelta(seconds=300))
    clock.advance(seconds=299)
    assert delivery.deliver_pending(a) == 0
    clock.advance(seconds=1)
    assert delivery.deliver_pending(a) == 1
    sink.wait_for(lambda m: len(m) == 1)
    [r] = rows(a)
    assert (r.state, r.attempts, r.last_code) == (DeliveryState.done, 3, 250)
    assert r.first_attempt_at == clock() - dt.timedelta(seconds=360)


def test_give_up_after_days_counts_as_bounce(app: App, clock: Any, sink: SmtpSink,
                                             list_id: int,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    real = bounces.record_failure
    monkeypatch.setattr(bounces, "record_failure", lambda s, ap, lid, r, code, text, perm: (
        calls.append((r, perm)), real(s, ap, lid, r, code, text, perm)))
    a = with_delivery(app, outbound=sink.url, retry_schedule=(3600, 43200),
                      give_up_after_days=1.0)
    sink.fail_rcpt["never@example.com"] = "450 4.2.0 greylisted"
    enqueue(a, ["never@example.com", "fine@example.com"], list_id=list_id)
    handled = delivery.deliver_pending(a)
    steps = 0
    while by_state(a).get("pending"):
        [r] = [r for r in rows(a) if r.state is DeliveryState.pending]
        clock.t = r.next_attempt_at
        handled += delivery.deliver_pending(a)
        steps += 1
        assert steps < 10
    # tries at +0h, +1h, +13h, +25h: the last is past one day after the first
    assert steps == 3 and handled == 4
    assert by_state(a) == {"done": ["fine@example.com"], "failed": ["never@example.com"]}
    failed = next(r for r in rows(a) if r.state is DeliveryState.failed)
    assert failed.attempts == 4 and "gave up after 1 days" in (failed.last_error or "")
    assert calls == [(["never@example.com"], True)]
    assert [e[1] for e in bounce_events(a)] == ["never@example.com"]


def test_connection_failure_is_temporary_for_the_batch(app: App) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens there now
    a = with_delivery(app, outbound=f"smtp://127.0.0.1:{port}")
    enqueue(a, ["a@example.com", "b@example.com"], verp=True)
    assert delivery.deliver_pending(a) == 1
    [r] = rows(a)
    assert r.state is DeliveryState.pending and r.attempts == 1 and r.count == 2
    assert r.last_code is None and "cannot connect" in (r.last_error or "")


def test_expired_leases_are_taken_over_without_what_was_sent(app: App, clock: Any,
                                                              sink: SmtpSink) -> None:
    a = with_delivery(app, outbound=sink.url)
    enqueue(a, ["a@example.com", "b@example.com", "c@example.com"], verp=True)
    enqueue(a, ["live@example.com"])
    with a.db.unit_of_work() as session:
        dead, live = session.scalars(select(Delivery).order_by(Delivery.id)).all()
        # a worker that died after delivering to a and b (its recorded progress)
        dead.state, dead.lease_owner = DeliveryState.sending, "w-dead"
        dead.lease_expires, dead.sent = clock() - dt.timedelta(seconds=1), \
            "0-1"
        # one that is alive: its lease runs for another 20 seconds
        live.state, live.lease_owner = DeliveryState.sending, "w-live"
        live.lease_expires = clock() + dt.timedelta(seconds=20)
    assert delivery.deliver_pending(a) == 1
    assert sink.recipients() == ["c@example.com"]
    [r, rlive] = rows(a)
    assert r.state is DeliveryState.done and r.count == 3 and r.sent is None
    assert r.lease_owner is None and r.lease_expires is None
    assert sorted(r.recipients.split("\n")) == ["a@example.com", "b@example.com",
                                                "c@example.com"]
    assert rlive.state is DeliveryState.sending and rlive.lease_owner == "w-live"
    clock.advance(seconds=21)
    assert delivery.deliver_pending(a) == 1
    assert sorted(sink.recipients()) == ["c@example.com", "live@example.com"]
    assert by_state(a) == {"done": ["a@example.com", "b@example.com", "c@example.com",
                                    "live@example.com"]}


def test_maildir_outbox_with_envelope_lines(app: App) -> None:
    assert app.settings.outbound == f"maildir:{app.settings.data_dir}/outbox"
    enqueue(app, ["bob@example.com", "carol@example.org"], verp=True)
    assert delivery.deliver_pending(app) == 1
    files = sorted((Path(app.settings.data_dir) / "outbox" / "new").iterdir())
    assert len(files) == 2
    assert not list((Path(app.settings.data_dir) / "outbox" / "tmp").iterdir())
    seen = {}
    for f in files:
        raw = f.read_bytes()
        assert b"\r\n" not in raw
        msg = message_from_bytes(raw, policy=policy.default)
        seen[msg["X-Envelope-To"]] = msg["Return-Path"]
        assert msg["Subject"] == "[dev] hello"
        assert raw.endswith(b"\n\nHello list.\n.leading dot\n")
    assert seen == {"<bob@example.com>": "<dev-bounces+bob=example.com@lists.example.org>",
                    "<carol@example.org>": "<dev-bounces+carol=example.org@lists.example.org>"}
    assert by_state(app) == {"done": ["bob@example.com", "carol@example.org"]}


def test_missing_spool_file_parks_the_batch(app: App, sink: SmtpSink) -> None:
    a = with_delivery(app, outbound=sink.url)
    enqueue(a, ["a@example.com"])
    enqueue(a, ["b@example.com"], data=MSG + b"other\r\n")
    with a.db.unit_of_work() as session:
        sha = session.scalars(select(OutboundMessage.spool_sha)
                              .order_by(OutboundMessage.id)).first()
    assert sha is not None
    spooled.lose(a, sha)
    assert delivery.deliver_pending(a) == 1
    assert sink.recipients() == ["b@example.com"]
    assert by_state(a) == {"failed": ["a@example.com"], "done": ["b@example.com"]}
    assert "spool file" in (rows(a)[0].last_error or "")


def test_two_workers_share_the_queue_without_duplicates(app: App, sink: SmtpSink) -> None:
    """Two delivery processes on one database (threads here): every batch goes to one."""
    import threading

    a = with_delivery(app, outbound=sink.url, max_recipients_per_transaction=5,
                      connections=2)
    rcpts = [f"u{i}@example.com" for i in range(200)]
    enqueue(a, rcpts)
    handled: list[int] = []
    threads = [threading.Thread(target=lambda: handled.append(delivery.deliver_pending(a)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(handled) == 40
    got = sink.recipients()
    assert len(got) == 200 and set(got) == set(rcpts)
    assert by_state(a) == {"done": sorted(rcpts)}


def test_a_batch_whose_results_cannot_be_written_does_not_block_others(
        app: App, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    a = with_delivery(app, outbound=sink.url)
    enqueue(a, ["bad@example.com"])
    enqueue(a, ["good@example.com"], data=MSG + b"other\r\n")
    bad_id = rows(a)[0].id
    real = delivery.record

    def poisoned(session: Any, now: Any, d: Any, owner: str, batches: Any,
                 blame: Any) -> Any:
        batches = list(batches)
        if any(b.id == bad_id for b in batches):
            raise RuntimeError("cannot write this one")
        return real(session, now, d, owner, batches, blame)

    monkeypatch.setattr(delivery, "record", poisoned)
    assert delivery.deliver_pending(a) == 1          # returns: the bad batch is given up
    assert sorted(sink.recipients()) == ["bad@example.com", "good@example.com"]
    # the unrecorded claim stays until its lease expires (then it is sent again, except to
    # the recipients its recorded progress names)
    assert by_state(a) == {"sending": ["bad@example.com"], "done": ["good@example.com"]}
