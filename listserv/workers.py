"""The job kinds this process runs (listserv.jobs): one plain function per kind.

A post's fan-out (listserv.delivery.fanout) is a job of its own, enqueued when the post is
accepted.
The periodic passes each keep one job in the table that re-enqueues itself ``every`` later;
N serve processes share them (a dedupe key, no leader). Inside a pass, one list or item that
fails is logged once and retried later while the others go on (listserv.core.isolation); a pass
that fails as a whole (the database is down) is retried by the engine with backoff, and after
MAX_ATTEMPTS shows in `listserv queue failed` while its next run is already scheduled.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from listserv import digests
from listserv.admin import retention
from listserv.archive import mbox as archive
from listserv.bounces import process as bounces
from listserv.delivery import fanout
from listserv.pipeline import incoming, moderation
from listserv.core.app import App
from listserv.jobs import runner
from listserv.jobs.runner import Kind

TICK = dt.timedelta(seconds=30)
ARCHIVE = "archive"
DIGESTS = "digests"
ARCHIVE_LIST = archive.LIST_KIND
FANOUT = fanout.KIND


def archive_pass(app: App, payload: dict[str, Any]) -> None:
    """Give each list whose posts wait to be archived without a job of its own one."""
    archive.sweep(app)


def archive_list(app: App, payload: dict[str, Any]) -> None:
    """Archive one list's waiting posts (one job at a time per list: its partition)."""
    archive.run_list(app, int(payload["list_id"]))


def digests_pass(app: App, payload: dict[str, Any]) -> None:
    digests.tick(app)


def bounces_pass(app: App, payload: dict[str, Any]) -> None:
    bounces.tick(app)


def moderation_pass(app: App, payload: dict[str, Any]) -> None:
    moderation.tick(app)


def retention_pass(app: App, payload: dict[str, Any]) -> None:
    retention.run(app)


def incoming_reclaim(app: App, payload: dict[str, Any]) -> None:
    incoming.reclaim(app)


KINDS: tuple[Kind, ...] = (
    Kind(fanout.KIND, fanout.run),
    Kind("incoming_reclaim", incoming_reclaim, every=TICK),
    Kind(ARCHIVE, archive_pass, every=TICK),
    Kind(ARCHIVE_LIST, archive_list),
    Kind("moderation", moderation_pass, every=TICK),
    Kind(DIGESTS, digests_pass, every=TICK),
    Kind("bounces", bounces_pass, every=TICK),
    Kind(retention.JOB_KIND, retention_pass, every=retention.INTERVAL),
)
REGISTRY = runner.registry(KINDS)
PERIODIC = tuple(k for k in KINDS if k.every is not None)
