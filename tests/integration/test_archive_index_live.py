"""The archive worker keeps the search index up to date as it appends posts to the mbox
(real intake, real worker passes), and the index finds the bytes it points at."""

from __future__ import annotations

from sqlalchemy import select

from listserv.archive import index as archive_index, read as archive_read, search as archive_search
from listserv.core import lists
from listserv.core.models import ArchiveMessage, ArchivePolicy
from tests.integration.harness import Harness, list_id_of, make_list, make_message

LIST = "dev@example.org"
MEMBERS = ["ann@a.example", "bob@b.example"]


def post(h: Harness, sender: str, subject: str, body: str, mid: str, **headers: str) -> None:
    h.send(make_message(sender, LIST, subject, body, message_id=f"<{mid}>", **headers))
    h.run_until_idle()


def test_posts_are_indexed_where_the_archive_wrote_them(quiet_harness: Harness) -> None:
    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS, archive=ArchivePolicy.public)
    post(h, "ann@a.example", "Kick-off", "From the start: agenda for Tuesday.\n",
         "one@a.example")
    post(h, "bob@b.example", "Re: [dev] Kick-off", "Agreed, Tuesday.\n", "two@b.example",
         In_Reply_To="<one@a.example>")
    lid = list_id_of(h.app, LIST)
    with h.app.db.unit_of_work() as session:
        hits = archive_search.search(session, lid, "tuesday", order="date").hits
        assert [x.message.message_id for x in hits] == ["two@b.example", "one@a.example"]
        two = hits[0].message
        assert (two.parent_id, two.thread_id) == ("one@a.example", "one@a.example")
        assert two.subject == "[dev] Re: Kick-off"      # as archived (prefixed)
        assert archive_search.search(session, lid, "agenda").hits[0].message.message_id \
            == "one@a.example"
        rows = list(session.scalars(select(ArchiveMessage).order_by(ArchiveMessage.id)))
    # Each row's bytes are in the database; the mbox export holds the same messages.
    entries = archive_read.read_month(h.app.settings.archive_path, LIST, rows[0].month)
    with h.app.db.unit_of_work() as session:
        assert [archive_search.raw(session, r) for r in rows] == [e.raw for e in entries]
    assert b"\nFrom the start" in entries[0].raw
    with h.app.db.unit_of_work() as session:
        before = [(r.message_id, r.parent_id, r.thread_id, r.subject) for r in rows]
        assert archive_index.reindex(h.app, session, lists.get_list(session, LIST)) == (2, 0)
    with h.app.db.unit_of_work() as session:
        after = [(r.message_id, r.parent_id, r.thread_id, r.subject) for r in session.scalars(
            select(ArchiveMessage).order_by(ArchiveMessage.id))]
    assert after == before


def test_unarchived_lists_are_not_indexed(quiet_harness: Harness) -> None:
    h = quiet_harness
    make_list(h.app, LIST, members=MEMBERS, archive=ArchivePolicy.none)
    post(h, "ann@a.example", "Kick-off", "Hello.\n", "one@a.example")
    with h.app.db.unit_of_work() as session:
        assert list(session.scalars(select(ArchiveMessage))) == []
