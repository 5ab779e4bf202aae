"""Every posting rule on its own, and the gate/hold evaluation order (pure, no database)."""

from __future__ import annotations

import dataclasses

import pytest

from listserv.pipeline import rules
from listserv.core.models import Action, Role
from listserv.pipeline.rules import RuleContext, evaluate

BASE = RuleContext(
    list_address="dev@example.org", list_id="dev.example.org", mail_from="ann@a.example",
    sender="ann@a.example", roles=frozenset({Role.member}), moderated=False, list_ids=(),
    x_loops=(), auto_submitted="", precedence="", recipients=("dev@example.org",), size=1000,
    max_message_size=0, emergency=False, nonmember_action=Action.hold,
    member_action=Action.hold)


def ctx(**kw: object) -> RuleContext:
    return dataclasses.replace(BASE, **kw)  # type: ignore[arg-type]


def test_plain_member_post_is_accepted() -> None:
    assert evaluate(BASE) == rules.Verdict(Action.accept)


@pytest.mark.parametrize("kw", [
    {"list_ids": ("Dev list <dev.example.org>",)},
    {"list_ids": ("<DEV.example.org>",)},
    {"x_loops": ("dev@example.org",)},
])
def test_loop_is_discarded(kw: dict[str, object]) -> None:
    v = evaluate(ctx(**kw))
    assert v.action is Action.discard and "loop" in v.reasons[0]


def test_other_lists_list_id_is_not_a_loop() -> None:
    assert rules.loop(ctx(list_ids=("<users.example.org>",))) is None


@pytest.mark.parametrize("kw,word", [
    ({"mail_from": ""}, "null reverse-path"),
    ({"auto_submitted": "auto-replied"}, "Auto-Submitted"),
    ({"auto_submitted": "auto-generated"}, "Auto-Submitted"),
    ({"precedence": "bulk"}, "Precedence"),
    ({"precedence": "junk"}, "Precedence"),
    ({"precedence": "list"}, "Precedence"),
])
def test_automatic_mail_is_held_or_discarded_as_the_list_says(kw: dict[str, object],
                                                              word: str) -> None:
    v = evaluate(ctx(**kw))
    assert v.action is Action.hold and word in v.reasons[0]
    v = evaluate(ctx(automatic_action=Action.discard, **kw))
    assert v.action is Action.discard and word in v.reasons[0]


def test_ambiguous_sender_is_held_whatever_the_nonmember_action() -> None:
    for action in Action:
        v = evaluate(ctx(roles=frozenset(), sender="", nonmember_action=action,
                         sender_problem="2 From headers"))
        assert v == rules.Verdict(Action.hold, ("post by non-member: 2 From headers",))


def test_auto_submitted_no_is_a_person() -> None:
    assert rules.automatic(ctx(auto_submitted="no")) is None
    assert evaluate(ctx(auto_submitted="no")).action is Action.accept


def test_emergency_holds_even_owners() -> None:
    v = evaluate(ctx(emergency=True, roles=frozenset({Role.owner})))
    assert v.action is Action.hold and v.reasons == ("the list is in emergency moderation",)


def test_list_size_limit_holds() -> None:
    assert evaluate(ctx(max_message_size=1000)).action is Action.accept
    v = evaluate(ctx(max_message_size=999))
    assert v.action is Action.hold and "1000 bytes exceeds the list limit of 999" in v.reasons[0]


@pytest.mark.parametrize("action", [Action.hold, Action.reject, Action.discard])
def test_nonmember_action(action: Action) -> None:
    v = evaluate(ctx(roles=frozenset(), sender="eve@e.example", nonmember_action=action))
    assert v.action is action
    assert len(v.reasons) == 1


def test_nonmember_accept() -> None:
    assert evaluate(ctx(roles=frozenset(), nonmember_action=Action.accept)).action is Action.accept


@pytest.mark.parametrize("action", [Action.hold, Action.reject, Action.discard, Action.accept])
def test_moderated_member_follows_member_action(action: Action) -> None:
    v = evaluate(ctx(moderated=True, member_action=action))
    assert v.action is action


