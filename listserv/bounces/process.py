"""Bounce processing: BounceEvents from bounce mail and SMTP failures; scores; warn, disable,
remove (after GNU Mailman 3).

    handle_mail(session, app, inbound, msg)       mail to NAME-bounces / NAME-bounces+VERP
    record_failure(session, app, list_id, recipients, code, text, permanent)
                                                  a 5xx from the outbound MTA, or retries exhausted
    tick(app)                                     periodic: warnings, removals, staleness, policy
    reenable(session, app, membership, via)       the re-enable token (reply to -confirm+TOKEN)

Scoring: a hard (permanent) failure adds 1 to the member's score, at most once per calendar day
(UTC); a score whose last bounce is older than bounce_info_stale_after_days is reset first.
At bounce_score_threshold delivery is disabled (disabled_reason 'bounce') and owners are told.
A disabled member then gets bounce_warnings warnings, one every bounce_warning_interval_days,
each with a re-enable token; after the last interval it is removed and owners are told.
Soft (delayed / 4.x.x) failures are recorded but never score; policy refusals (x.7.x, blocklist,
spam, DMARC...) are recorded, never score, and owners get one summary per list per day.
"""

from __future__ import annotations

import datetime as dt
import logging
from email.message import EmailMessage
from typing import Iterable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from listserv.bounces import report as bounce_report
from listserv.core import addresses, isolation, links, tokens
from listserv.core.app import App
from listserv.bounces.parse import Failure, find_status, is_policy, parse
from listserv.bounces.report import notify_owners
from listserv.core.members import clear_bounce_state, find_membership
from listserv.core.models import (
    BounceEvent,
    BounceKind,
    InboundMessage,
    InboundState,
    MailingList,
    Membership,
    PendingToken,
    Role,
    TokenKind,
)
from listserv.delivery.notices import build_notice, send_notice
from listserv.core.views import ListView

log = logging.getLogger(__name__)

DISABLED_REASON = "bounce"


# ----------------------------------------------------------------------- intake of bounces


def handle_mail(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage) -> None:
    """Record what a message to the list's -bounces address tells us; never forward it."""
    ml = session.get(MailingList, inbound.list_id)
    inbound.state = InboundState.handled
    if ml is None:
        inbound.outcome = "bounce for a deleted list: dropped"
        return
    report = parse(msg)
    verp = addresses.try_normalise(inbound.extra) if inbound.extra else None
    if verp and is_own(ml, verp):
        verp = None
    failures = [f for f in report.failures if not is_own(ml, f.email)]
    if not verp and not any(_member_for(session, ml, f.addresses) for f in failures):
        # An unknown format, or a report naming only a forward target: trust other addresses
        # its text mentions only when they are members.
        failures += [f for f in report.guesses if _member_for(session, ml, f.addresses)]
    events: list[tuple[Failure, str]] = []   # (failure, source)

    if failures:
        matched = [f for f in failures if _member_for(session, ml, f.addresses)]
        if verp and not matched:
            # The report names an address we did not send to (a forward); trust VERP for who,
            # the report for how.
            best = _pick(failures, verp)
            events.append((Failure(verp, best.kind, best.status, best.diagnostic), "verp"))
            failures = [f for f in failures if f is not best]
        events.extend((f, f.source) for f in failures)
    elif verp and not report.auto_reply and not report.success_dsn and (
            report.looks_like_bounce or not inbound.mail_from):
        events.append((Failure(verp, report.text_kind, report.text_status,
                               report.text_diagnostic), "verp"))

    if not events:
        why = ("auto-reply" if report.auto_reply else
               "success report" if report.success_dsn else "not a recognisable bounce")
        who = verp or addresses.parse_from(str(msg.get("from", "")))[1] or inbound.mail_from
        session.add(BounceEvent(list_id=ml.id, email=(who or "")[:320], at=app.now(),
                                kind=BounceKind.other, source="verp" if verp else "dsn",
                                diagnostic=f"{why}: {inbound.subject}"[:1000],
                                inbound_id=inbound.id, processed=True))
        inbound.outcome = f"bounces: {why}, dropped"
        log.info("list_id=%s message_id=%s bounce address got %s: dropped",
                 ml.list_id, inbound.message_id, why)
        return

    done = []
    for failure, source in events:
        record(session, app, ml, failure.addresses, failure.kind, source=source,
               status=failure.status, diagnostic=failure.diagnostic, inbound_id=inbound.id)
        done.append(f"{failure.kind.value} {failure.email}"
                    + (f" ({failure.status})" if failure.status else ""))
    inbound.outcome = "bounces: " + ", ".join(done)[:2000]


