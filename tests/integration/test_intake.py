"""The SMTP/LMTP intake: routing at RCPT, size and syntax checks at DATA, durable before 250."""

from __future__ import annotations

import smtplib
from email import policy
from pathlib import Path

import pytest
from sqlalchemy import delete, select

from listserv.core.db import Database
from listserv.core.models import InboundMessage, InboundState, MailingList
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import SmtpSink

LIST = "dev@example.org"


def inbound_rows(h: Harness) -> list[InboundMessage]:
    with h.app.db.unit_of_work() as s:
        return list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))


@pytest.mark.parametrize("rcpt,sub,extra", [
    ("dev@example.org", "post", None),
    ("DEV@Example.ORG", "post", None),
    ("dev-request@example.org", "request", None),
    ("dev-join@example.org", "join", None),
    ("dev-leave@example.org", "leave", None),
    ("dev-owner@example.org", "owner", None),
    ("dev-bounces@example.org", "bounces", None),
    ("dev-bounces+ann=a.example@example.org", "bounces", "ann@a.example"),
    ("dev-confirm+Tok3nXYZ@example.org", "confirm", "Tok3nXYZ"),
])
def test_every_list_address_is_routed(quiet_harness: Harness, rcpt: str, sub: str,
                                      extra: str | None) -> None:
    make_list(quiet_harness.app, LIST, members=["ann@a.example"])
    refused = quiet_harness.send(make_message("ann@a.example", rcpt), rcpts=[rcpt])
    assert refused == {}
    [row] = inbound_rows(quiet_harness)
    assert (row.subaddress, row.extra, row.rcpt, row.state) == (sub, extra, rcpt,
                                                               InboundState.new)


@pytest.mark.parametrize("rcpt", [
    "nosuch@example.org", "dev@other.example", "dev-nosuch@example.org", "dev+x@example.org",
    "dev-request+x@example.org", "dev-bounces+novalue@example.org", "not-an-address",
    "dev-owner-request@example.org",
])
def test_unknown_recipients_get_550_at_rcpt(quiet_harness: Harness, rcpt: str) -> None:
    make_list(quiet_harness.app, LIST)
    with smtplib.SMTP(quiet_harness.host, quiet_harness.port) as c:
        c.ehlo()
        assert c.mail("ann@a.example")[0] == 250
        code, text = c.rcpt(rcpt)
        assert code in (550, 501, 553), text
        if code == 550:
            assert b"5.1.1" in text
    assert inbound_rows(quiet_harness) == []


def test_mixed_recipients_only_known_ones_accepted(quiet_harness: Harness) -> None:
    make_list(quiet_harness.app, LIST)
    make_list(quiet_harness.app, "users@example.org")
    refused = quiet_harness.send(make_message("ann@a.example", LIST),
                                 rcpts=[LIST, "nosuch@example.org", "users@example.org",
                                        "dev@example.org"])
    assert list(refused) == ["nosuch@example.org"]
    rows = inbound_rows(quiet_harness)
    # one row per list address (the duplicate RCPT is stored once), one spool file
    assert sorted(r.rcpt for r in rows) == [LIST, "users@example.org"]
    assert len({r.spool_sha for r in rows}) == 1


def test_all_recipients_unknown(quiet_harness: Harness) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused):
        quiet_harness.send(make_message("ann@a.example", "x@example.org"))


def test_accepted_mail_is_durable_before_250(quiet_harness: Harness) -> None:
    make_list(quiet_harness.app, LIST)
    msg = make_message("Ann <ann@a.example>", LIST, "Durable", message_id="<d1@a.example>")
    quiet_harness.send(msg)
    [row] = inbound_rows(quiet_harness)          # committed when sendmail() returned
    assert row.state is InboundState.new
    assert (row.from_addr, row.subject, row.message_id) == ("ann@a.example", "Durable",
                                                            "<d1@a.example>")
    assert row.mail_from == "ann@a.example"
    stored = quiet_harness.app.spool.get(row.spool_sha)
    assert stored == msg.as_bytes(policy=policy.SMTP)
    assert row.size == len(stored)


