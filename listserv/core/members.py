"""Membership services: addresses, members, moderators and owners of a list."""

from __future__ import annotations

import datetime as dt
import re
from email.utils import parseaddr
from typing import Any, Iterable, Iterator

from sqlalchemy import Table, insert, select, update
from sqlalchemy.orm import Session

from listserv.core import addresses
from listserv.core.errors import UsageError
from listserv.core.models import (
    DIGEST_MODES,
    Address,
    DeliveryMode,
    FinalDigest,
    MailingList,
    Membership,
    Role,
    TokenKind,
    utcnow,
)


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
    """Add (or return the existing) membership of ``email`` in ``role``.

    One of the list's own addresses (NAME@, NAME-request@, NAME-bounces+x@...) is refused:
    every post would come back to the list."""
    if any(r.list_name == ml.name and addresses.normalise_domain(r.domain) == ml.domain.name
           for r in addresses.route_candidates(email) if _domain_ok(r.domain)):
        raise UsageError(f"{email.strip()} is an address of the list {ml.address} itself")
    addr = get_or_create_address(session, email, display_name)
    m = find_membership(session, ml, addr.email, role)
    if m is None:
        m = Membership(list_id=ml.id, address=addr, role=role, delivery_mode=delivery_mode,
                       moderated=moderated)
        if delivery_mode in DIGEST_MODES:
            m.digest_from_seq = locked_post_id(session, ml.id)
        session.add(m)
        session.flush()
    return m


def locked_post_id(session: Session, list_id: int) -> int:
    """The list's post number under its write lock (the one the posting pipeline takes): a
    post being accepted concurrently is then wholly before or wholly after what the caller
    records against this number (a digest reader's start, a final digest's end)."""
    t: Table = MailingList.__table__  # type: ignore[assignment]
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(t).where(t.c.id == list_id).values(post_id=t.c.post_id))
        return int(session.scalar(select(t.c.post_id).where(t.c.id == list_id)) or 0)
    return int(session.scalar(select(t.c.post_id).where(t.c.id == list_id)
                              .with_for_update()) or 0)


def change_delivery_mode(session: Session, m: Membership, mode: DeliveryMode,
                         now: dt.datetime) -> None:
    """Set a member's delivery mode, keeping the digest bookkeeping right: someone who starts
    reading digests gets the posts after the current one in their first digest; someone who
    goes back to regular delivery is owed one last digest of the posts since their start,
    which they will not get as regular copies."""
    old = m.delivery_mode
    if old is mode:
        return
    if (old in DIGEST_MODES) != (mode in DIGEST_MODES):
        seq = locked_post_id(session, m.list_id)
        if mode in DIGEST_MODES:
            m.digest_from_seq = seq
        elif mode is DeliveryMode.regular and seq > (m.digest_from_seq or 0):
            session.execute(insert(FinalDigest).values(
                list_id=m.list_id, membership_id=m.id, mode=old,
                from_seq=m.digest_from_seq or 0, to_seq=seq, created_at=now))
    m.delivery_mode = mode


def _domain_ok(domain: str) -> bool:
    try:
        addresses.normalise_domain(domain)
    except UsageError:
        return False
    return True


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


# ---------------------------------------------------------------------------- admin services


_NAME_ADDR = re.compile(r'^([^<>]*?)\s*<([^<>"]*)>$')


def parse_person(text: str) -> tuple[str, str]:
    """'Ann <Ann@X.org>' or 'ann@x.org' -> (display name, normalised address).

    UsageError (naming the input) when the address is not valid.
    """
    raw = text.strip()
    name = ""
    if "<" in raw and raw.endswith(">"):
        m = _NAME_ADDR.match(raw)
        if m is not None:
            name, addr = m.group(1).strip(), m.group(2)
            if len(name) >= 2 and name[0] == name[-1] == '"':
                name = name[1:-1].replace('\\"', '"')
        else:
            name, addr = parseaddr(raw)
        if not addr.strip():
            raise UsageError(f"invalid email address {raw!r}")
        raw = addr
    return name.strip(), addresses.normalise(raw)


