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
        owners = {r.id: r.locked_by for r in session.scalars(select(Delivery))}
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
        rows[1].state, rows[1].locked_by = DeliveryState.sending, "x:1:y"
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
    assert st["incoming"] == {"new": 1, "processing": 0, "failed": 0}
    res = runner.invoke(cli, ["queue", "status"], env=cli_env)
    assert res.exit_code == 0
    assert "retrying (4xx)" in res.output and "in flight" in res.output
    assert "incoming queue:" in res.output


def test_queue_status_on_a_missing_database_is_one_line(tmp_path: Any) -> None:
    res = CliRunner().invoke(cli, ["queue", "status"], env={
        "LISTSERV_DATA_DIR": str(tmp_path / "nothing")})
    assert res.exit_code == 1
    assert "not initialised" in res.output and "Traceback" not in res.output
