"""Staged fan-out (listserv.fanout), driven one job at a time: accepting a post queues the
first transaction's worth of recipients and one job for the rest (a small list: everyone and
no job; a list with an earlier post still fanning out: nobody yet); the job queues
recipients chunk by chunk behind the fanout row's cursor;
a crash resumes from the cursor with no recipient twice and none lost; memberships changed
between accept and expansion; nothing holds the list between chunks; cross-posts reach a
person once whichever list's job runs first."""

from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select, text, update

from listserv import jobs, workers
from listserv.core import config, members
from listserv.core.app import App
from listserv.core.db import Database
from listserv.delivery import fanout, outbound
from listserv.intake import smtp as intake
from listserv.pipeline import inbound, posting
from listserv.core.models import (
    Address,
    ArchiveEntry,
    ArchiveMessage,
    Delivery,
    DeliveryMode,
    Fanout,
    InboundMessage,
    Job,
    MailingList,
    Membership,
)
from tests.conftest import Clock
from tests.db.modsupport import make_list, message

INCOMING = {inbound.KIND: workers.REGISTRY[inbound.KIND]}
# only the fan-out jobs (an accepted post also makes the archive pass due)
FANOUT = {fanout.KIND: workers.REGISTRY[fanout.KIND]}

LIST = "big@example.org"
PER_TX = 10                 # recipients per Delivery row (SMTP transaction)


@pytest.fixture
def small(app: App, monkeypatch: pytest.MonkeyPatch) -> Iterator[App]:
    """The app with 10 recipients per transaction and chunks of 30 (5,000 in production)."""
    monkeypatch.setattr(fanout, "CHUNK", 30)
    s = config.replace(app.settings, delivery__max_recipients_per_transaction=PER_TX)
    yield dataclasses.replace(app, settings=s)


def people(n: int, prefix: str = "m") -> tuple[str, ...]:
    return tuple(f"{prefix}{i}@d{i % 7}.example" for i in range(n))


def post(app: App, to: str = LIST, sender: str = "m1@d1.example", **headers: str) -> None:
    """A post through the intake's store and one incoming pass (accepted: members post)."""
    route = intake.Router(app).resolve(to)
    intake.store(app, sender, [route], message(sender, to, **headers))
    assert jobs.run_next_job(app, INCOMING)


def queued(app: App) -> Counter[str]:
    with app.db.unit_of_work() as s:
        return Counter(r for d in s.scalars(select(Delivery.recipients))
                       for r in d.split("\n"))


def fanout_jobs(app: App) -> list[Job]:
    with app.db.unit_of_work() as s:
        return list(s.scalars(select(Job).where(Job.kind == fanout.KIND).order_by(Job.id)))


def outcome(app: App) -> str:
    with app.db.unit_of_work() as s:
        return s.scalars(select(InboundMessage.outcome).order_by(InboundMessage.id.desc())
                         ).first() or ""


def test_accept_queues_the_first_transaction_and_one_job_that_queues_everyone_else(
        small: App) -> None:
    everyone = people(95)
    list_id = make_list(small, LIST, people=everyone)
    post(small)
    [job] = fanout_jobs(small)
    assert job.partition_key == f"fanout:list:{list_id}"
    first = queued(small)            # committed with the accept: the first copies leave now
    assert sum(first.values()) == PER_TX and set(first) < set(everyone)
    assert outcome(small) == "accepted as post 1; its recipients are being queued"
    with small.db.unit_of_work() as s:
        fan = s.scalars(select(Fanout)).one()
        assert fan.expanded_at is None and fan.queued == PER_TX and fan.outbound_id
        assert len(list(s.scalars(select(Delivery.id)))) == 1
    assert jobs.run_next_job(small, FANOUT)
    got = queued(small)
    assert sorted(got) == sorted(everyone) and set(got.values()) == {1}
    with small.db.unit_of_work() as s:
        counts = list(s.scalars(select(Delivery.count).order_by(Delivery.id)))
        fan = s.scalars(select(Fanout)).one()
        assert fan.expanded_at is not None and fan.queued == 95
    assert all(c <= PER_TX for c in counts) and sum(counts) == 95
    assert len(counts) == 10                # one row per transaction, never one per recipient
    assert fanout_jobs(small) == []
    assert outcome(small) == "accepted as post 1 to 95 recipients"


