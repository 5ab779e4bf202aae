"""ratelimit.allow: the daily limit holds when two workers count for one address at once."""

from __future__ import annotations

import threading

import pytest
from listserv.core import ratelimit
from listserv.core.app import App
from listserv.core.lists import create_list


def test_limit_counts_per_day(app: App, clock) -> None:  # noqa: ANN001
    with app.db.unit_of_work() as s:
        lid = create_list(s, "dev@example.org").id
    with app.db.unit_of_work() as s:
        assert [ratelimit.allow(s, app, lid, "a@x.example", "k", limit=2)
                for _ in range(3)] == [True, True, False]
    clock.advance(days=1)
    with app.db.unit_of_work() as s:
        assert ratelimit.allow(s, app, lid, "a@x.example", "k", limit=2)


def test_concurrent_workers_share_the_limit(app: App) -> None:
    """Worker A has counted (not yet committed) when worker B asks: B must see A's count.
    On PostgreSQL (several serve processes) B waits for A's row lock. SQLite runs one
    incoming worker per process, and pysqlite's deferred BEGIN cannot lock a read."""
    if app.db.is_sqlite:
        pytest.skip("tests a row lock held by a concurrent counter, which pysqlite's "
                    "deferred BEGIN cannot take (runs in the PostgreSQL pass)")
    with app.db.unit_of_work() as s:
        lid = create_list(s, "dev@example.org").id
    with app.db.unit_of_work() as s:        # the counter row exists (yesterday's or today's)
        assert ratelimit.allow(s, app, lid, "a@x.example", "k", limit=2)
    a_counted, b_result = threading.Event(), []

    def worker_b() -> None:
        a_counted.wait(10)
        with app.db.unit_of_work() as s:
            b_result.append(ratelimit.allow(s, app, lid, "a@x.example", "k", limit=2))

    t = threading.Thread(target=worker_b)
    t.start()
    with app.db.unit_of_work() as s:
        assert ratelimit.allow(s, app, lid, "a@x.example", "k", limit=2)   # the 2nd of 2
        s.flush()
        a_counted.set()
        t.join(0.5)                          # B is blocked behind A's lock: still running
        assert t.is_alive() or b_result == [False]
    t.join(10)
    assert b_result == [False]
