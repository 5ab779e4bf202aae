"""Membership by email: join/leave with confirmations, -request commands, no mail bombing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from listserv.core import members, ratelimit
from listserv.core.models import (
    DeliveryMode,
    InboundState,
    MailingList,
    ModerationLog,
    PendingToken,
    SubscriptionPolicy,
    TokenKind,
)
from tests.db.modsupport import Outbox, command, make_list, message, token_of

ADDR = "dev@example.org"


def is_member(app: Any, list_id: int, email: str) -> bool:
    with app.db.unit_of_work() as s:
        return members.find_membership(s, s.get_one(MailingList, list_id), email) is not None


def mode_of(app: Any, list_id: int, email: str) -> DeliveryMode:
    with app.db.unit_of_work() as s:
        m = members.find_membership(s, s.get_one(MailingList, list_id), email)
        assert m is not None
        return m.delivery_mode


def join(app: Any, list_id: int, sender: str, **headers: str) -> Any:
    return command(app, list_id, "join", message(sender, "dev-join@example.org", "", "",
                                                 **headers))


def confirm_reply(app: Any, list_id: int, token: str, sender: str, body: str = "ok") -> Any:
    return command(app, list_id, "confirm",
                   message(sender, f"dev-confirm+{token}@example.org", "Re: confirm", body),
                   extra=token)


@pytest.fixture
def outbox(app: Any) -> Outbox:
    return Outbox(app)


def test_join_confirm_round_trip_and_leave(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app)
    ib = join(app, list_id, "Ann <Ann@Example.net>")
    assert ib.state is InboundState.handled
    got = outbox.new()
    assert [m.recipients for m in got] == [["ann@example.net"]]
    token = token_of(got[0].msg)
    assert str(got[0].msg["Reply-To"]) == f"dev-confirm+{token}@example.org"
    assert token in str(got[0].msg["Subject"])
    assert not is_member(app, list_id, "ann@example.net")
    # a reply from someone else changes nothing
    confirm_reply(app, list_id, token, "eve@example.net")
    assert not is_member(app, list_id, "ann@example.net")
    assert outbox.new()[0].recipients == ["eve@example.net"]
    # a plain reply (no command word) from the address confirms; welcome follows
    confirm_reply(app, list_id, token, "ann@example.net", "> Someone asked...\n")
    assert is_member(app, list_id, "ann@example.net")
    got = outbox.new()
    assert len(got) == 1 and "Welcome" in str(got[0].msg["Subject"])
    # replayed: nothing more, told it was handled
    confirm_reply(app, list_id, token, "ann@example.net")
    assert "already handled" in outbox.new()[0].msg.get_content().lower()

    command(app, list_id, "leave", message("ann@example.net", "dev-leave@example.org", "", ""))
    assert is_member(app, list_id, "ann@example.net")
    leave_token = token_of(outbox.new()[0].msg)
    confirm_reply(app, list_id, leave_token, "ann@example.net")
    assert not is_member(app, list_id, "ann@example.net")
    got = outbox.new()
    assert len(got) == 1 and "left" in str(got[0].msg["Subject"])


def test_open_policy_subscribes_at_once(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app, subscription_policy=SubscriptionPolicy.open)
    join(app, list_id, "bob@example.net")
    assert is_member(app, list_id, "bob@example.net")
    got = outbox.new()
    assert len(got) == 1 and "Welcome" in str(got[0].msg["Subject"])
    join(app, list_id, "bob@example.net")
    assert "already subscribed" in outbox.new()[0].msg.get_content()


def test_no_mail_bombing(app: Any, outbox: Outbox, clock: Any) -> None:
    list_id = make_list(app)
    for _ in range(5):
        join(app, list_id, "victim@example.net")
    got = outbox.new()
    # one confirmation, then short answers ("check your spam folder") up to the daily limit
    assert len(got) == 1 + ratelimit.DAILY_LIMITS["status"]
    first = token_of(got[0].msg)
    for answer in got[1:]:
        text = answer.msg.get_body(("plain",)).get_content()
        assert "already sent to victim@example.net at" in text and "spam" in text
        assert "Reply-To" not in answer.msg
    clock.advance(minutes=61)
    join(app, list_id, "victim@example.net")
    join(app, list_id, "victim@example.net")
    got = outbox.new()
    assert len(got) == 1      # a new confirmation; the daily limit of short answers is spent
    second = token_of(got[0].msg)
    with app.db.unit_of_work() as s:
        rows = s.scalars(select(PendingToken).where(PendingToken.kind == TokenKind.subscribe)
                         ).all()
        assert len(rows) == 1
    # the re-issued token replaces the first one
    confirm_reply(app, list_id, first, "victim@example.net")
    assert not is_member(app, list_id, "victim@example.net")
    confirm_reply(app, list_id, second, "victim@example.net")
    assert is_member(app, list_id, "victim@example.net")


def test_auto_replies_and_list_mail_ignored(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app)
    join(app, list_id, "a@example.net", Auto_Submitted="auto-replied")
    join(app, list_id, "b@example.net", Precedence="junk")
    command(app, list_id, "join", message("c@example.net", "dev-join@example.org"),
            mail_from="")
    command(app, list_id, "request", message("dev-bounces@example.org", "x", "help"))
    command(app, list_id, "request", message("x@example.net", "x", "help"),
            mail_from="dev-bounces+x=example.net@example.org")
    assert outbox.new() == []
    join(app, list_id, "d@example.net", Auto_Submitted="no")
    assert len(outbox.new()) == 1


def test_moderate_policy(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app, owners=("boss@example.org",), moderators=("mod@example.org",),
                        subscription_policy=SubscriptionPolicy.moderate)
    join(app, list_id, "carl@example.net")
    got = outbox.new()
    assert sorted(r for m in got for r in m.recipients) == [
        "boss@example.org", "carl@example.net", "mod@example.org"]
    mod = [m for m in got if m.recipients == ["mod@example.org"]][0]
    boss = [m for m in got if m.recipients == ["boss@example.org"]][0]
    join(app, list_id, "carl@example.net")
    assert outbox.new() == []
    # the requester cannot approve themselves with the moderator's token
    confirm_reply(app, list_id, token_of(mod.msg), "carl@example.net")
    assert not is_member(app, list_id, "carl@example.net")
    outbox.new()
    confirm_reply(app, list_id, token_of(mod.msg), "mod@example.org", "")
    assert is_member(app, list_id, "carl@example.net")
    got = outbox.new()
    assert sorted(r for m in got for r in m.recipients) == ["carl@example.net",
                                                            "mod@example.org"]
    confirm_reply(app, list_id, token_of(boss.msg), "boss@example.org", "reject")
    assert "already handled by mod@example.org" in outbox.new()[0].msg.get_content().lower()
    with app.db.unit_of_work() as s:
        log = s.scalars(select(ModerationLog)).all()
        assert [(e.actor, e.action, e.detail) for e in log] == [
            ("mod@example.org", "approve_subscription", "carl@example.net")]


def test_moderate_policy_reject(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app, moderators=("mod@example.org",),
                        subscription_policy=SubscriptionPolicy.moderate)
    join(app, list_id, "dan@example.net")
    mod = [m for m in outbox.new() if m.recipients == ["mod@example.org"]][0]
    confirm_reply(app, list_id, token_of(mod.msg), "mod@example.org",
                  "Rejected: not a fit\n\n> dan@example.net asks to join")
    assert not is_member(app, list_id, "dan@example.net")
    got = outbox.new()
    dan = [m for m in got if m.recipients == ["dan@example.net"]]
    assert len(dan) == 1 and "not a fit" in dan[0].msg.get_content()
    assert "Rejected" not in dan[0].msg.get_content() and "> dan" not in dan[0].msg.get_content()


def test_subscription_approval_reads_replies_like_post_moderation(app: Any,
                                                                  outbox: Outbox) -> None:
    """The same quote and signature reading as moderation replies: words in an Outlook
    original below the reply or in a phone signature are not read; a Subject-only "reject"
    with nothing typed refuses (a reply without a refusal would approve)."""
    list_id = make_list(app, moderators=("mod@example.org",),
                        subscription_policy=SubscriptionPolicy.moderate)
    join(app, list_id, "gil@example.net")
    join(app, list_id, "hal@example.net")
    mods = [m for m in outbox.new() if m.recipients == ["mod@example.org"]]
    gil, hal = token_of(mods[0].msg), token_of(mods[1].msg)
    confirm_reply(app, list_id, gil, "mod@example.org",
                  "Approve.\n\nEnvoyé de mon iPhone\n\nDe : Dev <dev-owner@example.org>\n"
                  "Envoyé : mardi 1 décembre 2026 10:00\nÀ : mod\nObjet : request\n\n"
                  "reject: not a fit\n")
    assert is_member(app, list_id, "gil@example.net")
    outbox.new()
    command(app, list_id, "confirm",
            message("mod@example.org", f"dev-confirm+{hal}@example.org",
                    f"RE: Reject: spam bot (confirm {hal})",
                    "> hal@example.net asks to join\n"), extra=hal)
    assert not is_member(app, list_id, "hal@example.net")
    told = [m for m in outbox.new() if m.recipients == ["hal@example.net"]]
    assert len(told) == 1 and "spam bot" in told[0].msg.get_content()
    assert "asks to join" not in told[0].msg.get_content()


def test_confirm_then_moderate(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app, moderators=("mod@example.org",),
                        subscription_policy=SubscriptionPolicy.confirm_then_moderate)
    join(app, list_id, "eve@example.net")
    got = outbox.new()
    assert [m.recipients for m in got] == [["eve@example.net"]]
    confirm_reply(app, list_id, token_of(got[0].msg), "eve@example.net")
    assert not is_member(app, list_id, "eve@example.net")
    got = outbox.new()
    mod = [m for m in got if m.recipients == ["mod@example.org"]][0]
    confirm_reply(app, list_id, token_of(mod.msg), "mod@example.org", "approve")
    assert is_member(app, list_id, "eve@example.net")


def test_request_commands(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app, people=("fay@example.net",))
    body = ("set delivery plain-digest\n\nhelp\nthanks for the list\nunsubscribe\n")
    command(app, list_id, "request", message("fay@example.net", "dev-request@example.org",
                                             "Re: subscribe", body))
    # a From is easily forged: the change waits for a reply to a confirmation request
    assert mode_of(app, list_id, "fay@example.net") is DeliveryMode.regular
    got = outbox.new()
    assert len(got) == 2
    [request] = [m for m in got if "confirm the delivery change" in str(m.msg["Subject"])]
    [answer] = [m for m in got if m is not request]
    text = answer.msg.get_content()
    assert "already subscribed" in text          # the Subject command
    assert "confirmation request has been sent" in text
    assert "set delivery MODE" in text           # help text
    assert "> help" in text and "> unsubscribe" not in text
    # the unsubscribe after the unknown line was not run
    with app.db.unit_of_work() as s:
        assert [t.kind for t in s.scalars(select(PendingToken))] == [TokenKind.set_delivery]
    confirm_reply(app, list_id, token_of(request.msg), "eve@example.net")   # not hers
    assert mode_of(app, list_id, "fay@example.net") is DeliveryMode.regular
    confirm_reply(app, list_id, token_of(request.msg), "fay@example.net")
    assert mode_of(app, list_id, "fay@example.net") is DeliveryMode.plain_digest
    outbox.new()

    command(app, list_id, "request", message("fay@example.net", "dev-request@example.org",
                                             "", "set delivery weekly\n"))
    assert "Unknown delivery mode" in outbox.new()[0].msg.get_content()
    command(app, list_id, "request", message("gus@example.net", "dev-request@example.org",
                                             "", "set delivery nomail\n"))
    assert "not subscribed" in outbox.new()[0].msg.get_content()
    # a message with no command: help
    command(app, list_id, "request", message("gus@example.net", "dev-request@example.org",
                                             "hi", "what is this?\n"))
    assert "set delivery MODE" in outbox.new()[0].msg.get_content()


def test_request_subscribe_and_confirm_command(app: Any, outbox: Outbox) -> None:
    list_id = make_list(app)
    command(app, list_id, "request", message("hal@example.net", "dev-request@example.org",
                                             "", "subscribe\n-- \nHal\n"))
    got = outbox.new()
    assert len(got) == 1          # only the confirmation: one mail per forged request
    token = token_of(got[0].msg)
    command(app, list_id, "request", message("hal@example.net", "dev-request@example.org",
                                             "", f"confirm {token}\n"))
    assert is_member(app, list_id, "hal@example.net")
    command(app, list_id, "request", message("hal@example.net", "dev-request@example.org",
                                             f"Re: {got[0].msg['Subject']}", "unsubscribe"))
    assert len(outbox.new()) >= 2


def test_reenable_reply(app: Any, outbox: Outbox) -> None:
    from listserv.bounces import process as bounces

    list_id = make_list(app, people=("ivy@example.net",))
    with app.db.unit_of_work() as s:
        ml = s.get_one(MailingList, list_id)
        m = members.find_membership(s, ml, "ivy@example.net")
        assert m is not None
        m.enabled, m.disabled_reason = False, "bounce"
        token = bounces.create_reenable_token(s, app, ml, m, app.now())
    confirm_reply(app, list_id, token.upper(), "ivy@example.net", "")
    with app.db.unit_of_work() as s:
        m = members.find_membership(s, s.get_one(MailingList, list_id), "ivy@example.net")
        assert m is not None and m.enabled and m.disabled_reason is None
    assert "re-enabled" in outbox.new()[0].msg.get_content()


def test_token_in_subject_when_the_mta_dropped_the_extension(app: Any, outbox: Outbox) -> None:
    # Some front MTAs deliver dev-confirm+TOKEN@ as plain dev-confirm@: the Subject carries it.
    list_id = make_list(app)
    join(app, list_id, "ann@example.net")
    (req,) = outbox.new()
    token = token_of(req.msg)
    command(app, list_id, "confirm", message("ann@example.net", "dev-confirm@example.org",
                                             "Re: " + str(req.msg["Subject"]), "ok"))
    assert is_member(app, list_id, "ann@example.net")
    # a bare -confirm without any token gets help, and changes nothing
    command(app, list_id, "confirm", message("bob@example.net", "dev-confirm@example.org",
                                             "hello", "ok"))
    assert not is_member(app, list_id, "bob@example.net")
    assert token and [m.recipients for m in outbox.new()][-1] == ["bob@example.net"]