def _pick(failures: list[Failure], verp: str) -> Failure:
    for f in failures:
        if verp in f.addresses:
            return f
    order = {BounceKind.hard: 0, BounceKind.policy: 1, BounceKind.soft: 2, BounceKind.other: 3}
    return sorted(failures, key=lambda f: order[f.kind])[0]


def record_failure(session: Session, app: App, list_id: int | None, recipients: list[str],
                   code: int, text: str, permanent: bool) -> None:
    """A refusal by the outbound MTA (5xx), or a 4xx given up after give_up_after_days."""
    ml = session.get(MailingList, list_id) if list_id is not None else None
    if ml is None:
        log.warning("delivery failure %s for %d recipients (no list): %s",
                    code, len(recipients), text)
        return
    status = find_status(text) or f"{code // 100}.0.0"
    if not permanent:
        kind = BounceKind.soft
    elif is_policy(status, text):
        kind = BounceKind.policy
    else:
        kind = BounceKind.hard
    diagnostic = f"{code} {text}".strip()[:1000]
    for rcpt in recipients:
        email = addresses.try_normalise(rcpt)
        if email and not is_own(ml, email):
            record(session, app, ml, (email,), kind, source="smtp", status=status,
                   diagnostic=diagnostic)


def record(session: Session, app: App, ml: MailingList, emails: Iterable[str], kind: BounceKind,
           *, source: str, status: str = "", diagnostic: str = "",
           inbound_id: int | None = None) -> BounceEvent:
    """Store one BounceEvent for the member among ``emails`` (or the first one) and score it."""
    emails = list(emails)
    now = app.now()
    member = _member_for(session, ml, emails)
    email = member.address.email if member else emails[0]
    event = BounceEvent(list_id=ml.id, email=email[:320], at=now, kind=kind, source=source,
                        status=status[:16], diagnostic=diagnostic[:1000], inbound_id=inbound_id,
                        processed=kind is not BounceKind.policy)
    session.add(event)
    log.info("list_id=%s bounce %s %s via %s status=%s member=%s", ml.list_id, kind.value,
             email, source, status, bool(member))
    if member is not None and kind is BounceKind.hard:
        score(session, app, ml, member, now)
    session.flush()
    return event


def _member_for(session: Session, ml: MailingList, emails: Iterable[str]) -> Membership | None:
    for email in emails:
        m = find_membership(session, ml, email, Role.member)
        if m is not None:
            return m
    return None


def is_own(ml: MailingList, email: str) -> bool:
    """Is ``email`` one of the list's own addresses (post, -request, -bounces+..., ...)?"""
    return any(r.list_name == ml.name and r.domain == ml.domain.name
               for r in addresses.route_candidates(email))


# ----------------------------------------------------------------------- scoring


def score(session: Session, app: App, ml: MailingList, m: Membership,
          now: dt.datetime | None = None) -> bool:
    """Add one hard bounce to ``m``'s score (Mailman 3 rules). True when it scored."""
    now = now or app.now()
    # Concurrent bounces for one member serialise on its row (PostgreSQL; SQLite has one writer).
    session.execute(select(Membership.id).where(Membership.id == m.id).with_for_update())
    session.refresh(m)
    if not m.enabled:
        return False
    today = now.astimezone(dt.timezone.utc).date()
    last = m.last_bounce_at
    if last is not None:
        last_day = last.astimezone(dt.timezone.utc).date()
        if last_day >= today:
            return False           # at most one score per member per day
        if (today - last_day).days > ml.bounce_info_stale_after_days:
            m.bounce_score = 0.0   # stale information is forgotten
    m.bounce_score = (m.bounce_score or 0.0) + 1.0
    m.last_bounce_at = now
    if m.bounce_score >= ml.bounce_score_threshold:
        disable(session, app, ml, m, now)
    return True


