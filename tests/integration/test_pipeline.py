"""Posting pipeline end to end: SMTP in, rules, fan-out, archive, copies in the sink."""

from __future__ import annotations

import mailbox

from sqlalchemy import func, select

from listserv.archive import mbox as archive, store as archive_store
from listserv.core.models import (
    ArchiveEntry,
    ArchiveMessage,
    Fanout,
    InboundMessage,
    InboundState,
    MailingList,
)
from tests.integration.harness import (
    INCOMING_KINDS,
    Harness,
    make_list,
    make_message,
    post_id_of,
    run_fanouts,
)


def states(h: Harness) -> list[tuple[str, str, str | None]]:
    with h.app.db.unit_of_work() as s:
        return [(m.subaddress, m.state.value, m.outcome)
                for m in s.scalars(select(InboundMessage).order_by(InboundMessage.id))]


def test_member_post_reaches_every_member(harness: Harness) -> None:
    make_list(harness.app, "dev@example.org",
              members=["ann@a.example", "bob@b.example", "cy@c.example"])
    harness.send(make_message("ann@a.example", "dev@example.org", "First post"))
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    assert sorted({r for m in got for r in m.rcpt_tos}) == [
        "ann@a.example", "bob@b.example", "cy@c.example"]
    copy = got[0].message
    assert "<dev.example.org>" in copy["List-Id"]
    assert got[0].mail_from.startswith("dev-bounces")
    body = copy.get_body().get_content()  # type: ignore[union-attr]
    assert "To unsubscribe send an email to dev-leave@example.org" in body
    assert states(harness) == [("post", "accepted", "accepted as post 1 to 3 recipients")]
    assert post_id_of(harness.app, "dev@example.org") == 1


# ---------------------------------------------------------------------------- rule outcomes

from email.message import EmailMessage  # noqa: E402

import pytest  # noqa: E402

from typing import Any  # noqa: E402

from listserv import jobs  # noqa: E402
from listserv.core.models import Action, HeldMessage, OutboundMessage  # noqa: E402
from listserv.message.parse import parse  # noqa: E402
from listserv.pipeline import inbound, posting  # noqa: E402

LIST = "dev@example.org"
MEMBERS = ["ann@a.example", "bob@b.example"]


def outcome(h: Harness) -> tuple[str, str | None]:
    [(_, state, text)] = states(h)
    return state, text


def sent_kinds(h: Harness) -> list[str]:
    with h.app.db.unit_of_work() as s:
        return [o.kind for o in s.scalars(select(OutboundMessage).order_by(OutboundMessage.id))]


def test_nonmember_post_is_held_with_reason(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, owners=["owner@o.example"])
    harness.send(make_message("eve@e.example", LIST))
    harness.run_until_idle()
    state, text = outcome(harness)
    assert state == "held" and "non-member eve@e.example" in (text or "")
    with harness.app.db.unit_of_work() as s:
        [held] = s.scalars(select(HeldMessage))
        assert held.reasons == ["post by non-member eve@e.example"]
    assert "post" not in sent_kinds(harness)


def test_every_hold_reason_is_collected(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, emergency=True, max_message_size=100)
    harness.send(make_message("eve@e.example", "someone@else.example"), rcpts=[LIST])
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:
        [held] = s.scalars(select(HeldMessage))
        assert len(held.reasons) == 4
        assert "emergency" in held.reasons[0] and "implicit destination" in held.reasons[3]


def test_administrivia_and_max_recipients_come_from_the_list_settings(harness: Harness
                                                                     ) -> None:
    make_list(harness.app, LIST, members=MEMBERS, max_recipients=3)
    harness.send(make_message("ann@a.example", LIST, "Unsubscribe", "unsubscribe\n",
                              cc=["x@x.example", "y@y.example"]))
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:
        [held] = s.scalars(select(HeldMessage))
        assert len(held.reasons) == 2
        assert "dev-request@example.org" in held.reasons[0]
        assert "too many recipients: 3" in held.reasons[1]
    assert "post" not in sent_kinds(harness)


