"""Apply a mapped Mailman 2 list to the database: create what is missing, change what differs,
leave the rest alone (so a second import changes nothing). Never removes anyone.

Members go in with core bulk INSERTs (one statement per table per few thousand rows); the
few memberships that differ from the import are changed one by one, their delivery mode
through members.change_delivery_mode so that the digest bookkeeping is kept.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from listserv.core import addresses, lists, members, senders, settings as settings_mod
from listserv.core.db import Database
from listserv.core.errors import UsageError
from listserv.importers import py2pickle
from listserv.importers.mailman2 import Mm2List, Person, map_list
from listserv.core.models import (
    DIGEST_MODES,
    Address,
    Ban,
    MailingList,
    Membership,
    Role,
    SenderAction,
    utcnow,
)

ADDRESS = cast(Table, Address.__table__)
MEMBERSHIP = cast(Table, Membership.__table__)
CHUNK = 1000
FIELDS = ("delivery_mode", "moderated", "enabled", "disabled_reason", "bounce_score",
          "last_bounce_at", "bounce_warnings_sent", "last_warning_at")


@dataclass
class Changes:
    list_address: str = ""
    created: bool = False
    settings: list[tuple[str, Any, Any]] = field(default_factory=list)   # key, old, new
    added: dict[Role, int] = field(default_factory=dict)
    updated: int = 0
    unchanged: int = 0
    names: int = 0
    sender_rules: int = 0
    bans: int = 0

    @property
    def nothing(self) -> bool:
        return not (self.created or self.settings or self.added or self.updated or self.names
                    or self.sender_rules or self.bans)


def _values(p: Person) -> dict[str, Any]:
    return {"delivery_mode": p.delivery, "moderated": p.moderated, "enabled": p.enabled,
            "disabled_reason": p.disabled_reason, "bounce_score": p.bounce_score,
            "last_bounce_at": p.last_bounce_at, "bounce_warnings_sent": p.warnings_sent,
            "last_warning_at": p.last_warning_at}


def apply(session: Session, plan: Mm2List, list_address: str) -> Changes:
    ml = lists.find_list(session, list_address)
    changes = Changes()
    if ml is None:
        ml = lists.create_list(session, list_address)
        changes.created = True
    changes.list_address = ml.address
    for key, value in plan.settings.items():
        old = getattr(ml, key)
        if old != value:
            setattr(ml, key, value)
            if not changes.created:
                changes.settings.append((key, settings_mod.format_json(old),
                                         settings_mod.format_json(value)))
            else:
                changes.settings.append((key, None, settings_mod.format_json(value)))
    session.flush()
    for i in range(0, len(plan.people), CHUNK):
        _people(session, ml, plan.people[i:i + CHUNK], changes)
    _senders(session, ml, plan, changes)
    session.flush()
    return changes


def _people(session: Session, ml: MailingList, chunk: list[Person], changes: Changes) -> None:
    now = utcnow()
    emails = list(dict.fromkeys(p.email for p in chunk))
    known = {e: (aid, name) for e, aid, name in session.execute(
        select(Address.email, Address.id, Address.display_name).where(Address.email.in_(emails)))}
    names = {p.email: p.name for p in chunk if p.name}
    new = [{"email": e, "display_name": names.get(e, ""), "created_at": now}
           for e in emails if e not in known]
    if new:
        session.execute(insert(ADDRESS), new)
    renamed = [{"b_id": known[e][0], "b_name": n} for e, n in names.items()
               if e in known and not known[e][1]]
    if renamed:
        session.execute(update(ADDRESS).where(ADDRESS.c.id == bindparam("b_id")).values(
            display_name=bindparam("b_name")), renamed)
        changes.names += len(renamed)
    ids = {e: aid for e, aid in session.execute(
        select(Address.email, Address.id).where(Address.email.in_(emails)))}
    cols = [getattr(Membership, f) for f in FIELDS]
    have = {(r[1], r[2]): (r[0], dict(zip(FIELDS, r[3:]))) for r in session.execute(
        select(Membership.id, Membership.address_id, Membership.role, *cols).where(
            Membership.list_id == ml.id, Membership.address_id.in_(list(ids.values()))))}
    rows: list[dict[str, Any]] = []
    differ: dict[int, dict[str, Any]] = {}
    from_seq: int | None = None
    for p in chunk:
        want = _values(p)
        found = have.get((ids[p.email], p.role))
        if found is None:
            if p.delivery in DIGEST_MODES and from_seq is None:
                from_seq = members.locked_post_id(session, ml.id)
            rows.append({"list_id": ml.id, "address_id": ids[p.email], "role": p.role,
                         "joined_at": now, **want,
                         "digest_from_seq": (from_seq or 0) if p.delivery in DIGEST_MODES
                         else 0})
            changes.added[p.role] = changes.added.get(p.role, 0) + 1
        elif any(_differs(found[1][k], v) for k, v in want.items()):
            differ[found[0]] = want
        else:
            changes.unchanged += 1
    if rows:
        session.execute(insert(MEMBERSHIP), rows)
    if differ:
        for m in session.scalars(select(Membership).where(Membership.id.in_(list(differ)))):
            for k, v in differ[m.id].items():
                if k == "delivery_mode":
                    members.change_delivery_mode(session, m, v, now)
                else:
                    setattr(m, k, v)
        changes.updated += len(differ)


def _differs(old: Any, new: Any) -> bool:
    if isinstance(old, dt.datetime) and isinstance(new, dt.datetime):
        return old.astimezone(dt.timezone.utc) != new.astimezone(dt.timezone.utc)
    if isinstance(old, float) or isinstance(new, float):
        return abs(float(old or 0) - float(new or 0)) > 1e-9
    return bool(old != new)


def _senders(session: Session, ml: MailingList, plan: Mm2List, changes: Changes) -> None:
    rules = {r.pattern: r for r in session.scalars(
        select(SenderAction).where(SenderAction.list_id == ml.id))}
    kept = []
    for pattern, action in plan.sender_rules:
        # '@list': the members of another list, honoured when that list is here.
        other = pattern[1:] if pattern.startswith("@") else None
        if other is not None and (other == ml.address.lower()
                                  or not senders.list_exists(session, other)):
            why = ("this list itself: its members are not non-members"
                   if other == ml.address.lower() else
                   f"the members of {other}: no such list here; import that list first, "
                   "then run this import again")
            plan.not_imported.append(f"{action.value}_these_nonmembers "
                                     f"'@{other.partition('@')[0]}' ({why})")
            continue
        kept.append((pattern, action))
    plan.sender_rules = kept
    for pattern, action in plan.sender_rules:
        row = rules.get(pattern)
        if row is None:
            session.add(SenderAction(list_id=ml.id, pattern=pattern, action=action))
            changes.sender_rules += 1
        elif row.action is not action:
            row.action = action
            changes.sender_rules += 1
    bans = set(session.scalars(select(Ban.pattern).where(Ban.list_id == ml.id)))
    for pattern in plan.bans:
        if pattern not in bans:
            session.add(Ban(list_id=ml.id, pattern=pattern))
            changes.bans += 1


# ---------------------------------------------------------------------------- the import


class _Rollback(Exception):
    def __init__(self, changes: Changes) -> None:
        self.changes = changes


def read_config(path: str | Path) -> dict[str, Any]:
    """The decoded attribute dict of a config.pck; UsageError when it cannot be read safely."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return py2pickle.load_config(data)
    except py2pickle.UnsafePickle as exc:
        raise UsageError(f"{path}: {exc}") from None