def disable(session: Session, app: App, ml: MailingList, m: Membership,
            now: dt.datetime | None = None) -> None:
    """Stop delivery to ``m``, tell the owners, and send the first warning."""
    now = now or app.now()
    m.enabled = False
    m.disabled_reason = DISABLED_REASON
    m.bounce_warnings_sent = 0
    m.last_warning_at = None
    log.info("list_id=%s disabled %s at bounce score %s", ml.list_id, m.address.email,
             m.bounce_score)
    notify_owners(session, app, ml, "notice/owner/bounce_disabled.txt.j2", {
        "email": m.address.email, "score": f"{m.bounce_score:g}",
        "threshold": f"{ml.bounce_score_threshold:g}", "warnings": ml.bounce_warnings,
        "interval": ml.bounce_warning_interval_days,
        "events": _recent_events(session, ml, m.address.email)})
    if ml.bounce_warnings > 0:
        warn(session, app, ml, m, now)


def warn(session: Session, app: App, ml: MailingList, m: Membership,
         now: dt.datetime | None = None) -> str:
    """Send the next warning (with a re-enable token) to a bounce-disabled member."""
    now = now or app.now()
    lst = ListView.of(ml)
    token = create_reenable_token(session, app, ml, m, now)
    m.bounce_warnings_sent += 1
    m.last_warning_at = now
    left = ml.bounce_warnings - m.bounce_warnings_sent
    removal = now + dt.timedelta(days=ml.bounce_warning_interval_days)
    confirm = lst.sub(addresses.CONFIRM, token)
    msg = build_notice(app, lst, "notice/user/bounce_warning.txt.j2", m.address.email, {
        "email": m.address.email, "token": token, "confirm_address": confirm,
        "warning": m.bounce_warnings_sent, "warnings": ml.bounce_warnings, "left": left,
        "removal_date": removal.strftime("%Y-%m-%d"), "score": f"{m.bounce_score:g}",
        "confirm_url": links.confirm(app.settings, token),
    }, reply_to=confirm)
    send_notice(session, app, lst, msg, [m.address.email])
    return token


def create_reenable_token(session: Session, app: App, ml: MailingList, m: Membership,
                          now: dt.datetime) -> str:
    """A fresh TokenKind.reenable token (tokens.create: only its SHA-256 is stored)."""
    token, _ = tokens.create(session, app, TokenKind.reenable, ml, m.address.email,
                             payload={"membership_id": m.id})
    return token


def reenable(session: Session, app: App, membership: Membership, via: str) -> bool:
    """Re-enable delivery to a member disabled for bounces (a reply to its warning's token, or
    an operator). False when the member was disabled for another reason (left unchanged)."""
    m = membership
    if not m.enabled and m.disabled_reason not in (None, DISABLED_REASON):
        return False
    clear_bounce_state(session, m, app.now(), outcome=f"reenabled via {via}")
    log.info("list_id=%s delivery re-enabled for %s via %s", m.list_id, m.address.email, via)
    return True


def reenable_token(session: Session, app: App, token: PendingToken, via: str = "email") -> str:
    """Act on a consumed TokenKind.reenable token; returns a one-line outcome for the reply."""
    ml = session.get(MailingList, token.list_id)
    m = find_membership(session, ml, token.email, Role.member) if ml else None
    if ml is None or m is None:
        return f"{token.email} is no longer a member of the list"
    if m.enabled:
        return f"delivery to {m.address.email} is already enabled on {ml.address}"
    if not reenable(session, app, m, via):
        return f"delivery to {m.address.email} was disabled by an administrator"
    return f"delivery to {m.address.email} re-enabled on {ml.address}"


