"""The incoming worker: claim InboundMessage rows in state 'new' and dispatch them.

Claiming is safe with several workers and processes: FOR UPDATE SKIP LOCKED on PostgreSQL,
and on both databases an UPDATE ... WHERE state='new' whose row count says who won. Each
message is then processed in its own transaction. A message whose processing raises is parked
in state 'failed' with the error and the list owners are told (listserv.pipeline.failures: `queue
failed` lists it, `queue retry ID` processes it again); a temporary database failure puts it
back to 'new'. Rows left in 'processing' by a worker that died are reclaimed.
"""

from __future__ import annotations

import datetime as dt
import logging
from email.message import EmailMessage
from typing import Callable

from sqlalchemy import func, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from listserv.bounces import process as bounces
from listserv.core import addresses, members
from listserv.delivery import outbound, queues
from listserv.message import untrusted
from listserv.pipeline import commands, failures, verdict
from listserv.core.app import App
from listserv.core.errors import TemporaryFailure
from listserv.message.parse import parse
from listserv.core.models import InboundMessage, InboundState, MailingList
from listserv.core.views import ListView

log = logging.getLogger(__name__)

CLAIM_BATCH = 20
STALE_AFTER = dt.timedelta(minutes=10)   # a lock this old is taken over whoever holds it
MAX_TEMPORARY_ATTEMPTS = 5
MAX_CRASHES = 5                          # a message that kills its worker this often
COMMAND_SUBADDRESSES = (addresses.REQUEST, addresses.JOIN, addresses.LEAVE, addresses.CONFIRM)


# host:pid:random, unique per worker process incarnation (the outbound queue's claim owner).
worker_identity = queues.make_owner


def claim(app: App, worker: str, limit: int = CLAIM_BATCH) -> list[int]:
    """Move up to ``limit`` new messages of ONE list to 'processing' for ``worker``; return
    their ids, oldest first.

    A list's mail is processed in arrival order: a list with a message in 'processing' is
    not claimed by anyone else, and the claim itself holds the list's row lock (SKIP LOCKED
    on PostgreSQL), so two workers cannot take interleaved messages of one list. Different
    lists are processed in parallel.
    """
    with app.db.unit_of_work() as session:
        busy = select(InboundMessage.list_id).where(
            InboundMessage.state == InboundState.processing)
        candidates = list(session.scalars(
            select(InboundMessage.list_id)
            .where(InboundMessage.state == InboundState.new, InboundMessage.list_id.not_in(busy))
            .group_by(InboundMessage.list_id).order_by(func.min(InboundMessage.id)).limit(8)))
        for list_id in candidates:
            if not app.db.is_sqlite:
                locked = session.scalar(select(MailingList.id).where(MailingList.id == list_id)
                                        .with_for_update(skip_locked=True))
                if locked is None:
                    continue            # another worker is claiming this list right now
                still_busy = session.scalar(select(InboundMessage.id).where(
                    InboundMessage.list_id == list_id,
                    InboundMessage.state == InboundState.processing).limit(1))
                if still_busy is not None:
                    continue
            won = _claim_list(session, app, worker, list_id, limit)
            if won:
                return won
    return []


def _claim_list(session: Session, app: App, worker: str, list_id: int, limit: int
                ) -> list[int]:
    ids = list(session.scalars(
        select(InboundMessage.id).where(InboundMessage.state == InboundState.new,
                                        InboundMessage.list_id == list_id)
        .order_by(InboundMessage.id).limit(limit)))
    if not ids:
        return []
    now = app.now()
    result = session.execute(
        update(InboundMessage)
        .where(InboundMessage.id.in_(ids), InboundMessage.state == InboundState.new)
        .values(state=InboundState.processing, locked_by=worker, locked_at=now,
                attempts=InboundMessage.attempts + 1)
        .execution_options(synchronize_session=False))
    if result.rowcount != len(ids):  # type: ignore[attr-defined]
        # Someone else took part of it (SQLite with a second process): keep only ours.
        return list(session.scalars(select(InboundMessage.id).where(
            InboundMessage.id.in_(ids), InboundMessage.locked_by == worker,
            InboundMessage.state == InboundState.processing).order_by(InboundMessage.id)))
    return ids


