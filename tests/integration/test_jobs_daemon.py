"""Two daemons on one database share the periodic passes without a leader: each pass runs
once and leaves exactly one next run (driven by the daemons' own job loops)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from listserv import workers
from listserv.core.app import App
from listserv.daemon import Daemon
from listserv.core.db import Database
from listserv.core.models import Job, JobState
from tests.waiting import wait_until


def test_two_daemons_run_each_periodic_pass_once(app: App) -> None:
    other = App(settings=app.settings, db=Database(app.settings.database_url),
                spool=app.spool, now=app.now, resolve_txt=app.resolve_txt)

    def jobs() -> list[Job]:
        with app.db.unit_of_work() as s:
            return list(s.scalars(select(Job).order_by(Job.kind)))

    def all_ran_once() -> bool:
        now = app.now()       # the test's clock stands still: next runs are never due
        rows = jobs()
        return len(rows) == len(workers.PERIODIC) and all(
            j.state is JobState.ready and j.run_after > now for j in rows)

    async def main() -> None:
        stop = asyncio.Event()
        daemons = [Daemon(a, intake_enabled=False, incoming_worker=False, delivery=False)
                   for a in (app, other)]
        tasks = [asyncio.create_task(d.run(stop)) for d in daemons]
        try:
            await asyncio.to_thread(wait_until, all_ran_once, 30, "every pass run once")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)

    try:
        asyncio.run(main())
    finally:
        other.db.dispose()
    rows = jobs()
    assert sorted(j.kind for j in rows) == sorted(k.name for k in workers.PERIODIC)
    for j in rows:
        kind = workers.REGISTRY[j.kind]
        assert kind.every is not None and j.run_after == app.now() + kind.every
        assert j.attempts == 0 and j.last_error is None
