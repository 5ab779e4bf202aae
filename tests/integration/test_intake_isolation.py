"""The intake answers while delivery is stuck: delivery runs on its own thread and event loop,
and the intake's blocking steps run in its own threads, not the daemon loop's default executor."""

from __future__ import annotations

import smtplib
import threading
import time
from typing import Any, Iterator

import pytest

from listserv.core.app import App
from listserv.delivery import transport
from listserv.pipeline import incoming
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import SmtpSink
from tests.waiting import wait_until

ANSWER_WITHIN = 5.0     # seconds for the SMTP client; a stuck intake never answers at all


def post(h: Harness, subject: str) -> float:
    """Send one post over SMTP; seconds until the 250 to DATA."""
    msg = make_message("alice@example.net", "dev@example.org", subject=subject)
    t = time.monotonic()
    with smtplib.SMTP(h.host, h.port, timeout=ANSWER_WITHIN) as client:
        refused = client.sendmail("alice@example.net", ["dev@example.org"], msg.as_bytes())
    assert refused == {}
    return time.monotonic() - t


@pytest.fixture
def release() -> Iterator[threading.Event]:
    ev = threading.Event()
    yield ev
    ev.set()       # never leave a blocked thread behind a failed test


def test_the_intake_answers_while_the_delivery_loop_is_blocked(
        app: App, sink: SmtpSink, monkeypatch: pytest.MonkeyPatch,
        release: threading.Event) -> None:
    # A bug or a slow library call that blocks delivery's event loop outright (the worst a
    # large fan-out can do to it) must not reach the intake.
    entered = threading.Event()
    submit = transport.SmtpTransport.submit

    def blocking_submit(self: transport.SmtpTransport, batch: transport.Batch) -> None:
        if not entered.is_set():
            entered.set()
            release.wait(30)           # blocks the delivery thread's loop
        submit(self, batch)

    monkeypatch.setattr(transport.SmtpTransport, "submit", blocking_submit)
    make_list(app, "dev@example.org", members=["bob@example.com"], nonmember_action="accept")
    h = Harness(app, sink).start()
    try:
        post(h, "first")
        wait_until(entered.is_set, what="delivery to take the first post")
        post(h, "second")              # answered while delivery cannot move
        wait_until(lambda: incoming.pending(h.app) == 0, what="the second post processed")
        assert not release.is_set() and sink.messages == []
        release.set()
        sink.wait_for(lambda msgs: len(msgs) == 2, timeout=20)
        assert sorted(m.message["Subject"] for m in sink.messages) == ["[dev] first",
                                                                       "[dev] second"]
    finally:
        release.set()
        h.stop()


def test_the_intake_has_its_own_threads(app: App, sink: SmtpSink,
                                        release: threading.Event) -> None:
    # Every thread of the daemon loop's default executor is busy (asyncio.to_thread work of
    # other parts): the intake's spool writes and commits do not queue behind them.
    make_list(app, "dev@example.org", members=["bob@example.com"], nonmember_action="accept")
    h = Harness(app, sink, background=False).start()
    busy: list[Any] = []
    try:
        loop = h._loop
        assert loop is not None

        def occupy() -> None:
            for _ in range(64):          # more than any default executor's threads
                busy.append(loop.run_in_executor(None, release.wait, 30))
        loop.call_soon_threadsafe(occupy)
        wait_until(lambda: len(busy) == 64, what="the default executor filled")
        post(h, "first")
        assert incoming.pending(h.app) == 1
    finally:
        release.set()
        h.stop()
