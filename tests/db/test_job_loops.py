"""The daemon's job loops of one group (listserv.jobs.runner.Idle): new work wakes one free
loop, not all of them; a loop that takes a job while more are due wakes the next one. The
loops poll once a minute here, so every claim after the first is one a wake-up caused."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable

import pytest

from listserv import jobs
from listserv.core.app import App
from listserv.jobs import engine
from listserv.jobs.runner import Kind
from tests.waiting import wait_until

POLL = 60.0


def add(app: App, kind: str = "k") -> int:
    with app.db.unit_of_work() as s:
        return jobs.enqueue(s, app, kind)


def counting_claims(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """Every claim's result (the kind, or None), in order."""
    seen: list[str | None] = []
    real = engine.claim

    def claim(*a: Any, **kw: Any) -> jobs.Claimed | None:
        job = real(*a, **kw)
        seen.append(job.kind if job is not None else None)
        return job
    monkeypatch.setattr(engine, "claim", claim)
    return seen


def run_loops(app: App, kinds: jobs.Registry, n: int,
              body: Callable[[asyncio.AbstractEventLoop, jobs.Idle], None]) -> None:
    """Start ``n`` loops in one group; run ``body(loop, idle)`` in a thread; stop them."""
    async def main() -> None:
        stop = asyncio.Event()
        idle = jobs.Idle()
        wakes = [asyncio.Event() for _ in range(n)]
        with concurrent.futures.ThreadPoolExecutor(n) as executor:
            tasks = [asyncio.create_task(jobs.work(app, stop, w, kinds=kinds, owner=f"w-{i}",
                                                   executor=executor, poll=POLL, idle=idle))
                     for i, w in enumerate(wakes)]
            try:
                await asyncio.to_thread(body, asyncio.get_running_loop(), idle)
            finally:
                stop.set()
                for w in wakes:
                    w.set()
                await asyncio.wait_for(asyncio.gather(*tasks), 20)

    asyncio.run(main())


def test_a_new_job_wakes_one_free_loop(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = counting_claims(monkeypatch)
    ran = threading.Event()
    kinds = jobs.registry([Kind("k", lambda a, p: ran.set())])

    def body(loop: asyncio.AbstractEventLoop, idle: jobs.Idle) -> None:
        wait_until(lambda: len(seen) == 3 and len(idle.free) == 3, 15, "the first polls")
        add(app)
        loop.call_soon_threadsafe(idle.wake_one)
        assert ran.wait(15)
        # the loop that ran it looks for more once (it ended a job); nobody else claimed
        wait_until(lambda: len(seen) == 5, 15, "the claim after the job")

    run_loops(app, kinds, 3, body)
    assert seen == [None, None, None, "k", None]


def test_a_loop_that_takes_a_job_while_more_are_due_wakes_the_next(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = counting_claims(monkeypatch)
    together = threading.Barrier(2, timeout=15)   # both jobs run at once, or it breaks
    kinds = jobs.registry([Kind("k", lambda a, p: together.wait())])

    def body(loop: asyncio.AbstractEventLoop, idle: jobs.Idle) -> None:
        wait_until(lambda: len(seen) == 2 and len(idle.free) == 2, 15, "the first polls")
        add(app)
        add(app)
        loop.call_soon_threadsafe(idle.wake_one)
        wait_until(lambda: seen.count("k") == 2, 15, "both jobs claimed")
        wait_until(lambda: len(idle.free) == 2, 15, "both jobs done")

    run_loops(app, kinds, 2, body)
    assert not together.broken
    with app.db.unit_of_work() as s:
        assert engine.counts(s, app.now())["ready"] == 0
