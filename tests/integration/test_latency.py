"""Accepted post -> first delivered copy, with the daemon's own loops (no run_until_idle)."""

from __future__ import annotations

import time

import pytest

from tests.integration.harness import Harness, make_list, make_message

# a wall-clock bound: .ci/run runs it on its own, not next to other xdist workers
pytestmark = pytest.mark.serial


def test_first_copy_leaves_quickly_after_accept(harness: Harness) -> None:
    if not harness.real_delivery:
        return
    make_list(harness.app, "dev@example.org", members=["ann@a.example", "bob@b.example"])
    harness.send(make_message("ann@a.example", "dev@example.org", "warm-up"))
    harness.sink.wait_for(lambda m: len(m) >= 2, 10)
    timings = []
    for i in range(5):
        before = len(harness.sink.messages)
        t0 = time.perf_counter()
        harness.send(make_message("ann@a.example", "dev@example.org", f"timed {i}"))
        t1 = time.perf_counter()
        harness.sink.wait_for(lambda m: len(m) > before, 10)
        timings.append(time.perf_counter() - t0)
        assert t1 - t0 < 1.0
    timings.sort()
    print(f"SMTP send start -> first copy in the sink: median {timings[2] * 1000:.0f} ms, max {timings[-1] * 1000:.0f} ms")
    assert timings[2] < 0.3, timings
