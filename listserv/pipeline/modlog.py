"""The moderation log, open to whom the list says: the -request command ``log``.

``moderation_log`` (public, members, owners) decides who may read it; ``moderation_log_names``
(show, hide) whether readers who are not moderators see the moderator's display name or
"a moderator". Owners and moderators always see the moderator's address. Each entry: when, the
post's subject and sender, the decision, its reason, who decided and how. Subscription
decisions name the subscriber and are shown to owners and moderators only.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv.core import members, ratelimit
from listserv.core.models import (
    Address,
    HeldMessage,
    LogAccess,
    LogNames,
    MailingList,
    ModerationLog,
    Role,
)
from listserv.delivery.notices import build_notice, send_notice
from listserv.pipeline.subscriptions import Result

if TYPE_CHECKING:
    from listserv.pipeline.commands import Mail

DAYS = 30
DAILY_LIMIT = 5
MAX_ENTRIES = 1000
HOW = {"email": "mail", "cli": "CLI", "web": "web", "schedule": "schedule",
       "rules": "posting rules"}
DECISIONS = {"hold": "held", "approve": "approved", "reject": "rejected",
             "discard": "discarded", "cancel": "withdrawn by the poster",
             "expire": "expired unmoderated"}


@dataclass(frozen=True)
class Entry:
    at: dt.datetime
    subject: str
    sender: str
    decision: str
    reason: str
    who: str
    how: str


def may_read(session: Session, ml: MailingList, email: str) -> tuple[bool, bool]:
    """(may read the log, reads it as a moderator)."""
    roles = members.roles_of(session, ml, email) if email else set()
    moderator = bool(roles & {Role.owner, Role.moderator})
    if ml.moderation_log is LogAccess.public:
        return True, moderator
    if ml.moderation_log is LogAccess.members:
        return bool(roles), moderator
    return moderator, moderator


def entries(session: Session, ml: MailingList, since: dt.datetime, *, moderator: bool
            ) -> list[Entry]:
    """The log since ``since``, oldest first, as a reader (moderator or not) sees it."""
    rows = session.execute(
        select(ModerationLog, HeldMessage.subject, HeldMessage.sender)
        .outerjoin(HeldMessage, HeldMessage.id == ModerationLog.held_id)
        .where(ModerationLog.list_id == ml.id, ModerationLog.at >= since)
        .order_by(ModerationLog.at, ModerationLog.id).limit(MAX_ENTRIES)).all()
    names = _display_names(session, {r[0].actor for r in rows})
    out: list[Entry] = []
    for log, subject, sender in rows:
        if log.action not in DECISIONS and not moderator:
            continue       # subscription decisions name people: moderators only
        out.append(Entry(
            at=log.at, subject=subject or "", sender=sender or "",
            decision=DECISIONS.get(log.action, log.action.replace("_", " ")),
            reason=log.detail or "", who=_who(ml, log, names, moderator),
            how=HOW.get(log.via, log.via)))
    return out


def _display_names(session: Session, actors: set[str]) -> dict[str, str]:
    return {email: name for email, name in session.execute(
        select(Address.email, Address.display_name).where(Address.email.in_(actors)))}


def _who(ml: MailingList, log: ModerationLog, names: dict[str, str], moderator: bool) -> str:
    if log.actor == "listserv" or log.via in ("rules", "schedule"):
        return "listserv (automatic)"
    if log.action == "cancel":
        return "the poster"
    if moderator:
        return log.actor
    if ml.moderation_log_names is LogNames.show and names.get(log.actor):
        return names[log.actor]
    return "a moderator"


def command(mail: "Mail") -> Result:
    """``log`` to NAME-request@: mail the last DAYS days of the log to a permitted reader."""
    session, ml = mail.session, mail.ml
    allowed, moderator = may_read(session, ml, mail.sender)
    if not allowed:
        who = ("its members" if ml.moderation_log is LogAccess.members
               else "its owners and moderators")
        return Result(f"The moderation log of {ml.address} is open to {who} only, and "
                      f"{mail.sender} is not one: nothing was sent.")
    if not ratelimit.allow(session, mail.app, ml.id, mail.sender, "moderation-log",
                           limit=DAILY_LIMIT):
        return Result(f"Daily limit of {DAILY_LIMIT} moderation log answers reached: nothing "
                      "was sent, try again tomorrow.", mail_needed=False)
    since = mail.app.now() - dt.timedelta(days=DAYS)
    found = entries(session, ml, since, moderator=moderator)
    lv = mail.lv
    notice = build_notice(mail.app, lv, "notice/user/moderation-log.txt.j2", mail.sender, {
        "entries": found, "days": DAYS, "request_address": lv.sub("request")},
        in_reply_to=mail.inbound.message_id or None, auto_submitted="auto-replied")
    send_notice(session, mail.app, lv, notice, [mail.sender])
    return Result(f"The moderation log ({len(found)} entries) was sent.", mail_needed=False)
