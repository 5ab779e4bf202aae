"""The job kinds this process runs (listserv.jobs): one plain function per kind.

Each accepted message is processed by an ``incoming`` job (listserv.pipeline.inbound),
enqueued with it by the intake; a post's fan-out (listserv.delivery.fanout) and its list's
archive job are jobs of their own, enqueued when the post is accepted. The periodic passes
each keep one job in the table that re-enqueues itself ``every`` later; N serve processes share them (a dedupe key, no leader). Inside a pass, one list or item that
fails is logged once and retried later while the others go on (listserv.core.isolation); a pass
that fails as a whole (the database is down) is retried by the engine with backoff, and after
MAX_ATTEMPTS shows in `listserv queue failed` while its next run is already scheduled.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from listserv import digests
from listserv.digests import chunks as digest_chunks
from listserv.admin import retention
from listserv.archive import mbox as archive
from listserv.bounces import process as bounces
from listserv.delivery import fanout
from listserv.core.app import App
from listserv.jobs import runner
from listserv.jobs.runner import Kind
from listserv.pipeline import hold_notices, inbound, incoming, moderation

TICK = dt.timedelta(seconds=30)
ARCHIVE = "archive"
DIGESTS = "digests"
ARCHIVE_LIST = archive.LIST_KIND
FANOUT = fanout.KIND
INCOMING_RETRY = dt.timedelta(seconds=5)   # first retry of a temporary failure; doubles


def archive_pass(app: App, payload: dict[str, Any]) -> None:
    """Give each list whose posts wait to be archived without a job of its own one."""
    archive.sweep(app)


def archive_list(app: App, payload: dict[str, Any]) -> None:
    """Archive one list's waiting posts (one job at a time per list: its partition)."""
    archive.run_list(app, int(payload["list_id"]))


def fanout_job(app: App, payload: dict[str, Any]) -> None:
    """Queue a post's or a digest's recipients in chunks (one job kind, one partition per
    list: a list's posts and digests go out in order)."""
    if digest_chunks.is_digest(payload):
        digest_chunks.run(app, payload)
    else:
        fanout.run(app, payload)


def digests_pass(app: App, payload: dict[str, Any]) -> None:
    digests.tick(app)


def bounces_pass(app: App, payload: dict[str, Any]) -> None:
    bounces.tick(app)


def moderation_pass(app: App, payload: dict[str, Any]) -> None:
    moderation.tick(app)


def retention_pass(app: App, payload: dict[str, Any]) -> None:
    retention.run(app)


KINDS: tuple[Kind, ...] = (
    Kind(inbound.KIND, incoming.handle_job, max_attempts=inbound.JOB_ATTEMPTS,
         retry_base=INCOMING_RETRY),
    Kind(fanout.KIND, fanout_job),
    Kind(hold_notices.KIND, hold_notices.handle_job),
    Kind(ARCHIVE, archive_pass, every=TICK),
    Kind(ARCHIVE_LIST, archive_list),
    Kind("moderation", moderation_pass, every=TICK),
    Kind(DIGESTS, digests_pass, every=TICK),
    Kind("bounces", bounces_pass, every=TICK),
    Kind(retention.JOB_KIND, retention_pass, every=retention.INTERVAL),
)
REGISTRY = runner.registry(KINDS)
PERIODIC = tuple(k for k in KINDS if k.every is not None)