@pytest.mark.parametrize("role", [Role.owner, Role.moderator])
def test_owners_and_moderators_count_as_unmoderated_members(role: Role) -> None:
    assert evaluate(ctx(roles=frozenset({role}))).action is Action.accept
    assert evaluate(ctx(roles=frozenset({role, Role.member}), moderated=True)
                    ).action is Action.accept


def test_implicit_destination_holds() -> None:
    v = evaluate(ctx(recipients=("someone@else.example",)))
    assert v.action is Action.hold and "implicit destination" in v.reasons[0]
    assert evaluate(ctx(recipients=("x@y.example", "dev@example.org"))).action is Action.accept


def test_hold_rules_all_run_and_collect_every_reason() -> None:
    v = evaluate(ctx(emergency=True, max_message_size=10, roles=frozenset(),
                     recipients=()))
    assert v.action is Action.hold
    assert len(v.reasons) == 4
    assert [r.split()[0] for r in v.reasons] == ["the", "message", "post", "implicit"]


def test_gate_stops_evaluation_even_after_holds() -> None:
    v = evaluate(ctx(emergency=True, roles=frozenset(), nonmember_action=Action.reject))
    assert v.action is Action.reject and len(v.reasons) == 1
    # a loop is discarded before anything else is looked at
    v = evaluate(ctx(list_ids=("<dev.example.org>",), emergency=True, roles=frozenset()))
    assert v.action is Action.discard and len(v.reasons) == 1


def test_rules_order_is_the_documented_chain() -> None:
    assert [r.__name__ for r in rules.RULES] == [
        "loop", "banned", "automatic", "emergency", "max_size", "flood", "repeated_text",
        "administrivia", "max_recipients",
        "nonmember", "moderated_member", "implicit_destination"]


@pytest.mark.parametrize("subject, body, held", [
    ("unsubscribe", (), True),
    ("Re: Unsubscribe", (), True),
    ("subscribe me@x.example", (), True),
    ("help", (), True),
    ("Help with the rota", (), False),          # a real post about help
    ("Meeting notes", ("unsubscribe",), True),
    ("Meeting notes", ("Hi all,", "unsubscribe me from this madness please"), False),
    ("Meeting notes", ("a", "b", "c", "d", "e", "unsubscribe"), False),  # too far down
])
def test_administrivia(subject: str, body: tuple[str, ...], held: bool) -> None:
    v = evaluate(ctx(subject=subject, body_head=body))
    assert (v.action is Action.hold) is held
    if held:
        assert "dev-request@example.org" in v.reasons[0]
    assert evaluate(ctx(subject=subject, body_head=body, administrivia=False)).action \
        is Action.accept


def test_max_recipients() -> None:
    many = ("dev@example.org",) + tuple(f"p{i}@x.example" for i in range(9))
    v = evaluate(ctx(recipients=many, max_recipients=10))
    assert v.action is Action.hold and "too many recipients: 10" in v.reasons[0]
    assert evaluate(ctx(recipients=many[:9], max_recipients=10)).action is Action.accept
    assert evaluate(ctx(recipients=many, max_recipients=0)).action is Action.accept


def test_is_auto() -> None:
    assert ctx(mail_from="").is_auto and ctx(precedence="bulk").is_auto
    assert not BASE.is_auto


def test_banned_sender_is_discarded_before_anything_else() -> None:
    v = evaluate(ctx(banned_by="^.*@spam\\.example", emergency=True))
    assert v.action is Action.discard and "banned" in v.reasons[0]
    assert rules.banned(BASE) is None


@pytest.mark.parametrize("action, expected", [
    (Action.accept, Action.accept), (Action.hold, Action.hold),
    (Action.reject, Action.reject), (Action.discard, Action.discard)])
def test_sender_rule_decides_before_nonmember_action(action: Action, expected: Action) -> None:
    from listserv.core.senders import SenderRule

    rule = SenderRule("^bot@", action)
    v = evaluate(ctx(roles=frozenset(), nonmember_action=Action.reject, sender_rule=rule))
    assert v.action is expected
    if expected is Action.hold:
        assert "sender rule ^bot@" in v.reasons[0]
