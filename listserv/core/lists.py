"""List and domain services: lookup, creation, settings, deletion."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from listserv.core import addresses
from listserv.core import settings as settings_mod
from listserv.core.errors import UsageError
from listserv.core.models import Domain, MailingList, Membership, Role


def find_domain(session: Session, name: str) -> Domain | None:
    return session.scalar(select(Domain).where(Domain.name == addresses.normalise_domain(name)))


def get_or_create_domain(session: Session, name: str) -> Domain:
    d = find_domain(session, name)
    if d is None:
        d = Domain(name=addresses.normalise_domain(name))
        session.add(d)
        session.flush()
    return d


def find_list(session: Session, address: str) -> MailingList | None:
    """The list NAME@DOMAIN (case-insensitive; a Unicode domain matches its IDNA form)."""
    if "@" not in address:
        return None
    name, _, domain = address.strip().lower().rpartition("@")
    try:
        domain = addresses.normalise_domain(domain)    # stored as create_list stores it (IDNA)
    except UsageError:
        return None
    return session.scalar(select(MailingList).join(Domain).where(
        MailingList.name == name, Domain.name == domain))


def get_list(session: Session, address: str) -> MailingList:
    """The list NAME@DOMAIN or UsageError('no such list')."""
    ml = find_list(session, address)
    if ml is None:
        raise UsageError(f"no such list: {address}")
    return ml


def create_list(session: Session, address: str, *, display_name: str | None = None) -> MailingList:
    name, domain = addresses.split_list_address(address)
    if find_list(session, f"{name}@{domain}") is not None:
        raise UsageError(f"list already exists: {name}@{domain}")
    d = get_or_create_domain(session, domain)
    ml = MailingList(name=name, domain=d, display_name=display_name or name)
    session.add(ml)
    session.flush()
    return ml


# ---------------------------------------------------------------------------- admin services


def all_lists(session: Session, domain: str | None = None) -> list[MailingList]:
    """Every list (optionally of one domain), ordered by domain then name."""
    stmt = select(MailingList).join(Domain).order_by(Domain.name, MailingList.name)
    if domain is not None:
        stmt = stmt.where(Domain.name == addresses.normalise_domain(domain))
    return list(session.scalars(stmt))


def role_counts(session: Session, list_ids: list[int] | None = None
                ) -> dict[int, dict[Role, int]]:
    """{list_id: {role: count}} for the given lists (all lists when None)."""
    stmt = select(Membership.list_id, Membership.role, func.count()).group_by(
        Membership.list_id, Membership.role)
    if list_ids is not None:
        stmt = stmt.where(Membership.list_id.in_(list_ids))
    out: dict[int, dict[Role, int]] = {}
    for list_id, role, n in session.execute(stmt):
        out.setdefault(list_id, {})[role] = n
    return out


def summary(ml: MailingList, counts: dict[Role, int]) -> dict[str, Any]:
    """The `list ls --json` object: address, display_name, member count and every setting."""
    return {"address": ml.address, "display_name": ml.display_name,
            "description": ml.description, "members": counts.get(Role.member, 0),
            "moderators": counts.get(Role.moderator, 0), "owners": counts.get(Role.owner, 0),
            **settings_mod.as_dict(ml)}


def set_setting(session: Session, ml: MailingList, key: str, value: str) -> Any:
    """Change one setting from its command-line text; UsageError on a bad key or value."""
    stored = settings_mod.set_value(ml, key, value)
    session.flush()
    return stored


def delete_list(session: Session, ml: MailingList) -> None:
    """Remove the list and everything that belongs to it (memberships, held posts, tokens...).

    Addresses stay (they are shared between lists); the database cascades the rest.
    """
    session.execute(delete(MailingList).where(MailingList.id == ml.id))
    session.expunge(ml)
