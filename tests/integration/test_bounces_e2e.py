"""Bounces end to end: DSNs and VERP'd bounces through the real SMTP intake."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from listserv.bounces import report as bounce_report
from listserv.core.lists import get_list
from listserv.core.models import BounceEvent, BounceKind, InboundMessage, InboundState
from tests.integration.harness import Harness, make_list, make_message

DATA = Path(__file__).resolve().parent.parent / "data" / "bounces"
LIST = "dev@lists.example.org"


def dsn(addr: str, status: str = "5.1.1") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.b.example\r\nTo: dev-bounces@lists.example.org\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n\r\n'
        "--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\n"
        "Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.b.example\r\n\r\n"
        f"Final-Recipient: rfc822; {addr}\r\nAction: failed\r\nStatus: {status}\r\n\r\n--b--\r\n"
    ).encode()


def sample(name: str) -> bytes:
    """A sample with CRLF line ends, as SMTP carries it."""
    return (DATA / name).read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def status(h: Harness) -> dict[str, dict]:
    with h.app.db.unit_of_work() as s:
        return {r["email"]: r for r in bounce_report.status(s, get_list(s, LIST), include_all=True)}


def test_disabled_at_threshold_stops_receiving_posts(harness: Harness, clock) -> None:  # noqa: ANN001
    make_list(harness.app, LIST, members=["ann@a.example", "bob@b.example", "cy@c.example"],
              owners=["owner@o.example"], bounce_score_threshold=3)
    for day in range(3):
        harness.send(dsn("bob@b.example"), mail_from="",
                     rcpts=["dev-bounces+bob=b.example@lists.example.org"])
        harness.run_until_idle()
        assert status(harness)["bob@b.example"]["score"] == day + 1
        clock.advance(days=1)
    bob = status(harness)["bob@b.example"]
    assert bob["enabled"] is False and bob["disabled_reason"] == "bounce"
    warning = harness.sink.wait_for(
        lambda ms: any(m.rcpt_tos == ["bob@b.example"] for m in ms))
    (w,) = [m for m in warning if m.rcpt_tos == ["bob@b.example"]]
    assert str(w.message["Reply-To"]).startswith("dev-confirm+")
    assert w.mail_from == "dev-bounces@lists.example.org"

    harness.send(make_message("ann@a.example", LIST, "After the bounces"))
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda ms: len({r for m in ms if "After the bounces" in
                                               str(m.message["Subject"]) for r in m.rcpt_tos})
                                >= 2)
    post_rcpts = {r for m in got if "After the bounces" in str(m.message["Subject"])
                  for r in m.rcpt_tos}
    assert post_rcpts == {"ann@a.example", "cy@c.example"}

    # a plain reply to the warning's Reply-To re-enables delivery
    reply_to = str(w.message["Reply-To"])
    harness.send(make_message("bob@b.example", reply_to, "Re: " + str(w.message["Subject"]),
                              "yes, please\n"))
    harness.run_until_idle()
    bob = status(harness)["bob@b.example"]
    assert bob["enabled"] is True and bob["score"] == 0 and bob["disabled_reason"] is None
    harness.send(make_message("ann@a.example", LIST, "Welcome back"))
    harness.run_until_idle()
    harness.sink.wait_for(lambda ms: any("Welcome back" in str(m.message["Subject"])
                                         and "bob@b.example" in m.rcpt_tos for m in ms))


def test_corpus_through_bare_bounce_address(harness: Harness) -> None:
    members = ["alice.smith@example.com", "bob@example.net", "cwhite@example.edu",
               "dave.jones@contoso.example", "erin.nobody@gmail.example", "frank@qhost.example",
               "nora@qhost.example", "gina@slow.example", "kim@gmail.example"]
    make_list(harness.app, LIST, members=members, owners=["owner@o.example"])
    names = ["postfix_user_unknown.eml", "exim_failed.eml", "sendmail_dsn.eml",
             "exchange_ndr.eml", "gmail_nosuchuser.eml", "qmail_failure.eml",
             "postfix_delayed.eml", "gmail_dmarc_policy.eml"]
    for name in names:
        harness.send(sample(name), mail_from="",
                     rcpts=["dev-bounces@lists.example.org"])
    harness.run_until_idle()
    st = status(harness)
    for e in members[:7]:
        assert st[e]["score"] == 1, e
    assert st["gina@slow.example"]["score"] == 0
    assert st["kim@gmail.example"]["score"] == 0
    with harness.app.db.unit_of_work() as s:
        kinds = {(e.email, e.kind) for e in s.scalars(select(BounceEvent))}
        states = {m.state for m in s.scalars(select(InboundMessage))}
    assert ("gina@slow.example", BounceKind.soft) in kinds
    assert ("kim@gmail.example", BounceKind.policy) in kinds
    assert states == {InboundState.handled}
    assert harness.sink.messages == []       # nothing forwarded to anyone


def test_autoreply_to_verp_address_is_dropped(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["quinn@example.com", "ann@a.example"],
              owners=["owner@o.example"])
    harness.send(sample("vacation_autoreply.eml"), mail_from="",
                 rcpts=["dev-bounces+quinn=example.com@lists.example.org"])
    harness.run_until_idle()
    assert status(harness)["quinn@example.com"]["score"] == 0
    with harness.app.db.unit_of_work() as s:
        (e,) = s.scalars(select(BounceEvent)).all()
        assert (e.email, e.kind) == ("quinn@example.com", BounceKind.other)
    assert harness.sink.messages == []
