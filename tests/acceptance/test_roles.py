"""`serve --role intake` beside `serve --role worker` on one data_dir and database: the intake
only stores mail and answers, the worker processes and delivers it, woken by the intake."""

from __future__ import annotations

import collections
import signal
import subprocess
from pathlib import Path

from tests.acceptance.conftest import Site, make_site, message
from tests.sink import SmtpSink
from tests.waiting import wait_until

LIST = "roles@split.example"


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def _split(site: Site, members: list[str]) -> subprocess.Popen[bytes]:
    """LIST with ``members``, open to anyone; `serve --role intake` listening and
    `serve --role worker` started (returned)."""
    site.run("list", "create", LIST)
    site.run("member", "add", LIST, *members)
    site.run("list", "set", LIST, "nonmember_action", "accept")
    site.serve("--role", "intake")
    return site.start_serve("--role", "worker")


def _wait_copies(sink: SmtpSink, members: list[str], posts: int) -> None:
    sink.wait_for(lambda ms: sum(1 for m in ms for r in m.rcpt_tos if r in members)
                  >= posts * len(members), 60)


def _assert_each_once(sink: SmtpSink, members: list[str], posts: int) -> None:
    """Each of ``members`` got one copy of each of ``posts`` posts (told by Subject)."""
    copies = collections.Counter((r, str(m.message["Subject"])) for m in list(sink.messages)
                                 for r in m.rcpt_tos if r in members)
    assert len(copies) == posts * len(members) and set(copies.values()) == {1}, copies


def test_intake_and_worker_processes_work_as_one(tmp_path: Path, sink: SmtpSink) -> None:
    members = [f"m{i}@split.example" for i in range(5)]
    for site in make_site(tmp_path, sink):
        worker = _split(site, members)
        try:
            site.send(LIST, message("ann@outside.example", LIST, "through two processes"))
            for m in members:
                site.mail_to(m)
            assert worker.poll() is None
            # the worker's wake-up socket is in the data_dir while it runs
            assert list((tmp_path / "data" / "wake").glob("w*.sock"))
        finally:
            assert _stop(worker) == 0
        assert site.stop() == 0
        assert not list((tmp_path / "data" / "wake").glob("w*.sock"))


def test_the_intake_accepts_while_no_worker_runs_and_a_new_worker_delivers(
        tmp_path: Path, sink: SmtpSink) -> None:
    """Mail accepted while the worker is down (here: killed with SIGKILL, its wake-up socket
    left behind) waits (on SQLite in the intake's journal, on PostgreSQL in the database);
    the next worker delivers each copy once."""
    members = [f"w{i}@split.example" for i in range(4)]
    for site in make_site(tmp_path, sink):
        worker = _split(site, members)
        wake_dir = tmp_path / "data" / "wake"
        wait_until(lambda: bool(list(wake_dir.glob("w*.sock"))), 30,
                   "the worker's wake-up socket")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert list(wake_dir.glob("w*.sock"))         # left behind by the kill

        for n in range(3):
            site.send(LIST, message("ann@outside.example", LIST, f"while down {n}"))
        q = site.json("queue", "status")["incoming"]
        assert (q["journaled"], q["new"]) == ((3, 0) if site.sqlite else (0, 3))
        assert not [m for m in list(sink.messages) if set(members) & set(m.rcpt_tos)]

        worker = site.start_serve("--role", "worker")
        try:
            _wait_copies(sink, members, 3)
            site.quiet()
            assert site.json("queue", "status")["incoming"]["journaled"] == 0
        finally:
            assert _stop(worker) == 0
        assert site.stop() == 0
        _assert_each_once(sink, members, 3)


def test_mail_answered_by_an_intake_killed_right_after_is_delivered(
        tmp_path: Path, sink: SmtpSink) -> None:
    """The intake is killed with SIGKILL right after its 250s: what it answered is on disk
    (on SQLite in its journal), and the worker delivers each copy once."""
    members = [f"k{i}@split.example" for i in range(3)]
    for site in make_site(tmp_path, sink):
        worker = _split(site, members)
        try:
            for n in range(4):
                site.send(LIST, message("ann@outside.example", LIST, f"then killed {n}"))
            site.kill9()
            _wait_copies(sink, members, 4)
            site.quiet()
            assert site.json("queue", "status")["incoming"]["journaled"] == 0
        finally:
            assert _stop(worker) == 0
        _assert_each_once(sink, members, 4)


def test_one_process_copies_what_an_earlier_intake_journaled(
        tmp_path: Path, sink: SmtpSink) -> None:
    """A site goes back from `--role intake` + `--role worker` to one `serve`: mail the
    intake journaled while no worker ran is delivered by the one process."""
    members = ["back@split.example"]
    for site in make_site(tmp_path, sink):
        _stop(_split(site, members))
        site.send(LIST, message("ann@outside.example", LIST, "journaled, then one process"))
        assert site.stop() == 0
        site.serve()
        site.mail_to(members[0])
        site.quiet()
        assert site.json("queue", "status")["incoming"]["journaled"] == 0
        assert site.stop() == 0
        assert site.count_to(members[0]) == 1
