"""One failing list does not stop a periodic pass for the others; its failure is logged once
with the list and Message-ID, and it is retried later."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from listserv.archive import mbox as archive
from listserv.pipeline import incoming
from listserv.core.models import ArchiveEntry, ArchiveMessage, ArchivePolicy, Job
from tests.conftest import Clock
from tests.integration.harness import Harness, make_list, make_message
from tests.waiting import wait_until


def test_archive_job_isolates_a_list_it_cannot_write(
        harness: Harness, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    """Each list's archive is its own job: one whose mbox export cannot be written fails
    (retried with backoff, its posts left waiting) while the other list's posts are
    archived; once the cause is gone, the retry archives them."""
    app = harness.app
    make_list(app, "good@example.org", members=["a@x.example"], archive=ArchivePolicy.public)
    make_list(app, "bad@example.org", members=["a@x.example"], archive=ArchivePolicy.public)
    root = app.settings.archive_path
    root.mkdir(parents=True, exist_ok=True)
    (root / "bad@example.org").write_text("not a directory")   # mkdir of the list dir fails
    caplog.set_level(logging.ERROR, logger="listserv.jobs.runner")
    harness.send(make_message("a@x.example", "bad@example.org", "first bad",
                              message_id="<bad1@x.example>"))
    harness.send(make_message("a@x.example", "good@example.org", "first good",
                              message_id="<good1@x.example>"))
    wait_until(lambda: incoming.pending(app) == 0, what="both posts processed")

    def pending() -> list[str]:
        with app.db.unit_of_work() as s:
            return list(s.scalars(select(ArchiveEntry.message_id)))

    def archived() -> list[str]:
        with app.db.unit_of_work() as s:
            return sorted(s.scalars(select(ArchiveMessage.message_id)))

    def failed_attempts() -> int:
        with app.db.unit_of_work() as s:
            job = s.scalar(select(Job).where(Job.kind == archive.LIST_KIND,
                                             Job.last_error.is_not(None)))
            return job.attempts if job is not None else 0

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records if "archive_list" in r.getMessage()]

    # the daemon's job thread logs the failure just after it has recorded it
    wait_until(lambda: archived() == ["good1@x.example"] and failed_attempts() == 1
               and failures() != [], what="good archived, bad's job failed once and logged")
    assert pending() == ["<bad1@x.example>"]
    assert any((root / "good@example.org").glob("*.mbox"))
    assert len(failures()) == 1 and "bad@example.org" in failures()[0]

    (root / "bad@example.org").unlink()                 # the operator fixes it
    clock.advance(minutes=1)                            # past the retry's backoff
    harness.daemon.wake()
    wait_until(lambda: pending() == [], what="the bad list archived on retry")
    assert archived() == ["bad1@x.example", "good1@x.example"]
    assert any((root / "bad@example.org").glob("*.mbox"))
