"""The intake's journal on SQLite (listserv.intake.journal): a real SMTP/LMTP intake writes
only its journal file before the 250; a worker's Drain copies each entry into the database
exactly once, then the intake deletes the copied entries."""

from __future__ import annotations

import logging
import smtplib
import sqlite3
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import delete, func, select

from listserv.core.app import App
from listserv.core.models import InboundMessage, InboundState, Job, MailingList
from listserv.intake import journal
from listserv.pipeline import inbound
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import SmtpSink

LIST = "dev@example.org"
OTHER = "users@example.org"


def _intake(app: App, sink: SmtpSink, protocol: str = "smtp") -> Harness:
    """The intake alone (no worker), writing its journal (started)."""
    if not app.db.is_sqlite:
        pytest.skip("SQLite only: PostgreSQL has row locks, its intake writes the database "
                    "directly (tests/integration/test_intake.py, both databases)")
    return Harness(app, sink, protocol=protocol, background=False, journal=True).start()


@pytest.fixture
def journaled(app: App, sink: SmtpSink) -> Iterator[Harness]:
    h = _intake(app, sink)
    yield h
    h.stop()


def _rows(app: App) -> list[InboundMessage]:
    with app.db.unit_of_work() as s:
        return list(s.scalars(select(InboundMessage).order_by(InboundMessage.id)))


def _incoming_jobs(app: App) -> int:
    with app.db.unit_of_work() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.kind == inbound.KIND)) or 0


class _Drain(journal.Drain):
    def __call__(self) -> int:
        """Copy every entry not yet copied, a batch per transaction (as the daemon's drain
        task does); the number copied."""
        total = 0
        while copied := self.batch():
            total += copied
        return total


def _drain(app: App) -> _Drain:
    path = journal.path_for(app)
    assert path is not None
    return _Drain(app, path)


def _post(h: Harness, *subjects: str) -> None:
    """One post to LIST from ann@a.example per subject, through the intake."""
    for subject in subjects:
        assert h.send(make_message("ann@a.example", LIST, subject)) == {}


def _entries(app: App) -> int:
    """Every entry in the journal file, copied or not."""
    path = journal.path_for(app)
    assert path is not None
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM entry").fetchone()[0])


def test_the_intake_writes_only_its_journal_and_a_drain_copies_each_entry_once(
        journaled: Harness) -> None:
    app = journaled.app
    make_list(app, LIST)
    make_list(app, OTHER)
    msg = make_message("ann@a.example", [LIST, OTHER], "to two lists")
    assert journaled.send(msg, rcpts=[LIST, OTHER, "dev-bounces+bo=b.example@example.org"]) == {}
    assert journaled.send(make_message("bo@b.example", LIST, "second")) == {}

    # answered 250, but nothing in the database yet: two entries wait in the journal
    assert _rows(app) == [] and _incoming_jobs(app) == 0
    assert journal.waiting(app) == 2

    drain = _drain(app)
    try:
        assert drain() == 2
        assert drain() == 0                      # nothing copied twice
    finally:
        drain.close()
    rows = _rows(app)
    assert [(r.rcpt, r.subaddress, r.extra, r.subject, r.state) for r in rows] == [
        (LIST, "post", None, "to two lists", InboundState.new),
        (OTHER, "post", None, "to two lists", InboundState.new),
        ("dev-bounces+bo=b.example@example.org", "bounces", "bo@b.example", "to two lists",
         InboundState.new),
        (LIST, "post", None, "second", InboundState.new)]
    assert rows[0].mail_from == "ann@a.example" and rows[3].from_addr == "bo@b.example"
    assert len({r.spool_sha for r in rows[:3]}) == 1
    raw = app.spool.get(rows[0].spool_sha)
    assert b"Subject: to two lists" in raw and rows[0].size == len(raw)
    assert _incoming_jobs(app) == 4
    assert journal.waiting(app) == 0

    # the copied posts are processed like any other
    journaled.run_until_idle()
    assert {r.state for r in _rows(app)} != {InboundState.new}


