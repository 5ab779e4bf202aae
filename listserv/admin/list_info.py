"""What `listserv list show` prints about one list: its summary, owners, moderators,
delivery figures, sender rules and the lists it includes or is included in."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listserv.core import lists, network, senders
from listserv.core.models import Address, DeliveryMode, MailingList, Membership, Role


def details(session: Session, ml: MailingList) -> dict[str, Any]:
    """Everything `list show` prints: the summary plus owners, moderators and delivery stats."""
    out = lists.summary(ml, lists.role_counts(session, [ml.id]).get(ml.id, {}))
    member_rows = select(Membership.delivery_mode, Membership.enabled, func.count()).where(
        Membership.list_id == ml.id, Membership.role == Role.member).group_by(
        Membership.delivery_mode, Membership.enabled)
    by_mode: dict[str, int] = {m.value: 0 for m in DeliveryMode}
    disabled = 0
    for mode, enabled, n in session.execute(member_rows):
        by_mode[mode.value] += n
        if not enabled:
            disabled += n
    owner_rows = select(Address.email, Membership.role).join(Membership).where(
        Membership.list_id == ml.id, Membership.role.in_([Role.owner, Role.moderator])
    ).order_by(Address.email)
    people: dict[Role, list[str]] = {Role.owner: [], Role.moderator: []}
    for email, role in session.execute(owner_rows):
        people[role].append(email)
    out.update({
        "list_id": ml.list_id,
        "owner_emails": people[Role.owner],
        "moderator_emails": people[Role.moderator],
        "delivery": by_mode,
        "disabled": disabled,
        "dkim_selector": ml.domain.dkim_selector if ml.domain.dkim_private_key else None,
        "posts": ml.post_id,
        "sender_rules": [{"pattern": r.pattern, "action": r.action.value}
                         for r in senders.sender_rules(session, ml.id)],
        "bans": senders.ban_patterns(session, ml.id),
        "includes": network.includes_of(session, ml),
        "included_in": network.included_in(session, ml),
        "created_at": ml.created_at.isoformat(timespec="seconds"),
    })
    return out
