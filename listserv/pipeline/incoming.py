"""Processing accepted mail: the ``incoming`` job kind (listserv.pipeline.inbound enqueues
it).

Each InboundMessage in state 'new' has one job; the job engine (listserv.jobs) runs a list's
jobs one at a time in arrival order, and takes over the job of a worker that died when its
lease expires. Processing runs in one transaction that ends in the message's final state.
A message whose processing raises is parked in state 'failed' with the error and the list
owners are told (listserv.pipeline.failures: `queue failed` lists it, `queue retry ID`
processes it again); a temporary failure (the database, a TemporaryFailure) is retried by the engine
with backoff, and parked after MAX_TEMPORARY_ATTEMPTS. A message whose processing never
ends with an outcome (it kills or hangs its worker) is parked on the job's last attempt.
"""

from __future__ import annotations

import logging
from email.message import EmailMessage
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from listserv import jobs
from listserv.bounces import process as bounces
from listserv.core import addresses, members
from listserv.core.app import App
from listserv.core.errors import TemporaryFailure
from listserv.core.models import InboundMessage, InboundState, MailingList
from listserv.core.views import ListView
from listserv.delivery import outbound
from listserv.message import lines, untrusted
from listserv.message.parse import parse
from listserv.pipeline import commands, failures, verdict
from listserv.pipeline import inbound as inbound_jobs

log = logging.getLogger(__name__)

MAX_TEMPORARY_ATTEMPTS = 5
MAX_CRASHES = inbound_jobs.MAX_CRASHES
COMMAND_SUBADDRESSES = (addresses.REQUEST, addresses.JOIN, addresses.LEAVE, addresses.CONFIRM)


class RetryLater(Exception):
    """A temporary failure: the job engine runs the job again after a backoff."""


def forward_to_owners(session: Session, app: App, inbound: InboundMessage,
                      msg: EmailMessage, raw: bytes) -> None:
    """Mail to NAME-owner reaches the owners, envelope from -bounces (never a loop)."""
    ml = session.get(MailingList, inbound.list_id)
    assert ml is not None
    lv = ListView.of(ml)
    loops = [str(v).strip().lower() for v in (msg.get_all("X-Loop") or [])]
    if lv.owner in loops:
        inbound.state = InboundState.discarded
        inbound.outcome = f"loop: message already forwarded by {lv.owner}"
        return
    owners = members.owners(session, ml)
    if not owners:
        inbound.state = InboundState.discarded
        inbound.outcome = "the list has no owners to forward to"
        return
    # as it came, but for what the next relay would mend (a line over 998 octets, a bare CR
    # or LF): the intake takes such mail; everything else queued was serialised, and so
    # mended, before its signature (notices.serialise)
    data = lines.on_the_wire(f"X-Loop: {lv.owner}\r\n".encode("ascii") + raw)
    outbound.queue_message(session, app, data, owners, kind="forward",
                           envelope_from=lv.bounces, list_id=ml.id, verp=False,
                           message_id=inbound.message_id)
    inbound.state = InboundState.handled
    inbound.outcome = f"forwarded to {len(owners)} owner(s)"


def dispatch(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage,
             raw: bytes) -> None:
    sub = inbound.subaddress
    if sub == addresses.POST:
        verdict.handle_post(session, app, inbound, msg)
    elif sub in COMMAND_SUBADDRESSES:
        commands.handle_mail(session, app, inbound, msg, raw)
    elif sub == addresses.BOUNCES:
        bounces.handle_mail(session, app, inbound, msg)
    elif sub == addresses.OWNER:
        forward_to_owners(session, app, inbound, msg, raw)
    else:
        raise ValueError(f"unknown sub-address {sub!r}")


def handle_job(app: App, payload: dict[str, Any]) -> None:
    """The ``incoming`` job kind: process the message (see process())."""
    job = jobs.current_job()
    process(app, int(payload["inbound_id"]), attempt=job.attempts if job else 1,
            last_error=job.last_error if job else None)


def process(app: App, inbound_id: int, *, attempt: int = 1,
            last_error: str | None = None) -> InboundState | None:
    """Process one message in its own transaction; return its final state (None when it was
    not waiting: already processed). ``attempt`` counts the runs of its job, this one
    included. Raises RetryLater after a temporary failure that is worth another attempt."""
    if attempt > MAX_CRASHES:
        state = _park(app, inbound_id, f"processing did not finish in {attempt - 1} attempts "
                      f"(the worker died or hung); last error: {last_error or '-'}")
        if state is InboundState.failed:
            failures.tell_owners(app, inbound_id)
        return state
    try:
        with app.db.unit_of_work() as session:
            inbound = session.get(InboundMessage, inbound_id)
            if inbound is None or inbound.state is not InboundState.new:
                return None
            raw = app.spool.get(inbound.spool_sha, session=session)
            msg = parse(raw)
            dispatch(session, app, inbound, msg, raw)
            # written last: on SQLite the first write takes the database's one write lock,
            # and the rules and the preparing of a post (most of the time here) only read
            inbound.attempts = attempt
            if inbound.state in (InboundState.processing, InboundState.new):
                inbound.state = InboundState.handled
            return inbound.state
    except (OperationalError, TemporaryFailure) as exc:
        if attempt < MAX_TEMPORARY_ATTEMPTS:
            log.warning("message %d: temporary failure, will retry: %s", inbound_id, exc)
            raise RetryLater(f"temporary failure: {exc}") from exc
        state = _park(app, inbound_id, f"temporary failure: {exc}")
    except Exception as exc:
        log.exception("message %d: processing failed; held for the list owners", inbound_id)
        state = _park(app, inbound_id, f"{type(exc).__name__}: {exc}")
    if state is InboundState.failed:
        failures.tell_owners(app, inbound_id)
    return state


def _park(app: App, inbound_id: int, outcome: str) -> InboundState | None:
    """Mark a waiting message failed with ``outcome`` (raises while the database is down:
    the engine retries the job)."""
    with app.db.unit_of_work() as session:
        inbound = session.get(InboundMessage, inbound_id)
        if inbound is None or inbound.state is not InboundState.new:
            return None
        inbound.state = InboundState.failed
        inbound.outcome = untrusted.one_line(outcome, 2000)
        return inbound.state


def pending(app: App) -> int:
    """Messages waiting to be processed (for tests and status)."""
    with app.db.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage).where(
            InboundMessage.state.in_([InboundState.new, InboundState.processing]))) or 0
