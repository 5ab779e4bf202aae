"""The one way tests wait: poll a condition until it holds, or fail after a deadline; and the
one way they start a daemon on a free port (start_daemon)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Callable

PORT_TRIES = 5      # starts of a daemon whose free port another process took meanwhile


def wait_until(predicate: Callable[[], object], timeout: float = 20.0,
               what: str = "condition", interval: float = 0.01) -> None:
    """Return as soon as ``predicate()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def until_listening(proc: "subprocess.Popen[bytes]", log: Path, start: int, port: int,
                    timeout: float = 30.0) -> str:
    """Wait until `listserv serve` (``proc``, logging to ``log`` from byte ``start`` on) logs
    that its intake listens on 127.0.0.1:``port``, or exits; return what it logged. (A
    connect to the port would not tell: another process may have taken the port since it
    was found free.)"""
    mark = f"intake listening on 127.0.0.1:{port}\n"

    def logged() -> str:
        return log.read_bytes()[start:].decode("utf-8", "replace") if log.exists() else ""
    wait_until(lambda: mark in logged() or proc.poll() is not None, timeout,
               "listserv serve to listen")
    return logged()


def free_port() -> int:
    """A port of 127.0.0.1 free now (another process may take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(start: Callable[[int], "subprocess.Popen[bytes]"], log: Path,
                 port: int | None = None,
                 ready: Callable[[str, int], object] | None = None, timeout: float = 30.0,
                 what: str = "listserv serve to listen") -> "tuple[subprocess.Popen[bytes], int]":
    """Start a daemon with ``start(port)`` (``port``, or one found free; the daemon logs to
    ``log``, with -v) and wait until ``ready(what it logged, port)`` (by default: it logs that
    its intake listens on that port). free_port() only finds a port free a moment ago: when
    the daemon exits because the port (or another it binds) is "already in use", it is
    started again on a new free port, up to PORT_TRIES times. Returns (the process, its
    port); AssertionError, with what it logged, when it exits otherwise."""
    def listens(logged: str, port: int) -> bool:
        return f"intake listening on 127.0.0.1:{port}\n" in logged

    check = ready or listens
    for attempt in range(1, PORT_TRIES + 1):
        here = port or free_port()
        begin = log.stat().st_size if log.exists() else 0
        proc = start(here)

        def logged() -> str:
            return log.read_bytes()[begin:].decode("utf-8", "replace") if log.exists() else ""
        wait_until(lambda: proc.poll() is not None or check(logged(), here), timeout, what)
        if proc.poll() is None:
            return proc, here
        if "already in use" not in logged() or attempt == PORT_TRIES:
            raise AssertionError(f"the daemon exited {proc.returncode}:\n{logged()}")
        port = None
    raise AssertionError("not reached: the last attempt returns or raises")
