"""A cross-posted message reaches a digest reader once across our lists, through the real
intake and delivery: the same Message-ID to two lists, and to a list and its umbrella."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select

from listserv import digests
from listserv.core import lists, members, network
from listserv.core.models import Delivery, DeliveryMode, OutboundMessage, utcnow
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured

A, B, UMBRELLA = "a@example.org", "b@example.org", "all@example.org"
CROSS = "Cross-posted news"


def modes(h: Harness, address: str, **by_person: DeliveryMode) -> None:
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, address)
        for email, mode in by_person.items():
            m = members.find_membership(s, ml, email.replace("_", "@") + ".example")
            assert m is not None
            members.change_delivery_mode(s, m, mode, utcnow())


def post(h: Harness, to: str | list[str], subject: str, message_id: str) -> None:
    h.send(make_message("poster@p.example", to, subject, f"{subject}.\n",
                        message_id=message_id))
    h.run_until_idle()


def digest_text(c: Captured) -> str:
    """Everything a digest holds, as text (the MIME digest's embedded posts too)."""
    return "\n".join(str(part.get_content()) for part in c.message.walk()
                     if part.get_content_maintype() == "text")


@pytest.fixture(params=[digests.service.IN_ONE_TRANSACTION, 0], ids=["whole", "fan-out"])
def in_one(request: pytest.FixtureRequest) -> int:
    """Each test twice: digests queued whole in their transaction, and queued by a fan-out
    job (listserv.digests.chunks) even to a few members."""
    return int(request.param)


def digest_recipients(h: Harness) -> int:
    with h.app.db.unit_of_work() as s:
        return s.scalar(select(func.coalesce(func.sum(Delivery.count), 0)).join(
            OutboundMessage, OutboundMessage.id == Delivery.outbound_id).where(
            OutboundMessage.kind == "digest")) or 0


def send_digests(h: Harness, in_one: int) -> list[Captured]:
    before = len(h.sink.messages)
    digests.send_now(h.app, in_one_transaction=in_one)
    h.run_until_idle()                     # runs a digest's fan-out job too
    expected = digest_recipients(h)
    got = h.sink.wait_for(lambda ms: sum(len(m.rcpt_tos) for m in ms[before:]) >= expected)
    h.run_until_idle()
    return [m for m in list(h.sink.messages)[before:] if "Digest" in str(m.message["Subject"])]


def holding(digest_copies: list[Captured], subject: str) -> Counter[str]:
    """Per person: how many of their digests hold ``subject``."""
    return Counter(r for c in digest_copies if subject in digest_text(c) for r in c.rcpt_tos)


def regular_copies(h: Harness, subject: str) -> Counter[str]:
    return Counter(r for m in h.sink.messages if "Digest" not in str(m.message["Subject"])
                   and subject in str(m.message["Subject"]) for r in m.rcpt_tos)


def test_same_message_id_to_two_lists_is_in_one_digest_per_person(
        harness: Harness, in_one: int) -> None:
    h = harness
    make_list(h.app, A, members=["poster@p.example", "both@d.example", "reg@r.example"])
    make_list(h.app, B, members=["poster@p.example", "both@d.example", "reg@r.example",
                                 "bonly@o.example"])
    modes(h, A, both_d=DeliveryMode.mime_digest)
    modes(h, B, both_d=DeliveryMode.plain_digest, reg_r=DeliveryMode.mime_digest,
          bonly_o=DeliveryMode.mime_digest)
    post(h, [A, B], CROSS, "<cross@p.example>")
    post(h, B, "Only on B", "<onlyb@p.example>")
    post(h, A, "Only on A", "<onlya@p.example>")

    got = send_digests(h, in_one)
    cross = holding(got, CROSS)
    assert cross["both@d.example"] == 1          # a digest reader of both lists: once
    assert cross["bonly@o.example"] == 1         # only on B: B's digest has it
    assert cross["reg@r.example"] == 0           # had it as a regular copy from A
    assert regular_copies(h, CROSS) == Counter({"poster@p.example": 1, "reg@r.example": 1})
    # the rest of each digest still reaches them
    assert holding(got, "Only on B") == Counter({"both@d.example": 1, "reg@r.example": 1,
                                                 "bonly@o.example": 1})
    assert holding(got, "Only on A") == Counter({"both@d.example": 1})


def test_cross_post_to_a_list_and_its_umbrella_is_in_one_digest(
        harness: Harness, in_one: int) -> None:
    h = harness
    make_list(h.app, UMBRELLA, members=["poster@p.example", "top@t.example"])
    make_list(h.app, A, members=["poster@p.example", "dig@d.example", "low@l.example"])
    modes(h, UMBRELLA, top_t=DeliveryMode.mime_digest)
    modes(h, A, dig_d=DeliveryMode.mime_digest, low_l=DeliveryMode.plain_digest)
    with h.app.db.unit_of_work() as s:
        network.include(s, lists.get_list(s, UMBRELLA), [A])
    post(h, [A, UMBRELLA], CROSS, "<cross2@p.example>")
    post(h, A, "Local matters", "<local@p.example>")

    got = send_digests(h, in_one)
    cross = holding(got, CROSS)
    # dig@ and low@ read A's digest and, through the include, the umbrella's: once each
    assert cross == Counter({"dig@d.example": 1, "low@l.example": 1, "top@t.example": 1})
    assert holding(got, "Local matters") == Counter({"dig@d.example": 1, "low@l.example": 1})
    assert regular_copies(h, CROSS) == Counter({"poster@p.example": 1})


def test_a_digest_emptied_by_cross_posts_is_not_sent(
        harness: Harness, in_one: int) -> None:
    """Everything in B's digest reached its reader through A: no empty digest from B."""
    h = harness
    make_list(h.app, A, members=["poster@p.example", "both@d.example"])
    make_list(h.app, B, members=["poster@p.example", "both@d.example"])
    modes(h, A, both_d=DeliveryMode.mime_digest)
    modes(h, B, both_d=DeliveryMode.mime_digest)
    post(h, A, "First", "<first@p.example>")
    post(h, A, CROSS, "<cross3@p.example>")      # the same message reaches B later
    post(h, B, CROSS, "<cross3@p.example>")
    got = send_digests(h, in_one)
    assert holding(got, CROSS) == Counter({"both@d.example": 1})
    assert [c.rcpt_tos for c in got] == [["both@d.example"]]
