"""The archive job: accepted posts into the archive in the database, and the mbox export.

Accepting a post adds an ArchiveEntry and makes its list's archive job due (add_entry). The
job (archive_list) runs one at a time per list (the job engine's partition
``archive:<list id>``): in one transaction it stores each waiting entry's prepared message
(from the spool) as an ArchiveMessage row with its bytes (listserv.archive.index), deletes the
entries, and, when ``[archive] mbox`` is on, appends the messages to the month files
``<data_dir>/archives/<list>/<yyyy-mm>.mbox`` (fsynced before the commit: a crash in between
can at worst write an entry twice, never leave one out). A message whose Message-ID the
list's archive already holds is skipped, so running an entry twice archives it once. The HTML
pages of the months touched are refreshed after the commit (listserv.archive.html) when
``[archive] pages`` is on. Both files are exports of the database: with several hosts, they are
turned off on all of them and written by ``listserv archive export`` / ``archive build`` where
they are published.

The periodic ``archive`` pass only looks for lists whose entries wait without a job of their
own (entries from before this version; a job deleted by hand) and enqueues one.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
from pathlib import Path
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from listserv import jobs
from listserv.archive import (
    html as archive_html,
    index as archive_index,
    read as archive_read,
    store as archive_store,
)
from listserv.core.app import App
from listserv.core.models import ArchiveEntry, Job, JobState, MailingList

log = logging.getLogger(__name__)

LIST_KIND = "archive_list"      # the job kind of one list's archiving
BATCH = 200                     # entries per transaction
BATCHES_PER_RUN = 25            # then the job hands over to a new one of the same list


def job_key(list_id: int) -> str:
    return f"archive:{list_id}"


def enqueue(session: Session, app: App, list_id: int,
            run_after: dt.datetime | None = None) -> None:
    """In the caller's transaction: make the list's archive job due (at ``run_after``, else
    now; a read first: posts call this under the list lock, and a waiting job is enough)."""
    key = job_key(list_id)
    if session.scalar(select(Job.id).where(Job.dedupe_key == key,
                                           Job.state == JobState.ready)) is None:
        jobs.enqueue(session, app, LIST_KIND, {"list_id": list_id}, partition_key=key,
                     dedupe_key=key, run_after=run_after)


def add_entry(session: Session, app: App, list_id: int, seq: int, spool_sha: str,
              message_id: str, now: dt.datetime, *, delay: dt.timedelta | None = None
              ) -> None:
    """In the caller's transaction: the accepted post ``seq`` (its prepared bytes are
    ``spool_sha``) is to be archived, ``delay`` from ``now`` when given (a job of the list
    already waiting takes the entry along whenever it runs)."""
    session.add(ArchiveEntry(list_id=list_id, seq=seq, spool_sha=spool_sha,
                             message_id=message_id[:998], created_at=now))
    enqueue(session, app, list_id, now + delay if delay is not None else None)


def run_list(app: App, list_id: int) -> None:
    """The archive job of one list: its waiting entries, a batch per transaction; when more
    are left after BATCHES_PER_RUN, a new job of the list follows (others get a turn)."""
    for _ in range(BATCHES_PER_RUN):
        if not archive_batch(app, list_id):
            return
    with app.db.unit_of_work() as session:
        enqueue(session, app, list_id)


def archive_batch(app: App, list_id: int, limit: int | None = None) -> bool:
    """Archive up to ``limit`` (BATCH) of the list's waiting entries in one transaction, then
    refresh the pages of the months touched. True when more entries wait."""
    limit = BATCH if limit is None else limit
    with app.db.unit_of_work() as session:
        entries = list(session.scalars(select(ArchiveEntry).where(
            ArchiveEntry.list_id == list_id).order_by(ArchiveEntry.id).limit(limit + 1)))
        more = len(entries) > limit
        entries = entries[:limit]
        ml = session.get(MailingList, list_id)
        if not entries or ml is None:
            return False
        address = ml.address.lower()
        items: list[archive_index.Item] = []
        for e in entries:
            try:
                data = app.spool.get(e.spool_sha)
            except (FileNotFoundError, LookupError):
                log.error("archive: %s post %d <%s>: its message is gone from the spool, "
                          "not archived", address, e.seq, e.message_id)
                continue
            when = e.created_at
            items.append((data.replace(b"\r\n", b"\n"), f"{when.year:04d}-{when.month:02d}",
                          when))
        added = [items[i] for i in archive_index.add_messages(session, list_id, items)]
        session.execute(delete(ArchiveEntry).where(ArchiveEntry.id.in_([e.id for e in entries]))
                        .execution_options(synchronize_session=False))
        months = sorted({month for _, month, _ in added})
        if app.settings.archive.mbox:
            for month in months:
                append_file(archive_read.month_path(app.settings.archive_path, address, month),
                            b"".join(archive_read.mbox_entry(data, when.timestamp())
                                     for data, m, when in added if m == month))
    if months and app.settings.archive.pages:
        archive_html.refresh(app, {address: set(months)})
    return more


def sweep(app: App) -> int:
    """Enqueue the archive job of each list whose entries wait without one (ready, running
    or dead: a dead job waits for ``listserv queue retry``); how many were enqueued."""
    with app.db.unit_of_work() as session:
        waiting = set(session.scalars(select(ArchiveEntry.list_id).distinct()))
        if not waiting:
            return 0
        have = set(session.scalars(select(Job.partition_key).where(Job.kind == LIST_KIND)))
        missing = [list_id for list_id in sorted(waiting) if job_key(list_id) not in have]
        for list_id in missing:
            enqueue(session, app, list_id)
        return len(missing)


def export(app: App, session: Session, ml: MailingList, out: Path,
           months: list[str] | None = None) -> dict[str, int]:
    """Write the mbox export of ``months`` (all when None) of ``ml``'s archive into ``out``
    (``YYYY-MM.mbox`` each, replaced whole); messages per month written."""
    written = {}
    for month in archive_store.months(session, ml.id) if months is None else months:
        written[month] = archive_store.export_month(session, ml.id, month,
                                                    out / f"{month}.mbox")
    return written


def append_file(path: Path, data: bytes) -> int:
    """Append ``data`` to the mbox file ``path`` under its lock, fsynced; return where it
    starts (also used by listserv.importers.mbox)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return start
