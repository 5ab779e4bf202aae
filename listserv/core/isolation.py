"""Failure isolation for periodic passes (archive, archive pages, digests, bounce ticks).

One failing item (a list whose archive directory cannot be written, a member whose warning
cannot be built) must not stop the pass for the others, nor fill the log every 30 seconds.
A Failures registry remembers, per pass and in this process, which items failed: each
failure is logged once (with what the caller says about the item: list, Message-ID), the item
is skipped until RETRY_AFTER has passed, then tried again; a success forgets it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Hashable, TypeVar

T = TypeVar("T")
RETRY_AFTER = 300.0          # seconds before a failed item is tried again
REGISTRIES: list["Failures"] = []


class Failures:
    def __init__(self, name: str, logger: logging.Logger,
                 retry_after: float = RETRY_AFTER) -> None:
        self.name = name
        self.log = logger
        self.retry_after = retry_after
        self._items: dict[Hashable, tuple[float, str]] = {}   # key -> (retry at, error)
        self._lock = threading.Lock()
        REGISTRIES.append(self)

    def retry_all(self) -> None:
        """Make every failed item due now (an operator fixed the cause; tests)."""
        with self._lock:
            self._items = {k: (0.0, error) for k, (_, error) in self._items.items()}

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def waiting(self) -> set[Hashable]:
        """Keys of failed items whose retry time has not come yet (skip them)."""
        now = time.monotonic()
        with self._lock:
            return {k for k, (at, _) in self._items.items() if at > now}

    def due(self, key: Hashable) -> bool:
        return key not in self.waiting()

    def failed(self, key: Hashable, what: str, exc: BaseException) -> None:
        """Record a failure of ``key``; log it unless the same error was logged before."""
        error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            previous = self._items.get(key)
            self._items[key] = (time.monotonic() + self.retry_after, error)
        if previous is None or previous[1] != error:
            self.log.error("%s failed for %s (retried every %ds, logged once): %s",
                           self.name, what, int(self.retry_after), error,
                           exc_info=(type(exc), exc, exc.__traceback__))

    def succeeded(self, key: Hashable, what: str = "") -> None:
        with self._lock:
            gone = self._items.pop(key, None)
        if gone is not None:
            self.log.warning("%s works again for %s", self.name, what or key)

    def run(self, key: Hashable, what: str, fn: Callable[[], T]) -> T | None:
        """``fn()`` isolated: its result, or None after recording the failure."""
        try:
            result = fn()
        except Exception as exc:  # noqa: BLE001 - the point: one item must not stop the pass
            self.failed(key, what, exc)
            return None
        self.succeeded(key, what)
        return result
