"""The intake's own write path on SQLite: a journal file that only the intake writes.

SQLite has one write lock per database file. A worker's write transactions (a post's accept,
a fan-out chunk, progress records) hold it for milliseconds to tens of milliseconds while its
threads share one interpreter lock, and an SMTP client waiting for its 250 would wait for
them. So the intake of `serve` on SQLite (in a process of its own, `--role intake`, or beside
the workers, `--role all`) commits each accepted message to ``<database>-intake``, a second
SQLite file (WAL, synchronous=FULL: the 250 is sent after the message is on disk) in which it
is the only writer, and answers.
A journal is named by a random token made when its file is created.

The worker copies the journal's entries into the database (``Drain``): each entry becomes what
listserv.intake.smtp.record writes directly (the message's bytes, one InboundMessage per list
address, their incoming jobs). The journal's token and the id of the last entry copied are a
SiteSetting row (MARK, ``token:id``) written in the same transaction as the copies, by
compare-and-set, so a crash or a second worker never copies an entry twice; a journal made
anew (another token) starts from its first entry. The intake deletes the entries up to the
mark as it journals the next messages (DELETE_AT_MOST per message), so the journal stays
small and has one writer.

Entries wait in the journal while no worker runs; `listserv queue status` counts them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
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

MARK = "intake_journal_copied"   # SiteSetting: "<journal token>:<id of the last entry copied>"
SCHEMA_VERSION = 1
BATCH = 64                       # entries copied per transaction, at most,
BATCH_BYTES = 32 * 1024 * 1024   # and about this many message bytes (at least one entry)
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
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('token', lower(hex(randomblob(16))));
"""
_COLUMNS = "id, received_at, mail_from, message_id, from_addr, subject, sha, routes, raw"
_INSERT = (f"INSERT INTO entry ({_COLUMNS.split(', ', 1)[1]}) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
DELETE_AT_MOST = 256             # copied entries the intake deletes per message it journals


def path_for(app: App) -> Path | None:
    """``<database>-intake`` for a SQLite database in a file; None otherwise (PostgreSQL
    has row locks: its intake writes the database directly)."""
    if not app.db.is_sqlite:
        return None
    database = app.db.engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(database + "-intake")


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's (device, inode), None when it is missing: a process holding a journal
    open notices when it was removed or replaced and opens the one now at ``path``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # deleted entries' pages are reused, not overwritten with zeros (which some builds do
    # by default, writing every deleted message again); the WAL is cut back after use
    conn.execute("PRAGMA secure_delete=OFF")
    conn.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, SCHEMA_VERSION):
        conn.close()
        raise RuntimeError(f"{path}: intake journal version {version}, "
                           f"this listserv reads {SCHEMA_VERSION}")
    if version == 0:
        conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA}; PRAGMA user_version={SCHEMA_VERSION};"
                           " COMMIT;")
    return conn


def token_of(conn: sqlite3.Connection) -> str:
    return str(conn.execute("SELECT value FROM meta WHERE name = 'token'").fetchone()[0])


def copied_mark(app: App) -> str:
    """The MARK row's value: ``token:id`` of the last journal entry copied ('' : none)."""
    with app.db.unit_of_work() as session:
        return session.scalar(select(SiteSetting.value).where(SiteSetting.name == MARK)) or ""


def copied_up_to(mark: str, token: str) -> int:
    """The id of the last entry of journal ``token`` copied, by ``mark`` (0: none)."""
    mark_token, _, last = mark.partition(":")
    return int(last) if mark_token == token and last.isdigit() else 0


class Journal:
    """The intake's writer: ``append`` has listserv.intake.smtp.record's signature and
    promise (durable when it returns), but writes only the journal file."""

    def __init__(self, app: App, path: Path) -> None:
        self.app = app
        self.path = path
        self.lock = threading.Lock()    # one connection, one writer at a time
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None
        self.token = ""
        self.mark = ""                  # the last copied mark read, and when
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
                conn = self._open()
                # the copied entries, a few at a time: a backlog copied after a worker was
                # down is not all deleted in front of one client's 250
                upto = min(copied_up_to(mark, self.token), self.deleted + DELETE_AT_MOST)
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    if upto > self.deleted:
                        conn.execute("DELETE FROM entry WHERE id <= ?", (upto,))
                    conn.execute(_INSERT, row)
                    conn.execute("COMMIT")
                except BaseException:
                    # a connection left in doubt (disk full, I/O error) is not used again
                    self.close_connection()
                    raise
                self.deleted = max(self.deleted, upto)
        except (sqlite3.Error, OSError) as exc:
            log.warning("intake: cannot journal message %s: %s", info.message_id, exc)
            raise TemporaryFailure("cannot record the message now, try again later") from None
        log.info("accepted %s from <%s> for %s", info.message_id, spooled.mail_from,
                 ", ".join(r.rcpt for r in resolved))

    def _open(self) -> sqlite3.Connection:
        """The connection to the journal now at ``path`` (made when missing), under the lock."""
        identity = _identity(self.path)
        if self.conn is not None and identity != self.identity:
            log.warning("intake journal %s was removed or replaced; opening it again", self.path)
            self.close_connection()
        if self.conn is None:
            conn = _connect(self.path)
            self.identity = _identity(self.path)
            self.token = token_of(conn)
            # everything before the first entry left (or, none left, the last id given)
            self.deleted = int(conn.execute(
                "SELECT coalesce((SELECT min(id) - 1 FROM entry), "
                "(SELECT seq FROM sqlite_sequence WHERE name = 'entry'), 0)").fetchone()[0])
            self.conn = conn
        return self.conn

    def close_connection(self) -> None:
        if self.conn is not None:
            conn, self.conn = self.conn, None
            conn.close()

    def _mark(self) -> str:
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
            self.close_connection()


