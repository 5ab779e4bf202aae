"""Wake-ups between `serve` processes (listserv.core.wakeup): a worker's socket receives the
intake's events; a socket left by a dead worker is dropped by the first send to it."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from pathlib import Path

from listserv.core import wakeup


def _short_dir() -> Path:
    # a Unix socket path is limited to 107 bytes: pytest's tmp_path can be longer
    return Path(tempfile.mkdtemp(prefix="lw", dir="/tmp")) / "wake"


def test_a_worker_receives_the_intakes_events() -> None:
    wake_dir = _short_dir()

    async def scenario() -> list[bytes]:
        got: list[bytes] = []
        arrived = asyncio.Event()

        def on_event(event: bytes) -> None:
            got.append(event)
            if len(got) >= 2:
                arrived.set()

        receiver = wakeup.Receiver(wake_dir)
        assert await receiver.start(on_event)
        sender = wakeup.Sender(wake_dir)
        try:
            assert sender.send(wakeup.EVENT_INCOMING) == 1
            assert sender.send(wakeup.EVENT_DELIVERY) == 1
            await asyncio.wait_for(arrived.wait(), 10)
        finally:
            sender.close()
            receiver.close()
        assert not receiver.path.exists()           # removed when the worker stops
        return got

    assert asyncio.run(scenario()) == [wakeup.EVENT_INCOMING, wakeup.EVENT_DELIVERY]


def test_a_dead_workers_socket_is_removed_and_no_send_fails() -> None:
    wake_dir = _short_dir()
    wake_dir.mkdir(parents=True)
    stale = wake_dir / "w999999.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()                                    # as a kill -9 leaves it: nobody reads
    clock = [0.0]
    sender = wakeup.Sender(wake_dir, clock=lambda: clock[0])
    try:
        assert sender.send(wakeup.EVENT_INCOMING) == 0
        assert not stale.exists()
        # a worker that starts while none is known is found at the next send; a second
        # one, once the listing (kept RELIST seconds) is renewed
        first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        first.bind(str(wake_dir / "w1.sock"))
        try:
            assert sender.send(wakeup.EVENT_INCOMING) == 1
            assert first.recv(16) == wakeup.EVENT_INCOMING
            second.bind(str(wake_dir / "w2.sock"))
            assert sender.send(wakeup.EVENT_INCOMING) == 1     # the listing is reused
            clock[0] += wakeup.RELIST
            assert sender.send(wakeup.EVENT_INCOMING) == 2
            assert second.recv(16) == wakeup.EVENT_INCOMING
        finally:
            first.close()
            second.close()
    finally:
        sender.close()


def test_without_a_wake_directory_nothing_is_sent(tmp_path: Path) -> None:
    sender = wakeup.Sender(tmp_path / "absent")
    try:
        assert sender.send(wakeup.EVENT_INCOMING) == 0
    finally:
        sender.close()
