"""Held posts and the moderation queue.

    hold(session, app, inbound, reasons) -> HeldMessage          (the rule chain, on HOLD)
    decide(session, app, held_id, decision, actor=, via=) -> Outcome   (CLI, email, schedule)
    tick(app)                                                     (the daemon, every ~30 s)

A held post gets one notice per moderator/owner, each with its own token (tokens.py), and,
when the list says so, a notice to the poster whose token lets them withdraw the post (sent by
a job enqueued with the hold: listserv.pipeline.hold_notices). The
decision is one atomic ``UPDATE held_message ... WHERE decision IS NULL``: of two concurrent
actors exactly one wins (SQLite serialises writers; PostgreSQL re-checks the WHERE after the
row lock), the other is told who did it. Every decision is written to the moderation log.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Sequence

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session

from listserv.core import members, ratelimit, tokens
from listserv.delivery import notices
from listserv.message import replies
from listserv import jobs
from listserv.pipeline import hold_notices, posting, rules
from listserv.pipeline.hold_notices import is_list_address
from listserv.core.app import App
from listserv.core.errors import UsageError
from listserv.core.models import (
    Decision,
    HeldMessage,
    InboundMessage,
    InboundState,
    MailingList,
    ModerationLog,
    TokenKind,
)
from listserv.core.views import ListView
from listserv.message.parse import parse as parse_message

log = logging.getLogger(__name__)

NOTE_LINES = 60
PAST = {Decision.approve: "approved", Decision.reject: "rejected",
        Decision.discard: "discarded", Decision.cancel: "withdrawn by the poster",
        Decision.expire: "expired"}


# ---------------------------------------------------------------------------- holding


def hold(session: Session, app: App, inbound: InboundMessage, reasons: list[str]
         ) -> HeldMessage:
    """Park a post for moderators with every reason collected by the rules; its notices are
    a job enqueued here (listserv.pipeline.hold_notices: made before their transaction
    writes)."""
    held = HeldMessage(inbound_id=inbound.id, list_id=inbound.list_id,
                       sender=inbound.from_addr or inbound.mail_from,
                       subject=inbound.subject, size=inbound.size, reasons=list(reasons),
                       held_at=app.now())
    session.add(held)
    inbound.state = InboundState.held
    inbound.outcome = "; ".join(reasons)
    session.flush()
    ml = session.get_one(MailingList, inbound.list_id)
    write_log(session, app, ml.id, held.id, actor="listserv", action="hold", via="rules",
              detail="; ".join(reasons))
    jobs.enqueue(session, app, hold_notices.KIND, {"held_id": held.id})
    log.info("list_id=%s message_id=%s held #%d: %s", ml.list_id, inbound.message_id,
             held.id, "; ".join(reasons))
    return held


def note_to_moderators(session: Session, app: App, ml: MailingList, held: HeldMessage,
                       poster: str, text: str) -> list[str]:
    """Pass a poster's note about their held post to the moderators (Reply-To: the poster)."""
    lv = ListView.of(ml)
    recipients = members.moderators_and_owners(session, ml)
    if not recipients:
        return []
    lines = text.splitlines()[:NOTE_LINES]
    notice = notices.build_notice(app, lv, "notice/moderator/poster-note.txt.j2", recipients, {
        "held": held, "poster": poster, "lines": lines,
        "truncated": len(text.splitlines()) > NOTE_LINES}, reply_to=poster)
    notices.send_notice(session, app, lv, notice, recipients)
    return recipients


# ---------------------------------------------------------------------------- deciding


@dataclass
class Outcome:
    held: HeldMessage
    won: bool            # False: someone decided first (see held.decision / decided_by)

    def describe(self) -> str:
        h = self.held
        what = PAST.get(h.decision, str(h.decision)) if h.decision else "pending"
        who = f" by {h.decided_by}" if h.decided_by else ""
        via = f" via {h.decided_via}" if h.decided_via else ""
        return f"held message {h.id} {what}{who}{via}"


MAX_ID = 2**31 - 1


def decide(session: Session, app: App, held_id: int, decision: Decision, *, actor: str,
           via: str, reason: str | None = None) -> Outcome:
    """Apply a decision once. The first caller wins; others get Outcome(won=False)."""
    if not 0 < held_id <= MAX_ID:       # would overflow the database's INTEGER
        raise UsageError(f"no held message with id {held_id}")
    now = app.now()
    res = session.execute(
        update(HeldMessage)
        .where(HeldMessage.id == held_id, HeldMessage.decision.is_(None))
        .values(decision=decision, decided_by=actor, decided_at=now, decided_via=via,
                reason=reason)
        .execution_options(synchronize_session=False))
    assert isinstance(res, CursorResult)
    held = session.get(HeldMessage, held_id)
    if held is None:
        raise UsageError(f"no held message with id {held_id}")
    session.refresh(held)
    if res.rowcount != 1:
        return Outcome(held, False)
    tokens.close_for_held(session, app, held.id, by=actor, outcome=decision.value)
    write_log(session, app, held.list_id, held.id, actor=actor, action=decision.value, via=via,
              detail=reason or "")
    inbound = session.get_one(InboundMessage, held.inbound_id)
    ml = session.get_one(MailingList, held.list_id)
    if decision is Decision.approve:
        msg = load_message(app, inbound)
        _accept_post(session, app, inbound, msg, approved_by=actor)
        if inbound.state is InboundState.held:
            inbound.state = InboundState.accepted
    elif decision is Decision.reject:
        inbound.state = InboundState.rejected
        inbound.outcome = f"rejected by {actor}" + (f": {reason}" if reason else "")
        _tell_poster_rejected(session, app, ml, held, inbound, reason)
    else:
        inbound.state = InboundState.discarded
        inbound.outcome = f"{PAST[decision]} ({actor})"
    log.info("list_id=%s message_id=%s held #%d %s by %s via %s", ml.list_id,
             inbound.message_id, held.id, decision.value, actor, via)
    return Outcome(held, True)