def test_nonmember_reject_notifies_the_poster_with_null_sender(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, nonmember_action=Action.reject)
    harness.send(make_message("eve@e.example", LIST, "Buy now"))
    harness.run_until_idle()
    assert outcome(harness)[0] == "rejected"
    [notice] = harness.sink.wait_for(lambda m: len(m) >= 1)
    assert notice.rcpt_tos == ["eve@e.example"] and notice.mail_from in ("", "<>")
    body = notice.message.get_body().get_content()  # type: ignore[union-attr]
    assert "non-members may not post" in body and "Buy now" in body
    assert notice.message["Auto-Submitted"] == "auto-generated"


def test_nonmember_discard_sends_nothing(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, nonmember_action=Action.discard)
    harness.send(make_message("eve@e.example", LIST))
    harness.run_until_idle()
    assert outcome(harness)[0] == "discarded"
    assert sent_kinds(harness) == []


@pytest.mark.parametrize("headers,mail_from", [
    ({"List_Id": "Dev <dev.example.org>"}, "ann@a.example"),
    ({"X_Loop": LIST}, "ann@a.example"),
])
def test_loops_are_discarded(harness: Harness, headers: dict[str, str],
                             mail_from: str) -> None:
    make_list(harness.app, LIST, members=MEMBERS, nonmember_action=Action.reject)
    harness.send(make_message("ann@a.example", LIST, **headers), mail_from=mail_from)
    harness.run_until_idle()
    assert outcome(harness)[0] == "discarded"
    assert sent_kinds(harness) == []     # in particular no reject notice to a machine


def test_moderated_member_is_held_owner_is_not(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, moderated=["mo@m.example"],
              owners=["owner@o.example"])
    harness.send(make_message("mo@m.example", LIST, "from moderated"))
    harness.send(make_message("owner@o.example", LIST, "from owner"))
    harness.run_until_idle()
    got = {subaddr_state[2] and subaddr_state[1] for subaddr_state in states(harness)}
    assert got == {"held", "accepted"}
    with harness.app.db.unit_of_work() as s:
        [held] = s.scalars(select(HeldMessage))
        assert held.reasons == ["post by moderated member mo@m.example"]


def test_two_lists_in_one_transaction_reach_a_shared_member_once(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["both@x.example", "devonly@x.example"])
    make_list(harness.app, "users@example.org", members=["both@x.example", "usr@x.example"])
    harness.send(make_message("both@x.example", [LIST, "users@example.org"]))
    harness.run_until_idle()
    rcpts = harness.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    flat = sorted(r for m in rcpts for r in m.rcpt_tos)
    assert flat == ["both@x.example", "devonly@x.example", "usr@x.example"]
    assert [s for _, s, _ in states(harness)] == ["accepted", "accepted"]


def test_cross_post_in_separate_transactions_is_deduplicated(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["both@x.example", "devonly@x.example"])
    make_list(harness.app, "users@example.org", members=["both@x.example"])
    msg = make_message("both@x.example", [LIST, "users@example.org"])
    harness.send(msg, rcpts=[LIST])
    harness.run_until_idle()
    harness.send(msg, rcpts=["users@example.org"])
    harness.run_until_idle()
    flat = sorted(r for m in harness.sink.messages for r in m.rcpt_tos)
    assert flat == ["both@x.example", "devonly@x.example"]


def test_same_message_twice_to_one_list_is_distributed_once(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS)
    msg = make_message("ann@a.example", LIST)
    harness.send(msg)
    harness.run_until_idle()
    harness.send(msg)
    harness.run_until_idle()
    assert [s for _, s, _ in states(harness)] == ["accepted", "discarded"]
    assert "duplicate" in (states(harness)[1][2] or "")
    assert post_id_of(harness.app, LIST) == 1
    assert len(harness.sink.messages) == 2


def test_nomail_disabled_and_digest_members_get_no_post(harness: Harness) -> None:
    from listserv.core import lists, members
    from listserv.core.models import DeliveryMode

    make_list(harness.app, LIST, members=["ann@a.example"])
    with harness.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        members.add_member(s, ml, "nomail@x.example", delivery_mode=DeliveryMode.nomail)
        members.add_member(s, ml, "digest@x.example", delivery_mode=DeliveryMode.mime_digest)
        members.add_member(s, ml, "off@x.example").enabled = False
    harness.send(make_message("ann@a.example", LIST))
    harness.run_until_idle()
    assert harness.sink.recipients() == ["ann@a.example"]


