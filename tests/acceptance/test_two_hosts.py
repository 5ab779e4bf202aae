"""Two `serve` processes, each with its own data_dir (two hosts), on one PostgreSQL database
work as one system: mail accepted by one is processed and delivered by the other when the
first is killed right after its 250; the archive files (mbox, static pages) of a post
accepted by one are written by the other from the database. They share nothing but the
database and the settings: the message bytes and the archive are in the database, the work
is jobs in it."""

from __future__ import annotations

import collections
import datetime as dt
import email
import mailbox
from pathlib import Path

import pytest
from sqlalchemy import func, select

from listserv.core import config
from listserv.core.db import Database
from listserv.core.models import (
    ArchiveMessage,
    InboundMessage,
    InboundState,
    Job,
    JobState,
    MailingList,
)
from listserv.pipeline import inbound
from tests.acceptance.conftest import Site, make_site, message
from tests.conftest import PG_URL
from tests.sink import SmtpSink
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(
    not PG_URL, reason="two hosts share a PostgreSQL database; a SQLite database is one "
                       "host's file (runs in the PostgreSQL pass)")

LIST = "multi@hosts.example"


def test_a_post_accepted_by_a_killed_host_is_delivered_by_the_other(
        tmp_path: Path, sink: SmtpSink) -> None:
    members = [f"m{i}@d{i % 3}.hosts.example" for i in range(20)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for a in make_site(tmp_path / "a", sink):
        url = config.load(str(a.config)).database_url
        b = Site(tmp_path / "b", sink, url)        # its own data_dir; the same database
        db = Database(url)
        try:
            a.run("list", "create", LIST)
            a.run("member", "add", LIST, *members)
            a.run("list", "set", LIST, "nonmember_action", "accept")
            with db.unit_of_work() as s:
                list_id = s.scalars(select(MailingList.id)).one()
                # The list's earlier mail is still being processed by a worker (a job of
                # the list's partition with a live lease): host A's job for the post waits
                # behind it, so A surely dies before processing it. The lease runs out a
                # few seconds later, as a dead worker's would.
                now = dt.datetime.now(dt.timezone.utc)
                s.add(Job(kind=inbound.KIND, payload={"inbound_id": 0},
                          partition_key=inbound.partition_key(list_id, "post"),
                          state=JobState.running, run_after=now, attempts=1, max_attempts=6,
                          lease_owner="w-earlier", lease_expires=now + dt.timedelta(seconds=3),
                          created_at=now))
            a.serve()
            a.send(LIST, message("ann@outside.example", LIST, "accepted by host A"))
            a.kill9()
            with db.unit_of_work() as s:
                [row] = s.scalars(select(InboundMessage)).all()
                assert row.state is InboundState.new
            assert not [m for m in list(sink.messages) if set(members) & set(m.rcpt_tos)]

            b.serve()
            got = sink.wait_for(lambda ms: set(members) <= {
                r for m in ms for r in m.rcpt_tos}, 60)
            b.quiet()
            assert b.stop() == 0
            copies = collections.Counter(r for m in got for r in m.rcpt_tos if r in members)
            assert set(copies.values()) == {1}
            assert all("accepted by host A" in str(m.message["Subject"]) for m in got
                       if set(members) & set(m.rcpt_tos))
            with db.unit_of_work() as s:
                assert s.get_one(InboundMessage, row.id).state is InboundState.accepted
            # B never saw A's data_dir, and neither wrote message files of its own
            for site in ("a", "b"):
                assert not (tmp_path / site / "data" / "spool").exists()
        finally:
            if b.proc is not None:
                b.proc.kill()
                b.proc.wait(10)
            db.dispose()


EXPORTS_OFF = "[archive]\nmbox = false\npages = false\n"


def test_archive_files_are_exported_on_another_host(tmp_path: Path, sink: SmtpSink) -> None:
    """README's multi-host setup: both hosts serve with the archive files off; a post accepted
    by host A is archived in the database (by either host), and host B writes the mbox export
    and the static pages from the database: the post is in them exactly once, however often
    the export runs, and no host wrote archive files on its own."""
    members = ["ann@d1.hosts.example", "bob@d2.hosts.example"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for a in make_site(tmp_path / "a", sink, EXPORTS_OFF):
        url = config.load(str(a.config)).database_url
        b = Site(tmp_path / "b", sink, url, EXPORTS_OFF)
        db = Database(url)
        try:
            a.run("list", "create", LIST)
            a.run("member", "add", LIST, *members)
            a.run("list", "set", LIST, "nonmember_action", "accept")
            a.run("list", "set", LIST, "archive", "public")
            a.serve()
            b.serve()
            post = message("ann@outside.example", LIST, "exported on host B")
            msgid = str(email.message_from_bytes(post)["Message-ID"])
            a.send(LIST, post)
            sink.wait_for(lambda ms: any(set(members) & set(m.rcpt_tos) for m in ms
                                         if "exported on host B" in str(m.message["Subject"])),
                          60)

            def archived() -> bool:
                with db.unit_of_work() as s:
                    return s.scalar(select(func.count()).select_from(ArchiveMessage)) == 1
            wait_until(archived, 60, "the post to be archived in the database")
            with db.unit_of_work() as s:
                month = s.scalars(select(ArchiveMessage.month)).one()
            for host in (a, b):
                host.quiet()
                assert not (host.root / "data" / "archives").exists(), \
                    sorted(p.name for p in (host.root / "data" / "archives").rglob("*"))

            for _ in range(2):          # each export replaces the month's file whole
                out = b.cli("archive", "export", LIST).stdout
                assert f"{LIST}: 1 messages in 1 mbox files" in out, out
                path = b.root / "data" / "archives" / LIST / f"{month}.mbox"
                box = mailbox.mbox(str(path))
                try:
                    ids = [str(m["Message-ID"]) for m in box]
                finally:
                    box.close()
                assert ids == [msgid]
            b.cli("archive", "build", LIST)
            html = b.root / "data" / "archives" / LIST / "html"
            assert "exported on host B" in (html / month / "index.html").read_text()
            assert not (a.root / "data" / "archives").exists()
            assert a.stop() == 0 and b.stop() == 0
        finally:
            for host in (a, b):
                if host.proc is not None:
                    host.proc.kill()
                    host.proc.wait(10)
            db.dispose()
