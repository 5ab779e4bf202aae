"""The daemon entry point delivery.run(): wakes on ``wake``, stops cleanly on ``stop``."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

from sqlalchemy import select

from listserv.core import config
from listserv.delivery import runner as delivery
from listserv.core.app import App, system_clock
from listserv.core.models import Delivery, DeliveryState
from listserv.delivery.outbound import queue_message
from tests.sink import SmtpSink
from tests.waiting import wait_until

MSG = b"From: a@example.net\r\nSubject: hi\r\nMessage-ID: <r1@example.net>\r\n\r\nbody\r\n"


class Daemon:
    """delivery.run() in an event loop on its own thread."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.wake = asyncio.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            self.loop.run_until_complete(delivery.run(self.app, self.stop, self.wake))
        except BaseException as exc:  # pragma: no cover - reported by the test
            self.error = exc

    def start(self) -> "Daemon":
        self.thread.start()
        return self

    def poke(self) -> None:
        self.loop.call_soon_threadsafe(self.wake.set)

    def shutdown(self, timeout: float = 10) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return after stop"
        assert self.error is None, self.error




def states(app: App) -> list[Any]:
    with app.db.unit_of_work() as session:
        return list(session.scalars(select(Delivery.state).order_by(Delivery.id)))


def test_run_delivers_on_wake_and_stops(app: App) -> None:
    with SmtpSink() as sink:
        a = dataclasses.replace(app, settings=config.replace(
            app.settings, delivery__outbound=sink.url, delivery__connections=2,
            delivery__max_recipients_per_transaction=2), now=system_clock)
        d = Daemon(a).start()
        try:
            with a.db.unit_of_work() as session:
                queue_message(session, a, MSG, [f"u{i}@example.com" for i in range(5)],
                              kind="post", envelope_from="dev-bounces@example.org")
            t0 = time.monotonic()
            d.poke()
            sink.wait_for(lambda m: len(m) >= 3, timeout=10)
            latency = time.monotonic() - t0
            wait_until(lambda: states(a) == [DeliveryState.done] * 3)
            # a second message without a wake-up is found by the idle poll
            with a.db.unit_of_work() as session:
                queue_message(session, a, MSG, ["late@example.com"], kind="notice",
                              envelope_from="")
            sink.wait_for(lambda m: len(m) >= 4, timeout=10)
        finally:
            d.shutdown()
        assert latency < 1.0
        assert sorted(sink.recipients()) == sorted(
            [f"u{i}@example.com" for i in range(5)] + ["late@example.com"])
        assert sink.messages[-1].mail_from in ("", "<>")  # the null reverse-path
        assert states(a) == [DeliveryState.done] * 4


def test_stop_hands_back_unsent_work(app: App) -> None:
    """Stopping while a large VERP batch is in progress: what was sent is done, the rest is
    pending again (attempts unchanged), nothing is left in 'sending'."""
    with SmtpSink() as sink:
        a = dataclasses.replace(app, settings=config.replace(
            app.settings, delivery__outbound=sink.url, delivery__connections=1),
            now=system_clock)
        rcpts = [f"u{i}@example.com" for i in range(400)]
        with a.db.unit_of_work() as session:
            queue_message(session, a, MSG, rcpts, kind="post",
                          envelope_from="dev-bounces@example.org", verp=True)
        d = Daemon(a).start()
        d.poke()
        sink.wait_for(lambda m: len(m) >= 5, timeout=10)
        d.shutdown()
        sent = set(sink.recipients())
        assert 5 <= len(sent) < 400
        with a.db.unit_of_work() as session:
            got = {r.state: r for r in session.scalars(select(Delivery))}
        assert set(got) <= {DeliveryState.done, DeliveryState.pending}
        assert set(got[DeliveryState.done].recipients.split("\n")) == sent
        left = got[DeliveryState.pending]
        assert left.attempts == 0 and left.count == 400 - len(sent)
        assert set(left.recipients.split("\n")) == set(rcpts) - sent
        # a restart delivers the rest
        assert delivery.deliver_pending(a) == 1
        assert sorted(sink.recipients()) == sorted(rcpts)