def test_owner_address_forwards_to_owners(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, owners=["o1@o.example", "o2@o.example"])
    harness.send(make_message("eve@e.example", "dev-owner@example.org", "Question"))
    harness.run_until_idle()
    assert outcome(harness)[0] == "handled"
    got = harness.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 2)
    assert sorted(r for m in got for r in m.rcpt_tos) == ["o1@o.example", "o2@o.example"]
    assert all(m.mail_from == "dev-bounces@example.org" for m in got)
    assert got[0].message["X-Loop"] == "dev-owner@example.org"
    assert got[0].message["Subject"] == "Question"


def test_owner_forward_loop_is_discarded(harness: Harness) -> None:
    make_list(harness.app, LIST, owners=["o1@o.example"])
    harness.send(make_message("eve@e.example", "dev-owner@example.org",
                              X_Loop="dev-owner@example.org"))
    harness.run_until_idle()
    assert outcome(harness)[0] == "discarded"
    assert harness.sink.messages == []


@pytest.mark.parametrize("rcpt", ["dev-request@example.org", "dev-join@example.org",
                                  "dev-leave@example.org", "dev-confirm+abc@example.org",
                                  "dev-bounces@example.org",
                                  "dev-bounces+ann=a.example@example.org"])
def test_service_addresses_are_dispatched_not_posted(harness: Harness, rcpt: str) -> None:
    make_list(harness.app, LIST, members=MEMBERS)
    harness.send(make_message("ann@a.example", rcpt, "help"), rcpts=[rcpt])
    harness.run_until_idle()
    state, _ = outcome(harness)
    assert state not in ("new", "processing", "failed", "accepted")
    assert post_id_of(harness.app, LIST) == 0


def test_archive_appends_mbox_with_from_quoting(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS)
    harness.send(make_message("ann@a.example", LIST, "one", body="From here on\nok\n"))
    harness.send(make_message("bob@b.example", LIST, "two"))
    harness.run_until_idle()
    path = harness.app.settings.archive_path / LIST / "2026-11.mbox"
    box = mailbox.mbox(str(path))
    subjects = sorted(str(m["Subject"]) for m in box)
    assert subjects == ["[dev] one", "[dev] two"]
    assert b"\n>From here on\n" in path.read_bytes()
    with harness.app.db.unit_of_work() as s:
        assert list(s.scalars(select(ArchiveEntry))) == []       # archived, so deleted
        [one] = s.scalars(select(ArchiveMessage).where(ArchiveMessage.subject == "[dev] one"))
        ml_id, seq = one.list_id, 1
        assert b"\nFrom here on\n" in archive_store.raw(s, one.id)   # as sent, unquoted
    # Archiving an entry again (a crash after the commit of the archive, before the job's
    # end) adds nothing: not to the database, not to the mbox.
    before = path.read_bytes()
    with harness.app.db.unit_of_work() as s:
        entry = s.scalars(select(InboundMessage)).first()
        assert entry is not None
        s.add(ArchiveEntry(list_id=ml_id, seq=seq, spool_sha=entry.spool_sha,
                           created_at=harness.app.now()))
    assert archive.archive_batch(harness.app, ml_id) is False
    with harness.app.db.unit_of_work() as s:
        assert list(s.scalars(select(ArchiveEntry))) == []
        assert s.scalar(select(func.count()).select_from(ArchiveMessage)) == 2
    assert path.read_bytes() == before


def test_no_archive_entry_when_archive_is_none(harness: Harness) -> None:
    from listserv.core.models import ArchivePolicy

    make_list(harness.app, LIST, members=MEMBERS, archive=ArchivePolicy.none)
    harness.send(make_message("ann@a.example", LIST))
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:
        assert list(s.scalars(select(ArchiveEntry))) == []
    assert not (harness.app.settings.archive_path / LIST).exists()


