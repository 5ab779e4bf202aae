"""kill -9 of `listserv serve` in the middle of a VERP fan-out: after a restart every recipient
has its copy once the dead process's leases expire, and duplicates are at most the
transactions that were on the wire: one per connection (each connection waits for its
delivered recipients to be recorded before it starts the next transaction)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import func, select

from listserv.core import config
from listserv.core.app import App
from listserv.core.models import Delivery, DeliveryState
from listserv.delivery.outbound import queue_message
from tests.sink import SmtpSink
from tests.waiting import start_daemon, wait_until

ROOT = Path(__file__).resolve().parents[2]
MSG = b"From: a@example.net\r\nSubject: crash\r\nMessage-ID: <k9@example.net>\r\n\r\nbody\r\n"


def recipients_in(app: App, state: DeliveryState) -> int:
    with app.db.unit_of_work() as session:
        return int(session.scalar(select(func.coalesce(func.sum(Delivery.count), 0))
                                  .where(Delivery.state == state)) or 0)


# [database] lease_seconds: the restarted process waits for the dead one's leases to expire;
# 8 s, not the default 30 (a live process renews every third of it)
LEASE = 8


def serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`listserv serve` on a free intake port (the test sends it nothing), once it listens."""
    def start(port: int) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "listserv", "-v", "serve"],
                                    env={**env, "LISTSERV_INTAKE_PORT": str(port)}, cwd=ROOT,
                                    stdout=out, stderr=out)
    return start_daemon(start, log)[0]


def test_kill_9_loses_nothing_and_duplicates_are_bounded(app: App, cli_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    rcpts = [f"u{i}@example.com" for i in range(600)]
    small = dataclasses.replace(app, settings=config.replace(
        app.settings, delivery__max_recipients_per_transaction=50))
    with small.db.unit_of_work() as session:
        queue_message(session, small, MSG, rcpts, kind="post",
                      envelope_from="dev-bounces@example.org", verp=True)
    with SmtpSink() as sink:
        env = {**os.environ, **cli_env, "LISTSERV_DELIVERY_OUTBOUND": sink.url,
               "LISTSERV_DELIVERY_CONNECTIONS": "2",
               "LISTSERV_DATABASE_LEASE_SECONDS": str(LEASE)}
        env.pop("LISTSERV_CONFIG", None)
        log = tmp_path / "serve.log"
        first = serve(env, log)
        try:
            sink.wait_for(lambda m: len(m) >= 60, timeout=60)
        finally:
            first.kill()                       # SIGKILL: no chance to clean up
            first.wait(10)
        in_flight = recipients_in(app, DeliveryState.sending)
        assert in_flight > 0                   # it really died in the middle of batches
        assert recipients_in(app, DeliveryState.done) < 600

        second = serve(env, log)
        try:
            def all_done() -> bool:
                assert second.poll() is None, log.read_text()
                return recipients_in(app, DeliveryState.done) >= 600

            # the dead process's rows are taken over when their lease (LEASE s) expires
            wait_until(all_done, 90, "every recipient delivered after the restart")
        finally:
            second.terminate()
            assert second.wait(30) == 0
        got = sink.recipients()
    assert set(got) == set(rcpts)
    duplicates = len(got) - len(set(got))
    print(f"in flight at kill: {in_flight}, duplicates: {duplicates}")
    assert duplicates <= 2                     # delivery.connections
    assert recipients_in(app, DeliveryState.sending) == 0
