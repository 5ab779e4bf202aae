"""Running jobs: the kinds a process knows, one job at a time, and the daemon's worker loop.

A kind is a plain function ``handler(app, payload) -> None`` that opens its own unit(s) of
work; it raises to fail (the engine retries with backoff, then parks the job as dead). A
periodic kind (``every``) keeps exactly one job in the table: each run, when it ends (done or
dead), enqueues the next one ``every`` later, under a dedupe key, so N processes share the
work without electing a leader. ``kick()`` makes a periodic kind run now (a post just
pushed a list over its digest size; posts wait to be archived).

Tests drive the engine deterministically with run_next_job() / run_jobs_until_idle(); only
the daemon runs work() loops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as dt
import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv.core.app import App
from listserv.jobs import engine
from listserv.jobs.engine import Claimed
from listserv.core.models import Job, JobState

log = logging.getLogger(__name__)

Handler = Callable[[App, dict[str, Any]], None]
# The job whose handler runs in this thread (attempt count, last error), for handlers that
# decide by it (listserv.incoming parks a message after its last attempt).
_current: contextvars.ContextVar[Claimed | None] = contextvars.ContextVar("job", default=None)
POLL_INTERVAL = 0.5                  # seconds between claims while nothing is due
ENSURE_INTERVAL = 300.0              # seconds between checks that every periodic job exists


@dataclass(frozen=True)
class Kind:
    name: str
    handler: Handler
    every: dt.timedelta | None = None      # periodic: the next run this long after each run
    max_attempts: int = engine.MAX_ATTEMPTS
    retry_base: dt.timedelta = engine.BACKOFF_BASE

    @property
    def periodic_key(self) -> str:
        return f"periodic:{self.name}"


Registry = Mapping[str, Kind]


def registry(kinds: Iterable[Kind]) -> dict[str, Kind]:
    return {k.name: k for k in kinds}


# ---------------------------------------------------------------------------- periodic


def ensure_periodic(app: App, kinds: Registry) -> int:
    """Make sure each periodic kind has its job (first run now); how many were added."""
    added = 0
    with app.db.unit_of_work() as session:
        for k in kinds.values():
            if k.every is not None:
                added += engine.ensure(session, app, k.name, k.periodic_key,
                                       partition_key=k.periodic_key,
                                       max_attempts=k.max_attempts)
    return added


def schedule_next(session: Session, app: App, kind: Kind,
                  run_after: dt.datetime | None = None) -> int:
    """Enqueue the periodic ``kind``'s next run (default: ``every`` from now)."""
    assert kind.every is not None
    return engine.enqueue(session, app, kind.name, partition_key=kind.periodic_key,
                          dedupe_key=kind.periodic_key,
                          run_after=run_after or app.now() + kind.every,
                          max_attempts=kind.max_attempts)


def kick(session: Session, app: App, name: str) -> int:
    """In the caller's transaction: run periodic kind ``name`` as soon as possible (after the
    run in progress, if any)."""
    key = f"periodic:{name}"
    due = session.scalar(select(Job.id).where(Job.dedupe_key == key, Job.state == JobState.ready,
                                              Job.run_after <= app.now()))
    if due is not None:        # already due: no write (posts kick often, under a list lock)
        return due
    return engine.enqueue(session, app, name, partition_key=key, dedupe_key=key)


def schedule(session: Session, app: App, name: str, run_after: dt.datetime) -> int:
    """In the caller's transaction: periodic kind ``name`` runs no later than ``run_after``
    (a pass that left work over asks for an early next run)."""
    key = f"periodic:{name}"
    return engine.enqueue(session, app, name, partition_key=key, dedupe_key=key,
                          run_after=run_after)


def postpone(session: Session, app: App, name: str, until: dt.datetime) -> None:
    """In the caller's transaction: periodic kind ``name`` runs no earlier than ``until``
    (an operator just did its work by hand)."""
    key = f"periodic:{name}"
    waiting = session.scalar(select(Job).where(Job.dedupe_key == key,
                                               Job.state == JobState.ready))
    if waiting is not None:
        waiting.run_after = max(waiting.run_after, until)
    else:
        engine.ensure(session, app, name, key, partition_key=key, run_after=until)


# ---------------------------------------------------------------------------- one job


def execute(app: App, job: Claimed, kinds: Registry) -> bool:
    """Run a claimed job's handler and record the outcome; True when it succeeded."""
    kind = kinds[job.kind]
    token = _current.set(job)
    try:
        kind.handler(app, job.payload)
    except Exception as exc:  # noqa: BLE001 - the engine records it: retry, then dead
        error = f"{type(exc).__name__}: {exc}"
        with app.db.unit_of_work() as session:
            state = engine.fail(session, app, job, error, kind.retry_base)
            if state is JobState.dead and kind.every is not None:
                schedule_next(session, app, kind)
        what = {JobState.dead: f"dead after {job.attempts} attempt(s) (listserv queue failed)",
                JobState.ready: f"attempt {job.attempts} of {job.max_attempts}, retried later",
                None: "its lease was lost meanwhile"}[state]
        if error != job.last_error or state is JobState.dead:
            log.error("job %d (%s) failed, %s: %s", job.id, job.kind, what, error,
                      exc_info=(type(exc), exc, exc.__traceback__))
        else:     # the same error as last time: one line
            log.warning("job %d (%s) failed again, %s: %s", job.id, job.kind, what, error)
        return False
    finally:
        _current.reset(token)
    with app.db.unit_of_work() as session:
        if engine.complete(session, app, job):
            if kind.every is not None:
                schedule_next(session, app, kind)
        else:
            log.warning("job %d (%s) finished after its lease was taken over", job.id, job.kind)
    return True