def test_a_small_list_is_queued_whole_with_the_accept_and_needs_no_job(small: App) -> None:
    everyone = people(PER_TX - 1)    # fewer than one transaction's worth: all of them
    make_list(small, LIST, people=everyone)
    post(small)
    assert fanout_jobs(small) == []
    assert sorted(queued(small)) == sorted(everyone)
    assert outcome(small) == f"accepted as post 1 to {PER_TX - 1} recipients"
    with small.db.unit_of_work() as s:
        assert s.scalars(select(Fanout)).one().expanded_at is not None


def test_a_post_waits_for_the_lists_earlier_fanout_before_any_copy_is_queued(
        small: App) -> None:
    everyone = people(50)
    make_list(small, LIST, people=everyone)
    post(small)
    post(small, subject="second")    # the first post is still fanning out: nobody yet
    first, second = fanout_jobs(small)
    with small.db.unit_of_work() as s:
        assert [f.queued for f in s.scalars(select(Fanout).order_by(Fanout.id))] == [PER_TX, 0]
    assert jobs.run_next_job(small, FANOUT) and jobs.run_next_job(small, FANOUT)
    assert set(queued(small).values()) == {2} and sorted(queued(small)) == sorted(everyone)


def test_a_crash_resumes_from_the_cursor_without_duplicates_or_loss(
        small: App, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    everyone = people(200)
    make_list(small, LIST, people=everyone)
    post(small)                      # queues the first 10 with the accept
    job = jobs.claim(small, "w-first", kinds=[fanout.KIND])
    assert job is not None and job.kind == fanout.KIND
    # the first worker queues one chunk (30 recipients) and dies
    assert not fanout.expand(small, job.payload, max_chunks=1)
    assert sum(queued(small).values()) == 40
    # the next chunk's transaction fails before its commit: nothing of it stays
    real = outbound.add_recipients

    def dies(*a: Any, **kw: Any) -> int:
        real(*a, **kw)
        raise RuntimeError("killed mid-chunk")
    monkeypatch.setattr(outbound, "add_recipients", dies)
    with pytest.raises(RuntimeError):
        fanout.step(small, job.payload)
    monkeypatch.setattr(outbound, "add_recipients", real)
    assert sum(queued(small).values()) == 40
    assert not jobs.run_next_job(small, FANOUT)     # the lease is still the dead worker's
    clock.advance(seconds=jobs.LEASE.total_seconds() + 1)
    # taken over: runs from the cursor
    assert jobs.run_next_job(small, FANOUT, owner="w-second")
    got = queued(small)
    assert sorted(got) == sorted(everyone) and set(got.values()) == {1}
    assert fanout_jobs(small) == []
    assert outcome(small) == "accepted as post 1 to 200 recipients"


def test_a_job_run_again_after_completion_queues_nothing(small: App) -> None:
    make_list(small, LIST, people=people(25))
    post(small)
    job = jobs.claim(small, "w-a", kinds=[fanout.KIND])
    assert job is not None
    assert fanout.expand(small, job.payload)
    assert fanout.expand(small, job.payload)        # e.g. the worker died before complete()
    assert sum(queued(small).values()) == 25


def test_members_who_leave_switch_or_join_after_accept(small: App) -> None:
    everyone = people(50)
    make_list(small, LIST, people=everyone)
    post(small)                      # the first 10 are queued with the accept
    gone, digest, late = everyone[25], everyone[45], "late@x.example"
    with small.db.unit_of_work() as s:
        ml = s.scalars(select(MailingList)).one()
        members.remove_members(s, ml, [gone])
        members.add_member(s, ml, late)
        s.execute(update(Membership).where(Membership.address_id == select(Address.id).where(
            Address.email == digest).scalar_subquery()).values(
            delivery_mode=DeliveryMode.mime_digest))
    assert jobs.run_next_job(small, FANOUT)
    got = queued(small)
    assert sorted(got) == sorted(set(everyone) - {gone, digest})
    assert late not in got
    post(small, subject="second")                     # the next post reaches the newcomer
    assert jobs.run_next_job(small, FANOUT)
    assert queued(small)[late] == 1


def test_the_list_is_not_locked_between_chunks(small: App) -> None:
    """Another connection takes the list's row lock and changes a membership between two
    chunks, within a short lock timeout; the change counts for the chunks not yet queued."""
    everyone = people(100)
    list_id = make_list(small, LIST, people=everyone)
    post(small)
    other = Database(small.settings.database_url)
    switched = everyone[-1]          # the highest address id: in the last chunk
    seen: list[int] = []

    def meanwhile(n: int) -> None:
        seen.append(n)
        if n != 1:
            return
        with other.unit_of_work() as s:
            if other.is_sqlite:
                s.execute(text("PRAGMA busy_timeout=500"))
            else:
                s.execute(text("SET LOCAL lock_timeout = '500ms'"))
            s.execute(update(MailingList).where(MailingList.id == list_id)
                      .values(description="changed while the post fans out"))
            s.execute(update(Membership).where(Membership.address_id == select(
                Address.id).where(Address.email == switched).scalar_subquery()).values(
                delivery_mode=DeliveryMode.plain_digest))
    try:
        job = jobs.claim(small, "w-a", kinds=[fanout.KIND])
        assert job is not None
        assert fanout.expand(small, job.payload, after_chunk=meanwhile)
    finally:
        other.dispose()
    assert seen == [1, 2, 3]        # (10 at accept) 30, 30 and the last 29 (the switched one is out)
    got = queued(small)
    assert sorted(got) == sorted(set(everyone) - {switched})


def test_a_person_on_two_lists_gets_a_crosspost_once_whichever_job_runs_first(
        small: App) -> None:
    both = "both@x.example"
    only_a, only_b = people(2 * PER_TX, "a"), people(2 * PER_TX, "b")
    make_list(small, "a@example.org", people=(*only_a, both))
    make_list(small, "b@example.org", people=(*only_b, both))
    routes = [intake.Router(small).resolve(to) for to in ("a@example.org", "b@example.org")]
    intake.store(small, both, routes, message(both, "a@example.org, b@example.org"))
    # both posts are accepted (each list numbers and records its own) before any expansion
    while jobs.run_next_job(small, INCOMING):
        pass
    a_job, b_job = fanout_jobs(small)
    # the second list's job runs first: it leaves out the first list's members all the same
    assert fanout.expand(small, b_job.payload)
    assert fanout.expand(small, a_job.payload)
    got = queued(small)
    assert got == Counter({both: 1, **{p: 1 for p in only_a + only_b}})


def test_the_outbound_message_gone_ends_the_fanout(small: App) -> None:
    make_list(small, LIST, people=people(50))
    post(small)                      # the first 10 are queued with the accept
    with small.db.unit_of_work() as s:
        s.execute(update(Fanout).values(outbound_id=None))
    assert jobs.run_next_job(small, FANOUT)
    assert sum(queued(small).values()) == PER_TX
    with small.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(Fanout)
                        .where(Fanout.expanded_at.is_(None))) == 0