def remove(session: Session, app: App, ml: MailingList, m: Membership) -> None:
    """Unsubscribe a member whose warnings ran out; tell the owners and the member."""
    email = m.address.email
    lst = ListView.of(ml)
    tokens.close_open(session, app.now(), list_id=ml.id, email=email, kind=TokenKind.reenable,
                      outcome="removed")
    session.delete(m)
    session.flush()
    log.info("list_id=%s removed %s after %s bounce warnings", ml.list_id, email,
             ml.bounce_warnings)
    notify_owners(session, app, ml, "notice/owner/bounce_removed.txt.j2",
                   {"email": email, "warnings": ml.bounce_warnings})
    msg = build_notice(app, lst, "notice/user/bounce_removed.txt.j2", email,
                       {"email": email, "warnings": ml.bounce_warnings})
    send_notice(session, app, lst, msg, [email])


def _recent_events(session: Session, ml: MailingList, email: str, n: int = 5) -> list[dict]:
    rows = session.scalars(select(BounceEvent).where(
        BounceEvent.list_id == ml.id, BounceEvent.email == email
    ).order_by(BounceEvent.at.desc(), BounceEvent.id.desc()).limit(n))
    return [{"at": e.at.strftime("%Y-%m-%d %H:%M"), "kind": e.kind.value, "status": e.status,
             "diagnostic": e.diagnostic[:200]} for e in rows]


# ----------------------------------------------------------------------- periodic work


def tick(app: App) -> None:
    """Periodic bounce work: warnings and removals, stale scores, policy summaries."""
    with app.db.unit_of_work() as session:
        process_disabled(session, app)
        forget_stale(session, app)
        bounce_report.summarise_policy(session, app)


def process_disabled(session: Session, app: App) -> int:
    """Warn or remove bounce-disabled members whose interval has passed; returns actions.

    The rows are locked (SKIP LOCKED on PostgreSQL): when two serve processes tick at once,
    each member is warned or removed by one of them only."""
    now = app.now()
    rows = session.scalars(select(Membership).where(
        Membership.enabled.is_(False), Membership.disabled_reason == DISABLED_REASON,
        Membership.role == Role.member).order_by(Membership.id)
        .with_for_update(skip_locked=True, of=Membership)).all()
    lists: dict[int, MailingList] = {}
    done = 0
    for m in rows:
        ml = lists.get(m.list_id) or session.get(MailingList, m.list_id)
        if ml is None:
            continue
        lists[ml.id] = ml
        interval = dt.timedelta(days=ml.bounce_warning_interval_days)
        if m.last_warning_at is not None and m.last_warning_at + interval > now:
            continue
        key, what = m.id, f"list {ml.address} member id {m.id}"
        if not FAILURES.due(key):
            continue
        try:
            with session.begin_nested():    # one member failing spares the others
                if m.bounce_warnings_sent < ml.bounce_warnings:
                    warn(session, app, ml, m, now)
                else:
                    remove(session, app, ml, m)
        except Exception as exc:  # noqa: BLE001 - isolated, logged once, retried later
            FAILURES.failed(key, what, exc)
            continue
        FAILURES.succeeded(key, what)
        done += 1
    return done


FAILURES = isolation.Failures("bounce warning", log)


def forget_stale(session: Session, app: App) -> None:
    """Reset the scores of enabled members whose last bounce is older than the list allows."""
    today = app.now().astimezone(dt.timezone.utc).date()
    list_ids = session.scalars(select(Membership.list_id).where(
        Membership.bounce_score > 0, Membership.enabled.is_(True)).distinct()).all()
    for list_id in list_ids:
        ml = session.get(MailingList, list_id)
        if ml is None:
            continue
        day = today - dt.timedelta(days=ml.bounce_info_stale_after_days)
        cutoff = dt.datetime.combine(day, dt.time(0), tzinfo=dt.timezone.utc)
        session.execute(update(Membership).where(
            Membership.list_id == list_id, Membership.enabled.is_(True),
            Membership.bounce_score > 0, Membership.last_bounce_at < cutoff
        ).values(bounce_score=0.0).execution_options(synchronize_session=False))


__all__ = ["handle_mail", "record_failure", "tick", "reenable", "reenable_token", "record",
           "score", "disable", "warn", "remove", "notify_owners", "DISABLED_REASON"]
