"""The archive lives in the database: posts archived by their list's job (driven one job at a
time) are served by the web archive, attachments, search, Atom, `get`/`index` by mail and the
static pages with every mbox file deleted; `archive export` writes the same mbox the job
appended; `[archive] mbox = false` writes none, `pages = false` no page; the periodic pass
gives waiting posts a job."""

from __future__ import annotations

import shutil
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from starlette.testclient import TestClient

from listserv import jobs, workers
from listserv.archive import html as archive_html, mbox as archive
from listserv.core import config
from listserv.core.app import App
from listserv.pipeline import posting
from listserv.core.models import (
    ArchiveEntry,
    ArchiveMessage,
    ArchivePolicy,
    ArchiveRaw,
    Job,
    JobState,
    MailingList,
)
from tests.clirun import Cli
from tests.db.modsupport import Outbox, _inbound, command, make_list, message, parse

LIST = "dev@example.org"
ARCHIVE_JOBS = {workers.ARCHIVE_LIST: workers.REGISTRY[workers.ARCHIVE_LIST]}


def post(app: App, list_id: int, data: bytes) -> None:
    """Accept ``data`` as a post of the list (as the incoming worker does)."""
    with app.db.unit_of_work() as s:
        ib = _inbound(s, app, list_id, "post", data, "ann@a.example", None)
        assert posting.accept_post(s, app, ib, parse(data)) is not None


def mail(sender: str, subject: str, body: str, mid: str, **headers: str) -> bytes:
    msg = parse(message(sender, LIST, subject, body, **headers))
    msg.replace_header("Message-ID", mid)
    return msg.as_bytes()


def with_attachment(data: bytes) -> bytes:
    msg = parse(data)
    assert isinstance(msg, EmailMessage)
    msg.add_attachment(b"%PDF-1.4 fake", maintype="application", subtype="pdf",
                       filename="plan.pdf")
    return msg.as_bytes()


@pytest.fixture
def archived(app: App) -> int:
    """A public list with three posts archived by its job: a first post with an attachment
    and a body line starting with 'From ', a reply, and another topic."""
    list_id = make_list(app, LIST, people=("ann@a.example", "bob@b.example"),
                        archive=ArchivePolicy.public)
    post(app, list_id, with_attachment(mail(
        "ann@a.example", "Kick-off", "From now on we meet on Tuesday.\n", "<a@a.example>")))
    post(app, list_id, mail("bob@b.example", "Re: Kick-off", "Tuesday suits me.\n",
                            "<b@b.example>", In_Reply_To="<a@a.example>"))
    post(app, list_id, mail("ann@a.example", "Garden", "Seeds and tools.\n", "<c@a.example>"))
    assert jobs.run_jobs_until_idle(app, ARCHIVE_JOBS) == 1      # one job for the list
    return list_id


def month_of(app: App) -> str:
    return app.now().strftime("%Y-%m")


def test_the_archive_is_served_from_the_database_without_mbox_files(
        app: App, archived: int, web: TestClient) -> None:
    month = month_of(app)
    mbox = app.settings.archive_path / LIST / f"{month}.mbox"
    assert mbox.read_bytes().count(b"\nFrom ") + 1 == 3        # the export, as before
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveEntry)) == 0
        assert s.scalar(select(func.count()).select_from(ArchiveRaw)) == 3
    shutil.rmtree(app.settings.archive_path)                  # every file gone

    base = f"/lists/{LIST}/archive"
    page = web.get(f"{base}/{month}/")
    assert page.status_code == 200 and "Kick-off" in page.text and "Garden" in page.text
    first = web.get(f"/lists/{LIST}/message/a@a.example")
    assert first.status_code == 200, first.text
    assert "From now on we meet on Tuesday." in first.text and "plan.pdf" in first.text
    download = web.get(f"/lists/{LIST}/attachment/1/a@a.example")
    assert download.status_code == 200 and download.content == b"%PDF-1.4 fake"
    found = web.get(f"{base}/search", params={"q": "tuesday"})
    assert "Re: Kick-off" in found.text and "Garden" not in found.text
    feed = web.get(f"{base}/atom.xml")
    assert feed.status_code == 200 and feed.text.count("<entry>") == 3

    outbox = Outbox(app)
    outbox.new()                                            # the posts' copies
    command(app, archived, "request", message("zed@z.example", "dev-request@x", "get",
                                              f"get {month}\n"))
    command(app, archived, "request", message("zed@z.example", "dev-request@x", "index",
                                              "index\n"))
    answers = [m.msg for m in outbox.new()]
    [attached] = [p.get_content() for m in answers for p in m.iter_attachments()]
    [index] = [m for m in answers if str(m["Subject"]) == f"Archive index of {LIST}"]
    assert attached.count(b"\nFrom ") + 1 == 3
    assert b"\n>From now on we meet on Tuesday.\n" in attached
    text = index.get_body(preferencelist=("plain",)).get_content()
    assert month in text and "Kick-off" in text and "Garden" in text

    with app.db.unit_of_work() as s:
        info = archive_html.ListInfo.of(s.get_one(MailingList, archived))
    out = app.settings.archive_path / "pages"
    report = archive_html.build(app, info, out)
    assert report.months == 1 and (out / month / "3.html").is_file()
    assert "Tuesday suits me." in (out / month / "2.html").read_text()


