"""List and domain services: lookup, creation, settings. (Extended by the foundation work.)"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv import addresses
from listserv.errors import UsageError
from listserv.models import Domain, MailingList


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
    """The list NAME@DOMAIN (case-insensitive), or None."""
    if "@" not in address:
        return None
    name, _, domain = address.strip().lower().rpartition("@")
    return session.scalar(select(MailingList).join(Domain).where(
        MailingList.name == name, Domain.name == domain.rstrip(".")))


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
