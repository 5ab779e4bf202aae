"""One failing list does not stop a periodic pass for the others; its failure is logged once
with the list and Message-ID, and it is retried later."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from listserv.archive import mbox as archive
from listserv.pipeline import incoming
from listserv.core.models import ArchiveEntry, ArchivePolicy
from tests.integration.harness import Harness, make_list, make_message
from tests.waiting import wait_until


def test_archive_pass_isolates_a_list_it_cannot_write(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    app = harness.app
    make_list(app, "good@example.org", members=["a@x.example"], archive=ArchivePolicy.public)
    make_list(app, "bad@example.org", members=["a@x.example"], archive=ArchivePolicy.public)
    root = app.settings.archive_path
    root.mkdir(parents=True, exist_ok=True)
    (root / "bad@example.org").write_text("not a directory")   # mkdir of the list dir fails
    caplog.set_level(logging.ERROR, logger="listserv.archive.mbox")
    harness.send(make_message("a@x.example", "bad@example.org", "first bad",
                              message_id="<bad1@x.example>"))
    harness.send(make_message("a@x.example", "good@example.org", "first good",
                              message_id="<good1@x.example>"))
    wait_until(lambda: incoming.pending(app) == 0, what="both posts processed")
    for _ in range(3):
        archive.append_pending(app)

    def pending() -> list[str]:
        with app.db.unit_of_work() as s:
            return [e.message_id for e in s.scalars(select(ArchiveEntry).where(
                ArchiveEntry.appended_at.is_(None)))]

    # the mbox file is written before its entry is marked appended: wait for the commit
    wait_until(lambda: pending() == ["<bad1@x.example>"], what="good archived, bad pending")
    assert any((root / "good@example.org").glob("*.mbox"))
    failures = [r.getMessage() for r in caplog.records if "archive append failed" in r.getMessage()]
    assert len(failures) == 1
    assert "bad@example.org" in failures[0] and "<bad1@x.example>" in failures[0]

    (root / "bad@example.org").unlink()                 # the operator fixes it
    archive.FAILURES.retry_all()
    wait_until(lambda: archive.append_pending(app) >= 0 and pending() == [],
               what="the bad list archived on retry")
    assert any((root / "bad@example.org").glob("*.mbox"))