def current_job() -> Claimed | None:
    """The job being run by this thread's handler (None outside a handler)."""
    return _current.get()


def run_next_job(app: App, kinds: Registry, *, owner: str = "w-driver") -> bool:
    """Claim and run one due job in this thread (tests, tools); False when none was due."""
    job = engine.claim(app, owner, kinds=list(kinds))
    if job is None:
        return False
    execute(app, job, kinds)
    return True


def run_jobs_until_idle(app: App, kinds: Registry, *, limit: int = 1000) -> int:
    """Run due jobs one at a time until none is due; how many ran."""
    n = 0
    while n < limit and run_next_job(app, kinds):
        n += 1
    return n


# ---------------------------------------------------------------------------- daemon loop


async def wait_at_most(event: asyncio.Event, timeout: float) -> None:
    """Until ``event`` is set (at once if it is), or ``timeout`` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass


class Idle:
    """The job loops of one process that run the same kinds, as its event loop sees them:
    which of them are free (not running a job), so that new work wakes one of them and not
    all (the others' claims would only race it for the job, beside the work on the way to a
    post's first copy). A loop that takes a job while more are due wakes the next one."""

    def __init__(self) -> None:
        self.free: list[asyncio.Event] = []     # the free loops' wake events, longest first

    def wake_one(self) -> bool:
        """On the owning event loop: make a free loop look for work (one already woken
        will); False when every loop runs a job (each looks for work when it ends)."""
        for event in self.free:
            if event.is_set():
                return True
        if not self.free:
            return False
        event = self.free.pop(0)
        self.free.append(event)
        event.set()
        return True


async def work(app: App, stop: asyncio.Event, wake: asyncio.Event, *, kinds: Registry,
               owner: str, executor: concurrent.futures.Executor,
               lease: dt.timedelta | None = None, poll: float = POLL_INTERVAL,
               idle: Idle | None = None, after_job: Callable[[], object] | None = None) -> None:
    """Claim and run jobs until ``stop`` (the job in hand is finished first). Claims and
    handlers run in ``executor`` (the daemon's own threads, not the intake's); the lease is
    renewed every third of its length while a handler runs. ``wake`` is set to look for work
    at once. ``lease``: [database] lease_seconds unless given. ``idle``: the group of loops
    this one belongs to (it is free there while it runs no job); ``after_job()`` is called
    on the event loop after each job."""
    lease = lease or engine.lease_of(app)
    loop = asyncio.get_running_loop()
    names = list(kinds)
    next_ensure = loop.time() + ENSURE_INTERVAL
    free = idle.free if idle is not None else []
    free.append(wake)
    try:
        while not stop.is_set():
            wake.clear()
            if loop.time() >= next_ensure:
                next_ensure = loop.time() + ENSURE_INTERVAL
                try:
                    await loop.run_in_executor(executor, ensure_periodic, app, kinds)
                except Exception:
                    log.exception("checking the periodic jobs failed")
            try:
                job = await loop.run_in_executor(executor, functools.partial(
                    engine.claim, app, owner, kinds=names, lease=lease))
            except Exception:
                log.exception("claiming a job failed")
                await wait_at_most(stop, 1.0)
                continue
            if job is None:
                await wait_at_most(wake, poll)
                continue
            free.remove(wake)
            # more jobs were due, or a wake-up came during the claim: the next free loop
            if idle is not None and (job.more or wake.is_set()):
                idle.wake_one()
            try:
                await _run(app, job, kinds, executor, lease, stop)
            finally:
                free.append(wake)
            if after_job is not None:
                after_job()
    finally:
        if wake in free:
            free.remove(wake)


async def _run(app: App, job: Claimed, kinds: Registry, executor: concurrent.futures.Executor,
               lease: dt.timedelta, stop: asyncio.Event) -> None:
    """Run a claimed job in ``executor``, renewing its lease every third of its length."""
    loop = asyncio.get_running_loop()
    running = loop.run_in_executor(executor, execute, app, job, kinds)
    while True:
        done, _ = await asyncio.wait({running}, timeout=lease.total_seconds() / 3)
        if done:
            break
        try:     # a short write: the default executor, the handler's thread is busy
            kept = await asyncio.to_thread(engine.renew, app, job, lease)
        except Exception:
            log.exception("job %d (%s): renewing its lease failed", job.id, job.kind)
        else:
            if not kept:
                log.warning("job %d (%s): lease lost to another worker", job.id, job.kind)
    try:
        running.result()
    except Exception:
        log.exception("job %d (%s): recording its outcome failed (retried when the "
                      "lease expires)", job.id, job.kind)
        await wait_at_most(stop, 1.0)
