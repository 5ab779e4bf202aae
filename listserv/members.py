"""Membership services. (Extended by the foundation work.)"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv import addresses
from listserv.models import Address, DeliveryMode, MailingList, Membership, Role


def get_or_create_address(session: Session, email: str, display_name: str = "") -> Address:
    email = addresses.normalise(email)
    a = session.scalar(select(Address).where(Address.email == email))
    if a is None:
        a = Address(email=email, display_name=display_name)
        session.add(a)
        session.flush()
    elif display_name and not a.display_name:
        a.display_name = display_name
    return a


def find_membership(session: Session, ml: MailingList, email: str,
                    role: Role = Role.member) -> Membership | None:
    return session.scalar(select(Membership).join(Address).where(
        Membership.list_id == ml.id, Membership.role == role,
        Address.email == email.strip().lower()))


def add_member(session: Session, ml: MailingList, email: str, *, role: Role = Role.member,
               delivery_mode: DeliveryMode = DeliveryMode.regular, moderated: bool = False,
               display_name: str = "") -> Membership:
    """Add (or return the existing) membership of ``email`` in ``role``."""
    addr = get_or_create_address(session, email, display_name)
    m = find_membership(session, ml, addr.email, role)
    if m is None:
        m = Membership(list_id=ml.id, address=addr, role=role, delivery_mode=delivery_mode,
                       moderated=moderated)
        session.add(m)
        session.flush()
    return m


def roles_of(session: Session, ml: MailingList, email: str) -> set[Role]:
    rows = session.scalars(select(Membership.role).join(Address).where(
        Membership.list_id == ml.id, Address.email == email.strip().lower()))
    return set(rows)


def moderators_and_owners(session: Session, ml: MailingList) -> list[str]:
    rows = session.scalars(select(Address.email).join(Membership).where(
        Membership.list_id == ml.id, Membership.role.in_([Role.moderator, Role.owner])
    ).distinct().order_by(Address.email))
    return list(rows)


def owners(session: Session, ml: MailingList) -> list[str]:
    rows = session.scalars(select(Address.email).join(Membership).where(
        Membership.list_id == ml.id, Membership.role == Role.owner).order_by(Address.email))
    return list(rows)