def test_export_writes_the_mbox_the_archive_job_appended(
        app: App, archived: int, cli_env: dict[str, str], tmp_path: Path) -> None:
    month = month_of(app)
    mbox = app.settings.archive_path / LIST / f"{month}.mbox"
    appended = mbox.read_bytes()
    mbox.unlink()
    cli = Cli(cli_env)
    out = cli("archive", "export", LIST).stdout
    assert out == f"{LIST}: 3 messages in 1 mbox files in {mbox.parent}\n"
    assert mbox.read_bytes() == appended
    elsewhere = tmp_path / "export"
    cli("archive", "export", LIST, "--month", month, "--to", str(elsewhere))
    assert (elsewhere / f"{month}.mbox").read_bytes() == appended
    assert "not a month" in cli.error("archive", "export", LIST, "--month", "2026-13")
    assert "no archived messages in 1999-01" in cli.error("archive", "export", LIST,
                                                         "--month", "1999-01")
    assert "no such list" in cli.error("archive", "export", "nope@example.org")


def test_without_mbox_export_the_job_writes_no_file(app: App) -> None:
    quiet = App(settings=config.replace(app.settings, archive__mbox=False), db=app.db,
                spool=app.spool, now=app.now, resolve_txt=app.resolve_txt)
    list_id = make_list(quiet, LIST, people=("ann@a.example",), archive=ArchivePolicy.private)
    post(quiet, list_id, message("ann@a.example", LIST, "Only in the database"))
    jobs.run_jobs_until_idle(quiet, ARCHIVE_JOBS)
    with quiet.db.unit_of_work() as s:
        assert [m.subject for m in s.scalars(select(ArchiveMessage))] == [
            "[dev] Only in the database"]
    assert not list((quiet.settings.archive_path / LIST).glob("*.mbox"))


def test_without_pages_the_job_writes_no_static_pages(app: App) -> None:
    """`[archive] pages = false` (the hosts that do not publish): the job writes no page;
    with the default, the same post's month page is written."""
    html = app.settings.archive_path / LIST / "html"
    for pages in (False, True):
        this = App(settings=config.replace(app.settings, archive__pages=pages), db=app.db,
                   spool=app.spool, now=app.now, resolve_txt=app.resolve_txt)
        if not pages:
            list_id = make_list(this, LIST, people=("ann@a.example",),
                                archive=ArchivePolicy.public)
        post(this, list_id, message("ann@a.example", LIST, f"Pages {pages}"))
        assert jobs.run_jobs_until_idle(this, ARCHIVE_JOBS) == 1
        if not pages:
            assert not html.exists()
    assert "Pages True" in (html / month_of(app) / "index.html").read_text()


def test_one_job_per_list_and_the_sweep_for_posts_without_one(app: App) -> None:
    list_id = make_list(app, LIST, people=("ann@a.example",), archive=ArchivePolicy.private)
    for n in range(3):
        post(app, list_id, message("ann@a.example", LIST, f"post {n}"))
    with app.db.unit_of_work() as s:
        [job] = s.scalars(select(Job).where(Job.kind == archive.LIST_KIND))
        assert (job.partition_key, job.dedupe_key, job.payload) == (
            f"archive:{list_id}", f"archive:{list_id}", {"list_id": list_id})
        s.execute(delete(Job).where(Job.kind == archive.LIST_KIND))    # lost, or pre-upgrade
    assert jobs.run_jobs_until_idle(app, ARCHIVE_JOBS) == 0
    workers.archive_pass(app, {})
    workers.archive_pass(app, {})                           # a waiting job is enough
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(
            Job.kind == archive.LIST_KIND)) == 1
    assert jobs.run_jobs_until_idle(app, ARCHIVE_JOBS) == 1
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(ArchiveMessage)) == 3
        assert s.scalar(select(func.count()).select_from(ArchiveEntry)) == 0
    assert archive.sweep(app) == 0


def test_a_dead_archive_job_is_not_replaced_by_the_sweep(app: App) -> None:
    list_id = make_list(app, LIST, people=("ann@a.example",), archive=ArchivePolicy.private)
    post(app, list_id, message("ann@a.example", LIST, "stuck"))
    with app.db.unit_of_work() as s:
        s.execute(Job.__table__.update().where(Job.kind == archive.LIST_KIND)
                  .values(state=JobState.dead))
    assert archive.sweep(app) == 0                  # waits for `listserv queue retry`


def test_many_waiting_posts_go_in_batches(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "BATCH", 2)
    monkeypatch.setattr(archive, "BATCHES_PER_RUN", 2)
    list_id = make_list(app, LIST, people=("ann@a.example",), archive=ArchivePolicy.private)
    for n in range(7):
        post(app, list_id, message("ann@a.example", LIST, f"post {n}"))
    assert jobs.run_jobs_until_idle(app, ARCHIVE_JOBS) == 2    # 4 per run, then a new job
    with app.db.unit_of_work() as s:
        subjects = list(s.scalars(select(ArchiveMessage.subject).order_by(ArchiveMessage.id)))
    assert subjects == [f"[dev] post {n}" for n in range(7)]
    box = (app.settings.archive_path / LIST / f"{month_of(app)}.mbox").read_bytes()
    assert [box.index(f"Subject: [dev] post {n}".encode()) for n in range(7)] == sorted(
        box.index(f"Subject: [dev] post {n}".encode()) for n in range(7))
