"""The outbound queue in the database: claims are exclusive, even when concurrent; status."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

from click.testing import CliRunner
from sqlalchemy import select

from listserv.delivery import queues
from listserv.core.app import App
from listserv.cli import cli
from listserv.core.lists import create_list
from listserv.core.models import Delivery, DeliveryState, InboundMessage, InboundState
from listserv.delivery.outbound import queue_message
from listserv.delivery.progress import ProgressWriter


def fill(app: App, n_batches: int, per_batch: int = 2) -> None:
    """n_batches Delivery rows (one message each) of per_batch recipients."""
    with app.db.unit_of_work() as session:
        for b in range(n_batches):
            queue_message(session, app, b"Subject: x\r\n\r\nbody %d\r\n" % b,
                          [f"u{i}@example.com" for i in range(per_batch)],
                          kind="post", envelope_from="dev-bounces@example.org")


def test_concurrent_claims_never_overlap(app: App) -> None:
    fill(app, 60)
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        barrier.wait()
        ids: list[int] = []
        while True:
            with app.db.unit_of_work() as session:
                rows = queues.claim(session, name, app.now(), 7)
            if not rows:
                break
            ids += [r.id for r in rows]
        got[name] = ids

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [i for ids in got.values() for i in ids]
    assert len(every) == 60 and len(set(every)) == 60
    with app.db.unit_of_work() as session:
        owners = {r.id: r.lease_owner for r in session.scalars(select(Delivery))}
        assert all(r.state is DeliveryState.sending for r in session.scalars(select(Delivery)))
    assert all(owners[i] == name for name, ids in got.items() for i in ids)


def test_claim_takes_only_ready_rows_oldest_first(app: App, clock: Any) -> None:
    fill(app, 3, per_batch=500)
    with app.db.unit_of_work() as session:
        first = session.scalars(select(Delivery).order_by(Delivery.id)).first()
        assert first is not None
        first.next_attempt_at = clock() + dt.timedelta(seconds=1)
    with app.db.unit_of_work() as session:
        rows = queues.claim(session, "me", clock(), 10)
    assert [r.id for r in rows] == [first.id + 1, first.id + 2]
    assert rows[0].recipients.count("\n") == 499 and rows[0].attempts == 0


def test_queue_status_cli(app: App, clock: Any, cli_env: dict[str, str]) -> None:
    fill(app, 3)
    with app.db.unit_of_work() as session:
        ml = create_list(session, "dev@example.org")
        session.add(InboundMessage(list_id=ml.id, subaddress="post", rcpt="dev@example.org",
                                   mail_from="a@example.net", spool_sha="0" * 64,
                                   state=InboundState.new))
        rows = list(session.scalars(select(Delivery).order_by(Delivery.id)))
        rows[0].state, rows[0].attempts = DeliveryState.pending, 2
        rows[1].state, rows[1].lease_owner = DeliveryState.sending, "w-x"
        rows[2].state, rows[2].finished_at = DeliveryState.failed, clock()
    runner = CliRunner()
    res = runner.invoke(cli, ["queue", "status", "--json"], env=cli_env)
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    out = st["outbound"]
    assert out["pending"] == {"batches": 1, "recipients": 2}
    assert out["retrying"] == {"batches": 1, "recipients": 2}
    assert out["in_flight"] == {"batches": 1, "recipients": 2}
    assert out["failed"] == {"batches": 1, "recipients": 2}
    assert out["done_24h"] == {"batches": 0, "recipients": 0}
    assert st["incoming"] == {"journaled": 0, "new": 1, "processing": 0, "failed": 0}
    res = runner.invoke(cli, ["queue", "status"], env=cli_env)
    assert res.exit_code == 0
    assert "retrying (4xx)" in res.output and "in flight" in res.output
    assert "incoming queue:" in res.output


def test_queue_status_on_a_missing_database_is_one_line(tmp_path: Any) -> None:
    res = CliRunner().invoke(cli, ["queue", "status"], env={
        "LISTSERV_DATA_DIR": str(tmp_path / "nothing")})
    assert res.exit_code == 1
    assert "not initialised" in res.output and "Traceback" not in res.output


def test_an_expired_lease_is_anyones_and_its_old_owner_can_record_nothing(
        app: App, clock: Any) -> None:
    fill(app, 1, per_batch=3)
    with app.db.unit_of_work() as session:
        [row] = queues.claim(session, "w-one", clock(), 5)
        assert row.sent is None
    writer = ProgressWriter(app.db.engine)
    try:
        assert writer.write("w-one", clock(), {row.id: "0"}) == set()
    finally:
        writer.close()
    clock.advance(seconds=20)
    with app.db.unit_of_work() as session:
        assert queues.renew(session, "w-one", clock()) == {row.id}   # the heartbeat
    clock.advance(seconds=20)                 # 40 s after the claim, 20 after the renewal
    with app.db.unit_of_work() as session:
        assert queues.claim(session, "w-two", clock(), 5) == []
    clock.advance(seconds=11)                 # w-one stopped renewing: its lease expired
    with app.db.unit_of_work() as session:
        [again] = queues.claim(session, "w-two", clock(), 5)
    assert again.id == row.id and again.sent == "0"   # what w-one had recorded as sent
    with app.db.unit_of_work() as session:
        assert queues.renew(session, "w-one", clock()) == set()
    writer = ProgressWriter(app.db.engine)
    try:
        assert writer.write("w-one", clock(), {row.id: "0-2"}) == {row.id}
    finally:
        writer.close()
    with app.db.unit_of_work() as session:
        r = session.get(Delivery, row.id)
        assert r is not None and r.lease_owner == "w-two" and r.sent == "0"
        assert r.state is DeliveryState.sending


def test_ranges_of_sent_positions() -> None:
    r = queues.Ranges()
    for i in (0, 1, 2, 5, 4, 9, 3):
        r.add(i)
    assert str(r) == "0-5,9"
    assert list(r) == [0, 1, 2, 3, 4, 5, 9] and 9 in r and 6 not in r
    r.add(8)
    r.add(7)
    r.add(6)
    assert str(r) == "0-9"
    assert list(queues.Ranges.parse("0-2,5,7-8")) == [0, 1, 2, 5, 7, 8]
    assert list(queues.Ranges.parse(None)) == [] and str(queues.Ranges.parse("")) == ""


def test_a_claim_takes_no_more_than_its_limit(app: App, clock: Any) -> None:
    fill(app, 10)
    with app.db.unit_of_work() as session:
        assert len(queues.claim(session, "w-one", clock(), 3)) == 3
    with app.db.unit_of_work() as session:
        assert len(queues.claim(session, "w-two", clock(), 30)) == 7