def release(app: App, ids: list[int], worker: str) -> None:
    """Give back claimed but unprocessed messages (graceful stop)."""
    if not ids:
        return
    with app.db.unit_of_work() as session:
        session.execute(update(InboundMessage)
                        .where(InboundMessage.id.in_(ids), InboundMessage.locked_by == worker,
                               InboundMessage.state == InboundState.processing)
                        .values(state=InboundState.new, locked_by=None, locked_at=None,
                                attempts=InboundMessage.attempts - 1)
                        .execution_options(synchronize_session=False))


def reclaim(app: App, stale_after: dt.timedelta = STALE_AFTER) -> int:
    """Put back to 'new' the messages whose worker died or whose lock went stale."""
    now = app.now()
    back: list[int] = []
    poisoned: list[int] = []
    with app.db.unit_of_work() as session:
        rows = session.execute(select(InboundMessage.id, InboundMessage.locked_by,
                                      InboundMessage.locked_at, InboundMessage.attempts)
                               .where(InboundMessage.state == InboundState.processing)).all()
        for row in rows:
            stale = row.locked_at is None or now - row.locked_at > stale_after
            if not (stale or not row.locked_by or queues.claim_is_dead(row.locked_by)):
                continue
            back.append(row.id)
            poison = row.attempts >= MAX_CRASHES
            values: dict[str, object] = {"state": InboundState.new, "locked_by": None,
                                         "locked_at": None}
            if poison:
                poisoned.append(row.id)
                values = {"state": InboundState.failed, "locked_by": None, "locked_at": None,
                          "outcome": f"the worker died {row.attempts} times processing it"}
            session.execute(update(InboundMessage)
                            .where(InboundMessage.id == row.id,
                                   InboundMessage.state == InboundState.processing)
                            .values(**values)
                            .execution_options(synchronize_session=False))
    for inbound_id in poisoned:
        failures.tell_owners(app, inbound_id)
    if back:
        log.warning("reclaimed %d message(s) left in processing by dead workers", len(back))
    return len(back)


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
    data = f"X-Loop: {lv.owner}\r\n".encode("ascii") + raw
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


def process(app: App, inbound_id: int, worker: str) -> InboundState | None:
    """Process one claimed message in its own transaction; return its final state."""
    try:
        with app.db.unit_of_work() as session:
            inbound = session.get(InboundMessage, inbound_id)
            if inbound is None or inbound.state is not InboundState.processing \
                    or inbound.locked_by != worker:
                return None
            raw = app.spool.get(inbound.spool_sha)
            msg = parse(raw)
            dispatch(session, app, inbound, msg, raw)
            if inbound.state in (InboundState.processing, InboundState.new):
                inbound.state = InboundState.handled
            inbound.locked_at = None
            return inbound.state
    except (OperationalError, TemporaryFailure) as exc:
        log.warning("message %d: temporary failure, will retry: %s", inbound_id, exc)
        state = _park(app, inbound_id, f"temporary failure: {exc}", retry=True)
    except Exception as exc:
        log.exception("message %d: processing failed; held for the list owners", inbound_id)
        state = _park(app, inbound_id, f"{type(exc).__name__}: {exc}", retry=False)
    if state is InboundState.failed:
        failures.tell_owners(app, inbound_id)
    return state


def _park(app: App, inbound_id: int, outcome: str, *, retry: bool) -> InboundState | None:
    try:
        with app.db.unit_of_work() as session:
            inbound = session.get(InboundMessage, inbound_id)
            if inbound is None:
                return None
            if retry and inbound.attempts < MAX_TEMPORARY_ATTEMPTS:
                inbound.state = InboundState.new
            else:
                inbound.state = InboundState.failed
            inbound.outcome = untrusted.one_line(outcome, 2000)
            inbound.locked_by = None
            inbound.locked_at = None
            return inbound.state
    except OperationalError:
        log.warning("message %d: cannot record the failure now; it will be reclaimed",
                    inbound_id)
        return None


def run_pass(app: App, worker: str, *, limit: int = CLAIM_BATCH,
             should_stop: Callable[[], bool] = lambda: False) -> int:
    """Claim and process one batch; return how many messages were processed."""
    ids = claim(app, worker, limit)
    done = 0
    for i, inbound_id in enumerate(ids):
        if should_stop():
            release(app, ids[i:], worker)
            break
        process(app, inbound_id, worker)
        done += 1
    return done


def pending(app: App) -> int:
    """Messages waiting or in processing (for tests and status)."""
    with app.db.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(InboundMessage).where(
            InboundMessage.state.in_([InboundState.new, InboundState.processing]))) or 0
