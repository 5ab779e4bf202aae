"""Static HTML archive: `listserv archive build` from the archive in the database (escaping, threads,
attachments, idempotent rebuild, --out, refusals)."""

from __future__ import annotations

import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from listserv.archive import index as archive_index, read as archive_read
from listserv.archive.read import mbox_entry
from listserv.core import lists
from listserv.core.models import ArchivePolicy
from tests.clirun import Cli
from tests.integration.harness import make_list

LIST = "dev@example.org"
WHEN = 1_793_600_000.0     # 2026-11-02


def mail(mid: str, subject: str, body: str = "Hello.\n", *, sender: str = "Ann <ann@a.example>",
         attach: bytes | None = None, **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = LIST
    msg["Subject"] = subject
    msg["Date"] = "Mon, 02 Nov 2026 09:00:00 +0000"
    msg["Message-ID"] = f"<{mid}@x.example>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body)
    if attach is not None:
        msg.add_attachment(attach, maintype="application", subtype="octet-stream",
                           filename="secret<b>.bin")
    return msg.as_bytes()


def write_month(app: Any, month: str, *messages: bytes) -> None:
    path = archive_read.month_path(app.settings.archive_path, LIST, month)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for m in messages:
            f.write(mbox_entry(m, WHEN))
    with app.db.unit_of_work() as session:      # into the database, as reindex --from-mbox
        archive_index.ingest_mbox(app, session, lists.get_list(session, LIST))


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    return Cli(cli_env)


@pytest.fixture
def archived(app: Any) -> Path:
    make_list(app, LIST, members=["ann@a.example"])
    write_month(app, "2026-10", mail("old", "October news"))
    write_month(app, "2026-11",
                mail("a", "<script>alert(1)</script>", "x < y & z\n"),
                mail("b", "Re: <script>alert(1)</script>", "Reply.\n",
                     sender="bob@b.example", In_Reply_To="<a@x.example>"),
                mail("c", "Other topic"),
                mail("d", "Re: Re: deep", References="<a@x.example> <b@x.example>"),
                mail("e", "With a file", attach=b"BINARY-PAYLOAD"))
    out: Path = app.settings.archive_path / LIST / "html"
    return out


def thread_rows(page: str) -> list[tuple[float, int]]:
    """(indent in em, message number) of each entry of a month page, in order."""
    return [(float(m.group(1)), int(m.group(2))) for m in re.finditer(
        r'<li style="margin-left: ([\d.]+)em"><a href="(\d+)\.html">', page)]


def test_build_renders_escaped_threaded_pages(app: Any, cli: Cli, archived: Path) -> None:
    result = cli("archive", "build", LIST)
    assert f"{LIST}: 2 months, 9 pages (9 written) in {archived}" in result.stdout
    index = (archived / "index.html").read_text()
    assert index.index('href="2026-11/index.html"') < index.index('href="2026-10/index.html"')
    assert '<meta name="robots" content="noindex, nofollow">' in index   # private list

    month = (archived / "2026-11" / "index.html").read_text()
    assert "<script>" not in month and "&lt;script&gt;alert(1)&lt;/script&gt;" in month
    assert thread_rows(month) == [(0, 1), (1.5, 2), (3.0, 4), (0, 3), (0, 5)]
    assert "bob at b.example" in month and "bob@b.example" not in month
    assert "5 messages, 3 threads" in month

    first = (archived / "2026-11" / "1.html").read_text()
    assert "<script>" not in first and "x &lt; y &amp; z" in first
    assert "ann at a.example" in first
    reply = (archived / "2026-11" / "4.html").read_text()
    assert '<a href="2.html">in reply to</a>' in reply
    attached = (archived / "2026-11" / "5.html").read_text()
    assert "secret&lt;b&gt;.bin" in attached and "application/octet-stream, 14 bytes" in attached
    assert "BINARY-PAYLOAD" not in attached and "QklOQVJZ" not in attached


def test_rebuild_is_idempotent_and_picks_up_new_messages(app: Any, cli: Cli,
                                                          archived: Path) -> None:
    cli("archive", "build", LIST)
    pages = sorted(archived.rglob("*.html"))
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pages}
    again = cli("archive", "build", LIST).stdout
    assert "9 pages (0 written)" in again
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in pages} == before

    write_month(app, "2026-11", mail("f", "Re: Other topic", In_Reply_To="<c@x.example>"))
    assert "10 pages (3 written)" in cli("archive", "build", LIST).stdout  # index, month, new
    assert thread_rows((archived / "2026-11" / "index.html").read_text())[3:5] == [(0, 3),
                                                                                  (1.5, 6)]


def test_out_dir_and_refusals(app: Any, cli: Cli, archived: Path, tmp_path: Path) -> None:
    out = tmp_path / "public-html"
    cli("archive", "build", LIST, "--out", str(out))
    assert (out / "2026-11" / "5.html").exists()
    assert not archived.exists()                 # nothing written to the default place
    assert "no such list: nope@example.org" in cli.error("archive", "build", "nope@example.org")
    make_list(app, "quiet@example.org", archive=ArchivePolicy.none)
    assert "quiet@example.org is not archived" in cli.error("archive", "build",
                                                            "quiet@example.org")


