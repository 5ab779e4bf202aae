"""Accepted mail is processed by ``incoming`` jobs: committed with the message, one list's
mail in arrival order, bounces apart, temporary failures retried, failures parked and retried
by `queue retry` (driven one job at a time, the test's clock)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from listserv import jobs, workers
from listserv.core.app import App
from listserv.core.lists import create_list
from listserv.core.models import InboundMessage, InboundState, Job, JobState
from listserv.intake import smtp as intake
from listserv.pipeline import failures, inbound
from tests.conftest import Clock

KINDS = {inbound.KIND: workers.REGISTRY[inbound.KIND]}


def accept(app: App, rcpt: str, subject: str = "hi") -> None:
    raw = (f"From: ann@a.example\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
           f"Message-ID: <{subject}.{rcpt}@a.example>\r\n\r\nbody\r\n").encode()
    intake.store(app, "ann@a.example", [intake.Router(app).resolve(rcpt)], raw)


def incoming_jobs(app: App) -> list[Job]:
    with app.db.unit_of_work() as s:
        return list(s.scalars(select(Job).where(Job.kind == inbound.KIND).order_by(Job.id)))


def inbound_rows(app: App) -> list[InboundMessage]:
    with app.db.unit_of_work() as s:
        return list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))


@pytest.fixture
def lists(app: App) -> dict[str, int]:
    with app.db.unit_of_work() as s:
        return {name: create_list(s, f"{name}@example.org").id for name in ("dev", "ops")}


def test_the_intake_commits_each_message_with_its_job(app: App, lists: dict[str, int]) -> None:
    accept(app, "dev@example.org", "one")
    accept(app, "dev-bounces@example.org", "bounce")
    accept(app, "ops-request@example.org", "two")
    rows = inbound_rows(app)
    got = [(j.payload["inbound_id"], j.partition_key, j.state) for j in incoming_jobs(app)]
    dev, ops = lists["dev"], lists["ops"]
    assert got == [(rows[0].id, f"incoming:{dev}", JobState.ready),
                   (rows[1].id, f"incoming:{dev}:bounces", JobState.ready),
                   (rows[2].id, f"incoming:{ops}", JobState.ready)]


def test_one_lists_mail_runs_in_arrival_order_other_lists_in_parallel(
        app: App, lists: dict[str, int]) -> None:
    accept(app, "dev@example.org", "d1")
    accept(app, "dev@example.org", "d2")
    accept(app, "dev-bounces@example.org", "b1")
    accept(app, "ops@example.org", "o1")
    ids = [r.id for r in inbound_rows(app)]
    w1 = jobs.claim(app, "w1", kinds=[inbound.KIND])
    w2 = jobs.claim(app, "w2", kinds=[inbound.KIND])
    w3 = jobs.claim(app, "w3", kinds=[inbound.KIND])
    assert w1 and w2 and w3
    # d2 waits for d1; the bounce and the other list's post do not
    assert [w.payload["inbound_id"] for w in (w1, w2, w3)] == [ids[0], ids[2], ids[3]]
    assert jobs.claim(app, "w4", kinds=[inbound.KIND]) is None
    jobs.execute(app, w1, KINDS)
    w4 = jobs.claim(app, "w4", kinds=[inbound.KIND])
    assert w4 is not None and w4.payload["inbound_id"] == ids[1]


def test_a_temporary_failure_is_retried_then_parked_and_queue_retry_requeues(
        app: App, lists: dict[str, int], clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    accept(app, "dev@example.org")
    calls: list[int] = []

    def db_down(*a: Any, **k: Any) -> None:
        calls.append(1)
        raise OperationalError("SELECT 1", {}, Exception("database is locked"))

    monkeypatch.setattr("listserv.pipeline.incoming.dispatch", db_down)
    for attempt in range(1, 5):
        assert jobs.run_next_job(app, KINDS)
        [job] = incoming_jobs(app)
        assert (job.state, job.attempts) == (JobState.ready, attempt)
        assert "temporary failure" in (job.last_error or "")
        assert inbound_rows(app)[0].state is InboundState.new
        assert not jobs.run_next_job(app, KINDS)          # backoff: not due yet
        clock.advance(seconds=workers.INCOMING_RETRY.total_seconds() * 2 ** attempt)
    assert jobs.run_next_job(app, KINDS)                  # the fifth: parked for the owners
    assert len(calls) == 5 and incoming_jobs(app) == []
    [row] = inbound_rows(app)
    assert row.state is InboundState.failed and "database is locked" in (row.outcome or "")
    with app.db.unit_of_work() as s:
        assert [i["id"] for i in failures.failed_items(s)] == [row.id]
    monkeypatch.undo()
    with app.db.unit_of_work() as s:
        failures.retry(s, app, row.id, "incoming")
    [job] = incoming_jobs(app)
    assert job.attempts == 0 and job.payload == {"inbound_id": row.id}
    assert jobs.run_next_job(app, KINDS)
    assert inbound_rows(app)[0].state is InboundState.held     # ann is not a member
    with app.db.unit_of_work() as s:
        assert failures.failed_items(s) == []


def test_a_job_whose_message_was_processed_already_does_nothing(
        app: App, lists: dict[str, int]) -> None:
    accept(app, "dev@example.org")
    assert jobs.run_next_job(app, KINDS)
    [row] = inbound_rows(app)
    assert row.state is InboundState.held
    with app.db.unit_of_work() as s:      # e.g. the worker died between the two commits
        inbound.enqueue(s, app, row.id, row.list_id, row.subaddress)
    assert jobs.run_next_job(app, KINDS)
    assert incoming_jobs(app) == [] and inbound_rows(app)[0].state is InboundState.held


def test_one_list_address_is_recorded_as_several_are(app: App, lists: dict[str, int],
                                                    clock: Clock) -> None:
    """The intake writes a message for one list address in one statement on PostgreSQL
    (intake.record); the rows are those add_rows() writes for several addresses: the same
    bytes, InboundMessage and job (the time of the test's clock), on both databases."""
    raw = (b"From: Ann <ann@a.example>\r\nTo: dev@example.org\r\nSubject: s\r\n"
           b"Message-ID: <one@a.example>\r\n\r\nbody\r\n")
    router = intake.Router(app)
    intake.store(app, "<ann@a.example>", [router.resolve("dev@example.org")], raw)
    intake.store(app, "<ann@a.example>", [router.resolve("dev@example.org"),
                                          router.resolve("ops@example.org")], raw)
    one, *several = inbound_rows(app)
    assert several[0].list_id == lists["dev"] and several[1].list_id == lists["ops"]

    def fields(row: InboundMessage) -> dict[str, Any]:
        return {c: getattr(row, c) for c in row.__table__.columns.keys() if c != "id"}

    assert fields(one) == fields(several[0])
    assert (one.subaddress, one.mail_from, one.from_addr, one.state, one.received_at) == (
        "post", "ann@a.example", "ann@a.example", InboundState.new, clock())
    first, *more = incoming_jobs(app)

    def job_fields(job: Job) -> dict[str, Any]:
        return {c: getattr(job, c) for c in job.__table__.columns.keys() if c != "id"}

    assert first.payload == {"inbound_id": one.id}
    assert more[0].payload == {"inbound_id": several[0].id}
    assert job_fields(first) | {"payload": None} == job_fields(more[0]) | {"payload": None}
    assert (first.state, first.run_after, first.attempts, first.max_attempts,
            first.partition_key) == (JobState.ready, clock(), 0, inbound.JOB_ATTEMPTS,
                                     f"incoming:{lists['dev']}")
    with app.db.unit_of_work() as s:
        assert app.spool.get(one.spool_sha, session=s) == raw
