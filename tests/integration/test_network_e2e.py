"""Networks of lists through the real intake: once per person, posting rights, cross-posts,
digests of a parent list, lists on other servers and loops."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from listserv import digests
from listserv.core import lists, members, network
from listserv.core.models import ArchiveMessage, DeliveryMode, HeldMessage, InboundMessage, utcnow
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured

NATIONAL, NORTH, SOUTH, LOCAL = ("national@example.org", "north@example.org",
                                 "south@example.org", "local@example.org")


def build(h: Harness, **national: object) -> None:
    make_list(h.app, NATIONAL, members=["nat@x.org", "Both@X.org"], owners=["boss@x.org"],
              **national)
    make_list(h.app, NORTH, members=["n1@x.org", "both@x.org"])
    make_list(h.app, SOUTH, members=["s1@x.org", "both@x.org", "n1@x.org"])
    make_list(h.app, LOCAL, members=["loc@x.org", "n1@x.org"])
    with h.app.db.unit_of_work() as s:
        network.include(s, lists.get_list(s, NATIONAL), [NORTH, SOUTH])
        network.include(s, lists.get_list(s, NORTH), [LOCAL])


def per_person(msgs: list[Captured]) -> Counter[str]:
    return Counter(r for m in msgs for r in m.rcpt_tos)


def outcomes(h: Harness) -> list[tuple[str, str, str]]:
    with h.app.db.unit_of_work() as s:
        return [(m.rcpt, m.state.value, m.outcome or "")
                for m in s.scalars(select(InboundMessage).order_by(InboundMessage.id))]


def test_post_reaches_everyone_in_the_tree_once(harness: Harness) -> None:
    build(harness)
    # loc@ is only on the local list: an included member may post to the national list
    harness.send(make_message("loc@x.org", NATIONAL, "Announcement"))
    harness.run_until_idle()
    everyone = {"nat@x.org", "both@x.org", "n1@x.org", "s1@x.org", "loc@x.org"}
    got = harness.sink.wait_for(lambda m: set(per_person(m)) >= everyone)
    assert per_person(got) == Counter({p: 1 for p in everyone})
    assert outcomes(harness) == [(NATIONAL, "accepted", "accepted as post 1 to 5 recipients")]
    assert "<national.example.org>" in got[0].message["List-Id"]


def test_included_members_can_post_false_holds_them(harness: Harness) -> None:
    build(harness, included_members_can_post=False)
    harness.send(make_message("loc@x.org", NATIONAL))
    harness.run_until_idle()
    [(_, state, outcome)] = outcomes(harness)
    assert state == "held" and "non-member loc@x.org" in outcome
    with harness.app.db.unit_of_work() as s:
        [held] = s.scalars(select(HeldMessage))
        assert held.list_id == lists.get_list(s, NATIONAL).id   # NATIONAL's moderators decide


def test_moderated_member_of_included_list_is_held(harness: Harness) -> None:
    build(harness)
    with harness.app.db.unit_of_work() as s:
        m = members.find_membership(s, lists.get_list(s, LOCAL), "loc@x.org")
        assert m is not None
        m.moderated = True
    harness.send(make_message("loc@x.org", NATIONAL))
    harness.run_until_idle()
    [(_, state, outcome)] = outcomes(harness)
    assert state == "held" and "moderated member loc@x.org" in outcome


def test_cross_post_reaches_each_person_once(harness: Harness) -> None:
    """To the local list and the national umbrella at once: one copy per person across the
    union; the second list archives and counts it."""
    build(harness)
    harness.send(make_message("n1@x.org", [LOCAL, NATIONAL], "Both lists",
                              message_id="<cross@x.org>"))
    harness.run_until_idle()
    everyone = {"nat@x.org", "both@x.org", "n1@x.org", "s1@x.org", "loc@x.org"}
    got = harness.sink.wait_for(lambda m: set(per_person(m)) >= everyone)
    harness.run_until_idle()
    assert per_person(harness.sink.messages) == Counter({p: 1 for p in everyone})
    with harness.app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveMessage)) == 2
        assert [lists.get_list(s, a).post_id for a in (LOCAL, NATIONAL)] == [1, 1]
    states = sorted(o[1] for o in outcomes(harness))
    assert states == ["accepted", "accepted"]
    assert got


@pytest.mark.parametrize("in_one", [digests.service.IN_ONE_TRANSACTION, 0],
                         ids=["whole", "fan-out"])
def test_digest_only_person_gets_the_parents_digest(harness: Harness, in_one: int) -> None:
    """Queued whole in the digest's transaction, or by a fan-out job (listserv.digests.chunks)
    even to a few members: the same people get the same digests."""
    build(harness)
    make_list(harness.app, "digesters@example.org", members=["dig@x.org", "n1@x.org"])
    with harness.app.db.unit_of_work() as s:
        child = lists.get_list(s, "digesters@example.org")
        for email in ("dig@x.org", "n1@x.org"):
            m = members.find_membership(s, child, email)
            assert m is not None
            members.change_delivery_mode(s, m, DeliveryMode.mime_digest, utcnow())
        # nat@ reads the national list itself as a plain digest
        nat = members.find_membership(s, lists.get_list(s, NATIONAL), "nat@x.org")
        assert nat is not None
        members.change_delivery_mode(s, nat, DeliveryMode.plain_digest, utcnow())
        # both@ reads the national list as a digest but is a regular member of north
        both = members.find_membership(s, lists.get_list(s, NATIONAL), "both@x.org")
        assert both is not None
        members.change_delivery_mode(s, both, DeliveryMode.mime_digest, utcnow())
        network.include(s, lists.get_list(s, NATIONAL), ["digesters@example.org"])
    harness.send(make_message("boss@x.org", NATIONAL, "News"))
    harness.run_until_idle()
    regular = per_person(harness.sink.wait_for(lambda m: len(per_person(m)) >= 4))
    assert "dig@x.org" not in regular and "nat@x.org" not in regular
    assert regular["n1@x.org"] == 1            # regular on north beats digest on digesters
    assert regular["both@x.org"] == 1
    [result] = digests.send_now(harness.app, NATIONAL, in_one_transaction=in_one)
    assert result.mime_recipients == 1 and result.plain_recipients == 1
    harness.run_until_idle()
    kinds = [(m.rcpt_tos, m.message["Subject"]) for m in harness.sink.messages
             if "Digest" in str(m.message["Subject"])]
    assert sorted(r for rcpts, _ in kinds for r in rcpts) == ["dig@x.org", "nat@x.org"]


def test_remote_parent_posts_and_loops(harness: Harness) -> None:
    """A list on another server that includes ours one way: its address is a (nomail) member
    here, so its relayed copies are posts; forged or looping copies are not."""
    make_list(harness.app, "regional@example.org", members=["r1@x.org", "r2@x.org"])
    with harness.app.db.unit_of_work() as s:
        ml = lists.get_list(s, "regional@example.org")
        members.add_member(s, ml, "national@other.example", delivery_mode=DeliveryMode.nomail)
        network.include(s, ml, ["peer@third.example"])
    relayed = dict(List_Id="National <national.other.example>", Precedence="list")
    harness.send(make_message("poster@p.example", "national@other.example", "Relayed",
                              **relayed),
                 mail_from="national-bounces+regional=example.org@other.example",
                 rcpts=["regional@example.org"])
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda m: len(per_person(m)) >= 3)
    assert per_person(got) == Counter({"r1@x.org": 1, "r2@x.org": 1, "peer@third.example": 1})
    ids = got[0].message.get_all("List-Id")
    assert [v.split("<")[1] for v in ids] == ["regional.example.org>",
                                              "national.other.example>"]
    # the same List-Id from anyone else's envelope is no relay (Precedence: list = automatic,
    # held for the moderators: automatic_action)
    harness.send(make_message("poster@p.example", "national@other.example", "Forged",
                              **relayed), mail_from="poster@p.example",
                 rcpts=["regional@example.org"])
    # a copy carrying our own List-Id came back: a loop
    harness.send(make_message("r1@x.org", "regional@example.org", "Again",
                              List_Id="<regional.example.org>"))
    # a remote peer that came through the chain does not get it back
    harness.send(make_message("r1@x.org", "regional@example.org", "From peer",
                              List_Id="<peer.third.example>"))
    harness.run_until_idle()
    states = [(o[1], o[2].split(":")[0]) for o in outcomes(harness)]
    assert states[1:3] == [("held", "automatic message (Precedence"),
                           ("discarded", "loop")]
    assert states[3][0] == "accepted"
    got = harness.sink.wait_for(lambda m: len(m) >= 4)
    last = [m for m in got if "From peer" in str(m.message["Subject"])]
    assert sorted(r for m in last for r in m.rcpt_tos) == ["r1@x.org", "r2@x.org"]