def test_a_worker_with_a_stale_mark_copies_nothing(journaled: Harness,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two workers (or a worker restarted after copying) read the same entries: the
    compare-and-set on the mark lets only the first copy them."""
    app = journaled.app
    make_list(app, LIST)
    journaled.send(make_message("ann@a.example", LIST, "once"))
    first, second = _drain(app), _drain(app)
    try:
        assert first() == 1
        monkeypatch.setattr(journal, "copied_mark", lambda app: "")  # read before the copy
        assert second() == 0
    finally:
        first.close()
        second.close()
    assert len(_rows(app)) == 1 and _incoming_jobs(app) == 1


def test_the_intake_deletes_the_entries_a_worker_copied(journaled: Harness) -> None:
    app = journaled.app
    make_list(app, LIST)
    _post(journaled, *(f"post {n}" for n in range(3)))
    drain = _drain(app)
    try:
        assert drain() == 3
        assert _entries(app) == 3                # the worker never writes the journal
        assert journaled.daemon.journal is not None
        journaled.daemon.journal.mark_read = float("-inf")   # as after journal.MARK_TTL
        journaled.send(make_message("ann@a.example", LIST, "post 3"))
        assert _entries(app) == 1 and journal.waiting(app) == 1
        assert drain() == 1
    finally:
        drain.close()
    assert [r.subject for r in _rows(app)] == [f"post {n}" for n in range(4)]


def test_mail_for_a_list_deleted_before_the_copy_is_logged_not_copied(
        journaled: Harness, caplog: pytest.LogCaptureFixture) -> None:
    app = journaled.app
    make_list(app, LIST)
    other = make_list(app, OTHER)
    journaled.send(make_message("ann@a.example", [LIST, OTHER], "late"), rcpts=[LIST, OTHER])
    with app.db.unit_of_work() as s:
        assert s.execute(delete(MailingList).where(MailingList.id == other)).rowcount == 1
    drain = _drain(app)
    with caplog.at_level(logging.WARNING, logger="listserv.intake.journal"):
        try:
            assert drain() == 1
        finally:
            drain.close()
    assert [r.rcpt for r in _rows(app)] == [LIST]
    assert "accepted for a list deleted since" in caplog.text
    assert journal.waiting(app) == 0


def test_lmtp_answers_each_recipient_after_its_journal_entry(app: App, sink: SmtpSink) -> None:
    h = _intake(app, sink, "lmtp")
    try:
        make_list(app, LIST)
        make_list(app, OTHER)
        rcpt, data = h.lmtp_transaction("ann@a.example", [LIST, OTHER],
                                        make_message("ann@a.example", LIST).as_bytes())
        assert [c for c, _ in rcpt] == [250, 250] and [c for c, _ in data] == [250, 250]
        assert journal.waiting(app) == 2
    finally:
        h.stop()
    drain = _drain(app)
    try:
        assert drain() == 2
    finally:
        drain.close()
    assert sorted(r.rcpt for r in _rows(app)) == sorted([LIST, OTHER])


def test_an_unwritable_journal_gets_a_temporary_failure(journaled: Harness) -> None:
    """Nothing is answered 250 that is not on disk: the client is told to try again."""
    app = journaled.app
    make_list(app, LIST)
    path = journal.path_for(app)
    assert path is not None and not path.exists()
    path.mkdir()                                 # a directory where the file should be
    with pytest.raises(smtplib.SMTPDataError) as refused:
        journaled.send(make_message("ann@a.example", LIST))
    assert refused.value.smtp_code == 451
    assert _rows(app) == []
    Path(path).rmdir()
    assert journaled.send(make_message("ann@a.example", LIST, "again")) == {}
    assert journal.waiting(app) == 1


def test_a_journal_made_anew_is_copied_from_its_first_entry(journaled: Harness) -> None:
    """The journal removed while both sides hold it open: the intake makes a new one at its
    next message (it does not write into the removed file), the same worker's drain reads
    the new one, and the mark, which names its journal, does not take the new entries (ids
    from 1 again) for the old ones already copied."""
    app = journaled.app
    make_list(app, LIST)
    _post(journaled, *(f"old {n}" for n in range(3)))
    drain = _drain(app)
    try:
        assert drain() == 3
        path = journal.path_for(app)
        assert path is not None
        for leftover in path.parent.glob(path.name + "*"):
            leftover.unlink()
        journaled.send(make_message("ann@a.example", LIST, "new 0"))
        assert path.exists() and journal.waiting(app) == 1
        assert drain() == 1
    finally:
        drain.close()
    assert [r.subject for r in _rows(app)] == ["old 0", "old 1", "old 2", "new 0"]


def test_the_intake_deletes_a_copied_backlog_a_few_entries_at_a_time(
        journaled: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    app = journaled.app
    make_list(app, LIST)
    monkeypatch.setattr(journal, "DELETE_AT_MOST", 2)
    _post(journaled, *(f"backlog {n}" for n in range(5)))
    drain = _drain(app)
    try:
        assert drain() == 5
        assert journaled.daemon.journal is not None
        left = []
        for n in range(3):
            journaled.daemon.journal.mark_read = float("-inf")
            journaled.send(make_message("ann@a.example", LIST, f"after {n}"))
            left.append(_entries(app))
        # the 5 copied entries go 2, 2 and 1 at a time while one new entry comes each time
        assert left == [4, 3, 3]
        assert drain() == 3
    finally:
        drain.close()


def test_a_failed_copy_is_retried_and_an_unreadable_journal_is_reported(
        journaled: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    app = journaled.app
    make_list(app, LIST)
    journaled.send(make_message("ann@a.example", LIST, "retried"))
    drain = _drain(app)
    real = journal.copied_mark

    def unavailable(app: App) -> str:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(journal, "copied_mark", unavailable)
    try:
        with pytest.raises(sqlite3.OperationalError):
            drain.batch()
        monkeypatch.setattr(journal, "copied_mark", real)
        assert drain() == 1
    finally:
        drain.close()
    assert [r.subject for r in _rows(app)] == ["retried"]

    path = journal.path_for(app)
    assert path is not None and journaled.daemon.journal is not None
    journaled.daemon.journal.close()
    for leftover in path.parent.glob(path.name + "*"):
        leftover.unlink()
    path.write_bytes(b"not a journal" * 100)
    assert journal.waiting(app) is None


def test_a_drain_copies_large_messages_a_few_at_a_time(
        journaled: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    app = journaled.app
    make_list(app, LIST)
    for n in range(5):
        journaled.send(make_message("ann@a.example", LIST, f"big {n}", body="x" * 3000 + "\n"))
    monkeypatch.setattr(journal, "BATCH_BYTES", 7000)      # two of these per transaction
    drain = _drain(app)
    batches = []
    real = drain._batch
    monkeypatch.setattr(drain, "_batch", lambda: batches.append(real()) or batches[-1])
    try:
        assert drain() == 5
    finally:
        drain.close()
    assert batches == [2, 2, 1, 0]
    assert [r.subject for r in _rows(app)] == [f"big {n}" for n in range(5)]


def test_serve_journals_in_one_process_and_in_an_intake_process(app: App) -> None:
    """`serve` (one process) and `serve --role intake` commit to the journal on SQLite, and
    their workers copy it; on PostgreSQL both write the database (no journal)."""
    from listserv import daemon

    for role in ("all", "intake", "worker"):
        d = daemon.for_role(app, role)
        try:
            assert (d.journal is not None) == (app.db.is_sqlite and role != "worker")
            assert (d.drain is not None) == (app.db.is_sqlite and role != "intake")
        finally:
            if d.journal is not None:
                d.journal.close()