def test_approval_goes_through_accept_post_like_a_direct_accept(quiet_harness: Harness) -> None:
    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS)
    h.send(make_message("eve@e.example", LIST, "let me in"))
    h.run_until_idle()
    assert outcome(h)[0] == "held"
    with h.app.db.unit_of_work() as s:
        inbound = s.scalars(select(InboundMessage)).one()
        msg = parse(h.app.spool.get(inbound.spool_sha))
        assert posting.accept_post(s, h.app, inbound, msg, approved_by="mod@m.example") == 1
    h.run_until_idle()
    state, text = outcome(h)
    assert state == "accepted" and "approved by mod@m.example" in (text or "")
    posts = [m for m in h.sink.messages if m.message["Subject"] == "[dev] let me in"]
    assert sorted(r for m in posts for r in m.rcpt_tos) == MEMBERS
    with h.app.db.unit_of_work() as s:
        assert len(s.scalars(select(Fanout)).all()) == 1
        assert len(s.scalars(select(ArchiveMessage)).all()) == 1


def test_processing_error_parks_message_as_failed(quiet_harness: Harness,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS)

    def broken(*a: object, **k: object) -> EmailMessage:
        raise RuntimeError("transform exploded")

    monkeypatch.setattr("listserv.message.transforms.prepare", broken)
    h.send(make_message("ann@a.example", LIST))
    h.run_until_idle()
    state, text = outcome(h)
    assert state == "failed" and "transform exploded" in (text or "")
    assert post_id_of(h.app, LIST) == 0        # the transaction was rolled back
    monkeypatch.undo()
    h.send(make_message("ann@a.example", LIST, "next one"))
    h.run_until_idle()
    assert [s for _, s, _ in states(h)] == ["failed", "accepted"]


def test_a_dead_workers_message_is_taken_over_when_its_lease_expires(
        quiet_harness: Harness, clock: Any) -> None:
    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS)
    h.send(make_message("ann@a.example", LIST))
    dead = jobs.claim(h.app, "w-dead", kinds=[inbound.KIND])     # claimed, then the worker died
    assert dead is not None
    assert not jobs.run_next_job(h.app, INCOMING_KINDS)          # its lease still holds
    assert outcome(h)[0] == "new"
    clock.advance(seconds=jobs.LEASE.total_seconds() + 1)
    h.run_until_idle()
    assert outcome(h)[0] == "accepted"


def test_a_message_that_kills_its_worker_every_time_ends_failed(
        quiet_harness: Harness, clock: Any) -> None:
    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS, owners=["owner@example.org"])
    h.send(make_message("ann@a.example", LIST))
    for _ in range(inbound.MAX_CRASHES):
        assert jobs.claim(h.app, "w-dying", kinds=[inbound.KIND]) is not None
        clock.advance(seconds=jobs.LEASE.total_seconds() + 1)
    h.run_until_idle()
    state, text = outcome(h)
    assert state == "failed" and "did not finish in 5 attempts" in (text or "")
    assert h.sink.wait_for(lambda m: any("owner@example.org" in x.rcpt_tos for x in m))