class Drain:
    """The worker's side: copy the journal's new entries into the database. Blocking; one
    caller at a time (the daemon's drain task)."""

    def __init__(self, app: App, path: Path) -> None:
        self.app = app
        self.path = path
        self.conn: sqlite3.Connection | None = None
        self.identity: tuple[int, int] | None = None
        self.token = ""

    def _reader(self) -> sqlite3.Connection | None:
        """The connection to the journal now at ``path``; None while there is none."""
        identity = _identity(self.path)
        if self.conn is not None and identity != self.identity:
            self.close()             # removed or replaced: read the new one
        if self.conn is None and identity is not None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only=1")
            self.identity, self.token, self.conn = identity, token_of(conn), conn
        return self.conn

    def batch(self) -> int:
        """Copy the next entries (at most BATCH, about BATCH_BYTES) in one transaction;
        the number copied. After an error the journal is opened afresh."""
        try:
            return self._batch()
        except BaseException:
            self.close()
            raise

    def _batch(self) -> int:
        conn = self._reader()
        if conn is None:
            return 0
        mark = copied_mark(self.app)
        after = copied_up_to(mark, self.token)
        last, size = after, 0
        for entry_id, length in conn.execute(
                "SELECT id, length(raw) FROM entry WHERE id > ? ORDER BY id LIMIT ?",
                (after, BATCH)):
            if last > after and size + length > BATCH_BYTES:
                break
            last, size = entry_id, size + length
        if last == after:
            return 0
        rows = [(row, json.loads(row[7])) for row in conn.execute(
            f"SELECT {_COLUMNS} FROM entry WHERE id > ? AND id <= ? ORDER BY id",
            (after, last))]
        app = self.app
        if not mark:
            self._ensure_mark()
        with writegate.urgent(), app.db.unit_of_work() as session:
            # compare-and-set as the first write: it takes the write lock, and a second
            # worker that copied these entries first makes it change nothing
            moved = getattr(session.execute(update(SiteSetting).where(
                SiteSetting.name == MARK, SiteSetting.value == mark).values(
                value=f"{self.token}:{last}")), "rowcount", 0)
            if not moved:
                log.info("intake journal: entries after %d copied by another worker", after)
                return 0
            alive = set(session.scalars(select(MailingList.id).where(MailingList.id.in_(
                {route[0] for _, routes in rows for route in routes}))))
            for row, routes in rows:
                self._copy(session, row, routes, alive)
        return len(rows)

    def _ensure_mark(self) -> None:
        with writegate.urgent(), self.app.db.unit_of_work() as session:
            session.execute(sqlite_insert(SiteSetting).values(name=MARK, value="")
                            .on_conflict_do_nothing())

    def _copy(self, session: Any, row: tuple[Any, ...], routes: list[list[Any]],
              alive: set[int]) -> None:
        (_id, received, mail_from, message_id, from_addr, subject, sha, _routes, raw) = row
        keep = [tuple(r) for r in routes if r[0] in alive]
        if len(keep) < len(routes):
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


def waiting(app: App) -> int | None:
    """Entries accepted by the intake and not yet copied into the database (None: the
    journal cannot be read)."""
    path = path_for(app)
    if path is None or not path.exists():
        return 0
    try:
        conn = sqlite3.connect(path, timeout=30)
        try:
            conn.execute("PRAGMA query_only=1")
            after = copied_up_to(copied_mark(app), token_of(conn))
            return int(conn.execute("SELECT count(*) FROM entry WHERE id > ?",
                                    (after,)).fetchone()[0])
        finally:
            conn.close()
    except (sqlite3.Error, TypeError) as exc:    # TypeError: no token row
        log.warning("intake journal %s cannot be read: %s", path, exc)
        return None
