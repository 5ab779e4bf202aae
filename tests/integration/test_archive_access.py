"""Archive access by email over the real intake: index / get, who may read, List-Archive."""

from __future__ import annotations

from email.message import EmailMessage

from listserv.archive import read as archive_read
from listserv.core.models import ArchivePolicy
from listserv.web.archive import Urls
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured
from tests.waiting import wait_until

LIST = "dev@example.org"
REQUEST = "dev-request@example.org"
MEMBERS = ["ann@a.example", "bob@b.example"]


def answers_to(h: Harness, rcpt: str, count: int = 1) -> list[EmailMessage]:
    """The list's automatic answers (not post copies) to ``rcpt``, waiting for ``count``."""
    def mine(msgs: list[Captured]) -> list[Captured]:
        return [m for m in msgs if rcpt in m.rcpt_tos and m.message["Auto-Submitted"]]

    got = h.sink.wait_for(lambda msgs: len(mine(msgs)) >= count)
    return [m.message for m in mine(got)]


def post_two(h: Harness) -> None:
    first = make_message("ann@a.example", LIST, "Kick-off", "Hello all.\nFrom now on...\n",
                         message_id="<one@a.example>")
    h.send(first)
    h.run_until_idle()
    h.send(make_message("bob@b.example", LIST, "Re: [dev] Kick-off", "Agreed.\n",
                        message_id="<two@b.example>", In_Reply_To="<one@a.example>"))
    h.run_until_idle()


def body(msg: EmailMessage) -> str:
    part = msg.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_member_gets_index_and_month_of_a_private_list(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, owners=["o@o.example"])
    post_two(harness)
    copy = harness.sink.wait_for(lambda m: len(m) >= 4)[0].message
    assert copy["List-Archive"] == f"<mailto:{REQUEST}?subject=index>"

    # What a reader's client does with List-Archive: a mail to -request, Subject "index".
    harness.send(make_message("bob@b.example", REQUEST, "index", ""))
    harness.run_until_idle()
    index = answers_to(harness, "bob@b.example")[0]
    assert str(index["Subject"]) == f"Archive index of {LIST}"
    text = body(index)
    assert "2026-11  2 messages" in text
    assert "    Kick-off (2)" in text           # the reply is counted under its thread subject
    assert '(for example "get 2026-11") to dev-request@example.org' in text

    harness.send(make_message("ann@a.example", REQUEST, "archive please", "get 2026-11\n"))
    harness.run_until_idle()
    answer = answers_to(harness, "ann@a.example")[0]
    assert "2 messages archived in 2026-11" in body(answer)
    [att] = list(answer.iter_attachments())
    assert att.get_content_type() == "application/mbox"
    assert att.get_filename() == "dev-2026-11.mbox"
    data = att.get_content()
    assert isinstance(data, bytes)
    entries = list(archive_read.split_mbox(data))
    assert len(entries) == 2
    assert b"\nFrom now on...\n" in entries[0][1]      # mboxrd quoting undone on reading
    assert b"\n>From now on...\n" in data               # and present in the file as sent


def test_non_member_is_refused_on_a_private_list(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS)
    post_two(harness)
    harness.send(make_message("zed@z.example", REQUEST, "", "index\nget 2026-11\n"))
    harness.run_until_idle()
    [answer] = answers_to(harness, "zed@z.example")
    text = body(answer)
    assert "open to its members only" in text and "zed@z.example is not one" in text
    assert not list(answer.iter_attachments())
    assert "Kick-off" not in text


def test_public_list_is_open_to_anyone(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, archive=ArchivePolicy.public)
    post_two(harness)
    # the web side is on (web.listen): List-Archive is the archive's page, as the site links it
    copy = harness.sink.wait_for(lambda m: len(m) >= 4)[0].message
    web = harness.app.settings.web
    assert web.listen
    page = Urls(web.base_url.rstrip("/"), LIST).archive()
    assert page == "http://127.0.0.1:8080/lists/dev@example.org/archive/"
    assert copy["List-Archive"] == f"<{page}>"
    harness.send(make_message("zed@z.example", REQUEST, "index", ""))
    harness.run_until_idle()
    [answer] = answers_to(harness, "zed@z.example")
    assert "Kick-off" in body(answer)
    harness.send(make_message("zed@z.example", REQUEST, "get 2026-12", ""))
    harness.run_until_idle()
    missing = answers_to(harness, "zed@z.example", 2)[1]
    assert "has no messages for 2026-12" in body(missing)


def test_unarchived_list_refuses_and_sends_no_list_archive(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, archive=ArchivePolicy.none)
    harness.send(make_message("ann@a.example", LIST, "Hello"))
    harness.run_until_idle()
    copy = harness.sink.wait_for(lambda m: len(m) >= 2)[0].message
    assert "List-Archive" not in copy
    harness.send(make_message("ann@a.example", REQUEST, "index", ""))
    harness.run_until_idle()
    [answer] = answers_to(harness, "ann@a.example")
    assert "keeps no archive" in body(answer)


def test_get_without_a_month_answers_usage_and_help(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, archive=ArchivePolicy.public)
    harness.send(make_message("ann@a.example", REQUEST, "", "get last month\n"))
    harness.run_until_idle()
    [answer] = answers_to(harness, "ann@a.example")
    text = body(answer)
    assert "Usage: get YYYY-MM" in text
    assert "get YYYY-MM               one month of the archive" in text


def test_archive_worker_refreshes_the_pages_of_the_months_it_touched(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS)
    html = harness.app.settings.archive_path / LIST / "html"
    post_two(harness)
    # The daemon's own archive loop may have appended the second post (the harness pass then
    # skipped the locked row) and still be rendering: wait for the pages, with a deadline.
    def pages_done() -> bool:
        try:
            return ("Agreed." in (html / "2026-11" / "2.html").read_text()
                    and "<td>2</td>" in (html / "index.html").read_text()
                    and 'href="2.html">' in (html / "2026-11" / "index.html").read_text())
        except FileNotFoundError:
            return False

    wait_until(pages_done, 10, "the archive pages to be refreshed")
    month = (html / "2026-11" / "index.html").read_text()
    assert month.index('href="1.html">[dev] Kick-off<') < month.index('href="2.html">')
    assert '<li style="margin-left: 1.5em"><a href="2.html">' in month
    assert "Agreed." in (html / "2026-11" / "2.html").read_text()
    assert '<td>2</td>' in (html / "index.html").read_text()


def test_a_page_failure_does_not_stop_the_archive(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS)
    base = harness.app.settings.archive_path / LIST
    base.mkdir(parents=True)
    (base / "html").write_text("not a directory")      # the pages cannot be written
    post_two(harness)
    assert len(archive_read.read_month(harness.app.settings.archive_path, LIST, "2026-11")) == 2