def test_public_list_pages_are_indexable(app: Any, cli: Cli) -> None:
    make_list(app, LIST, archive=ArchivePolicy.public)
    cli("archive", "build", LIST)
    index = (app.settings.archive_path / LIST / "html" / "index.html").read_text()
    assert "noindex" not in index and "Nothing has been archived yet." in index


def test_private_pages_are_not_world_readable(app: Any, cli: Cli, archived: Path) -> None:
    cli("archive", "build", LIST)
    assert (archived / "2026-11" / "1.html").stat().st_mode & 0o777 == 0o640


def test_encoded_and_raw_8bit_subjects_are_shown_decoded(app: Any, cli: Cli) -> None:
    make_list(app, LIST)
    raw = (b"From: =?utf-8?q?Zo=C3=AB?= <zoe@z.example>\nSubject: Men\xc3\xbc <b>\n"
           b"Message-ID: <raw@x.example>\n\nBody\n")
    encoded = mail("enc", "Café ✓ & co")
    assert b"=?utf-8?" in encoded
    write_month(app, "2026-11", encoded, raw)
    cli("archive", "build", LIST)
    month = (app.settings.archive_path / LIST / "html" / "2026-11" / "index.html").read_text()
    assert "Café ✓ &amp; co" in month
    assert "Menü &lt;b&gt;" in month and "Zoë" in month


def test_an_interrupted_build_is_repaired_by_the_next(app: Any, archived: Path) -> None:
    """New message pages are written in place; a build that died half-way (its month
    marker left behind, a page cut short) is finished by the next refresh, which checks
    every page of that month instead of only the missing ones."""
    from listserv.archive import html as archive_html

    info = archive_html.ListInfo(LIST, "Dev", ArchivePolicy.private)
    archive_html.build(app, info, archived)
    assert not list(archived.glob(".building-*")) and not list(archived.rglob(".tmp-*"))
    whole = (archived / "2026-11" / "2.html").read_bytes()
    (archived / "2026-11" / "2.html").write_bytes(whole[:40])         # cut short by a crash
    (archived / ".building-2026-11").touch()
    (archived / "2026-11" / "4.html").unlink()
    report = archive_html.build(app, info, archived, ["2026-11"], new_only=True)
    assert (archived / "2026-11" / "2.html").read_bytes() == whole
    assert (archived / "2026-11" / "4.html").exists()
    assert not (archived / ".building-2026-11").exists()
    assert report.pages == 7 and report.written == 2                  # 5 messages, month, index
    # Without a marker, a refresh only adds the missing pages.
    (archived / "2026-11" / "2.html").write_bytes(b"edited by hand")
    (archived / "2026-11" / "3.html").unlink()
    report = archive_html.build(app, info, archived, ["2026-11"], new_only=True)
    assert (archived / "2026-11" / "2.html").read_bytes() == b"edited by hand"
    assert (archived / "2026-11" / "3.html").stat().st_mode & 0o777 == 0o640
    assert report.pages == 3 and report.written == 1


def test_a_big_month_gives_the_same_pages(app: Any, archived: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A month too big to keep its parsed messages (each parsed again for its page)."""
    import shutil

    from listserv.archive import html as archive_html

    info = archive_html.ListInfo(LIST, "Dev", ArchivePolicy.private)
    archive_html.build(app, info, archived)
    before = {p.relative_to(archived): p.read_bytes() for p in archived.rglob("*")
              if p.is_file()}
    shutil.rmtree(archived)
    monkeypatch.setattr(archive_html, "KEEP_PARSED_BYTES", 0)
    archive_html.build(app, info, archived)
    after = {p.relative_to(archived): p.read_bytes() for p in archived.rglob("*")
             if p.is_file()}
    assert after == before and len(before) >= 10


def test_a_refresh_reads_only_the_new_messages(app: Any, archived: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """After a post, the refresh of its month reads and parses only the messages whose
    summaries it does not know yet (the others come from the process's summary cache), and
    gives the same pages as a build from scratch."""
    import shutil
    import weakref

    from listserv.archive import html as archive_html, store as archive_store

    info = archive_html.ListInfo(LIST, "Dev", ArchivePolicy.private)
    archive_html.build(app, info, archived)
    write_month(app, "2026-11", mail("f", "Re: Other topic", In_Reply_To="<c@x.example>"))
    read: list[int] = []
    raw_of = archive_store.raw_of
    monkeypatch.setattr(archive_store, "raw_of",
                        lambda session, pks: read.extend(pks) or raw_of(session, pks))
    archive_html.build(app, info, archived, ["2026-11"], new_only=True)
    assert len(read) == 1                      # the new message's bytes, not the month's
    refreshed = {p.relative_to(archived): p.read_bytes() for p in archived.rglob("*.html")}

    monkeypatch.setattr(archive_html, "_SUMMARIES", weakref.WeakKeyDictionary())  # a new process
    read.clear()
    archive_html.build(app, info, archived, ["2026-11"], new_only=True)
    assert len(read) == 6                      # nothing known: every message is read
    shutil.rmtree(archived)
    archive_html.build(app, info, archived)
    assert {p.relative_to(archived): p.read_bytes() for p in archived.rglob("*.html")} \
        == refreshed