def default_address(path: str | Path, cfg: dict[str, Any]) -> str:
    """lists/NAME/config.pck -> NAME@host_name (Mailman keeps the name only in the path)."""
    host = cfg.get("host_name")
    name = Path(path).resolve().parent.name.lower()
    if not isinstance(host, str) or not host.strip():
        raise UsageError(f"{path} names no host_name: give --list NAME@DOMAIN")
    try:
        addresses.split_list_address(f"{name}@{host.strip()}")
    except UsageError:
        raise UsageError(f"cannot tell the list's name from {path}: give --list NAME@DOMAIN"
                         ) from None
    return f"{name}@{host.strip().lower()}"


def import_mailman2(db: Database, path: str | Path, list_address: str | None = None, *,
                    dry_run: bool = False) -> tuple[Changes, Mm2List]:
    """Import the Mailman 2.1 list in ``path`` (one transaction; rolled back for a dry run)."""
    cfg = read_config(path)
    address = list_address or default_address(path, cfg)
    name, domain = addresses.split_list_address(address)
    plan = map_list(cfg, name, domain)
    try:
        with db.unit_of_work() as session:
            changes = apply(session, plan, f"{name}@{domain}")
            if dry_run:
                raise _Rollback(changes)
    except _Rollback as rolled_back:
        changes = rolled_back.changes
    return changes, plan
