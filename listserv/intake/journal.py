"""The intake's own write path on SQLite: a journal file that only the intake writes.

SQLite has one write lock per database file. A worker's write transactions (a post's accept,
a fan-out chunk, progress records) hold it for milliseconds to tens of milliseconds while its
threads share one interpreter lock, and an SMTP client waiting for its 250 would wait for
them. So an intake that runs in a process of its own (`serve --role intake`) on SQLite commits
each accepted message to ``<database>-intake``, a second SQLite file (WAL, synchronous=FULL:
the 250 is sent after the message is on disk) in which it is the only writer, and answers.

The worker copies the journal's entries into the database (``Drain``): each entry becomes what
listserv.intake.smtp.record writes directly (the message's bytes, one InboundMessage per list
address, their incoming jobs). The last entry copied is a SiteSetting row (MARK) written in the
same transaction as the copies, by compare-and-set, so a crash or a second worker never copies
an entry twice. The intake deletes the entries up to the mark at its next write, so the
journal stays small and has one writer.

Entries wait in the journal while no worker runs; `listserv queue status` counts them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from listserv.core import writegate
from listserv.core.app import App
from listserv.core.errors import TemporaryFailure
from listserv.core.models import MailingList, SiteSetting
from listserv.intake import smtp
from listserv.intake.smtp import Resolved, Spooled

log = logging.getLogger(__name__)

MARK = "intake_journal_copied"   # SiteSetting: the id of the last entry copied
SCHEMA_VERSION = 1
BATCH = 64                       # entries copied per transaction
MARK_TTL = 1.0                   # seconds the intake trusts the mark it last read
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entry (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at TEXT NOT NULL,
    mail_from TEXT NOT NULL,
    message_id TEXT NOT NULL,
    from_addr TEXT NOT NULL,
    subject TEXT NOT NULL,
    sha TEXT NOT NULL,
    routes TEXT NOT NULL,
    raw BLOB NOT NULL
)"""
_COLUMNS = "id, received_at, mail_from, message_id, from_addr, subject, sha, routes, raw"


def path_for(app: App) -> Path | None:
    """``<database>-intake`` for a SQLite database in a file; None otherwise (PostgreSQL
    has row locks: its intake writes the database directly)."""
    if not app.db.is_sqlite:
        return None
    database = app.db.engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database + "-intake")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        conn.close()
        raise RuntimeError(f"{path}: intake journal version {version}, "
                           f"this listserv reads {SCHEMA_VERSION}")
    conn.execute(_SCHEMA)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn


def copied_mark(app: App) -> int:
    """The id of the last journal entry copied into the database (0: none yet)."""
    with app.db.unit_of_work() as session:
        value = session.scalar(select(SiteSetting.value).where(SiteSetting.name == MARK))
    return int(value) if value else 0


