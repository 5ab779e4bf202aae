"""The job engine on the test database (SQLite, or PostgreSQL with LISTSERV_TEST_DATABASE_URL):
claims, partitions, leases, retries, dead letters, periodic jobs. The clock is the test's
(``clock.advance``), never a sleep; the engine is driven one job at a time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import select

from listserv import jobs, workers
from listserv.core.app import App
from listserv.core.db import Database
from listserv.jobs import engine
from listserv.jobs.runner import Kind
from listserv.core.models import Job, JobState
from tests.clirun import Cli
from tests.conftest import Clock
from tests.waiting import wait_until

SECONDS = dt.timedelta(seconds=1)


def add(app: App, kind: str = "k", payload: dict[str, Any] | None = None, **kw: Any) -> int:
    with app.db.unit_of_work() as s:
        return jobs.enqueue(s, app, kind, payload, **kw)


def rows(app: App) -> list[Job]:
    with app.db.unit_of_work() as s:
        return list(s.scalars(select(Job).order_by(Job.id)))


def finish(app: App, job: jobs.Claimed) -> bool:
    with app.db.unit_of_work() as s:
        return jobs.complete(s, app, job)


def failing(app: App, job: jobs.Claimed, error: str = "boom") -> JobState | None:
    with app.db.unit_of_work() as s:
        return jobs.fail(s, app, job, error)


def test_a_job_runs_once_with_its_payload_and_is_gone(app: App) -> None:
    seen: list[dict[str, Any]] = []
    kinds = jobs.registry([Kind("k", lambda a, p: seen.append(p))])
    add(app, payload={"list_id": 7})
    assert jobs.run_next_job(app, kinds)
    assert seen == [{"list_id": 7}]
    assert rows(app) == []
    assert not jobs.run_next_job(app, kinds)


def test_only_due_jobs_of_known_kinds_are_claimed(app: App, clock: Clock) -> None:
    add(app, "later", run_after=clock() + 60 * SECONDS)
    add(app, "other")
    assert jobs.claim(app, "w-1", kinds=["later", "k"]) is None
    clock.advance(seconds=60)
    job = jobs.claim(app, "w-1", kinds=["later", "k"])
    assert job is not None and job.kind == "later" and job.attempts == 1


def test_failures_back_off_exponentially_then_the_job_is_dead(app: App, clock: Clock) -> None:
    add(app, max_attempts=3)
    job = jobs.claim(app, "w-1")
    assert job is not None
    assert failing(app, job, "first") is JobState.ready
    [row] = rows(app)
    assert (row.state, row.attempts, row.last_error) == (JobState.ready, 1, "first")
    assert row.run_after == clock() + engine.BACKOFF_BASE and row.lease_owner is None
    clock.advance(seconds=29)
    assert jobs.claim(app, "w-1") is None                    # not before its backoff
    clock.advance(seconds=1)
    job = jobs.claim(app, "w-1")
    assert job is not None and job.attempts == 2
    assert failing(app, job, "second") is JobState.ready
    assert rows(app)[0].run_after == clock() + 2 * engine.BACKOFF_BASE   # doubled
    clock.advance(minutes=1)
    job = jobs.claim(app, "w-1")
    assert job is not None
    assert failing(app, job, "third") is JobState.dead
    [row] = rows(app)
    assert (row.state, row.attempts, row.last_error) == (JobState.dead, 3, "third")
    clock.advance(days=1)
    assert jobs.claim(app, "w-1") is None                    # dead jobs stay parked
    assert engine.backoff(20) == engine.BACKOFF_MAX


def test_a_handler_that_raises_is_retried_and_logged(app: App, clock: Clock,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky(a: App, p: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("disk full")

    kinds = jobs.registry([Kind("k", flaky)])
    add(app)
    assert jobs.run_next_job(app, kinds)
    assert rows(app)[0].last_error == "OSError: disk full"
    clock.advance(seconds=30)
    assert jobs.run_next_job(app, kinds)
    clock.advance(seconds=60)
    assert jobs.run_next_job(app, kinds)
    assert len(calls) == 3 and rows(app) == []
    tracebacks = [r for r in caplog.records if r.exc_info and "disk full" in r.getMessage()]
    assert len(tracebacks) == 1                              # the same error: logged in full once


def test_partition_runs_one_job_at_a_time_in_order(app: App, clock: Clock) -> None:
    a = add(app, partition_key="list:1")
    b = add(app, partition_key="list:1")
    c = add(app, partition_key="list:2")
    d = add(app)
    first = jobs.claim(app, "w-1")
    assert first is not None and first.id == a
    others = [jobs.claim(app, "w-2"), jobs.claim(app, "w-3")]
    assert sorted(j.id for j in others if j) == [c, d]       # b waits for a
    assert jobs.claim(app, "w-4") is None
    assert all(finish(app, j) for j in others if j)
    # a fails: it is retried before b runs (b stays behind it)
    assert failing(app, first) is JobState.ready
    assert jobs.claim(app, "w-4") is None
    clock.advance(seconds=30)
    again = jobs.claim(app, "w-4")
    assert again is not None and again.id == a
    assert finish(app, again)
    then = jobs.claim(app, "w-4")
    assert then is not None and then.id == b


def test_an_expired_lease_is_taken_over_by_anyone(app: App, clock: Clock) -> None:
    add(app, partition_key="p")
    add(app, partition_key="p")
    job = jobs.claim(app, "w-dead")
    assert job is not None
    clock.advance(seconds=20)
    assert jobs.renew(app, job)                              # heartbeat: 30 s from now
    clock.advance(seconds=20)
    assert jobs.claim(app, "w-2") is None                    # still leased (and b waits)
    clock.advance(seconds=11)                                # the worker stopped renewing
    taken = jobs.claim(app, "w-2")
    assert taken is not None and taken.id == job.id and taken.attempts == 2
    assert taken.owner == "w-2"
    assert not jobs.renew(app, job)                          # the old owner lost it
    assert not finish(app, job)
    assert failing(app, job) is None
    assert finish(app, taken)
    assert len(rows(app)) == 1


def test_a_job_that_keeps_killing_its_worker_ends_dead(app: App, clock: Clock) -> None:
    add(app, max_attempts=2)
    for n in range(2):
        assert jobs.claim(app, f"w-{n}") is not None
        clock.advance(seconds=31)
    assert jobs.claim(app, "w-9") is None
    [row] = rows(app)
    assert row.state is JobState.dead and "lease expired 2 times" in (row.last_error or "")


def test_periodic_jobs_exist_once_whatever_the_number_of_processes(
        app: App, clock: Clock) -> None:
    other = App(settings=app.settings, db=Database(app.settings.database_url),
                spool=app.spool, now=app.now)
    try:
        assert jobs.ensure_periodic(app, workers.REGISTRY) == len(workers.PERIODIC)
        assert jobs.ensure_periodic(other, workers.REGISTRY) == 0
        with other.db.unit_of_work() as s:                 # enqueue by hand: deduplicated
            jobs.enqueue(s, other, "digests", dedupe_key="periodic:digests",
                         partition_key="periodic:digests")
    finally:
        other.db.dispose()
    assert sorted(j.kind for j in rows(app)) == sorted(k.name for k in workers.PERIODIC)


def test_a_periodic_job_reschedules_itself_and_can_be_kicked(app: App, clock: Clock) -> None:
    runs: list[dt.datetime] = []
    kinds = jobs.registry([Kind("tick", lambda a, p: runs.append(a.now()), every=60 * SECONDS)])
    jobs.ensure_periodic(app, kinds)
    assert jobs.run_jobs_until_idle(app, kinds) == 1
    [row] = rows(app)
    assert row.state is JobState.ready and row.run_after == clock() + 60 * SECONDS
    clock.advance(seconds=10)
    with app.db.unit_of_work() as s:
        jobs.kick(s, app, "tick")
    assert jobs.run_jobs_until_idle(app, kinds) == 1         # kicked: runs now
    # kicked while running: one more run right after, not a second job alongside
    clock.advance(seconds=60)
    job = jobs.claim(app, "w-1", kinds=kinds)
    assert job is not None
    with app.db.unit_of_work() as s:
        jobs.kick(s, app, "tick")
    assert jobs.claim(app, "w-2", kinds=kinds) is None       # the partition is busy
    assert jobs.execute(app, job, kinds)
    ready = [j for j in rows(app) if j.state is JobState.ready]
    assert len(ready) == 1 and ready[0].run_after == clock()
    assert len(runs) == 3


def test_a_dead_periodic_job_is_listed_and_its_next_run_scheduled(
        app: App, clock: Clock, cli_env: dict[str, str]) -> None:
    def broken(a: App, p: dict[str, Any]) -> None:
        raise RuntimeError("no archive directory")

    kinds = jobs.registry([Kind("archive", broken, every=60 * SECONDS, max_attempts=2)])
    for _ in range(2):                                       # two dead runs, one row kept
        jobs.ensure_periodic(app, kinds)
        jobs.run_next_job(app, kinds)
        clock.advance(seconds=30)
        jobs.run_next_job(app, kinds)
        clock.advance(seconds=60)
    states = sorted(j.state.value for j in rows(app))
    assert states == ["dead", "ready"]
    cli = Cli(cli_env)
    [item] = [i for i in cli.json("queue", "failed") if i["kind"] == "job"]
    assert item["job_kind"] == "archive" and item["attempts"] == 2
    assert item["error"] == "RuntimeError: no archive directory"
    text = cli("queue", "failed").stdout
    assert f"job #{item['id']}  archive" in text and "--kind job" in text
    status = cli.json("queue", "status")["jobs"]
    assert (status["dead"], status["ready"]) == (1, 1)
    assert status["kinds"]["archive"] == {"ready": 1, "running": 0, "dead": 1}
    assert "dead" in cli("queue", "status").stdout
    # retrying a dead periodic job runs its next run now
    out = cli("queue", "retry", str(item["id"]), "--kind", "job").stdout
    assert "runs now" in out
    [row] = rows(app)
    assert row.state is JobState.ready and row.run_after <= dt.datetime.now(dt.timezone.utc)
    assert cli.error("queue", "retry", str(item["id"]), "--kind", "job") == \
        f"listserv: error: no dead job with id {item['id']}"


def test_retry_of_a_dead_one_off_job(app: App) -> None:
    add(app, max_attempts=1)
    job = jobs.claim(app, "w-1")
    assert job is not None and failing(app, job) is JobState.dead
    with app.db.unit_of_work() as s:
        assert "queued again" in jobs.retry_dead(s, app, job.id)
    [row] = rows(app)
    assert (row.state, row.attempts) == (JobState.ready, 0)


def test_concurrent_claims_are_exclusive_and_partitions_serial(app: App) -> None:
    """Four threads, each with its own engine (as separate processes would be), drain 80
    jobs over 4 partitions plus unpartitioned ones: every job runs once, and no two jobs
    of one partition are ever held at the same time."""
    for i in range(80):
        add(app, payload={"i": i}, partition_key=f"p{i % 4}" if i % 5 else None)
    held: set[str] = set()
    lock = threading.Lock()
    done: list[int] = []
    errors: list[str] = []
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        mine = App(settings=app.settings, db=Database(app.settings.database_url),
                   spool=app.spool, now=app.now)
        owner = jobs.new_worker_id()
        barrier.wait()
        try:
            while (job := jobs.claim(mine, owner)) is not None:
                key = job.partition_key
                with lock:
                    if key is not None and key in held:
                        errors.append(f"{key} held twice")
                    if key is not None:
                        held.add(key)
                    done.append(job.payload["i"])
                with lock:
                    held.discard(key or "")
                with mine.db.unit_of_work() as s:
                    assert jobs.complete(s, mine, job)
        finally:
            mine.db.dispose()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(done) == list(range(80))
    assert rows(app) == []


def test_partition_order_holds_under_concurrency(app: App) -> None:
    """Jobs of one partition complete in id order, whichever thread runs them."""
    ids = [add(app, partition_key="list:9") for _ in range(20)]
    order: list[int] = []

    def worker() -> None:
        mine = App(settings=app.settings, db=Database(app.settings.database_url),
                   spool=app.spool, now=app.now)
        owner = jobs.new_worker_id()
        try:
            idle = 0
            while idle < 50 and len(order) < len(ids):
                job = jobs.claim(mine, owner)
                if job is None:
                    idle += 1
                    continue
                idle = 0
                order.append(job.id)
                with mine.db.unit_of_work() as s:
                    assert jobs.complete(s, mine, job)
        finally:
            mine.db.dispose()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert order == ids


def test_the_worker_loop_renews_the_lease_while_a_handler_runs(app: App, clock: Clock) -> None:
    """The daemon's loop runs the handler in its executor and renews the lease meanwhile (the
    event loop stays free: the renewal happens while the handler still runs)."""
    lease = dt.timedelta(seconds=3)              # renewed every second

    def slow(a: App, p: dict[str, Any]) -> None:
        clock.advance(seconds=2)
        target = clock() + lease
        wait_until(lambda: rows(app)[0].lease_expires == target, 15, "the lease renewed")

    kinds = jobs.registry([Kind("slow", slow)])
    add(app, "slow")

    async def main() -> None:
        stop, wake = asyncio.Event(), asyncio.Event()
        with concurrent.futures.ThreadPoolExecutor(1) as executor:
            task = asyncio.create_task(jobs.work(app, stop, wake, kinds=kinds, owner="w-loop",
                                                 executor=executor, lease=lease, poll=0.05))
            await asyncio.to_thread(wait_until, lambda: rows(app) == [], 20, "the job done")
            stop.set()
            wake.set()
            await asyncio.wait_for(task, 10)

    asyncio.run(main())