def _accept_post(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage,
                 *, approved_by: str) -> None:
    posting.accept_post(session, app, inbound, msg, approved_by=approved_by)


def load_message(app: App, inbound: InboundMessage) -> EmailMessage:
    data = app.spool.get(inbound.spool_sha)
    return parse_message(data)


def _tell_poster_rejected(session: Session, app: App, ml: MailingList, held: HeldMessage,
                          inbound: InboundMessage, reason: str | None) -> None:
    try:
        msg = load_message(app, inbound)
    except OSError:
        return
    poster = replies.from_address(msg)
    if not poster or replies.is_auto_reply(msg, inbound.mail_from) \
            or is_list_address(ml, poster):
        return
    lv = ListView.of(ml)
    notice = notices.build_notice(app, lv, "notice/user/moderation-rejected.txt.j2", poster, {
        "held": held, "reason": reason or ""}, in_reply_to=inbound.message_id or None,
        auto_submitted="auto-replied")
    notices.send_notice(session, app, lv, notice, [poster])


def write_log(session: Session, app: App, list_id: int, held_id: int | None, *, actor: str,
              action: str, via: str, detail: str = "") -> ModerationLog:
    entry = ModerationLog(list_id=list_id, held_id=held_id, at=app.now(), actor=actor,
                          action=action, via=via, detail=detail)
    session.add(entry)
    return entry


# ---------------------------------------------------------------------------- queries


def pending(session: Session, ml: MailingList | None = None) -> Sequence[HeldMessage]:
    q = select(HeldMessage).where(HeldMessage.decision.is_(None)).order_by(HeldMessage.id)
    if ml is not None:
        q = q.where(HeldMessage.list_id == ml.id)
    return session.scalars(q).all()


def log_entries(session: Session, ml: MailingList) -> Sequence[ModerationLog]:
    return session.scalars(select(ModerationLog).where(ModerationLog.list_id == ml.id)
                           .order_by(ModerationLog.at, ModerationLog.id)).all()


def held_json(held: HeldMessage, list_address: str) -> dict[str, Any]:
    return {"id": held.id, "list": list_address, "sender": held.sender,
            "subject": held.subject, "reasons": list(held.reasons or []),
            "size": held.size, "held_at": held.held_at.isoformat()}


# ---------------------------------------------------------------------------- schedule


def expire_holds(session: Session, app: App) -> list[HeldMessage]:
    """Discard holds older than the token lifetime, with one note per moderator per list."""
    cutoff = app.now() - tokens.lifetime(app)
    ids = session.scalars(select(HeldMessage.id).where(
        HeldMessage.decision.is_(None), HeldMessage.held_at <= cutoff
    ).order_by(HeldMessage.id).limit(500)).all()
    expired: dict[int, list[HeldMessage]] = {}
    for held_id in ids:
        outcome = decide(session, app, held_id, Decision.expire, actor="listserv",
                         via="schedule", reason="not moderated in time")
        if outcome.won:
            expired.setdefault(outcome.held.list_id, []).append(outcome.held)
    for list_id, held_list in expired.items():
        ml = session.get_one(MailingList, list_id)
        lv = ListView.of(ml)
        recipients = members.moderators_and_owners(session, ml)
        if recipients:
            notice = notices.build_notice(app, lv, "notice/moderator/expired.txt.j2",
                                          recipients, {"held_list": held_list,
                                                       "days": app.settings.moderation
                                                       .token_lifetime_days})
            notices.send_notice(session, app, lv, notice, recipients)
    return [h for hs in expired.values() for h in hs]


def tick(app: App) -> None:
    """Periodic work: expire old holds, forget stale tokens and rate-limit counters."""
    with app.db.unit_of_work() as session:
        done = expire_holds(session, app)
        tokens.purge(session, app)
        ratelimit.purge(session, app)
    if done:
        log.info("expired %d held message(s)", len(done))


def days_left(app: App, held: HeldMessage) -> float:
    end = held.held_at + tokens.lifetime(app)
    return max(0.0, (end - app.now()) / dt.timedelta(days=1))
