"""The mbox archive: append accepted posts to <data_dir>/archives/<list>/<yyyy-mm>.mbox.

The ArchiveEntry rows are the queue (appended_at NULL = still to write). A pass appends each
pending entry's prepared message (mboxrd: From_ line, '>From ' quoting), fsyncs the file and
only then commits the rows' appended_at, with each message's row in the search index
(listserv.archive.index: where in the file it is, its headers and text). A crash between the two can at worst append an entry twice, never
lose one. Rows are claimed FOR UPDATE SKIP LOCKED on PostgreSQL and files are flock'ed, so
several processes may run passes.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import time
from email.parser import BytesHeaderParser
from email.utils import parseaddr
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from listserv.archive import html as archive_html, index as archive_index, read as archive_read
from listserv.core import isolation
from listserv.core.app import App
from listserv.core.models import ArchiveEntry, Domain, MailingList

log = logging.getLogger(__name__)

BATCH = 200
_FROM_LINE = re.compile(rb"^>*From ", re.MULTILINE)


def mbox_path(app: App, list_address: str, when_year: int, when_month: int) -> Path:
    return app.settings.archive_path / list_address.lower() / f"{when_year:04d}-{when_month:02d}.mbox"


def mbox_entry(data: bytes, when: float, sender: str | None = None) -> bytes:
    """One mboxrd entry: From_ line, body with LF endings and '>From ' quoting, blank line.
    ``sender`` (the From_ line's address) is read from the From header when not given."""
    data = data.replace(b"\r\n", b"\n")
    if sender is None:
        headers = BytesHeaderParser().parsebytes(data)
        sender = parseaddr(str(headers.get("From") or ""))[1]
    sender = sender or "MAILER-DAEMON"
    sender = "".join(sender.split()) or "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(when))
    body = _FROM_LINE.sub(lambda m: b">" + m.group(0), data)
    if not body.endswith(b"\n"):
        body += b"\n"
    return f"From {sender} {stamp}\n".encode("utf-8", "replace") + body + b"\n"


def _list_addresses(session: Session, ids: set[int]) -> dict[int, str]:
    rows = session.execute(select(MailingList.id, MailingList.name, Domain.name)
                           .join(Domain).where(MailingList.id.in_(ids))).all()
    return {r[0]: f"{r[1]}@{r[2]}" for r in rows}


def append_pending(app: App, limit: int = BATCH) -> int:
    """Append up to ``limit`` pending entries; return how many were written. Then refresh
    the HTML pages of the months touched (listserv.archive.html; failures only logged)."""
    touched: dict[str, set[str]] = {}
    done = _append_batch(app, limit, touched)
    if touched:
        archive_html.refresh(app, touched)
    return done


FAILURES = isolation.Failures("archive append", log)


def _append_batch(app: App, limit: int, touched: dict[str, set[str]]) -> int:
    with app.db.unit_of_work() as session:
        query = select(ArchiveEntry).where(ArchiveEntry.appended_at.is_(None))
        waiting = {key[0] for key in FAILURES.waiting() if isinstance(key, tuple)}
        if waiting:                      # lists whose mbox failed lately wait for their retry
            query = query.where(ArchiveEntry.list_id.not_in(waiting))
        candidates = list(session.scalars(
            query.order_by(ArchiveEntry.id).limit(limit).with_for_update(skip_locked=True)))
        now = app.now()
        entries = []
        for e in candidates:
            # Claim: the first transaction to mark the row owns it (the row/write lock makes
            # a concurrent pass wait, then match nothing). Committed only after the fsync.
            won = session.execute(update(ArchiveEntry)
                                  .where(ArchiveEntry.id == e.id,
                                         ArchiveEntry.appended_at.is_(None))
                                  .values(appended_at=now)
                                  .execution_options(synchronize_session=False))
            if won.rowcount == 1:  # type: ignore[attr-defined]
                entries.append(e)
        if not entries:
            return 0
        names = _list_addresses(session, {e.list_id for e in entries})
        by_file: dict[tuple[int, Path], list[ArchiveEntry]] = {}
        for e in entries:
            when = e.created_at
            path = mbox_path(app, names[e.list_id], when.year, when.month)
            by_file.setdefault((e.list_id, path), []).append(e)
        written = 0
        for (list_id, path), group in by_file.items():
            # One file that cannot be written (a full disk, a bad path) leaves its entries
            # pending for a later pass; the other lists' files are still written.
            key = (list_id, str(path))
            what = (f"list {names[list_id]} ({path.name}), Message-ID(s) "
                    + ", ".join(e.message_id or f"entry {e.id}" for e in group[:5]))
            if FAILURES.run(key, what, lambda: _write_group(app, session, path, group)) is None:
                session.execute(update(ArchiveEntry)
                                .where(ArchiveEntry.id.in_([e.id for e in group]))
                                .values(appended_at=None)
                                .execution_options(synchronize_session=False))
                continue
            touched.setdefault(names[list_id].lower(), set()).add(path.stem)
            written += len(group)
        return written


def _write_group(app: App, session: Session, path: Path, group: list[ArchiveEntry]) -> bool:
    """Append ``group`` to its mbox and index it (the index rows in a savepoint, so that a
    failure leaves the transaction usable for the other files)."""
    chunks = [mbox_entry(app.spool.get(e.spool_sha, session=session), e.created_at.timestamp())
              for e in group]
    with session.begin_nested():
        offset = _append(path, b"".join(chunks))
        for e, chunk in zip(group, chunks):
            # The search index row commits with appended_at (a retry re-adds both).
            archive_index.index_message(
                session, e.list_id, archive_read.unquote_entry(chunk)[1],
                month=path.stem, offset=offset, length=len(chunk),
                archived_at=e.created_at)
            offset += len(chunk)
    return True


def append_file(path: Path, data: bytes) -> int:
    """Append ``data`` to the mbox file ``path`` under its lock, fsynced; return where it
    starts (also used by listserv.importers.mbox)."""
    return _append(path, data)


def _append(path: Path, data: bytes) -> int:
    """Append ``data`` to the mbox at ``path`` (flock'ed, fsynced); return where it starts."""
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