ARCHIVE_AND_FANOUT = {k: workers.REGISTRY[k] for k in (fanout.KIND, workers.ARCHIVE_LIST)}


def archived(app: App) -> tuple[int, int]:
    """(entries waiting, messages in the archive)."""
    with app.db.unit_of_work() as s:
        return (len(list(s.scalars(select(ArchiveEntry.id)))),
                len(list(s.scalars(select(ArchiveMessage.id)))))


def test_a_post_that_fans_out_is_archived_a_moment_after_its_first_copies(
        small: App, clock: Clock) -> None:
    """Its archive job waits ARCHIVE_AFTER_FANOUT, so that archiving does not compete with
    the first copies; then the post is archived as usual."""
    make_list(small, LIST, people=people(95))
    post(small)
    with small.db.unit_of_work() as s:
        job = s.scalars(select(Job).where(Job.kind == workers.ARCHIVE_LIST)).one()
        assert job.run_after == clock() + posting.ARCHIVE_AFTER_FANOUT
    jobs.run_jobs_until_idle(small, ARCHIVE_AND_FANOUT)     # the fan-out runs, not the archive
    assert fanout_jobs(small) == [] and sum(queued(small).values()) == 95
    assert archived(small) == (1, 0)
    clock.advance(seconds=posting.ARCHIVE_AFTER_FANOUT.total_seconds())
    assert jobs.run_jobs_until_idle(small, ARCHIVE_AND_FANOUT) == 1
    assert archived(small) == (0, 1)


def test_a_post_queued_whole_with_its_accept_is_archived_at_once(small: App) -> None:
    make_list(small, LIST, people=people(PER_TX - 1))
    post(small)
    assert jobs.run_jobs_until_idle(small, ARCHIVE_AND_FANOUT) == 1
    assert archived(small) == (0, 1)
