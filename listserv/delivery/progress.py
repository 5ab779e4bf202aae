"""Progress records of a delivery worker, written through the database driver.

A VERP'd fan-out records what it delivered thousands of times a second (each connection
waits for the record of its last copy before it sends the next: listserv.delivery.runner),
so listserv.delivery.queues.PROGRESS_UPDATE is compiled once, its
parameters converted by the columns' own types, and run on the driver's connection: a few
microseconds instead of SQLAlchemy's per-execution work. Same statement, same effect.

On SQLite a record may be written without waiting for the database's write lock or this
process's write gate (``wait=False``): the delivery loop does that in line, which spares it
a hop to a thread and back per record, and hands the record to a thread only when another
writer holds them. PostgreSQL is always written from a thread (a network round trip).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from typing import Any, Callable

from sqlalchemy.engine import Engine

from listserv.delivery.queues import PROGRESS_UPDATE, progress_connection
from listserv.jobs.engine import LEASE

WAIT_MS = 30000           # SQLite: how long a waiting record waits for the write lock


class Busy(Exception):
    """The write lock is held by another writer (SQLite, ``wait=False``): nothing written."""


class ProgressWriter:
    """Progress records on one kept connection of its own (queues.progress_connection)."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        self.sqlite = dialect.name == "sqlite"
        compiled = PROGRESS_UPDATE.compile(dialect=dialect)
        self.sql = str(compiled)
        self.order: tuple[str, ...] | None = (tuple(compiled.positiontup or ())
                                             if compiled.positional else None)
        self.convert: dict[str, Callable[[Any], Any]] = {}
        for name, bind in compiled.binds.items():
            proc = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self.convert[name] = proc
        self.constants = dict(compiled.params)     # the state the row must be in
        self.conn = progress_connection(engine)
        raw = self.conn.connection.dbapi_connection
        assert raw is not None
        self.raw: Any = raw
        self.waits = True                   # SQLite: the busy timeout in force is WAIT_MS
        if self.sqlite:
            cur = self.raw.cursor()
            # checkpoints are left to the other connections: one here could take a while
            cur.execute("PRAGMA wal_autocheckpoint=0")
            cur.close()

    def _params(self, values: dict[str, Any]) -> Any:
        conv = self.convert
        done = {k: (conv[k](v) if k in conv else v) for k, v in values.items()}
        return done if self.order is None else tuple(done[k] for k in self.order)

    def write(self, owner: str, now: dt.datetime, sent: dict[int, str],
              lease: dt.timedelta = LEASE, wait: bool = True) -> set[int]:
        """Set rows' ``sent`` and renew their leases, committed; the ids whose lease was lost
        (queues.PROGRESS_UPDATE). ``wait=False`` (SQLite): raise Busy at once, having
        written nothing, when another writer holds the lock."""
        if self.sqlite and wait != self.waits:
            cur = self.raw.cursor()
            cur.execute(f"PRAGMA busy_timeout={WAIT_MS if wait else 0}")
            cur.close()
            self.waits = wait
        self._gate(wait)
        exp = now + lease
        lost: set[int] = set()
        cur = self.raw.cursor()
        try:
            for rid, text in sent.items():
                cur.execute(self.sql, self._params({**self.constants, "rid": rid,
                                                    "owner": owner, "exp": exp,
                                                    "sent": text}))
                if not cur.rowcount:
                    lost.add(rid)
            self.raw.commit()
        except sqlite3.OperationalError as exc:
            self.raw.rollback()
            if not wait and "locked" in str(exc):
                raise Busy() from None
            raise
        except BaseException:
            self.raw.rollback()
            raise
        finally:
            cur.close()
        return lost

    def _gate(self, wait: bool) -> None:
        """SQLite: take this process's write gate (listserv.core.writegate: the writers of
        one process queue for the lock, the intake first), as every SQLAlchemy write does;
        Busy when it is taken and ``wait`` is False. Given back by commit or rollback."""
        raw = self.raw
        gate = getattr(raw, "gate", None)
        if gate is None or raw.holds:
            return
        if wait:
            raw.take()
        elif gate.try_acquire():
            raw.holds = True
        else:
            raise Busy()

    def close(self) -> None:
        """Discard the connection (not back to the pool: see progress_connection)."""
        self.conn.invalidate()
        self.conn.close()