class Journal:
    """The intake's writer: ``append`` has listserv.intake.smtp.record's signature and
    promise (durable when it returns), but writes only the journal file."""

    def __init__(self, app: App, path: Path) -> None:
        self.app = app
        self.path = path
        self.lock = threading.Lock()    # one connection, one writer at a time
        self.conn: sqlite3.Connection | None = None
        self.mark = 0                   # the last copied mark read, and when
        self.mark_read = float("-inf")
        self.deleted = 0                # entries up to here are deleted

    def append(self, app: App, spooled: Spooled, resolved: list[Resolved]) -> None:
        spooled.check_from(resolved)
        info = spooled.info
        routes = [list(key) for key in smtp.distinct_routes(resolved)]
        row = (app.now().isoformat(), spooled.mail_from, info.message_id, info.from_addr,
               info.subject, spooled.sha, json.dumps(routes), info.raw)
        try:
            mark = self._mark()
            with self.lock:
                conn = self.conn = self.conn or _connect(self.path)
                conn.execute("BEGIN IMMEDIATE")
                try:
                    if mark > self.deleted:
                        conn.execute("DELETE FROM entry WHERE id <= ?", (mark,))
                    conn.execute(f"INSERT INTO entry ({_COLUMNS.split(', ', 1)[1]}) "
                                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                self.deleted = max(self.deleted, mark)
        except (sqlite3.Error, OSError) as exc:
            log.warning("intake: cannot journal message %s: %s", info.message_id, exc)
            raise TemporaryFailure("cannot record the message now, try again later") from None
        log.info("accepted %s from <%s> for %s", info.message_id, spooled.mail_from,
                 ", ".join(r.rcpt for r in resolved))

    def _mark(self) -> int:
        """The copied mark, read from the database at most every MARK_TTL seconds (a read:
        it never waits for the write lock). A stale mark only delays a deletion."""
        now = time.monotonic()
        if now - self.mark_read >= MARK_TTL:
            try:
                self.mark = copied_mark(self.app)
            except Exception as exc:     # the journal works without it
                log.debug("intake journal: cannot read the copied mark: %s", exc)
            self.mark_read = now
        return self.mark

    def close(self) -> None:
        with self.lock:
            if self.conn is not None:
                self.conn.close()
                self.conn = None


class Drain:
    """The worker's side: copy the journal's new entries into the database. Blocking; one
    caller at a time (the daemon's drain task)."""

    def __init__(self, app: App, path: Path) -> None:
        self.app = app
        self.path = path
        self.conn: sqlite3.Connection | None = None

    def _reader(self) -> sqlite3.Connection | None:
        if self.conn is None and self.path.exists():
            self.conn = _connect(self.path)
            self.conn.execute("PRAGMA query_only=1")
        return self.conn

    def __call__(self) -> int:
        """Copy every entry not yet copied, BATCH per transaction; the number copied."""
        total = 0
        while True:
            copied = self._batch()
            total += copied
            if copied < BATCH:
                return total

    def _batch(self) -> int:
        conn = self._reader()
        if conn is None:
            return 0
        mark = copied_mark(self.app)
        rows = conn.execute(f"SELECT {_COLUMNS} FROM entry WHERE id > ? ORDER BY id LIMIT ?",
                            (mark, BATCH)).fetchall()
        if not rows:
            return 0
        app = self.app
        if not mark:
            self._ensure_mark()
        with writegate.urgent(), app.db.unit_of_work() as session:
            # compare-and-set as the first write: it takes the write lock, and a second
            # worker that copied these entries first makes it change nothing
            moved = getattr(session.execute(update(SiteSetting).where(
                SiteSetting.name == MARK, SiteSetting.value == str(mark)).values(
                value=str(rows[-1][0]))), "rowcount", 0)
            if not moved:
                log.info("intake journal: entries after %d copied by another worker", mark)
                return 0
            alive = set(session.scalars(select(MailingList.id).where(MailingList.id.in_(
                {route[0] for row in rows for route in json.loads(row[7])}))))
            for row in rows:
                self._copy(session, row, alive)
        return len(rows)

    def _ensure_mark(self) -> None:
        with writegate.urgent(), self.app.db.unit_of_work() as session:
            session.execute(sqlite_insert(SiteSetting).values(name=MARK, value="0")
                            .on_conflict_do_nothing())

    def _copy(self, session: Any, row: tuple[Any, ...], alive: set[int]) -> None:
        (_id, received, mail_from, message_id, from_addr, subject, sha, routes, raw) = row
        keep = [tuple(r) for r in json.loads(routes) if r[0] in alive]
        if len(keep) < len(json.loads(routes)):
            # the list was deleted after the 250: its inbound rows would have gone with it
            log.warning("intake journal: %s was accepted for a list deleted since; "
                        "not processed for that list", message_id)
        if not keep:
            return
        smtp.add_rows(session, self.app, raw=raw, sha=sha, mail_from=mail_from,
                      message_id=message_id, from_addr=from_addr, subject=subject,
                      received_at=dt.datetime.fromisoformat(received), routes=keep)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def waiting(app: App) -> int:
    """Entries accepted by the intake and not yet copied into the database."""
    path = path_for(app)
    if path is None or not path.exists():
        return 0
    conn = _connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM entry WHERE id > ?",
                                (copied_mark(app),)).fetchone()[0])
    finally:
        conn.close()
