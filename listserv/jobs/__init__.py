"""One job engine for background work: a ``job`` table, leases, retries, dead letters.

    enqueue(session, app, kind, payload, partition_key=, dedupe_key=, run_after=)
    new_job(app, kind, payload, ...)         the row enqueue() adds, for a statement of one's own
    kick(session, app, name)                 run periodic kind ``name`` now
    run_next_job(app, kinds) / run_jobs_until_idle(app, kinds)   tests: one job at a time, no loops
    work(app, stop, wake, kinds=, owner=, executor=)   the daemon's worker loop

listserv.jobs.engine has the queue itself (claim, renew, complete, fail, dead letters);
listserv.jobs.runner runs jobs; the kinds this process knows are listserv.workers.REGISTRY.
"""

from listserv.jobs.engine import (
    LEASE,
    Claimed,
    claim,
    complete,
    counts,
    dead_items,
    enqueue,
    ensure,
    new_job,
    fail,
    new_worker_id,
    renew,
    retry_dead,
)
from listserv.jobs.runner import (
    Idle,
    Kind,
    Registry,
    current_job,
    ensure_periodic,
    execute,
    kick,
    postpone,
    registry,
    run_jobs_until_idle,
    run_next_job,
    schedule,
    work,
)

__all__ = ["LEASE", "Claimed", "claim", "complete", "counts", "dead_items", "enqueue",
           "ensure", "fail", "new_job", "new_worker_id", "renew", "retry_dead", "Idle", "Kind", "Registry", "current_job",
           "ensure_periodic", "execute", "kick", "postpone", "registry", "schedule", "run_jobs_until_idle",
           "run_next_job", "work"]
