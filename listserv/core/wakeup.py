"""Wake-ups between `serve` processes on one host: a one-byte datagram per event.

When the intake runs in a process of its own (`serve --role intake`), the processes that run
the jobs (`serve --role worker`) would otherwise notice a stored message only at their next
poll. Each worker binds a Unix datagram socket in ``<data_dir>/wake/``; the intake sends one
byte to every socket there right after it commits (EVENT_INCOMING) and whenever it queues mail
itself (EVENT_DELIVERY). A datagram costs the sender one non-blocking system call and no
database work; a lost one (a full buffer: the worker is awake anyway) costs only the poll
interval, which still covers processes on other hosts. A socket whose worker is gone refuses
the datagram and is removed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

EVENT_INCOMING = b"i"    # a message and its incoming job were committed
EVENT_DELIVERY = b"d"    # mail was queued for delivery
RELIST = 1.0             # seconds a listing of the wake directory is reused
SUFFIX = ".sock"


def directory(data_dir: Path) -> Path:
    return data_dir / "wake"


class Sender:
    """Sends events to every worker's socket. Thread-safe enough for its use: a send from
    two threads at once at worst lists the directory twice."""

    def __init__(self, wake_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.dir = wake_dir
        self.clock = clock
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self._targets: list[str] = []
        self._listed = float("-inf")

    def _list(self) -> list[str]:
        now = self.clock()
        # an empty listing is not kept: a worker that has just started is woken at once
        if now - self._listed >= RELIST or not self._targets:
            self._listed = now
            try:
                names = os.listdir(self.dir)
            except OSError:
                names = []
            self._targets = [str(self.dir / n) for n in names if n.endswith(SUFFIX)]
        return self._targets

    def send(self, event: bytes) -> int:
        """Send ``event`` to each worker; returns how many sockets took it."""
        sent = 0
        for path in list(self._list()):
            try:
                self.sock.sendto(event, path)
                sent += 1
            except BlockingIOError:     # its buffer is full: that worker has events waiting
                pass
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):   # its worker is gone
                    self._forget(path, unlink=exc.errno == errno.ECONNREFUSED)
                else:
                    log.debug("wake-up to %s failed: %s", path, exc)
        return sent

    def _forget(self, path: str, *, unlink: bool) -> None:
        try:
            self._targets.remove(path)
        except ValueError:
            pass
        if unlink:
            try:
                os.unlink(path)
            except OSError:
                pass

    def close(self) -> None:
        self.sock.close()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, on_event: Callable[[bytes], None]) -> None:
        self.on_event = on_event

    def datagram_received(self, data: bytes, addr: object) -> None:
        for event in set(data):
            self.on_event(bytes([event]))


class Receiver:
    """This process's socket in the wake directory, read by the running event loop."""

    def __init__(self, wake_dir: Path) -> None:
        self.path = wake_dir / f"w{os.getpid()}{SUFFIX}"
        self.transport: asyncio.BaseTransport | None = None

    async def start(self, on_event: Callable[[bytes], None]) -> bool:
        """Bind and start reading; False (logged) when the socket cannot be made: the
        worker then finds new work at its polls."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.path.unlink()          # left by an earlier process with our pid
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            try:
                sock.bind(str(self.path))
            except OSError:
                sock.close()
                raise
            loop = asyncio.get_running_loop()
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(on_event), sock=sock)
        except OSError as exc:      # e.g. a data_dir path too long for a Unix socket
            log.warning("listserv: no wake-up socket at %s (%s); new mail is found at the "
                        "next poll", self.path, exc)
            return False
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        try:
            self.path.unlink()
        except OSError:
            pass
