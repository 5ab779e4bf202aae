"""listserv import mbox: archived by month, nothing sent, duplicates skipped, pages built."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from listserv.archive import read as archive_read, store as archive_store
from listserv.core.app import App
from listserv.core.models import ArchiveEntry, ArchiveMessage, InboundMessage, OutboundMessage
from tests.clirun import Cli
from tests.mm2fixture import pipermail_mbox

ADDR = "dev@lists.example.org"


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    c = Cli(cli_env)
    c("list", "create", ADDR)
    c("list", "set", ADDR, "archive", "public")
    return c


def test_pipermail_archive_is_imported_once(cli: Cli, app: App, tmp_path: Path) -> None:
    mbox = tmp_path / "dev.mbox"
    pipermail_mbox(mbox, 60, start=1_300_000_000.0, step=86400.0)   # two months and a bit
    out = cli("import", "mbox", ADDR, str(mbox)).stdout
    assert "60 messages read, added 60, skipped 0 already archived, 3 months" in out
    root = app.settings.archive_path
    months = archive_read.months(root, ADDR)
    assert months == ["2011-03", "2011-04", "2011-05"]
    entries = [e for m in months for e in archive_read.read_month(root, ADDR, m)]
    assert len(entries) == 60
    first = entries[0].message()
    assert str(first["From"]) == "User 0 <user0@example.org>"        # de-obfuscated
    assert first["Message-ID"] == "<m0@example.org>"
    assert "\nFrom the quoted line of an mbox writer\n" in first.get_content()
    assert "Café" in first.get_content()
    no_id = [e for e in entries if b"Message-ID: <imported." in e.raw]
    assert len(no_id) == 2                      # messages 7 and 57 had none
    html = root / ADDR / "html"
    assert (html / "index.html").exists() and (html / "2011-03" / "1.html").exists()
    assert "Re: Topic 0" in (html / "2011-03" / "index.html").read_text()
    with app.db.unit_of_work() as s:
        for model in (InboundMessage, OutboundMessage, ArchiveEntry):
            assert s.scalar(select(func.count()).select_from(model)) == 0   # nothing sent
        indexed = {r.message_id: r for r in s.scalars(select(ArchiveMessage))}
    assert len(indexed) == 60                                        # the search index
    reply = indexed["m6@example.org"]
    assert reply.thread_id == "m4@example.org" and reply.parent_id == "m4@example.org"
    assert reply.sender_address == "user6@example.org" and reply.month == "2011-03"
    with app.db.unit_of_work() as s:
        raw = archive_store.raw(s, reply.id)
    assert b"Message number 6." in raw
    export = {m: archive_read.month_path(root, ADDR, m).read_bytes() for m in months}
    with app.db.unit_of_work() as s:                  # the month files are the export
        assert export == {m: b"".join(archive_store.mbox_entries(s, reply.list_id, m))
                          for m in months}

    sizes = [archive_read.month_path(root, ADDR, m).stat().st_size for m in months]
    again = cli("import", "mbox", ADDR, str(mbox)).stdout
    assert "added 0, skipped 60 already archived" in again
    assert [archive_read.month_path(root, ADDR, m).stat().st_size for m in months] == sizes

    more = tmp_path / "more.mbox"
    pipermail_mbox(more, 70, start=1_300_000_000.0, step=86400.0)      # 10 new at the end
    assert "added 10, skipped 60" in cli("import", "mbox", ADDR, str(more)).stdout
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveMessage)) == 70


def test_dry_run_and_errors(cli: Cli, app: App, tmp_path: Path) -> None:
    mbox = tmp_path / "dev.mbox"
    pipermail_mbox(mbox, 5)
    out = cli("import", "mbox", ADDR, str(mbox), "--dry-run").stdout
    assert "would add 5" in out
    assert archive_read.months(app.settings.archive_path, ADDR) == []
    out = cli("import", "mbox", ADDR, str(mbox), "--no-pages").stdout
    assert "added 5" in out and "pages" not in out
    assert len(archive_read.months(app.settings.archive_path, ADDR)) == 1
    assert not (app.settings.archive_path / ADDR / "html").exists()
    assert "cannot read" in cli.error("import", "mbox", ADDR, str(tmp_path / "nope"))
    assert "no such list" in cli.error("import", "mbox", "x@lists.example.org", str(mbox))
    cli("list", "set", ADDR, "archive", "none")
    assert "archive = none" in cli.error("import", "mbox", ADDR, str(mbox))


def test_progress_reports_every_byte_and_every_page_is_built(cli: Cli, app: App,
                                                             tmp_path: Path) -> None:
    """The progress bar (shown on a terminal) is fed the bytes read, up to the file's size;
    each imported message gets its page, each month its index."""
    from listserv.importers.mbox import import_mbox

    mbox = tmp_path / "dev.mbox"
    pipermail_mbox(mbox, 120, start=1_300_000_000.0, step=43200.0)
    steps: list[int] = []
    report = import_mbox(app, ADDR, mbox, progress=steps.append)
    assert sum(steps) == mbox.stat().st_size and all(s > 0 for s in steps)
    assert report.added == 120 and len(report.months) == 3
    html = app.settings.archive_path / ADDR / "html"
    pages = {m: len(list((html / m).glob("[0-9]*.html"))) for m in sorted(report.months)}
    counts = {m: len(archive_read.read_month(app.settings.archive_path, ADDR, m))
              for m in report.months}
    assert pages == counts and sum(pages.values()) == 120
    assert report.pages == 120 + 3 + 1                   # messages, month pages, the index
    assert not list(html.glob(".building-*")) and not list(html.rglob(".tmp-*"))
