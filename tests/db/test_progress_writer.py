"""Progress records through the driver (listserv.delivery.progress, queues.PROGRESS_UPDATE):
set ``sent``, renew the lease, report a lost lease; on SQLite a
record that must not wait gives up at once, having written nothing, while another writer
holds the lock or this process's write gate."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import func, select

from listserv.core.app import App
from listserv.core.models import Delivery, DeliveryState
from listserv.delivery import queues
from listserv.delivery.progress import Busy, ProgressWriter
from tests.db.test_queue import fill


def row_of(app: App, rid: int) -> Delivery:
    with app.db.unit_of_work() as session:
        row = session.get(Delivery, rid)
        assert row is not None
        session.expunge(row)
        return row


def test_the_writer_records_sent_positions_and_renews_leases(app: App, clock: Any) -> None:
    fill(app, 2, per_batch=3)
    with app.db.unit_of_work() as session:
        one, two = queues.claim(session, "w-one", clock(), 5)
    writer = ProgressWriter(app.db.engine)
    try:
        clock.advance(seconds=5)
        assert writer.write("w-one", clock(), {one.id: "0-1", two.id: "2"}) == set()
        for rid, sent in ((one.id, "0-1"), (two.id, "2")):
            r = row_of(app, rid)
            assert r.sent == sent and r.state is DeliveryState.sending
            assert r.lease_expires == clock() + queues.LEASE     # renewed, in UTC
        clock.advance(seconds=31)                # w-one's leases expire: w-two takes one
        with app.db.unit_of_work() as session:
            assert [r.id for r in queues.claim(session, "w-two", clock(), 1)] == [one.id]
        assert writer.write("w-one", clock(), {one.id: "0-2", two.id: "0-2"},
                            wait=False) == {one.id}
        assert row_of(app, one.id).sent == "0-1" and row_of(app, one.id).lease_owner == "w-two"
        assert row_of(app, two.id).sent == "0-2"
        with app.db.unit_of_work() as session:  # compared as the claim compares them
            due = session.scalar(select(func.count()).select_from(Delivery).where(
                Delivery.lease_expires > clock() + dt.timedelta(seconds=29)))
        assert due == 2
    finally:
        writer.close()


def test_a_record_that_must_not_wait_gives_way_to_another_writer(app: App,
                                                                 clock: Any) -> None:
    if not app.db.is_sqlite:
        pytest.skip("tests giving way to SQLite's one write lock; PostgreSQL has no such "
                    "lock (runs in the SQLite pass)")
    fill(app, 1, per_batch=3)
    with app.db.unit_of_work() as session:
        [row] = queues.claim(session, "w-one", clock(), 5)
    writer = ProgressWriter(app.db.engine)
    try:
        with app.db.engine.connect() as other:
            other.exec_driver_sql("BEGIN IMMEDIATE")       # another writer holds the lock
            with pytest.raises(Busy):
                writer.write("w-one", clock(), {row.id: "0"}, wait=False)
            other.rollback()
        assert row_of(app, row.id).sent is None
        gate = app.db.engine.write_gate    # type: ignore[attr-defined]
        assert gate.try_acquire()           # this process's other writer (the write gate)
        with pytest.raises(Busy):
            writer.write("w-one", clock(), {row.id: "0"}, wait=False)
        gate.release()
        assert writer.write("w-one", clock(), {row.id: "0"}, wait=False) == set()
        assert row_of(app, row.id).sent == "0"
        assert gate.try_acquire()           # given back with the commit
        gate.release()
    finally:
        writer.close()
