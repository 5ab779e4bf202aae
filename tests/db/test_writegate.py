"""SQLite writers of one process queue for the write lock (listserv.core.writegate): a writer
that finds it taken is let in as the holder's transaction ends, not after SQLite's busy
handler sleeps; the intake's writes (urgent) go before the others waiting."""

from __future__ import annotations

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
