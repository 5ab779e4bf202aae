"""SQLite writers of one process queue for the write lock (listserv.core.writegate): a writer
that finds it taken is let in as the holder's transaction ends, not after SQLite's busy
handler sleeps; the intake's writes (urgent) go before the others waiting."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text

from listserv.core import writegate
from listserv.core.db import Database
from tests.waiting import wait_until


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'gate.db'}")
    with database.engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (who TEXT)"))
    yield database
    database.dispose()


def test_statements_that_take_the_write_lock() -> None:
    for sql in ("INSERT INTO t VALUES (1)", "  update t set a=1", "DELETE FROM t",
                "BEGIN IMMEDIATE", "CREATE TABLE x (a)",
                "WITH a AS (SELECT 1) INSERT INTO t SELECT * FROM a"):
        assert writegate.is_write(sql), sql
    for sql in ("SELECT 1", "BEGIN", "PRAGMA synchronous=NORMAL",
                "WITH a AS (SELECT 1) SELECT * FROM a"):
        assert not writegate.is_write(sql), sql


def test_waiting_writers_go_in_turn_the_urgent_one_first(db: Database) -> None:
    gate = db.engine.write_gate    # type: ignore[attr-defined]
    order: list[str] = []
    errors: list[BaseException] = []

    def write(who: str, urgent: bool) -> None:
        try:
            with (writegate.urgent() if urgent else _nothing()), db.unit_of_work() as s:
                s.execute(text("INSERT INTO t VALUES (:w)"), {"w": who})
                order.append(who)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with db.unit_of_work() as holder:
        holder.execute(text("INSERT INTO t VALUES ('holder')"))
        assert gate.waits == 0
        late = threading.Thread(target=write, args=("job", False))
        late.start()
        wait_until(lambda: gate.waits == 1, 10, "the job's writer waiting at the gate")
        intake = threading.Thread(target=write, args=("intake", True))
        intake.start()
        wait_until(lambda: gate.waits == 2, 10, "the intake's writer waiting at the gate")
        assert order == []             # neither got in while the holder's transaction is open
    for t in (late, intake):
        t.join(10)
    assert not errors
    assert order == ["intake", "job"]
    with db.unit_of_work() as s:
        assert sorted(s.scalars(text("SELECT who FROM t"))) == ["holder", "intake", "job"]


def test_a_rolled_back_writer_lets_the_next_one_in(db: Database) -> None:
    done = threading.Event()

    def write() -> None:
        with db.unit_of_work() as s:
            s.execute(text("INSERT INTO t VALUES ('second')"))
        done.set()

    with pytest.raises(RuntimeError):
        with db.unit_of_work() as s:
            s.execute(text("INSERT INTO t VALUES ('undone')"))
            t = threading.Thread(target=write)
            t.start()
            wait_until(lambda: db.engine.write_gate.waits == 1, 10,  # type: ignore[attr-defined]
                       "the second writer waiting")
            raise RuntimeError("the first transaction fails")
    t.join(10)
    assert done.is_set()
    with db.unit_of_work() as s:
        assert list(s.scalars(text("SELECT who FROM t"))) == ["second"]


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_two_processes_writers_queue_through_the_lock_file(tmp_path: Path) -> None:
    """Two engines on one file (as two processes would be: each has its own gate and its own
    open lock file): a writer of the second waits for the first's transaction to end, and is
    let in as it ends, without an error from SQLite's busy handler."""
    url = f"sqlite:///{tmp_path / 'two.db'}"
    first, second = Database(url), Database(url)
    try:
        with first.engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (who TEXT)"))
        assert (tmp_path / "two.db-writers").exists()
        gate1 = first.engine.write_gate     # type: ignore[attr-defined]
        gate2 = second.engine.write_gate    # type: ignore[attr-defined]
        assert gate1 is not gate2
        done = threading.Event()

        def second_writer() -> None:
            with second.engine.begin() as conn:
                conn.execute(text("INSERT INTO t VALUES ('second')"))
            done.set()

        with first.engine.begin() as conn:
            conn.execute(text("INSERT INTO t VALUES ('first')"))
            assert not gate2.try_acquire()          # the other process's writer holds it
            t = threading.Thread(target=second_writer)
            t.start()
            assert not done.wait(0.3)               # it waits for this transaction
        wait_until(done.is_set, 10, "the second writer to get in")
        t.join(10)
        with first.engine.connect() as conn:
            assert [r[0] for r in conn.execute(text("SELECT who FROM t ORDER BY rowid"))] == [
                "first", "second"]
        assert gate2.try_acquire()                  # free again once both are done
        gate2.release()
    finally:
        first.dispose()
        second.dispose()


def test_a_thread_about_to_compute_lets_the_writer_in_progress_finish() -> None:
    gate = writegate.Gate()
    gate.wait_free(5)                       # free: returns at once
    assert gate.acquire()
    returned = threading.Event()

    def computer() -> None:
        gate.wait_free(30)
        returned.set()

    t = threading.Thread(target=computer)
    t.start()
    assert not returned.wait(0.2)           # the writer still holds the gate
    gate.release()
    wait_until(returned.is_set, 10, "wait_free to return once the writer is done")
    t.join(10)
    assert gate.acquire()
    gate.wait_free(0.01)                    # bounded: a long writer is not waited out
    gate.release()


def test_a_stuck_holder_of_the_lock_file_is_not_waited_for_past_the_timeout(
        tmp_path: Path) -> None:
    held = writegate.Gate(str(tmp_path / "x-writers"))
    waiting = writegate.Gate(str(tmp_path / "x-writers"))
    assert held.acquire()
    assert not waiting._lock_file(block=True, timeout=0.05)   # gave up, did not hang
    held.release()
    assert waiting._lock_file(block=True, timeout=0.05)
    waiting.release()



def test_an_intake_waiting_for_another_process_goes_before_its_next_writers(
        tmp_path: Path) -> None:
    """Three processes' gates on one file: while an urgent writer (the intake) waits for the
    lock, the other processes' writers cannot take it after the holder: it is next."""
    import fcntl
    import os

    lock = str(tmp_path / "t-writers")
    holder, intake, worker = (writegate.Gate(lock) for _ in range(3))
    order: list[str] = []
    assert holder.acquire()

    def take(gate: writegate.Gate, name: str, urgent: bool) -> None:
        with writegate.urgent() if urgent else contextlib.nullcontext():
            assert gate.acquire()
        order.append(name)
        gate.release()

    def turnstile_taken() -> bool:        # the intake holds it shared while it waits
        fd = os.open(f"{lock}-turnstile", os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    t_intake = threading.Thread(target=take, args=(intake, "intake", True))
    t_intake.start()
    wait_until(turnstile_taken, 10, "the intake to wait for the lock")
    t_worker = threading.Thread(target=take, args=(worker, "worker", False))
    t_worker.start()
    holder.release()
    t_intake.join(10)
    t_worker.join(10)
    assert order == ["intake", "worker"]
