"""Bounce reports: the daily owner summary of policy refusals, and the queries behind
``listserv bounces ls`` / ``events``."""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from typing import Any, Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv.core import ratelimit
from listserv.core.app import App
from listserv.core.members import owners
from listserv.core.models import (
    Address,
    BounceEvent,
    BounceKind,
    MailingList,
    Membership,
    Role,
)
from listserv.delivery.notices import build_notice, send_notice
from listserv.core.views import ListView

log = logging.getLogger(__name__)

POLICY_NOTICE_KIND = "bounce-policy"
# Policy refusals come in bursts (a provider refusing a whole post): wait this long after the
# first unreported one so that one owner notice summarises the burst.
POLICY_SETTLE = dt.timedelta(minutes=5)


def notify_owners(session: Session, app: App, ml: MailingList, template: str,
                   context: dict[str, Any]) -> None:
    to = owners(session, ml)
    if not to:
        log.info("list_id=%s has no owners: %s not sent", ml.list_id, template)
        return
    lst = ListView.of(ml)
    send_notice(session, app, lst, build_notice(app, lst, template, to, context), to)


def summarise_policy(session: Session, app: App) -> int:
    """One owner notice per list per day summarising unreported policy refusals by domain."""
    now = app.now()
    events = session.scalars(select(BounceEvent).where(
        BounceEvent.kind == BounceKind.policy, BounceEvent.processed.is_(False)
    ).order_by(BounceEvent.list_id, BounceEvent.at)).all()
    by_list: dict[int, list[BounceEvent]] = defaultdict(list)
    for e in events:
        by_list[e.list_id].append(e)
    sent = 0
    for list_id, evs in by_list.items():
        if evs[0].at + POLICY_SETTLE > now:
            continue
        ml = session.get(MailingList, list_id)
        if ml is None:
            continue
        lst = ListView.of(ml)
        if not ratelimit.allow(session, app, list_id, lst.owner, POLICY_NOTICE_KIND, limit=1):
            continue
        notify_owners(session, app, ml, "notice/owner/bounce_policy.txt.j2",
                       {"domains": policy_domains(evs), "total": len(evs)})
        for e in evs:
            e.processed = True
        sent += 1
    return sent


def policy_domains(events: Iterable[BounceEvent]) -> list[dict[str, Any]]:
    """[{domain, count, addresses, status, diagnostic}], most affected domain first."""
    acc: dict[str, dict[str, Any]] = {}
    for e in events:
        domain = e.email.rpartition("@")[2] or "(unknown)"
        d = acc.setdefault(domain, {"domain": domain, "count": 0, "addresses": [],
                                    "status": e.status, "diagnostic": e.diagnostic[:300]})
        d["count"] += 1
        if e.email not in d["addresses"]:
            d["addresses"].append(e.email)
    return sorted(acc.values(), key=lambda d: (-d["count"], d["domain"]))


# ----------------------------------------------------------------------- reporting


def status(session: Session, ml: MailingList, *, include_all: bool = False
           ) -> list[dict[str, Any]]:
    """Bounce state of the list's members: those with a score or disabled (or all)."""
    q = select(Membership, Address.email).join(Address).where(
        Membership.list_id == ml.id, Membership.role == Role.member)
    if not include_all:
        q = q.where((Membership.bounce_score > 0) | (Membership.enabled.is_(False)))
    out = []
    for m, email in session.execute(q.order_by(Address.email)):
        out.append({"email": email, "score": m.bounce_score,
                    "last_bounce": m.last_bounce_at.isoformat() if m.last_bounce_at else None,
                    "enabled": m.enabled, "disabled_reason": m.disabled_reason,
                    "warnings_sent": m.bounce_warnings_sent})
    return out


def events(session: Session, ml: MailingList, *, limit: int = 50) -> list[dict[str, Any]]:
    """The most recent BounceEvents of a list, newest first."""
    rows = session.scalars(select(BounceEvent).where(BounceEvent.list_id == ml.id).order_by(
        BounceEvent.at.desc(), BounceEvent.id.desc()).limit(limit))
    return [{"at": e.at.isoformat(), "email": e.email, "kind": e.kind.value,
             "source": e.source, "status": e.status, "diagnostic": e.diagnostic}
            for e in rows]
