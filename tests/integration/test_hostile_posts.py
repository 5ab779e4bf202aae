"""Generated hostile mail through the real intake and the whole pipeline (rules, accept,
archive, per-member copies, DKIM, delivery; commands, bounces, joining and the owners'
address): each message is refused at DATA with a 5xx, or ends accepted, held, rejected,
discarded or handled with its reason, never 'failed' (processing that raised); every copy
that leaves is mail every relay takes (tests/unit/test_hostile_mail.py)."""

from __future__ import annotations

import smtplib

import dkim
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st
from sqlalchemy import select

from listserv.admin import domains
from listserv.core import lists
from listserv.core.models import (Action, Decision, Delivery, DeliveryState, InboundMessage,
                                  InboundState)
from listserv.pipeline import moderation
from tests.integration.harness import Harness, make_list
from tests.unit.test_hostile_mail import message

LIST = "dev@example.org"
MEMBERS = ["ann@members.example", "bob@members.example"]
# the list, and its addresses for commands, bounces, joining and the owners: the message
# is an inbound message for each
RCPTS = [LIST, "dev-request@example.org", "dev-bounces@example.org", "dev-owner@example.org",
         "dev-join@example.org"]


# the examples share one harness (its database grows), so a failure is reported as found,
# not shrunk: each shrinking step would run the whole pipeline again
@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(message(), min_size=15, max_size=15))
# a NUL in the From address and the Subject: PostgreSQL refused the bounce record of it
@example(batch=[b"From: ann@yahoo.example\x00a\t>\nSubject: a\x00b\nMessage-ID: <x@e>\n\nhi\n"])
def test_hostile_posts_end_with_a_reason_and_their_copies_are_sound(
        quiet_harness: Harness, batch: list[bytes]) -> None:
    h = quiet_harness
    with h.app.db.unit_of_work() as session:       # once: examples share the harness
        fresh = lists.find_list(session, LIST) is None
        if fresh:
            domains.generate_dkim_key(session, "example.org", "s1")
    if fresh:
        make_list(h.app, LIST, members=MEMBERS, owners=["boss@owners.example"],
                  nonmember_action=Action.accept, sender_post_limit=0)
    with h.app.db.unit_of_work() as session:
        key = domains.txt_record(domains.get_domain(session, "example.org"))[1].encode()
    before = {i for i, in _states(h)}
    refused = 0
    for n, raw in enumerate(batch):
        # addressed to the list, each with a Message-ID of its own (the first of each
        # field counts), so that most of them are posts the list accepts
        head = f"To: {LIST}\r\nMessage-ID: <{len(before)}.{n}@hostile.example>\r\n"
        try:
            h.send(head.encode() + raw, mail_from="ann@members.example", rcpts=RCPTS)
        except smtplib.SMTPResponseException as exc:     # a clear refusal: 5xx at DATA
            assert 500 <= exc.smtp_code < 600, exc
            refused += 1
    h.run_until_idle(timeout=60)
    with h.app.db.unit_of_work() as session:
        rows = session.execute(select(InboundMessage.id, InboundMessage.state,
                                      InboundMessage.outcome)).all()
    new = [r for r in rows if r.id not in before]
    assert len(new) + refused * len(RCPTS) == len(batch) * len(RCPTS)
    for r in new:
        assert r.state in (InboundState.accepted, InboundState.held, InboundState.rejected,
                           InboundState.discarded, InboundState.handled), (r.state, r.outcome)
        assert r.outcome
    # a moderator approves every held one: it goes out the way the others did
    with h.app.db.unit_of_work() as session:
        held = [m.id for m in moderation.pending(session)]
        for held_id in held:
            moderation.decide(session, h.app, held_id, Decision.approve,
                              actor="mod@example.org", via="test")
    h.run_until_idle(timeout=60)
    with h.app.db.unit_of_work() as session:
        assert not moderation.pending(session)
        states = session.scalars(select(InboundMessage.state).where(
            InboundMessage.id.in_([r.id for r in new]))).all()
    assert set(states) <= {InboundState.accepted, InboundState.rejected,
                           InboundState.discarded, InboundState.handled}, states
    with h.app.db.unit_of_work() as session:      # every copy was taken by the next hop
        assert set(session.scalars(select(Delivery.state))) <= {DeliveryState.done}
    for copy in h.sink.messages:
        data = copy.data
        assert all(len(line) <= 998 for line in data.split(b"\r\n"))
        if not data.startswith(b"X-Loop: dev-owner@"):    # owner mail goes on as it came
            assert dkim.verify(data, dnsfunc=lambda name, timeout=5: key)


def _states(h: Harness) -> list[tuple[int]]:
    with h.app.db.unit_of_work() as session:
        return [(i,) for i in session.scalars(select(InboundMessage.id))]
