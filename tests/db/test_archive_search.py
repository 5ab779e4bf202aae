"""The archive index and its search, built by `listserv archive reindex --from-mbox` from
mbox files:
fields, threads, months, prev/next, attachments, the query language on the database's own
full-text engine (SQLite FTS5 / PostgreSQL tsvector), and the index following deletions."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text

from listserv.archive import index as archive_index, read as archive_read, search as archive_search
from listserv.core import lists
from listserv.core.app import App
from listserv.archive.read import mbox_entry
from listserv.core.models import ArchiveMessage, ArchiveRaw, MailingList
from listserv.message.parse import parse as parse_message
from tests.clirun import Cli
from tests.integration.harness import make_list

LIST = "dev@example.org"
OTHER = "other@example.org"
WHEN = 1_793_600_000.0     # 2026-11-02


def mail(mid: str, subject: str, body: str = "Hello.\n", *,
         sender: str = "Ann Example <ann@a.example>", html: str | None = None,
         attach: tuple[str, bytes] | None = None, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = LIST
    msg["Subject"] = subject
    msg["Date"] = "Mon, 02 Nov 2026 09:00:00 +0000"
    if mid:
        msg["Message-ID"] = f"<{mid}@x.example>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    if html is not None:
        msg.set_content(html, subtype="html")
    else:
        msg.set_content(body)
    if attach is not None:
        msg.add_attachment(attach[1], maintype="application", subtype="pdf",
                           filename=attach[0])
    return msg.as_bytes()


def write_month(app: App, month: str, *messages: bytes, address: str = LIST,
                when: float = WHEN) -> None:
    path = archive_read.month_path(app.settings.archive_path, address, month)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for i, m in enumerate(messages):
            f.write(mbox_entry(m, when + i))


def reindex(app: App, address: str = LIST) -> int:
    """`listserv archive reindex --from-mbox`: the month files into the database, then the
    index computed again from the bytes there."""
    with app.db.unit_of_work() as session:
        archive_index.ingest_mbox(app, session, lists.get_list(session, address))
    with app.db.unit_of_work() as session:
        count, bare = archive_index.reindex(app, session, lists.get_list(session, address))
        assert bare == 0
        return count


def list_id(app: App, address: str = LIST) -> int:
    with app.db.unit_of_work() as session:
        ml = lists.get_list(session, address)
        return ml.id


def found(app: App, query: str, address: str = LIST, **kw: Any) -> list[str]:
    with app.db.unit_of_work() as session:
        results = archive_search.search(session, list_id(app, address), query, **kw)
        return [h.message.message_id.split("@")[0] for h in results.hits]


@pytest.fixture
def archived(app: App) -> App:
    make_list(app, LIST, members=["ann@a.example"])
    write_month(app, "2026-10", mail("old", "October budget", "Numbers for the treasurer.\n"))
    write_month(app, "2026-11",
                mail("a", "Kick-off meeting", "Let us meet on Tuesday at the café.\n"),
                mail("b", "Re: Kick-off meeting", "Tuesday suits me.\n",
                     sender="Bob <bob@b.example>", In_Reply_To="<a@x.example>"),
                mail("c", "Re: Kick-off meeting", "And me, bring the minutes.\n",
                     sender="carol@c.example", In_Reply_To="<b@x.example>",
                     References="<a@x.example> <b@x.example>"),
                mail("d", "Newsletter", html="<p>Our <b>quarterly</b> report &amp; "
                     "plans</p><script>evil()</script>"),
                mail("e", "Slides", "See the attachment.\n",
                     attach=("slides<1>.pdf", b"%PDF-1.4 fake")))
    # December: a late reply to October's thread.
    write_month(app, "2026-12", mail("f", "Re: October budget", "Approved.\n",
                                     References="<old@x.example>"),
                when=WHEN + 40 * 86400)
    assert reindex(app) == 7
    return app


def test_reindex_keeps_the_fields_and_where_each_message_is(archived: App) -> None:
    with archived.db.unit_of_work() as session:
        rows = {m.message_id: m for m in session.scalars(select(ArchiveMessage))}
        b = rows["b@x.example"]
        assert (b.month, b.subject, b.sender_name, b.sender_address) == (
            "2026-11", "Re: Kick-off meeting", "Bob", "bob@b.example")
        assert b.sent_at == dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)
        assert b.parent_id == "a@x.example" and b.thread_id == "a@x.example"
        assert rows["c@x.example"].parent_id == "b@x.example"
        assert rows["c@x.example"].thread_id == "a@x.example"
        assert rows["f@x.example"].thread_id == "old@x.example"     # across months
        assert rows["e@x.example"].attachments == 1
        html = rows["d@x.example"].body
        assert "quarterly" in html and "report & plans" in html
        assert "<b>" not in html and "evil" not in html
        raw = archive_search.raw(session, b)
        assert raw.startswith(b"From: Bob <bob@b.example>") or b"Message-ID: <b@x.example>" in raw
        assert b"Tuesday suits me." in raw and b"Kick-off meeting\n" not in raw[:0]
        assert archive_read.message_id_of(raw) == "b@x.example"


def test_an_index_row_without_bytes_gets_them_from_the_mbox(archived: App,
                                                            cli_env: dict[str, str]) -> None:
    """An install from before the bytes were in the database: its rows are there, their
    bytes only in the mbox files, until reindex --from-mbox reads them."""
    with archived.db.unit_of_work() as session:
        b = archive_search.find(session, list_id(archived), "b@x.example")
        assert b is not None
        subject, pk = b.subject, b.id
        session.execute(delete(ArchiveRaw).where(ArchiveRaw.message_pk == pk))
    cli = Cli(cli_env)
    assert cli("archive", "reindex", LIST).stdout == (
        f"{LIST}: 6 messages indexed; 1 without their text in the database "
        "(run: listserv archive reindex --from-mbox)\n")
    with archived.db.unit_of_work() as session:
        with pytest.raises(LookupError):
            archive_search.raw(session, b)
    assert cli("archive", "reindex", "--from-mbox", LIST).stdout == (
        f"{LIST}: 7 messages indexed, 1 added from its mbox files\n")
    with archived.db.unit_of_work() as session:
        again = archive_search.find(session, list_id(archived), "b@x.example")
        assert again is not None and (again.id, again.subject) == (pk, subject)
        assert b"Tuesday suits me." in archive_search.raw(session, again)


def test_reindex_is_idempotent_and_skips_duplicate_entries(archived: App) -> None:
    # A crash between the mbox append and its commit writes an entry twice.
    write_month(archived, "2026-11", mail("e", "Slides", "See the attachment.\n"))
    assert reindex(archived) == 7
    assert reindex(archived) == 7
    assert found(archived, "attachment") == ["e"]


def test_search_subject_sender_body_phrase_prefix_and_exclusion(archived: App) -> None:
    assert set(found(archived, "tuesday")) == {"a", "b"}
    assert found(archived, "treasurer") == ["old"]
    assert set(found(archived, "Bob")) == {"b"}
    assert set(found(archived, "bob@b.example")) == {"b"}
    assert set(found(archived, "carol")) == {"c"}
    assert found(archived, "quarterly report") == ["d"]       # HTML body, as text
    assert found(archived, "evil") == []                      # script is not text
    assert found(archived, '"suits me"') == ["b"]
    assert found(archived, '"me suits"') == []
    assert set(found(archived, "kick*")) == {"a", "b", "c"}
    assert set(found(archived, "meeting -bob")) == {"a", "c"}
    assert found(archived, "café") == ["a"]
    if archived.db.is_sqlite:       # FTS5's unicode61 folds diacritics; PostgreSQL's
        assert found(archived, "cafe") == ["a"]     # 'simple' needs the unaccent extension
    # Subject counts more than body: the thread's start ranks first for its subject word.
    assert found(archived, "kick-off")[0] in {"a", "b", "c"}
    assert found(archived, "newsletter quarterly") == ["d"]


def test_search_pages_and_orders_by_date(archived: App) -> None:
    assert found(archived, "kick", limit=2, order="date") == ["c", "b"]
    with archived.db.unit_of_work() as session:
        first = archive_search.search(session, list_id(archived), "meeting", limit=2)
        rest = archive_search.search(session, list_id(archived), "meeting", limit=2, offset=2)
    assert first.more and not rest.more
    assert len(first.hits) == 2 and len(rest.hits) == 1
    ids = {h.message.message_id for h in first.hits + rest.hits}
    assert len(ids) == 3


def test_relevance_ranks_the_most_recently_archived_matches(archived: App,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    # "meeting" is in the subject of a, b, c (archived in that order) and in no body; with
    # a's subject the shortest it ranks first, unless only the newest two are ranked
    everything = found(archived, "meeting")
    assert sorted(everything) == ["a", "b", "c"]
    monkeypatch.setattr(archive_search, "RANKED", 2)
    newest = found(archived, "meeting")
    assert sorted(newest) == ["b", "c"]
    assert found(archived, "meeting", order="date") == ["c", "b", "a"]   # by date: all
    # a rare word is found whatever its age
    assert found(archived, "treasurer") == ["old"]


@pytest.mark.parametrize("query", [
    '"', '""', "-", "*", "a*b*", "AND", "OR NOT", "NEAR(a b)", "subject:x", "^x", "x'y",
    "(", ")", "{x}", "x:*", "'", "\\", "!!x", "x & y | z", "ä*", "_", "💡", "a" * 300,
])
def test_any_text_is_a_safe_query(archived: App, query: str) -> None:
    with archived.db.unit_of_work() as session:
        try:
            archive_search.search(session, list_id(archived), query)
        except archive_search.QueryError:
            pass    # nothing to look for: shown to the reader, not an engine error


def test_a_query_without_words_is_refused_plainly(archived: App) -> None:
    with archived.db.unit_of_work() as session, pytest.raises(archive_search.QueryError):
        archive_search.search(session, list_id(archived), "-tuesday")


def test_snippet_marks_the_words(archived: App) -> None:
    with archived.db.unit_of_work() as session:
        [hit] = archive_search.search(session, list_id(archived), "minutes").hits
    assert ("minutes", True) in hit.snippet
    assert "".join(t for t, _ in hit.snippet).strip() == "And me, bring the minutes."


def test_search_stays_in_its_list(archived: App) -> None:
    make_list(archived, OTHER)
    write_month(archived, "2026-11", mail("z", "Tuesday elsewhere"), address=OTHER)
    assert reindex(archived, OTHER) == 1
    assert set(found(archived, "tuesday")) == {"a", "b"}
    assert found(archived, "tuesday", address=OTHER) == ["z"]


def test_months_threads_and_one_message_with_neighbours(archived: App) -> None:
    lid = list_id(archived)
    with archived.db.unit_of_work() as session:
        assert archive_search.months(session, lid) == [("2026-12", 1), ("2026-11", 5),
                                                       ("2026-10", 1)]
        assert archive_search.count(session, lid) == 7
        threads = archive_search.month_threads(session, lid, "2026-11")
        shape = [[(m.message_id[0], depth) for m, depth in t] for t in threads]
        assert shape == [[("a", 0), ("b", 1), ("c", 2)], [("d", 0)], [("e", 0)]]
        december = archive_search.month_threads(session, lid, "2026-12")
        assert [[m.message_id[0] for m, _ in t] for t in december] == [["f"]]

        view = archive_search.message(session, lid, "b@x.example")
        assert view is not None
        assert view.prev is not None and view.prev.message_id == "a@x.example"
        assert view.next is not None and view.next.message_id == "c@x.example"
        assert [(m.message_id[0], d) for m, d in view.thread] == [("a", 0), ("b", 1), ("c", 2)]
        first = archive_search.message(session, lid, "old@x.example")
        assert first is not None and first.prev is None
        assert [m.message_id[0] for m, _ in first.thread] == ["o", "f"]
        last = archive_search.message(session, lid, "f@x.example")
        assert last is not None and last.next is None
        assert archive_search.message(session, lid, "nope@x.example") is None
        assert [m.message_id[0] for m in archive_search.recent(session, lid, 2)] == ["f", "e"]


def test_attachments_are_read_from_the_database(archived: App) -> None:
    with archived.db.unit_of_work() as session:
        view = archive_search.message(session, list_id(archived), "e@x.example")
        assert view is not None
        msg = parse_message(archive_search.raw(session, view.message))
    [a] = archive_search.attachments(msg)
    assert (a.number, a.filename, a.content_type, a.data) == (
        1, "slides<1>.pdf", "application/pdf", b"%PDF-1.4 fake")
    assert archive_search.attachment(msg, 1) == a
    assert archive_search.attachment(msg, 2) is None


def test_a_message_without_message_id_gets_a_stable_one(app: App) -> None:
    make_list(app, LIST)
    write_month(app, "2026-11", mail("", "Anonymous", "No id here.\n"))
    reindex(app)
    [first] = found(app, "anonymous")
    reindex(app)
    assert found(app, "anonymous") == [first]


def test_the_index_follows_deleted_rows_and_lists(archived: App) -> None:
    with archived.db.unit_of_work() as session:
        session.execute(delete(ArchiveMessage).where(ArchiveMessage.message_id == "a@x.example"))
    assert set(found(archived, "tuesday")) == {"b"}
    with archived.db.unit_of_work() as session:
        session.execute(text("UPDATE archive_message SET body = 'renamed' "
                             "WHERE message_id = 'b@x.example'"))
    assert found(archived, "tuesday") == []
    assert found(archived, "renamed") == ["b"]
    with archived.db.unit_of_work() as session:
        lists.delete_list(session, lists.get_list(session, LIST))
    with archived.db.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(ArchiveMessage)) == 0
        assert session.scalar(select(func.count()).select_from(ArchiveRaw)) == 0
        if session.get_bind().dialect.name == "sqlite":
            hits = session.scalar(text("SELECT count(*) FROM archive_message_fts "
                                       "WHERE archive_message_fts MATCH 'tuesday'"))
            assert hits == 0


def test_cli_reindex_one_list_or_all(archived: App, cli_env: dict[str, str]) -> None:
    make_list(archived, OTHER)
    write_month(archived, "2026-11", mail("z", "Elsewhere"), address=OTHER)
    cli = Cli(cli_env)
    assert cli("archive", "reindex", LIST).stdout == f"{LIST}: 7 messages indexed\n"
    assert cli("archive", "reindex").stdout.splitlines() == [
        f"{LIST}: 7 messages indexed", f"{OTHER}: 0 messages indexed"]
    assert cli("archive", "reindex", "--from-mbox").stdout.splitlines() == [
        f"{LIST}: 7 messages indexed, 0 added from its mbox files",
        f"{OTHER}: 1 messages indexed, 1 added from its mbox files"]
    assert "no such list" in cli.error("archive", "reindex", "nope@example.org")
    with archived.db.unit_of_work() as session:
        assert session.scalar(select(func.count()).select_from(MailingList)) == 2
