"""The intake wakes whoever processes its mail the moment it has committed it: the job
loops here poll only every minute, so a post delivered within seconds was woken for."""

from __future__ import annotations

from typing import Any

import pytest

from listserv.core.app import App
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import SmtpSink

LIST = "dev@example.org"
POLL = 60.0          # far longer than the waits below


def _harness(app: App, sink: SmtpSink, **kw: Any) -> Harness:
    h = Harness(app, sink, **kw)
    h.daemon.poll = POLL
    return h.start()


@pytest.mark.parametrize("journal", [False, True], ids=["database", "journal"])
def test_one_process_processes_a_post_when_the_intake_commits(
        app: App, sink: SmtpSink, journal: bool) -> None:
    if journal and not app.db.is_sqlite:
        pytest.skip("the intake journal is SQLite's (listserv.intake.journal); PostgreSQL's "
                    "intake writes the database (the 'database' case, both databases)")
    make_list(app, LIST, members=["bo@b.example"])
    h = _harness(app, sink, journal=journal)
    try:
        h.send(make_message("bo@b.example", LIST, "woken"))
        sink.wait_for(lambda ms: any("bo@b.example" in m.rcpt_tos for m in ms), 10)
    finally:
        h.stop()


def test_a_worker_process_is_woken_by_the_intake_process(app: App, sink: SmtpSink) -> None:
    """`serve --role intake` beside `serve --role worker` (here two daemons in one process,
    on one data_dir): the intake's datagram wakes the worker (on SQLite: its copy of the
    intake's journal, then its incoming loops)."""
    make_list(app, LIST, members=["bo@b.example"])
    worker = _harness(app, sink, daemon={"intake_enabled": False, "wake_listen": True})
    try:
        intake = _harness(app, sink, background=False, journal=True,
                          daemon={"wake_workers": True, "delivery": False})
        try:
            intake.send(make_message("bo@b.example", LIST, "woken across processes"))
            sink.wait_for(lambda ms: any("bo@b.example" in m.rcpt_tos for m in ms), 10)
        finally:
            intake.stop()
    finally:
        worker.stop()
