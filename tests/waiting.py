"""The one way tests wait: poll a condition until it holds, or fail after a deadline."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable


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
