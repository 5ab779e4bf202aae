"""Per-address rules for senders: non-member actions and bans.

A pattern is either one address (compared case-insensitively) or, when it starts with ``^``,
a regular expression matched case-insensitively from the start of the address — GNU Mailman's
convention for accept/hold/reject/discard_these_nonmembers and ban_list.

- ``SenderAction`` rows say what happens to a non-member's post before the list's
  ``nonmember_action`` applies. When several match, the first action in ACTION_ORDER wins
  (accept, hold, reject, discard), as Mailman 2 checks its four lists.
- ``Ban`` rows: a banned sender's posts are discarded at the gate, its subscriptions refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from listserv import addresses
from listserv.errors import UsageError
from listserv.models import Action, Ban, MailingList, SenderAction

log = logging.getLogger(__name__)

ACTION_ORDER = (Action.accept, Action.hold, Action.reject, Action.discard)
MAX_PATTERN = 400


def normalise_pattern(text: str) -> str:
    """The stored form of a pattern; UsageError for a bad address or regular expression."""
    raw = text.strip()
    if not raw:
        raise UsageError("empty pattern")
    if len(raw) > MAX_PATTERN:
        raise UsageError(f"pattern longer than {MAX_PATTERN} characters")
    if raw.startswith("^"):
        try:
            re.compile(raw, re.IGNORECASE)
        except re.error as exc:
            raise UsageError(f"invalid regular expression {raw!r}: {exc}") from None
        return raw
    return addresses.normalise(raw)


def matches(pattern: str, email: str) -> bool:
    """Does ``email`` (lower case) match the stored ``pattern``?"""
    if pattern.startswith("^"):
        try:
            return re.match(pattern, email, re.IGNORECASE) is not None
        except re.error:
            log.warning("ignoring invalid sender pattern %r", pattern)
            return False
    return pattern == email


def first_match(patterns: Iterable[str], candidates: Sequence[str]) -> str | None:
    for email in candidates:
        for pattern in patterns:
            if matches(pattern, email):
                return pattern
    return None


@dataclass(frozen=True)
class SenderRule:
    pattern: str
    action: Action


# ---------------------------------------------------------------------------- lookups


def sender_rules(session: Session, list_id: int) -> list[SenderRule]:
    rows = session.execute(select(SenderAction.pattern, SenderAction.action).where(
        SenderAction.list_id == list_id).order_by(SenderAction.id))
    return [SenderRule(p, a) for p, a in rows]


def ban_patterns(session: Session, list_id: int) -> list[str]:
    return list(session.scalars(select(Ban.pattern).where(Ban.list_id == list_id)
                                .order_by(Ban.id)))


def action_for(rules: Sequence[SenderRule], candidates: Sequence[str]) -> SenderRule | None:
    """The rule deciding for the first candidate address that any rule matches."""
    for email in candidates:
        hits = [r for r in rules if matches(r.pattern, email)]
        if hits:
            return min(hits, key=lambda r: ACTION_ORDER.index(r.action))
    return None


def banned(session: Session, ml: MailingList, email: str) -> str | None:
    """The ban pattern that matches ``email`` on this list, or None."""
    return first_match(ban_patterns(session, ml.id), [email.strip().lower()])


# ---------------------------------------------------------------------------- admin


def set_sender_action(session: Session, ml: MailingList, pattern: str,
                      action: Action) -> tuple[str, bool]:
    """Add or change the action for ``pattern``; (stored pattern, changed?)."""
    stored = normalise_pattern(pattern)
    row = session.scalar(select(SenderAction).where(SenderAction.list_id == ml.id,
                                                    SenderAction.pattern == stored))
    if row is None:
        session.add(SenderAction(list_id=ml.id, pattern=stored, action=action))
    elif row.action is not action:
        row.action = action
    else:
        return stored, False
    session.flush()
    return stored, True


def remove_sender_action(session: Session, ml: MailingList, pattern: str) -> str:
    stored = normalise_pattern(pattern)
    gone = session.execute(delete(SenderAction).where(SenderAction.list_id == ml.id,
                                                      SenderAction.pattern == stored))
    if not gone.rowcount:  # type: ignore[attr-defined]
        raise UsageError(f"no sender rule {stored!r} on {ml.address}")
    return stored


def add_ban(session: Session, ml: MailingList, pattern: str) -> tuple[str, bool]:
    stored = normalise_pattern(pattern)
    if session.scalar(select(Ban.id).where(Ban.list_id == ml.id, Ban.pattern == stored)):
        return stored, False
    session.add(Ban(list_id=ml.id, pattern=stored))
    session.flush()
    return stored, True


def remove_ban(session: Session, ml: MailingList, pattern: str) -> str:
    stored = normalise_pattern(pattern)
    gone = session.execute(delete(Ban).where(Ban.list_id == ml.id, Ban.pattern == stored))
    if not gone.rowcount:  # type: ignore[attr-defined]
        raise UsageError(f"no ban {stored!r} on {ml.address}")
    return stored
