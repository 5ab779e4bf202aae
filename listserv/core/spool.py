"""Message bytes in the database, content-addressed: table ``spool_blob`` (sha256 -> bytes).

Every process that shares the database reads every message it needs from it: one thing to
back up and replicate, no shared directory whose rename/fsync semantics must hold across
hosts. The intake writes the bytes in the transaction that records the message, so the row
and its bytes commit together before the 250 (PostgreSQL keeps MB-size values out of line in
TOAST; SQLite stores them in the database file).

put() inserts the bytes unless that sha is stored already (the same bytes twice: one copy),
and then marks an old row as used again (``stored_at``), which is what keeps the retention
sweep (listserv.admin.retention) away from bytes a transaction is about to refer to: the
sweep only deletes rows no row refers to whose stored_at is older than its grace period, and
repeats both conditions in its DELETE.

Installations from before the database spool kept the bytes as files
(``<data_dir>/spool/ab/cdef....eml``): `listserv db upgrade` imports them (import_files), and
get() still reads such a file when the database lacks the sha.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import Table, bindparam, select
from sqlalchemy.orm import Session

from listserv.core.db import Database
from listserv.core.models import SpoolBlob

log = logging.getLogger(__name__)

# put() refreshes the stored_at of a row older than this (retention.SPOOL_GRACE is longer),
# so that storing the same bytes often (a re-sent notice) does not write each time.
REFRESH = dt.timedelta(minutes=10)
LEGACY_SUFFIXES = (".eml", ".eml.pruning")
PART_PREFIX = "spool_"      # the parameters of part()


class SpoolMissing(FileNotFoundError):
    """No stored bytes for a sha (callers treat it like the lost file it used to be)."""


def wall_clock() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def sha_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Spool:
    """put/get of message bytes by sha256. With ``session``, in the caller's transaction (a
    row and the bytes it names commit together); without, in a short transaction of its own.
    ``legacy_root`` is the old spool directory, read when the database lacks a sha."""

    def __init__(self, db: Database, legacy_root: Path | str | None = None,
                 clock: Callable[[], dt.datetime] = wall_clock) -> None:
        self.db = db
        self.legacy_root = Path(legacy_root) if legacy_root is not None else None
        self.clock = clock

    def put(self, data: bytes, session: Session | None = None) -> str:
        """Store ``data`` (idempotent); return its SHA-256."""
        sha = sha_of(data)
        if session is None:
            with self.db.unit_of_work() as own:
                self._insert(own, sha, data)
        else:
            self._insert(session, sha, data)
        return sha

    def part(self, data: bytes, sha: str) -> tuple[Any, dict[str, Any]]:
        """put() of ``data`` (whose SHA-256 is ``sha``) on PostgreSQL as a part of the
        caller's own statement (a data-modifying CTE, so that the bytes and the rows naming
        them commit together in one round trip): the INSERT, built once, and its parameters
        (named ``spool_``...)."""
        now = self.clock()
        return _put_statement("postgresql", PART_PREFIX), {
            PART_PREFIX + "sha": sha, PART_PREFIX + "data": data,
            PART_PREFIX + "size": len(data), PART_PREFIX + "now": now,
            PART_PREFIX + "stale": now - REFRESH}

    def _insert(self, session: Session, sha: str, data: bytes) -> None:
        now = self.clock()
        session.execute(_put_statement(session.get_bind().dialect.name),
                        {"sha": sha, "data": data, "size": len(data), "now": now,
                         "stale": now - REFRESH})

    def get(self, sha: str, session: Session | None = None) -> bytes:
        """The bytes stored under ``sha``; SpoolMissing when there are none."""
        query = select(SpoolBlob.data).where(SpoolBlob.sha == sha)
        if session is None:
            with self.db.unit_of_work() as own:
                data = own.scalar(query)
        else:
            data = session.scalar(query)
        if data is None:
            data = self._legacy(sha)
        if data is None:
            raise SpoolMissing(f"no stored message {sha}")
        return bytes(data)

    def size(self, sha: str, session: Session) -> int | None:
        return session.scalar(select(SpoolBlob.size).where(SpoolBlob.sha == sha))

    def exists(self, sha: str, session: Session | None = None) -> bool:
        query = select(SpoolBlob.sha).where(SpoolBlob.sha == sha)
        if session is None:
            with self.db.unit_of_work() as own:
                return own.scalar(query) is not None
        return session.scalar(query) is not None

    # ------------------------------------------------------------------ the old directory

    def _legacy_paths(self, sha: str) -> list[Path]:
        if self.legacy_root is None or len(sha) != 64:
            return []
        d = self.legacy_root / sha[:2]
        return [d / f"{sha[2:]}.eml", d / f".{sha[2:]}.eml.pruning"]

    def _legacy(self, sha: str) -> bytes | None:
        for path in self._legacy_paths(sha):
            try:
                data = path.read_bytes()
            except OSError:
                continue
            if sha_of(data) == sha:
                return data
        return None

    def import_files(self, batch: int = 200) -> tuple[int, int]:
        """Copy the old spool directory's message files into the database (those it lacks);
        (files imported, bytes). The files stay; once imported they are no longer read."""
        if self.legacy_root is None or not self.legacy_root.is_dir():
            return 0, 0
        done = [0, 0]
        pending: list[tuple[str, bytes]] = []

        def flush() -> None:
            with self.db.unit_of_work() as session:
                have = set(session.scalars(select(SpoolBlob.sha).where(
                    SpoolBlob.sha.in_([sha for sha, _ in pending]))))
                for sha, data in pending:
                    if sha not in have:
                        self._insert(session, sha, data)
                        done[0], done[1] = done[0] + 1, done[1] + len(data)
            pending.clear()

        for dirpath, _, names in os.walk(self.legacy_root):
            prefix = os.path.basename(dirpath)
            for name in names:
                tail = next((name[:-len(s)] for s in LEGACY_SUFFIXES if name.endswith(s)), None)
                if tail is None:
                    continue
                sha = prefix + tail.lstrip(".")
                try:
                    data = Path(dirpath, name).read_bytes()
                except OSError as exc:
                    log.warning("spool import: cannot read %s: %s", name, exc)
                    continue
                if sha_of(data) != sha:
                    continue          # not a complete message file (an interrupted write)
                pending.append((sha, data))
                if len(pending) >= batch:
                    flush()
        if pending:
            flush()
        return done[0], done[1]


_PUT: dict[str, Any] = {}


def _put_statement(dialect: str, prefix: str = "") -> Any:
    """put()'s INSERT ... ON CONFLICT (SQLite and PostgreSQL both have it), in Core on the
    table and built once per dialect: the intake runs it before every 250, and building and
    compiling it anew cost more than executing it. Its parameters are named ``prefix`` +
    sha, data, size, now, stale."""
    stmt = _PUT.get(dialect + prefix)
    if stmt is None:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        table: Table = SpoolBlob.__table__  # type: ignore[assignment]
        stamp = table.c.stored_at.type
        now = bindparam(prefix + "now", type_=stamp)
        stmt = _PUT[dialect + prefix] = insert(table).values(
            sha=bindparam(prefix + "sha"), data=bindparam(prefix + "data"),
            size=bindparam(prefix + "size"), stored_at=now,
        ).on_conflict_do_update(index_elements=[table.c.sha], set_={"stored_at": now},
                                where=table.c.stored_at < bindparam(prefix + "stale",
                                                                    type_=stamp))
    return stmt
