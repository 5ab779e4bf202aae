"""Per-address rules for senders: non-member actions and bans.

A pattern is either one address (compared case-insensitively) or, when it starts with ``^``,
a regular expression matched case-insensitively from the start of the address — GNU Mailman's
convention for accept/hold/reject/discard_these_nonmembers and ban_list. A sender rule (not a
ban) may also be ``@LIST``: the members of the list LIST on this server (Mailman 2.1's
``@listname`` entries); it matches nothing while that list does not exist.

- ``SenderAction`` rows say what happens to a non-member's post before the list's
  ``nonmember_action`` applies. When several match, the first action in ACTION_ORDER wins
  (accept, hold, reject, discard), as Mailman 2 checks its four lists.
- ``Ban`` rows: a banned sender's posts are discarded at the gate, its subscriptions refused.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from listserv.core import addresses
from listserv.core.errors import UsageError
from listserv.core.models import (
    Action,
    Address,
    Ban,
    Domain,
    MailingList,
    Membership,
    Role,
    SenderAction,
)

log = logging.getLogger(__name__)

ACTION_ORDER = (Action.accept, Action.hold, Action.reject, Action.discard)
MAX_PATTERN = 400


MemberOf = Callable[[str, str], bool]      # (list address, sender) -> is a member of it


def normalise_pattern(text: str, *, list_members: bool = False) -> str:
    """The stored form of a pattern; UsageError for a bad address or regular expression.
    ``list_members``: ``@LIST`` (the members of another list) is allowed too."""
    raw = text.strip()
    if not raw:
        raise UsageError("empty pattern")
    if len(raw) > MAX_PATTERN:
        raise UsageError(f"pattern longer than {MAX_PATTERN} characters")
    if raw.startswith("@"):
        if not list_members:
            raise UsageError(f"{raw!r}: a ban names an address or a ^regular expression "
                             "(@LIST is for sender rules)")
        return "@" + addresses.normalise(raw[1:])
    if raw.startswith("^"):
        try:
            re.compile(raw, re.IGNORECASE)
        except re.error as exc:
            raise UsageError(f"invalid regular expression {raw!r}: {exc}") from None
        return raw
    return addresses.normalise(raw)


def matches(pattern: str, email: str, member_of: MemberOf | None = None) -> bool:
    """Does ``email`` (lower case) match the stored ``pattern``? An ``@LIST`` pattern asks
    ``member_of`` (without it, it matches nothing)."""
    if pattern.startswith("@"):
        return member_of is not None and member_of(pattern[1:], email)
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


def action_for(rules: Sequence[SenderRule], candidates: Sequence[str],
               member_of: MemberOf | None = None) -> SenderRule | None:
    """The rule deciding for the first candidate address that any rule matches
    (``member_of`` answers the ``@LIST`` rules: see list_member_check)."""
    for email in candidates:
        hits = [r for r in rules if matches(r.pattern, email, member_of)]
        if hits:
            return min(hits, key=lambda r: ACTION_ORDER.index(r.action))
    return None


def list_member_check(session: Session) -> MemberOf:
    """``member_of`` for action_for: is the address a member (role member, whatever its
    delivery) of the list with this address? One query per (list, address) asked."""
    seen: dict[tuple[str, str], bool] = {}

    def member_of(list_address: str, email: str) -> bool:
        key = (list_address.lower(), email.lower())
        if key not in seen:
            name, _, domain = key[0].rpartition("@")
            seen[key] = session.scalar(
                select(Membership.id).join(Address, Membership.address_id == Address.id)
                .join(MailingList, Membership.list_id == MailingList.id)
                .join(Domain, MailingList.domain_id == Domain.id)
                .where(MailingList.name == name, Domain.name == domain,
                       Address.email == key[1], Membership.role == Role.member)
                .limit(1)) is not None
        return seen[key]

    return member_of


def list_exists(session: Session, list_address: str) -> bool:
    name, _, domain = list_address.lower().rpartition("@")
    return session.scalar(select(MailingList.id).join(Domain, MailingList.domain_id == Domain.id)
                          .where(MailingList.name == name, Domain.name == domain)) is not None


def banned(session: Session, ml: MailingList, email: str) -> str | None:
    """The ban pattern that matches ``email`` on this list, or None."""
    return first_match(ban_patterns(session, ml.id), [email.strip().lower()])


# ---------------------------------------------------------------------------- admin


def set_sender_action(session: Session, ml: MailingList, pattern: str,
                      action: Action) -> tuple[str, bool]:
    """Add or change the action for ``pattern``; (stored pattern, changed?). An ``@LIST``
    pattern must name an existing list other than ``ml``."""
    stored = normalise_pattern(pattern, list_members=True)
    if stored.startswith("@"):
        if stored[1:] == ml.address.lower():
            raise UsageError(f"{stored}: the members of {ml.address} are not non-members")
        if not list_exists(session, stored[1:]):
            raise UsageError(f"no such list: {stored[1:]}")
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
    stored = normalise_pattern(pattern, list_members=True)
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
