"""The job that processes an accepted message: one ``incoming`` job per InboundMessage.

The intake enqueues it in the transaction that records the message (before the 250), and
``listserv queue retry ID --kind incoming`` enqueues a fresh one. The handler is
listserv.pipeline.incoming.handle_job.

Partitions (listserv.jobs runs a partition's jobs one at a time, in id order): a list's
posts, commands and owner mail share ``incoming:LIST_ID``, so they are processed in arrival
order (a confirmation before the post that follows it). Its bounces have a partition of their
own, ``incoming:LIST_ID:bounces``: a flood of bounces does not hold up the list's posts, and
bounces of one list are still scored one at a time (no two workers updating one member's
score at once).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from listserv import jobs
from listserv.core import addresses
from listserv.core.app import App

KIND = "incoming"
MAX_CRASHES = 5              # runs that ended without an outcome (the worker died) before parking
JOB_ATTEMPTS = MAX_CRASHES + 1   # the job's last attempt parks the message as failed


def partition_key(list_id: int, subaddress: str) -> str:
    if subaddress == addresses.BOUNCES:
        return f"incoming:{list_id}:bounces"
    return f"incoming:{list_id}"


def _job_args(list_id: int, subaddress: str) -> dict[str, Any]:
    return {"partition_key": partition_key(list_id, subaddress), "max_attempts": JOB_ATTEMPTS}


def job_columns(app: App, list_id: int, subaddress: str) -> dict[str, Any]:
    """The columns of the job that processes a new InboundMessage of ``list_id``
    (jobs.new_job), all but its payload: the payload names the message, whose id the
    intake's one statement (listserv.intake.smtp) knows only inside it."""
    columns = jobs.new_job(app, KIND, **_job_args(list_id, subaddress))
    del columns["payload"]
    return columns


def enqueue(session: Session, app: App, inbound_id: int, list_id: int, subaddress: str) -> int:
    """In the caller's transaction: the job that processes InboundMessage ``inbound_id``."""
    return jobs.enqueue(session, app, KIND, {"inbound_id": inbound_id},
                        **_job_args(list_id, subaddress))
