"""The job table as a queue: enqueue, claim with a lease, renew, complete, retry, dead-letter.

Claiming (claim()) takes one job that is due: a *ready* job whose run_after has passed, or a
*running* job whose lease expired (its worker died or hung: whoever comes next takes it over;
no hostname or pid is ever consulted). The claim is one transaction of the same form on
both databases: a read of candidates, then a compare-and-set UPDATE of one of them that
checks again that it is due and its partition free. PostgreSQL's read locks the candidates
(``FOR UPDATE SKIP LOCKED``) and a partition is held by a transaction-scoped advisory lock;
SQLite has one writer.

A job with a partition_key runs only when no earlier job of its partition is ready or
running and no job of its partition holds a live lease: a partition's jobs run one at a time,
in id order (a job waiting for its retry holds back the later ones).

A dedupe_key allows at most one *ready* job per key (a partial unique index): enqueueing
again only moves the waiting job's run_after earlier. A running job does not count, so work
that arrives while a pass runs gets a pass of its own afterwards (give such jobs the key as
partition too, so that the passes do not overlap). N processes that each enqueue their
periodic jobs at start therefore create one of each.

Every function that changes a claimed job checks lease_owner: a worker whose lease was taken
over cannot complete or fail the job any more.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Collection

from sqlalchemy import (
    BindParameter,
    String,
    Table,
    and_,
    bindparam,
    cast,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from listserv.core.app import App
from listserv.core.errors import UsageError
from listserv.core.models import Job, JobState

log = logging.getLogger(__name__)

LEASE = dt.timedelta(seconds=30)        # a claim lasts this long unless renewed (the default)
BACKOFF_BASE = dt.timedelta(seconds=30)  # first retry after this; doubles per attempt
BACKOFF_MAX = dt.timedelta(hours=1)
MAX_ATTEMPTS = 5
CLAIM_CANDIDATES = 8
MAX_ID = 2**31 - 1


def lease_of(app: App) -> dt.timedelta:
    """The lease of this process's claims: ``[database] lease_seconds``."""
    return dt.timedelta(seconds=app.settings.database.lease_seconds)


def new_worker_id() -> str:
    """A random id for one worker (process incarnation): the lease owner. Not derived from
    host or pid, which mean nothing across containers and hosts."""
    return "w-" + secrets.token_hex(8)


@dataclass(frozen=True)
class Claimed:
    """A job as its worker sees it while holding the lease."""

    id: int
    kind: str
    payload: dict[str, Any]
    partition_key: str | None
    dedupe_key: str | None
    attempts: int               # including this one
    max_attempts: int
    owner: str
    last_error: str | None
    more: bool = False          # the claim saw other due jobs it could have taken


def backoff(attempts: int, base: dt.timedelta = BACKOFF_BASE,
            cap: dt.timedelta = BACKOFF_MAX) -> dt.timedelta:
    """The wait before retry number ``attempts`` (1 after the first failure): base * 2^(n-1)."""
    return min(cap, base * (2 ** max(0, min(attempts - 1, 30))))


# ---------------------------------------------------------------------------- enqueue

# A job without a dedupe_key: a plain INSERT on the table, in Core and built once (the intake
# adds one per message before its 250, and every post adds several).
_INSERT = insert(Job.__table__).returning(Job.__table__.c.id)  # type: ignore[arg-type]


def new_job(app: App, kind: str, payload: dict[str, Any] | None = None, *,
            partition_key: str | None = None, dedupe_key: str | None = None,
            run_after: dt.datetime | None = None,
            max_attempts: int = MAX_ATTEMPTS) -> dict[str, Any]:
    """The row of a new ready job (enqueue()'s arguments), column by column."""
    now = app.now()
    return {"kind": kind, "payload": payload or {}, "partition_key": partition_key,
            "dedupe_key": dedupe_key, "state": JobState.ready, "run_after": run_after or now,
            "attempts": 0, "max_attempts": max_attempts, "created_at": now}