def member_rows(session: Session, ml: MailingList, role: Role | None = None,
                batch: int = 2000) -> Iterator[dict[str, Any]]:
    """The `member ls --json` objects of ``ml`` (by address, then role), streamed without
    loading ORM objects (fast for 100,000-member lists)."""
    stmt = select(Address.email, Address.display_name, Membership.role, Membership.delivery_mode,
                  Membership.moderated, Membership.enabled, Membership.disabled_reason,
                  Membership.bounce_score, Membership.joined_at).join(
        Address, Membership.address_id == Address.id).where(
        Membership.list_id == ml.id).order_by(Address.email, Membership.role)
    if role is not None:
        stmt = stmt.where(Membership.role == role)
    for row in session.execute(stmt.execution_options(yield_per=batch)):
        # Posts go to member rows only: a moderator's or owner's row shows the truth (nomail),
        # whatever mode it was created with; the same person's member row shows their mode.
        staff = row[2] is not Role.member
        yield {"email": row[0], "name": row[1], "role": row[2].value,
               "delivery": "nomail" if staff else row[3].value,
               "receives_posts": not staff and row[5] and row[3] is not DeliveryMode.nomail,
               "moderated": row[4], "enabled": row[5],
               "disabled_reason": row[6], "bounce_score": row[7],
               "joined_at": row[8].isoformat(timespec="seconds")}


def add_members(session: Session, ml: MailingList, people: Iterable[tuple[str, str]], *,
                role: Role = Role.member,
                delivery_mode: DeliveryMode = DeliveryMode.regular,
                moderated: bool = False) -> tuple[list[str], list[str]]:
    """Add each (display name, normalised email) in ``role``. Returns (added, already there)."""
    added: list[str] = []
    existing: list[str] = []
    for name, email in people:
        if find_membership(session, ml, email, role) is not None:
            existing.append(email)
            continue
        add_member(session, ml, email, role=role, delivery_mode=delivery_mode,
                   moderated=moderated, display_name=name)
        added.append(email)
    return added, existing


def memberships_of(session: Session, ml: MailingList, email: str,
                   role: Role | None = None) -> list[Membership]:
    stmt = select(Membership).join(Address).where(
        Membership.list_id == ml.id, Address.email == email.strip().lower()).order_by(
        Membership.role)
    if role is not None:
        stmt = stmt.where(Membership.role == role)
    return list(session.scalars(stmt))


def _require(session: Session, ml: MailingList, emails: Iterable[str],
             role: Role | None) -> list[Membership]:
    found: list[Membership] = []
    missing: list[str] = []
    for email in emails:
        rows = memberships_of(session, ml, email, role)
        if not rows:
            missing.append(email)
        found.extend(rows)
    if missing:
        article = "an" if role is not None and role.value[0] in "aeiou" else "a"
        what = f"{article} {role.value} of" if role is not None else "subscribed to"
        raise UsageError(f"not {what} {ml.address}: {', '.join(missing)}")
    return found


def remove_members(session: Session, ml: MailingList, emails: Iterable[str],
                   role: Role | None = None) -> list[Membership]:
    """Remove every role (or only ``role``) of each address; all or nothing.

    UsageError naming the addresses that are not on the list (then nothing is removed).
    """
    rows = _require(session, ml, emails, role)
    for m in rows:
        session.delete(m)
    session.flush()
    return rows


def clear_bounce_state(session: Session, m: Membership, now: dt.datetime, *,
                       outcome: str) -> None:
    """Enable delivery and forget the member's bounce history; close open re-enable tokens
    (an old warning's reply is then told delivery is already on)."""
    from listserv.core import tokens

    m.enabled = True
    m.disabled_reason = None
    m.bounce_score = 0.0
    m.bounce_warnings_sent = 0
    m.last_warning_at = None
    m.last_bounce_at = None
    tokens.close_open(session, now, list_id=m.list_id, email=m.address.email,
                      kind=TokenKind.reenable, outcome=outcome)


def set_member(session: Session, ml: MailingList, email: str, *, role: Role | None = None,
               delivery_mode: DeliveryMode | None = None, moderated: bool | None = None,
               enabled: bool | None = None, display_name: str | None = None
               ) -> list[Membership]:
    """Change the memberships of ``email`` (every role unless ``role``).

    enabled=True re-enables delivery and clears the bounce state (also a bounce-disabled
    member); enabled=False disables delivery with disabled_reason 'admin'.
    """
    rows = _require(session, ml, [email], role)
    for m in rows:
        if delivery_mode is not None:
            change_delivery_mode(session, m, delivery_mode, utcnow())
        if moderated is not None:
            m.moderated = moderated
        if enabled is True:
            clear_bounce_state(session, m, utcnow(), outcome="reenabled via cli")
        elif enabled is False:
            m.enabled = False
            m.disabled_reason = "admin"
    if display_name is not None:
        rows[0].address.display_name = display_name
    session.flush()
    return rows
