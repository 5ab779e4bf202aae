"""Who a post is from, and mail from machines: through the real SMTP intake and workers."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from listserv.core.models import Action, Delivery, HeldMessage, InboundMessage, OutboundMessage, SenderHeaders
from tests.clirun import Cli
from tests.conftest import Clock
from tests.integration.harness import Harness, make_list, make_message

LIST = "dev@example.org"
MEMBERS = ["bob@example.net", "ann@a.example"]


def outcome(h: Harness) -> tuple[str, str]:
    with h.app.db.unit_of_work() as s:
        [row] = s.scalars(select(InboundMessage))
        return row.state.value, row.outcome or ""


def notices_to(h: Harness, rcpt: str) -> int:
    with h.app.db.unit_of_work() as s:
        rows = s.scalars(select(Delivery).join(OutboundMessage).where(
            OutboundMessage.kind == "notice"))
        return sum(1 for d in rows if rcpt in d.recipients.split("\n"))


@pytest.mark.parametrize("headers,mail_from,word", [
    ({"Auto_Submitted": "auto-generated"}, "bob@example.net", "Auto-Submitted"),
    ({"Precedence": "bulk"}, "bob@example.net", "Precedence"),
    ({"Precedence": "junk"}, "bob@example.net", "Precedence"),
    ({}, "", "null reverse-path"),
])
def test_automatic_post_is_held_for_moderators_sender_not_told(
        harness: Harness, headers: dict[str, str], mail_from: str, word: str) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderators=["mod@example.org"],
              nonmember_action=Action.reject)
    harness.send(make_message("bob@example.net", LIST, "CI build failed", **headers),
                 mail_from=mail_from, rcpts=[LIST])
    harness.run_until_idle()
    state, reason = outcome(harness)
    assert state == "held" and word in reason
    harness.sink.wait_for(lambda ms: any("mod@example.org" in m.rcpt_tos for m in ms))
    assert notices_to(harness, "bob@example.net") == 0


def test_automatic_nonmember_post_with_reject_policy_is_held_not_silently_refused(
        harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderators=["mod@example.org"],
              nonmember_action=Action.reject)
    harness.send(make_message("robot@ci.example", LIST, "nightly", Auto_Submitted="auto-generated"))
    harness.run_until_idle()
    state, reason = outcome(harness)
    assert state == "held" and "Auto-Submitted" in reason and "non-members" in reason
    assert notices_to(harness, "robot@ci.example") == 0


def test_automatic_action_discard(harness: Harness, cli_env: dict[str, str]) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderators=["mod@example.org"])
    Cli(cli_env)("list", "set", LIST, "automatic_action", "discard")
    assert Cli(cli_env).error("list", "set", LIST, "automatic_action", "accept")
    harness.send(make_message("bob@example.net", LIST, "x", Precedence="bulk"))
    harness.run_until_idle()
    assert outcome(harness)[0] == "discarded"
    assert [o for o in Cli(cli_env).json("list", "ls")][0]["automatic_action"] == "discard"


FROMS = [
    (b"From: =?utf-8?q?bob=40example=2Enet?=\r\n", "unparseable From"),
    (b"From: bob@example.net <eve@evil.example>\r\n", "ambiguous From"),
    (b"From: bob@example.net\r\nFrom: eve@evil.example\r\n", "2 From headers"),
    (b"From: Bob <=?utf-8?q?bob=40example=2Enet?=>\r\n", "unparseable From"),
]


@pytest.mark.parametrize("from_lines,why", FROMS)
def test_spoofy_from_is_a_nonmember_held_with_the_reason(harness: Harness, from_lines: bytes,
                                                        why: str) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderators=["mod@example.org"],
              nonmember_action=Action.reject)
    raw = (from_lines + b"To: dev@example.org\r\nSubject: trust me\r\n"
           b"Message-ID: <s@evil.example>\r\n\r\nhello\r\n")
    harness.send(raw, mail_from="eve@evil.example", rcpts=[LIST])
    harness.run_until_idle()
    state, reason = outcome(harness)
    assert state == "held" and why in reason, reason
    with harness.app.db.unit_of_work() as s:
        [held] = s.scalars(select(HeldMessage))
        assert held.sender != "bob@example.net"
    assert notices_to(harness, "bob@example.net") == 0
    got = harness.sink.wait_for(lambda ms: any("mod@example.org" in m.rcpt_tos for m in ms))
    assert not any("bob@example.net" in m.rcpt_tos for m in got)


def test_sender_headers_from_plus_sender(harness: Harness, cli_env: dict[str, str]) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderators=["mod@example.org"])
    msg = make_message("Someone <someone@else.example>", LIST, "via Sender",
                       Sender="bob@example.net")
    harness.send(msg, mail_from="bob@example.net", rcpts=[LIST])
    harness.run_until_idle()
    assert outcome(harness)[0] == "held"            # default: only From names the sender
    with harness.app.db.unit_of_work() as s:
        s.execute(InboundMessage.__table__.delete())  # type: ignore[attr-defined]
    Cli(cli_env)("list", "set", LIST, "sender_headers", "from+sender")
    with harness.app.db.unit_of_work() as s:
        from listserv.core import lists
        assert lists.get_list(s, LIST).sender_headers is SenderHeaders.from_sender
    msg.replace_header("Message-ID", "<second@else.example>")
    harness.send(msg, mail_from="bob@example.net", rcpts=[LIST])
    harness.run_until_idle()
    assert outcome(harness)[0] == "accepted"


def test_auto_responder_loop_is_held_after_ten_posts(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderators=["mod@example.org"])
    for n in range(12):
        harness.send(make_message("bob@example.net", LIST, f"Re: out of office {n}",
                                  f"I am away until Monday ({n}).\n"))
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:
        rows = list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))
    assert [r.state.value for r in rows] == ["accepted"] * 10 + ["held"] * 2
    assert "too many posts: 11 from bob@example.net in 10 minutes" in (rows[10].outcome or "")
    harness.send(make_message("ann@a.example", LIST, "another sender"))   # others go on
    harness.run_until_idle()


def test_same_text_from_the_same_sender_within_an_hour_is_held(harness: Harness,
                                                             clock: Clock) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderators=["mod@example.org"])
    for n in range(2):
        harness.send(make_message("bob@example.net", LIST, f"Subject {n}", "Same  text.\n"))
        harness.run_until_idle()
    harness.send(make_message("ann@a.example", LIST, "Subject", "Same text.\n"))  # not bob
    harness.run_until_idle()
    clock.advance(hours=1, minutes=1)
    harness.send(make_message("bob@example.net", LIST, "later", "Same text.\n"))
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:
        rows = list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))
    assert [r.state.value for r in rows] == ["accepted", "held", "accepted", "accepted"]
    assert "same text as <" in (rows[1].outcome or "")