def _insert_ignoring_ready_duplicate(session: Session, values: dict[str, Any]) -> int | None:
    """INSERT the job unless a ready job with its dedupe_key exists; the new id or None."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    stmt = (insert(Job).values(**values)
            .on_conflict_do_nothing(index_elements=[Job.dedupe_key],
                                    index_where=text("state = 'ready'"))
            .returning(Job.id))
    return session.execute(stmt).scalar()


def enqueue(session: Session, app: App, kind: str, payload: dict[str, Any] | None = None, *,
            partition_key: str | None = None, dedupe_key: str | None = None,
            run_after: dt.datetime | None = None, max_attempts: int = MAX_ATTEMPTS) -> int:
    """Add a job (in the caller's transaction); its id. With ``dedupe_key``, when a ready job
    with that key exists, it is kept (its run_after moved earlier if this one is earlier) and
    its id returned."""
    values = new_job(app, kind, payload, partition_key=partition_key, dedupe_key=dedupe_key,
                     run_after=run_after, max_attempts=max_attempts)
    when = values["run_after"]
    if dedupe_key is None:
        return int(session.execute(_INSERT, values).scalar_one())
    new_id = _insert_ignoring_ready_duplicate(session, values)
    if new_id is not None:
        return new_id
    session.execute(update(Job).where(Job.dedupe_key == dedupe_key,
                                      Job.state == JobState.ready, Job.run_after > when)
                    .values(run_after=when).execution_options(synchronize_session=False))
    existing = session.scalar(select(Job.id).where(Job.dedupe_key == dedupe_key,
                                                   Job.state == JobState.ready))
    if existing is None:       # the ready job was claimed meanwhile: add ours after all
        return enqueue(session, app, kind, payload, partition_key=partition_key,
                       dedupe_key=dedupe_key, run_after=run_after, max_attempts=max_attempts)
    return existing


def ensure(session: Session, app: App, kind: str, dedupe_key: str, *,
           partition_key: str | None = None, run_after: dt.datetime | None = None,
           max_attempts: int = MAX_ATTEMPTS) -> bool:
    """Enqueue unless a job with ``dedupe_key`` is ready or running (a periodic job that must
    exist once); whether one was added."""
    live = session.scalar(select(Job.id).where(
        Job.dedupe_key == dedupe_key, Job.state.in_([JobState.ready, JobState.running]))
        .limit(1))
    if live is not None:
        return False
    enqueue(session, app, kind, partition_key=partition_key, dedupe_key=dedupe_key,
            run_after=run_after, max_attempts=max_attempts)
    return True


# ---------------------------------------------------------------------------- claim


# The claim is on the path from a post's 250 to its first copy, and every job loop polls with
# it: its statements are built once, in Core (``now`` a parameter).
# _DUE: ready and its run_after passed, or running and its lease expired.
# _FREE: no other job of its partition ahead of it (earlier and not finished), none holding a
# live lease.
_J: Table = Job.__table__  # type: ignore[assignment]
_OTHER = _J.alias("other")
_NOW = bindparam("now", type_=_J.c.run_after.type)
_DUE = or_(and_(_J.c.state == JobState.ready, _J.c.run_after <= _NOW),
           and_(_J.c.state == JobState.running, _J.c.lease_expires <= _NOW))
_FREE = or_(_J.c.partition_key.is_(None), ~exists().where(
    _OTHER.c.partition_key == _J.c.partition_key, _OTHER.c.id != _J.c.id,
    or_(and_(_OTHER.c.id < _J.c.id, _OTHER.c.state.in_([JobState.ready, JobState.running])),
        and_(_OTHER.c.state == JobState.running, _OTHER.c.lease_expires > _NOW))))
_CANDIDATES = (select(_J.c.id, _J.c.state, _J.c.attempts, _J.c.max_attempts,
                      _J.c.partition_key, _J.c.lease_owner)
               .where(_DUE, _FREE).order_by(_J.c.run_after, _J.c.id).limit(CLAIM_CANDIDATES))
_KINDS: BindParameter[str] = bindparam("kinds", expanding=True)
_CANDIDATES_OF = _CANDIDATES.where(_J.c.kind.in_(_KINDS))
_LOCK_CANDIDATES = _CANDIDATES.with_for_update(skip_locked=True, of=_J)
_LOCK_CANDIDATES_OF = _CANDIDATES_OF.with_for_update(skip_locked=True, of=_J)
_LOCK_PARTITION = select(func.pg_try_advisory_xact_lock(
    func.hashtextextended(bindparam("partition", type_=String), 0)))
_TAKE = (update(_J).where(_J.c.id == bindparam("jid"), _DUE, _FREE,
                          or_(_J.c.state == JobState.ready, _J.c.attempts < _J.c.max_attempts))
         .values(state=JobState.running, lease_owner=bindparam("owner"),
                 lease_expires=bindparam("expires", type_=_J.c.lease_expires.type),
                 attempts=_J.c.attempts + 1)
         .returning(_J.c.id, _J.c.kind, _J.c.payload, _J.c.partition_key, _J.c.dedupe_key,
                    _J.c.attempts, _J.c.max_attempts, _J.c.lease_owner, _J.c.last_error))
_BURY = (update(_J).where(_J.c.id == bindparam("jid"), _J.c.state == JobState.running,
                          _J.c.lease_expires <= _NOW, _J.c.attempts >= _J.c.max_attempts)
         .values(state=JobState.dead, failed_at=bindparam("failed", type_=_J.c.failed_at.type),
                 lease_owner=None, lease_expires=None,
                 last_error=func.substr(
                     literal("its worker's lease expired ") + cast(_J.c.attempts, String)
                     + literal(" times (the worker died or hung); last error: ")
                     + func.coalesce(_J.c.last_error, "-"), 1, 4000))
         .returning(_J.c.id, _J.c.kind, _J.c.last_error))


def claim(app: App, owner: str, *, kinds: Collection[str] | None = None,
          lease: dt.timedelta = LEASE) -> Claimed | None:
    """Lease one due job of ``kinds`` (any kind when None) to ``owner``; None if none is due.

    A job whose lease expired after max_attempts claims (it kept killing or hanging its
    worker) is made dead instead of being run again.

    One transaction on both databases: read up to CLAIM_CANDIDATES candidates, then take
    the first that can be taken with _TAKE, a compare-and-set UPDATE that checks again that
    it is due and its partition free, and returns the row it took. On SQLite the read takes
    no lock (pysqlite begins the transaction at the UPDATE, which, one writer, sees every
    commit before it); an idle poll thus writes nothing. On PostgreSQL the read locks the
    candidates, skipping those another claim holds (``FOR UPDATE SKIP LOCKED``: an idle poll
    locks nothing either), and a partitioned job's partition is held by a transaction-scoped
    advisory lock before the UPDATE, whose fresh snapshot then sees any job of the
    partition claimed and committed after the read."""
    now = app.now()
    locking = not app.db.is_sqlite
    params: dict[str, Any] = {"now": now}
    query = _LOCK_CANDIDATES if locking else _CANDIDATES
    if kinds is not None:
        query = _LOCK_CANDIDATES_OF if locking else _CANDIDATES_OF
        params["kinds"] = list(kinds)
    with app.db.unit_of_work() as session:
        candidates = session.execute(query, params).all()
        for i, (jid, state, attempts, max_attempts, partition, was) in enumerate(candidates):
            if state is JobState.running and attempts >= max_attempts:
                buried = session.execute(_BURY, {"jid": jid, "now": now, "failed": now}).first()
                if buried is not None:
                    log.error("job %d (%s) is dead: %s", *buried)
                continue
            if locking and partition is not None and not session.scalar(
                    _LOCK_PARTITION, {"partition": partition}):
                continue          # another claim is taking a job of this partition
            row = session.execute(_TAKE, {"jid": jid, "now": now, "owner": owner,
                                          "expires": now + lease}).first()
            if row is None:       # taken or blocked since the read
                continue
            if state is JobState.running:
                log.warning("job %d (%s): lease of %s expired; taken over by %s", row.id,
                            row.kind, was, owner)
            return Claimed(row.id, row.kind, dict(row.payload or {}), row.partition_key,
                           row.dedupe_key, row.attempts, row.max_attempts, owner,
                           row.last_error, more=i + 1 < len(candidates))
    return None


def renew(app: App, job: Claimed, lease: dt.timedelta = LEASE) -> bool:
    """Extend the lease (the worker's heartbeat); False when it was lost to another worker."""
    with app.db.unit_of_work() as session:
        res = session.execute(update(Job).where(
            Job.id == job.id, Job.lease_owner == job.owner, Job.state == JobState.running)
            .values(lease_expires=app.now() + lease).execution_options(synchronize_session=False))
        return bool(getattr(res, "rowcount", 0))


# ---------------------------------------------------------------------------- finish


def complete(session: Session, app: App, job: Claimed) -> bool:
    """The job succeeded: delete it (in the caller's transaction). False when the lease was
    lost (another worker took the job over and will finish it)."""
    res = session.execute(delete(Job).where(
        Job.id == job.id, Job.lease_owner == job.owner, Job.state == JobState.running)
        .execution_options(synchronize_session=False))
    return bool(getattr(res, "rowcount", 0))


def fail(session: Session, app: App, job: Claimed, error: str,
         base: dt.timedelta = BACKOFF_BASE) -> JobState | None:
    """The job raised: back to ready after a backoff, or dead after max_attempts. Its new
    state, or None when the lease was lost."""
    now = app.now()
    row = session.get(Job, job.id, with_for_update=True)
    if row is None or row.lease_owner != job.owner or row.state is not JobState.running:
        return None
    row.last_error, row.failed_at = error[:4000], now
    row.lease_owner = row.lease_expires = None
    if row.attempts >= row.max_attempts:
        row.state = JobState.dead
        if row.dedupe_key is not None:       # keep one dead row per key, the newest
            session.execute(delete(Job).where(
                Job.dedupe_key == row.dedupe_key, Job.state == JobState.dead, Job.id != row.id)
                .execution_options(synchronize_session=False))
        return JobState.dead
    retry_at = now + backoff(row.attempts, base)
    if row.dedupe_key is not None:
        # A ready twin (enqueued while this ran) is folded into the retry: one ready job.
        twin = session.scalar(select(Job).where(Job.dedupe_key == row.dedupe_key,
                                                Job.state == JobState.ready))
        if twin is not None:
            retry_at = min(retry_at, twin.run_after)
            session.delete(twin)
            session.flush()
    row.state, row.run_after = JobState.ready, retry_at
    return JobState.ready


# ---------------------------------------------------------------------------- operators


def dead_items(session: Session, limit: int | None = None) -> list[dict[str, Any]]:
    """Dead jobs, newest failure first, as `queue failed` rows (kind "job")."""
    query = select(Job).where(Job.state == JobState.dead).order_by(
        Job.failed_at.desc(), Job.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return [{"kind": "job", "id": j.id, "job_kind": j.kind, "list": None, "message_id": None,
             "payload": j.payload, "attempts": j.attempts, "error": j.last_error or "",
             "failed_at": j.failed_at.isoformat() if j.failed_at else None,
             "created_at": j.created_at.isoformat()}
            for j in session.scalars(query)]


def retry_dead(session: Session, app: App, job_id: int) -> str:
    """`queue retry ID --kind job`: run a dead job again (attempts start over)."""
    row = session.get(Job, job_id, with_for_update=True) if 0 < job_id <= MAX_ID else None
    if row is None or row.state is not JobState.dead:
        raise UsageError(f"no dead job with id {job_id}")
    now = app.now()
    if row.dedupe_key is not None:
        twin = session.scalar(select(Job).where(Job.dedupe_key == row.dedupe_key,
                                                Job.state == JobState.ready))
        if twin is not None:       # e.g. the next run of a periodic job: run that one now
            twin.run_after = now
            session.delete(row)
            log.warning("job %d (%s): its next run, job %d, runs now (queue retry)",
                        job_id, row.kind, twin.id)
            return f"job {job_id} ({row.kind}): its next run (job {twin.id}) runs now"
    row.state, row.run_after, row.attempts = JobState.ready, now, 0
    log.warning("job %d (%s): queued again (queue retry)", job_id, row.kind)
    return f"job {job_id} ({row.kind}) queued again"


def counts(session: Session, now: dt.datetime) -> dict[str, Any]:
    """Jobs by state (and how many ready ones are due now) and by kind, for `queue status`."""
    out: dict[str, Any] = {"ready": 0, "due": 0, "running": 0, "dead": 0, "kinds": {}}
    rows = session.execute(select(Job.kind, Job.state, func.count())
                           .group_by(Job.kind, Job.state)).all()
    for kind, state, n in rows:
        out[state.value] += n
        per = out["kinds"].setdefault(kind, {"ready": 0, "running": 0, "dead": 0})
        per[state.value] += n
    out["due"] = session.scalar(select(func.count()).select_from(Job).where(
        Job.state == JobState.ready, Job.run_after <= now)) or 0
    return out