def test_a_post_is_prepared_before_its_transaction_writes(
        quiet_harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """accept_post prepares, decorates and seals the post before the first write of its
    transaction, also with a change left pending by the rules (the body digest) and the
    original read for its ARC seal: on SQLite the one write lock is not held meanwhile."""
    from sqlalchemy import event

    from listserv.core import writegate
    from listserv.core.models import Domain
    from listserv.message import signing

    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS, arc=True)
    with h.app.db.unit_of_work() as s:
        d = s.scalars(select(Domain)).one()
        d.dkim_selector, d.dkim_private_key = "s1", signing.generate_key()
    h.send(make_message("eve@e.example", LIST, "prepared first"))
    h.run_until_idle()                          # held: a non-member's post
    steps: list[str] = []
    copies = posting._copies
    monkeypatch.setattr(posting, "_copies", lambda *a: steps.append("made") or copies(*a))

    def seen(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        steps.append("write" if writegate.is_write(statement) else "read")

    with h.app.db.unit_of_work() as s:
        inbound = s.scalars(select(InboundMessage)).one()
        msg = parse(h.app.spool.get(inbound.spool_sha))
        inbound.body_sha = "pending"            # as the rules leave it
        event.listen(h.app.db.engine, "before_cursor_execute", seen)
        try:
            assert posting.accept_post(s, h.app, inbound, msg, approved_by="m@m.example") == 1
        finally:
            event.remove(h.app.db.engine, "before_cursor_execute", seen)
    assert steps.count("made") == 1 and steps.index("made") < steps.index("write")


def test_signed_when_the_domain_has_a_key(harness: Harness) -> None:
    import dkim

    from listserv.message import signing
    from listserv.core.models import Domain

    key = signing.generate_key()
    make_list(harness.app, LIST, members=MEMBERS + ["cy@c.example"])
    with harness.app.db.unit_of_work() as s:
        d = s.scalars(select(Domain)).one()
        d.dkim_selector, d.dkim_private_key = "s1", key
    harness.send(make_message("ann@a.example", LIST, "signed"))
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    record = signing.dns_record(key).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.example.org."
        return record

    sigs = set()
    for m in got:
        assert dkim.verify(m.data, dnsfunc=dns)
        sigs.add(m.message["DKIM-Signature"])
    # VERP'd copies carry each member's own one-click unsubscribe link: signed one by one
    assert len(sigs) == 3


def test_large_list_fans_out_in_batches(app) -> None:  # type: ignore[no-untyped-def]
    """20,000 members: chunks read in address order, batched Delivery rows, every member
    exactly once."""
    import time

    from sqlalchemy import func, insert

    from listserv.intake import smtp as intake
    from listserv.core.models import Address, Delivery, Membership, Role

    list_id = make_list(app, LIST)
    n = 20000
    with app.db.unit_of_work() as s:
        s.execute(insert(Address), [{"email": f"m{i}@d{i % 97}.example", "display_name": ""}
                                    for i in range(n)])
        ids = s.scalars(select(Address.id)).all()
        s.execute(insert(Membership), [{"list_id": list_id, "address_id": a,
                                        "role": Role.member} for a in ids])
    route = intake.Router(app).resolve(LIST)
    intake.store(app, "m1@d1.example", [route],
                 make_message("m1@d1.example", LIST, "big").as_bytes())
    t = time.perf_counter()
    assert jobs.run_next_job(app, INCOMING_KINDS)
    with app.db.unit_of_work() as s:      # accepted: the first transaction's worth queued
        assert s.scalars(select(Delivery.count)).all() == [
            app.settings.delivery.max_recipients_per_transaction]
    assert run_fanouts(app) == 1          # the post's one fan-out job queues everyone else
    elapsed = time.perf_counter() - t
    with app.db.unit_of_work() as s:
        total, rows = s.execute(select(func.sum(Delivery.count), func.count())).one()
        everyone = set()
        for d in s.scalars(select(Delivery.recipients)):
            everyone.update(d.split("\n"))
    assert total == n and len(everyone) == n
    assert rows == n // app.settings.delivery.max_recipients_per_transaction
    assert elapsed < 5, elapsed


def test_concurrent_workers_process_each_message_once(quiet_harness: Harness) -> None:
    """Several workers (threads here; processes on PostgreSQL) share the queue safely."""
    import threading

    from sqlalchemy import func

    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS, sender_post_limit=0)   # 15 posts from one sender
    make_list(h.app, "users@example.org", members=MEMBERS, sender_post_limit=0)
    for i in range(15):
        h.send(make_message("ann@a.example", [LIST, "users@example.org"], f"n{i}"))
    errors: list[BaseException] = []

    def work() -> None:
        me = jobs.new_worker_id()
        try:
            while jobs.run_next_job(h.app, INCOMING_KINDS, owner=me):
                pass
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert [s for _, s, _ in states(h)] == ["accepted"] * 30
    assert post_id_of(h.app, LIST) == 15 and post_id_of(h.app, "users@example.org") == 15
    # two members a list: each post was queued whole with its accept, no fan-out job
    assert run_fanouts(h.app) == 0
    with h.app.db.unit_of_work() as s:
        from listserv.core.models import Delivery
        # every message reached ann and bob once in all, whichever list got there first
        assert s.scalar(select(func.sum(Delivery.count))) == 15 * 2