def test_missing_message_id_is_added(quiet_harness: Harness) -> None:
    make_list(quiet_harness.app, LIST)
    raw = b"From: ann@a.example\r\nTo: dev@example.org\r\nSubject: x\r\n\r\nbody\r\n"
    quiet_harness.send(raw, mail_from="ann@a.example", rcpts=[LIST])
    [row] = inbound_rows(quiet_harness)
    assert row.message_id.startswith("<") and row.message_id.endswith(">")
    assert quiet_harness.app.spool.get(row.spool_sha).startswith(b"Message-ID: <")


@pytest.mark.parametrize("raw", [
    b"To: dev@example.org\r\nSubject: no from\r\n\r\nbody\r\n",
    b"From: nobody\r\nTo: dev@example.org\r\n\r\nbody\r\n",
    b"\x00\x01\x02 this is not a message at all\r\n",
])
def test_malformed_mail_gets_5xx_at_data(quiet_harness: Harness, raw: bytes) -> None:
    make_list(quiet_harness.app, LIST)
    with pytest.raises(smtplib.SMTPDataError) as err:
        quiet_harness.send(raw, mail_from="ann@a.example", rcpts=[LIST])
    assert err.value.smtp_code == 550 and b"5.6.0" in err.value.smtp_error
    assert inbound_rows(quiet_harness) == []


def test_bounce_without_from_is_accepted(quiet_harness: Harness) -> None:
    make_list(quiet_harness.app, LIST)
    raw = b"Subject: Undelivered\r\n\r\nsorry\r\n"
    quiet_harness.send(raw, mail_from="", rcpts=["dev-bounces+bob=b.example@example.org"])
    [row] = inbound_rows(quiet_harness)
    assert (row.subaddress, row.extra, row.mail_from) == ("bounces", "bob@b.example", "")


