"""One SQLite writer at a time inside this process, taken in turn, the intake first.

SQLite lets one connection write at a time. A connection that finds the write lock taken
does not queue for it: SQLite's busy handler sleeps (1, 2, 5, 10 ... 100 ms) and tries
again, so a writer that arrives while others commit back to back (a fan-out's chunks, the
delivery loop's progress and results, job claims) can sleep for hundreds of milliseconds
while the others keep the lock between its tries. That is what made the intake answer a
post in 300-600 ms while a large fan-out ran.

Here each engine's connections take a process-wide gate before their first write of a
transaction (an INSERT/UPDATE/DELETE/REPLACE, ``BEGIN IMMEDIATE`` or DDL) and give it back
when the transaction ends (commit, rollback, close). Writers of this process therefore wait
for each other in a queue that wakes the next one the moment the last one ends, and SQLite's
busy handler only ever waits for other processes (the CLI). A thread marked ``urgent()``
(the intake recording a message before its 250) goes ahead of every waiting writer that is
not. A writer that waits longer than the busy timeout goes on without the gate and leaves it
to SQLite, as before; the gate never turns a wait into a deadlock.

Several processes on one database file (`serve --role intake` beside a worker, the CLI)
queue the same way across processes: the holder of a process's gate also takes an exclusive
flock(2) on ``<database>-writers`` before it writes, and gives it back with the gate; an
urgent writer (the intake) waiting for it goes before the other processes' (Gate._lock_file). A
process that waits for the flock tries again every 0.1 ms, doubling up to 1 ms, so it
gets the lock within a millisecond of the other's commit, where SQLite's busy handler
sleeps 1, 2, 5, 10 ... 100 ms between tries. The kernel drops the flock of a process that
dies, so a kill -9 never leaves it held; one that holds it for longer than the busy
timeout (a stuck process) is not waited for beyond it: SQLite then answers as before.

Reads take no gate (WAL: readers never wait for the writer).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import sqlite3
import threading
import time
from typing import Any, Iterator

log = logging.getLogger(__name__)

WAIT = 30.0          # seconds, as the connections' busy_timeout; then go on without the gate
YIELD = 0.05         # seconds a thread about to compute waits for the writer in progress
POLL_MIN, POLL_MAX = 0.0001, 0.001   # seconds between tries of another process's lock
_WRITE = re.compile(r"\s*(INSERT|UPDATE|DELETE|REPLACE|BEGIN\s+(IMMEDIATE|EXCLUSIVE)|CREATE|"
                    r"DROP|ALTER)\b", re.IGNORECASE)
_CTE_WRITE = re.compile(r"\b(INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_local = threading.local()


def is_write(statement: str) -> bool:
    """Does ``statement`` take SQLite's write lock?"""
    if _WRITE.match(statement):
        return True
    return statement.lstrip()[:4].upper() == "WITH" and bool(_CTE_WRITE.search(statement))


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    """This thread's writes go ahead of the waiting writers that are not urgent."""
    before = getattr(_local, "urgent", False)
    _local.urgent = True
    try:
        yield
    finally:
        _local.urgent = before