def test_oversize_gets_552(app, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    h = Harness(app, sink, background=False, intake__max_message_size=2000).start()
    try:
        make_list(h.app, LIST)
        big = make_message("ann@a.example", LIST, body="x" * 70 + "\n" * 40)
        big.set_content(("y" * 70 + "\n") * 60)
        # announced with SIZE=: refused at MAIL FROM
        with pytest.raises(smtplib.SMTPSenderRefused) as err:
            h.send(big)
        assert err.value.smtp_code == 552
        # not announced: refused at the end of DATA
        with smtplib.SMTP(h.host, h.port) as c:
            c.ehlo()
            c.mail("ann@a.example")
            c.rcpt(LIST)
            code, _ = c.data(big.as_bytes(policy=policy.SMTP))
            assert code == 552
        h.send(make_message("ann@a.example", LIST, body="small\n"))
        assert len(inbound_rows(h)) == 1
    finally:
        h.stop()


def test_lmtp_answers_per_recipient(lmtp_harness: Harness) -> None:
    make_list(lmtp_harness.app, LIST)
    make_list(lmtp_harness.app, "users@example.org")
    data = make_message("ann@a.example", [LIST, "users@example.org"]).as_bytes()
    rcpt, replies = lmtp_harness.lmtp_transaction(
        "ann@a.example", [LIST, "nosuch@example.org", "users@example.org"], data)
    assert [c for c, _ in rcpt] == [250, 550, 250]
    assert [c for c, _ in replies] == [250, 250]
    assert len(inbound_rows(lmtp_harness)) >= 2   # (the background worker may process them)


def test_lmtp_two_lists_one_message_id(app, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    """A message without Message-ID sent by LMTP to two lists gets ONE Message-ID and one
    spool file: the cross-list duplicate check (one copy per person) works on it. A
    recipient that needs a From (a post) is refused alone when there is none."""
    h = Harness(app, sink, protocol="lmtp", background=False).start()
    try:
        make_list(h.app, LIST)
        make_list(h.app, "users@example.org")
        msg = make_message("ann@a.example", [LIST, "users@example.org"])
        del msg["Message-ID"]
        rcpt, replies = h.lmtp_transaction("ann@a.example", [LIST, "users@example.org"],
                                           msg.as_bytes(policy=policy.SMTP))
        assert [c for c, _ in replies] == [250, 250]
        rows = inbound_rows(h)
        assert len(rows) == 2 and rows[0].message_id.startswith("<")
        assert {r.message_id for r in rows} == {rows[0].message_id}
        assert {r.spool_sha for r in rows} == {rows[0].spool_sha}
        no_from = make_message("ann@a.example", LIST)
        del no_from["From"]
        rcpt, replies = h.lmtp_transaction("", [LIST, "dev-bounces@example.org"],
                                           no_from.as_bytes(policy=policy.SMTP))
        assert [c for c, _ in replies] == [550, 250]
        assert [r.subaddress for r in inbound_rows(h)[2:]] == ["bounces"]
    finally:
        h.stop()


def test_lmtp_list_deleted_between_rcpt_and_data(app, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    h = Harness(app, sink, protocol="lmtp", background=False).start()
    try:
        make_list(h.app, LIST)
        make_list(h.app, "gone@example.org")
        c = smtplib.LMTP(h.host, h.port)
        c.ehlo_or_helo_if_needed()
        c.mail("ann@a.example")
        assert c.rcpt(LIST)[0] == 250
        assert c.rcpt("gone@example.org")[0] == 250
        with h.app.db.unit_of_work() as s:
            s.execute(delete(MailingList).where(MailingList.name == "gone"))
        c.putcmd("data")
        assert c.getreply()[0] == 354
        c.send(make_message("ann@a.example", LIST).as_bytes().replace(b"\n", b"\r\n")
               + b".\r\n")
        first, second = c.getreply(), c.getreply()
        c.close()
        assert first[0] == 250 and second[0] == 550
        assert [r.rcpt for r in inbound_rows(h)] == [LIST]
    finally:
        h.stop()


def test_lmtp_rejects_helo(lmtp_harness: Harness) -> None:
    with smtplib.SMTP(lmtp_harness.host, lmtp_harness.port) as c:
        assert c.helo()[0] == 500


def test_database_down_gives_451(quiet_harness: Harness, tmp_path: Path) -> None:
    make_list(quiet_harness.app, LIST)
    quiet_harness.send(make_message("ann@a.example", LIST))      # warms the routing cache
    real = quiet_harness.app.db
    quiet_harness.app.db = Database(f"sqlite:///{tmp_path / 'empty' / 'broken.db'}")
    try:
        with smtplib.SMTP(quiet_harness.host, quiet_harness.port) as c:
            c.ehlo()
            c.mail("ann@a.example")
            code, text = c.rcpt("users@example.org")      # not cached: needs the database
            assert (code, text[:5]) == (451, b"4.3.0")
            assert c.rcpt(LIST)[0] == 250                 # cached
            code, text = c.data(make_message("ann@a.example", LIST).as_bytes())
            assert (code, text[:5]) == (451, b"4.3.0")
    finally:
        quiet_harness.app.db.dispose()
        quiet_harness.app.db = real
    assert len(inbound_rows(quiet_harness)) == 1


def test_lmtp_same_list_twice_is_stored_once(app, sink: SmtpSink) -> None:  # type: ignore[no-untyped-def]
    h = Harness(app, sink, protocol="lmtp", background=False).start()
    try:
        make_list(h.app, LIST)
        data = make_message("ann@a.example", LIST).as_bytes(policy=policy.SMTP)
        rcpt, replies = h.lmtp_transaction("ann@a.example", [LIST, "DEV@example.org"], data)
        assert [c for c, _ in rcpt] == [250, 250]
        assert [c for c, _ in replies] == [250, 250]
        assert len(inbound_rows(h)) == 1
    finally:
        h.stop()