class Gate:
    """A lock for one engine's writers: FIFO-ish (every waiter is woken and the first to run
    takes it) with urgent writers first."""

    def __init__(self, lock_path: str | None = None) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._urgent_waiting = 0
        self.waits = 0                 # writers that found the gate taken (for tests)
        # the files whose flocks the holder takes, for the other processes on this database:
        # the lock itself, and the turnstile in front of it (see _lock_file)
        self._fd: int | None = None
        self._turnstile: int | None = None
        if lock_path is not None:
            try:
                self._fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                self._turnstile = os.open(f"{lock_path}-turnstile",
                                          os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                log.warning("database: no writers' lock file %s (%s); other processes' "
                            "writers are left to SQLite's busy handler", lock_path, exc)
                self._close_files()

    def _close_files(self) -> None:
        for fd in (self._fd, self._turnstile):
            if fd is not None:
                os.close(fd)
        self._fd = self._turnstile = None

    def _lock_file(self, block: bool, timeout: float = WAIT) -> bool:
        """Take the flock after the gate. Without ``block``: False when another process
        holds it or an urgent writer of another process waits for it. With it: False after
        ``timeout`` s, logged: the writer goes on and SQLite's busy timeout decides, as it
        would without the file.

        The turnstile puts the urgent writers (the intake) first across processes as the
        gate does inside one: an urgent writer holds it shared while it waits for the lock,
        the others must pass it exclusively (and hold it until they have the lock), so
        while an intake waits, no other process's writer can take the lock after the
        current holder; without it the worker's writers, handing the lock on to each other
        within microseconds, would keep the intake polling through several transactions."""
        if self._fd is None or self._turnstile is None:
            return True
        turn = fcntl.LOCK_SH if getattr(_local, "urgent", False) else fcntl.LOCK_EX
        deadline = time.monotonic() + timeout if block else None   # one for both flocks
        try:
            got = self._flock(self._turnstile, turn, deadline)
            if got:
                try:
                    got = self._flock(self._fd, fcntl.LOCK_EX, deadline)
                finally:
                    fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        except OSError as exc:            # a file system without flock: SQLite's own wait
            log.warning("database: flock on the writers' lock files failed (%s)", exc)
            self._close_files()
            return True
        if not got and block:
            log.warning("database: other processes' writers have held the write lock for "
                        "%.0f s; going on without waiting for them here", timeout)
        return got

    @staticmethod
    def _flock(fd: int, mode: int, deadline: float | None) -> bool:
        """flock ``mode`` on ``fd``: once when ``deadline`` is None, else tried again every
        POLL_MIN..POLL_MAX s (a flock(2) that blocks could not be given up) until then."""
        pause = POLL_MIN
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if deadline is None or time.monotonic() >= deadline:
                    return False
            time.sleep(pause)
            pause = min(pause * 2, POLL_MAX)

    def _unlock_file(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def acquire(self, timeout: float = WAIT) -> bool:
        """Take the gate; False after ``timeout`` seconds without it (go on anyway)."""
        if not self._acquire(timeout):
            return False
        self._lock_file(block=True)       # outside the condition: the others may queue
        return True

    def _acquire(self, timeout: float) -> bool:
        is_urgent = getattr(_local, "urgent", False)
        with self._cond:
            if not self._held and (is_urgent or not self._urgent_waiting):
                self._held = True
                return True
            self.waits += 1
            deadline = time.monotonic() + timeout
            if is_urgent:
                self._urgent_waiting += 1
            try:
                while self._held or (not is_urgent and self._urgent_waiting):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        log.warning("database: waited %.0f s for this process's other "
                                    "writers; going on without the write gate", timeout)
                        return False
                    self._cond.wait(left)
                self._held = True
                return True
            finally:
                if is_urgent:
                    self._urgent_waiting -= 1

    def wait_free(self, timeout: float = YIELD) -> None:
        """Wait, without the GIL, until no writer of this process holds the gate (at most
        ``timeout`` s). A thread about to compute (the reading of a fan-out's or a digest's
        chunk) calls it: a writer holds SQLite's lock for as long as its transaction takes in wall
        time, and every thread computing beside it stretches that time (one GIL), while the
        writers of other processes, the intake first, wait for the lock."""
        with self._cond:
            if self._held:
                self._cond.wait_for(lambda: not self._held, timeout)

    def try_acquire(self) -> bool:
        """Take the gate only if it is free and no urgent writer waits; never waits."""
        with self._cond:
            if self._held or self._urgent_waiting:
                return False
            self._held = True
        if self._lock_file(block=False):
            return True
        self._release_gate()
        return False

    def release(self) -> None:
        self._unlock_file()
        self._release_gate()

    def _release_gate(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


class GatedConnection(sqlite3.Connection):
    """A pysqlite connection that gives its engine's Gate back when its transaction ends."""

    gate: Gate | None = None
    holds = False
    passed = False           # waited WAIT in vain this transaction: no second wait

    def take(self) -> None:
        if self.gate is not None and not self.holds and not self.passed:
            self.holds = self.gate.acquire()
            self.passed = not self.holds

    def _give_back(self) -> None:
        self.passed = False
        if self.holds and self.gate is not None:
            self.holds = False
            self.gate.release()

    def commit(self) -> None:
        try:
            super().commit()
        finally:
            self._give_back()

    def rollback(self) -> None:
        try:
            super().rollback()
        finally:
            self._give_back()

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._give_back()


def install(engine: Any, database_path: str | None = None) -> None:
    """Gate the writers of ``engine`` (an SQLAlchemy engine made with
    ``connect_args={"factory": GatedConnection}``); with ``database_path`` (a file), across
    processes too."""
    from sqlalchemy import event

    gate = Gate(f"{database_path}-writers" if database_path else None)
    engine.write_gate = gate

    @event.listens_for(engine, "connect")
    def bind(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, GatedConnection):
            dbapi_conn.gate = gate

    @event.listens_for(engine, "before_cursor_execute")
    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
               executemany: bool) -> None:
        raw = cursor.connection
        if isinstance(raw, GatedConnection) and not raw.holds and is_write(statement):
            raw.take()
