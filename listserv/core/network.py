"""Networks of lists: a list includes other lists (ours, or lists on other servers).

A post to PARENT reaches the members of PARENT and of every list it includes, however deep,
each person once. Everything is computed in the database from one recursive CTE over
``list_inclusion`` (:func:`reach`), whose UNION (not UNION ALL) keeps each list once, so a
cycle that slipped in (two concurrent includes, a hand-edited database) ends the recursion
instead of looping, and can never deliver a post twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from sqlalchemy import (
    CTE,
    Select,
    and_,
    case,
    delete,
    exists,
    func,
    literal,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session

from listserv.core import addresses
from listserv.core import lists as lists_mod
from listserv.core.errors import UsageError
from listserv.core.models import (
    Address,
    DeliveryMode,
    Domain,
    ListInclusion,
    MailingList,
    Membership,
    Role,
)

MINE = 0        # reach() side: the lists a post goes to
REACHED = 1     # reach() side: lists that already distributed the same Message-ID


def reach(seeds: Select[int, int], name: str = "reach") -> CTE:
    """Recursive CTE (list_id, side): the seed rows and every list they include, recursively.

    ``seeds`` selects (list_id, side) pairs; side is carried down unchanged. UNION removes
    duplicate rows, which is what ends the recursion on a cycle.
    """
    tree = seeds.cte(name, recursive=True)
    step = (select(ListInclusion.child_id, tree.c.side)
            .join(tree, ListInclusion.parent_id == tree.c.list_id)
            .where(ListInclusion.child_id.is_not(None)))
    return tree.union(step)


def _seed(list_id: int) -> Select[int, int]:
    return select(MailingList.id.label("list_id"), literal(MINE).label("side")).where(
        MailingList.id == list_id)


def subtree_ids(list_id: int) -> Select[Any]:
    """SELECT list_id of ``list_id`` and every list it includes (one recursive CTE)."""
    tree = reach(_seed(list_id))
    return select(tree.c.list_id)   # type: ignore[no-any-return]


def has_children(session: Session, list_ids: Iterable[int]) -> bool:
    ids = list(list_ids)
    return bool(ids) and session.scalar(
        select(ListInclusion.id).where(ListInclusion.parent_id.in_(ids)).limit(1)) is not None


# ---------------------------------------------------------------------------- recipients


def _regular(list_ids: Any) -> Select[Any]:
    """address_id of the enabled regular members of the lists in ``list_ids``."""
    return select(Membership.address_id).where(
        Membership.list_id.in_(list_ids), Membership.role == Role.member,
        Membership.delivery_mode == DeliveryMode.regular, Membership.enabled.is_(True))


def regular_members(list_ids: Any) -> Select[Any]:
    """address_id of the enabled regular members of the lists in ``list_ids``."""
    return _regular(list_ids)


def included_digest_queries(list_id: int, upto: int | None = None
                            ) -> list[tuple[DeliveryMode, Select[Any]]]:
    """For each digest mode, the people who get ``list_id``'s digest in that mode only through
    the lists it includes: a digest membership somewhere below (with an id up to ``upto``,
    when given), no regular one anywhere in the network, no digest membership of ``list_id``
    itself (those have their own slices), and MIME before plain when they have both."""
    tree = subtree_ids(list_id)

    def having(mode: DeliveryMode, below: bool) -> Select[Any]:
        q = select(Membership.address_id).where(
            Membership.list_id.in_(tree), Membership.role == Role.member,
            Membership.enabled.is_(True), Membership.delivery_mode == mode)
        if upto is not None:
            q = q.where(Membership.id <= upto)
        return q.where(Membership.list_id != list_id) if below else q

    own = select(Membership.address_id).where(
        Membership.list_id == list_id, Membership.role == Role.member,
        Membership.enabled.is_(True),
        Membership.delivery_mode.in_([DeliveryMode.mime_digest, DeliveryMode.plain_digest]))
    out: list[tuple[DeliveryMode, Select[Any]]] = []
    for mode in (DeliveryMode.mime_digest, DeliveryMode.plain_digest):
        q = select(Address.email).where(Address.id.in_(having(mode, True)),
                                        Address.id.not_in(_regular(tree)),
                                        Address.id.not_in(own))
        if mode is DeliveryMode.plain_digest:
            q = q.where(Address.id.not_in(having(DeliveryMode.mime_digest, True)))
        out.append((mode, q))
    return out


def _post_tree(list_id: int, message_hash: str | None, before: int | None) -> tuple[Any, Any]:
    """(mine, reached): the lists a post to ``list_id`` goes to, and those whose members a
    list that distributed ``message_hash`` first (fanout id below ``before``; any when None)
    already reached, each through its includes."""
    from listserv.core.models import Fanout

    seeds = select(
        MailingList.id.label("list_id"),
        case((MailingList.id == list_id, literal(MINE)), else_=literal(REACHED)).label("side"))
    if message_hash is None:
        seeds = seeds.where(MailingList.id == list_id)
    else:
        earlier = select(Fanout.list_id).where(Fanout.message_id_hash == message_hash,
                                               Fanout.list_id != list_id)
        if before is not None:
            earlier = earlier.where(Fanout.id < before)
        seeds = seeds.where(or_(MailingList.id == list_id, MailingList.id.in_(earlier)))
    tree = reach(seeds)
    mine = select(tree.c.list_id).where(tree.c.side == MINE)
    reached = select(tree.c.list_id).where(tree.c.side == REACHED)
    return mine, reached


def post_people_query(list_id: int, message_hash: str | None, before: int | None = None,
                      upto: int | None = None) -> Select[int, str]:
    """(address id, email) of every person a post to ``list_id`` goes to, expanded through
    its includes, once each: regular members of the whole subtree (memberships with an id up
    to ``upto``, when given) minus whoever a list that already distributed ``message_hash``
    reached (through its own subtree)."""
    return _people(*_post_tree(list_id, message_hash, before), message_hash, upto)


def post_remote_query(list_id: int, message_hash: str | None, before: int | None = None,
                      skip_remote: Iterable[str] = ()) -> Select[Any]:
    """The remote lists a post to ``list_id`` goes to (through its includes), minus those a
    list that already distributed ``message_hash`` reached, those in ``skip_remote`` (the
    ones the post came through) and those that are people of the post already."""
    return _remote(*_post_tree(list_id, message_hash, before), message_hash, skip_remote)


def post_recipients_query(list_id: int, message_hash: str | None,
                          skip_remote: Iterable[str] = ()) -> Select[Any]:
    """Every address a post to ``list_id`` goes to: post_people_query's emails and
    post_remote_query's (counts; the fan-out reads them in chunks, listserv.delivery.recipients)."""
    mine, reached = _post_tree(list_id, message_hash, None)
    people = _people(mine, reached, message_hash, None).with_only_columns(
        Address.email.label("email"))
    # UNION ALL: people are distinct already (IN), and the few remote rows are kept distinct
    # here, so the database never sorts 100,000 addresses to deduplicate them again.
    return people.union_all(                       # type: ignore[return-value]
        _remote(mine, reached, message_hash, skip_remote))


def _people(mine: Any, reached: Any, message_hash: str | None, upto: int | None
            ) -> Select[int, str]:
    members = _regular(mine)
    if upto is not None:
        members = members.where(Membership.id <= upto)
    people = select(Address.id, Address.email).where(Address.id.in_(members))
    if message_hash is not None:
        people = people.where(Address.id.not_in(_regular(reached)))
    return people


def _remote(mine: Any, reached: Any, message_hash: str | None, skip_remote: Iterable[str]
            ) -> Select[Any]:
    remote = select(ListInclusion.remote_address.label("email")).where(
        ListInclusion.parent_id.in_(mine), ListInclusion.remote_address.is_not(None))
    if message_hash is not None:
        already = select(ListInclusion.remote_address).where(
            ListInclusion.parent_id.in_(reached), ListInclusion.remote_address.is_not(None))
        remote = remote.where(ListInclusion.remote_address.not_in(already))
    skip = [s.lower() for s in skip_remote]
    if skip:
        remote = remote.where(ListInclusion.remote_address.not_in(skip))
    return remote.where(ListInclusion.remote_address.not_in(
        select(Address.email).where(Address.id.in_(_regular(mine))))).distinct()


def included_member(session: Session, list_id: int, candidates: list[str]
                    ) -> tuple[str, bool] | None:
    """The first candidate address that is a member (any delivery mode) of a list that
    ``list_id`` includes, however deep, and whether any such membership is moderated."""
    if not candidates or not has_children(session, [list_id]):
        return None
    tree = reach(_seed(list_id))
    rows = session.execute(
        select(Address.email, Membership.moderated).join(
            Membership, Membership.address_id == Address.id).where(
            Address.email.in_(candidates), Membership.role == Role.member,
            Membership.list_id != list_id,
            Membership.list_id.in_(select(tree.c.list_id)))).all()
    for email in candidates:
        flags = [bool(r.moderated) for r in rows if r.email == email]
        if flags:
            return email, any(flags)
    return None


def relaying_list(session: Session, ml: MailingList, mail_from: str,
                  list_ids: Iterable[str]) -> str:
    """The address of the list whose distributed copy this is, when ``ml`` accepts its posts,
    else ''. A copy is a list's when its envelope sender is that list's -bounces address
    (VERP or not) and it carries the same list's List-Id. ``ml`` accepts the posts of a
    remote list it includes (two sites including each other's lists) and of a list address
    that is one of its members (a site whose list another site includes one way)."""
    ids = {_bracketed(v) for v in list_ids}
    for route in addresses.route_candidates(mail_from):
        if route.subaddress != addresses.BOUNCES:
            continue
        relay = route.list_address.lower()
        if f"{route.list_name}.{route.domain}".lower() not in ids or relay == ml.address:
            continue
        if session.scalar(select(ListInclusion.id).where(
                ListInclusion.parent_id == ml.id,
                ListInclusion.remote_address == relay)) is not None:
            return relay
        if session.scalar(select(Membership.id).join(Address).where(
                Membership.list_id == ml.id, Address.email == relay)) is not None:
            return relay
    return ""


def came_through(msg: Any) -> list[str]:
    """The list addresses a post's List-Id chain names (NAME.DOMAIN read every way it
    splits): remote lists it came through, which must not get it back."""
    out: list[str] = []
    for value in msg.get_all("List-Id") or []:
        ident = _bracketed(str(value))
        parts = ident.split(".")
        out += [".".join(parts[:i]) + "@" + ".".join(parts[i:]) for i in range(1, len(parts))]
    return out


def _bracketed(value: str) -> str:
    value = str(value).strip()
    if "<" in value and ">" in value.split("<", 1)[1]:
        return value.split("<", 1)[1].split(">", 1)[0].strip().lower()
    return value.lower()


# ---------------------------------------------------------------------------- administration


@dataclass
class Child:
    address: str
    list_id: int | None          # None for a list on another server


def _lock(session: Session) -> None:
    """Serialise include/uninclude so two concurrent includes cannot close a cycle
    (PostgreSQL; SQLite serialises writers itself). Recipients stay safe regardless."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(1313131313)"))


def resolve_child(session: Session, text_: str) -> Child:
    """One of our lists, or a remote list address (anything that is not ours)."""
    ml = lists_mod.find_list(session, text_)
    if ml is not None:
        return Child(ml.address, ml.id)
    email = addresses.normalise(text_)
    for route in addresses.route_candidates(email):
        if lists_mod.find_list(session, route.list_address) is not None:
            raise UsageError(f"{email} is an address of our list {route.list_address}, "
                             "not a list")
    return Child(email, None)


def include(session: Session, parent: MailingList, children: list[str]) -> list[str]:
    """Include ``children`` in ``parent``; returns the ones newly included. A cycle is refused
    (UsageError, nothing changed)."""
    _lock(session)
    added: list[str] = []
    for text_ in children:
        child = resolve_child(session, text_)
        if child.list_id == parent.id:
            raise UsageError(f"a list cannot include itself: {parent.address}")
        if child.list_id is not None:
            path = cycle_path(session, child.list_id, parent.id)
            if path:
                raise UsageError(f"including {child.address} in {parent.address} would make "
                                 f"a cycle: {' -> '.join([parent.address, *path])}")
            where = ListInclusion.child_id == child.list_id
        else:
            where = ListInclusion.remote_address == child.address
        if session.scalar(select(ListInclusion.id).where(
                ListInclusion.parent_id == parent.id, where)) is not None:
            continue
        session.add(ListInclusion(parent_id=parent.id, child_id=child.list_id,
                                  remote_address=None if child.list_id else child.address))
        session.flush()
        added.append(child.address)
    return added


def uninclude(session: Session, parent: MailingList, children: list[str]) -> list[str]:
    _lock(session)
    removed: list[str] = []
    for text_ in children:
        ml = lists_mod.find_list(session, text_)
        if ml is not None:
            where = ListInclusion.child_id == ml.id
            name = ml.address
        else:
            name = addresses.try_normalise(text_) or text_.strip().lower()
            where = ListInclusion.remote_address == name
        result = session.execute(delete(ListInclusion).where(
            ListInclusion.parent_id == parent.id, where))
        if not getattr(result, "rowcount", 0):
            raise UsageError(f"{parent.address} does not include {name}")
        removed.append(name)
    return removed


def cycle_path(session: Session, start: int, target: int) -> list[str]:
    """Addresses on an include path start -> ... -> target, or [] when target is not reached."""
    edges = _edges(session)
    prev: dict[int, int] = {start: start}
    todo = [start]
    while todo:
        node = todo.pop()
        if node == target:
            path = [node]
            while path[-1] != start:
                path.append(prev[path[-1]])
            names = _names(session)
            return [names[i] for i in reversed(path)]
        for child in edges.get(node, []):
            if child not in prev:
                prev[child] = node
                todo.append(child)
    return []


def _edges(session: Session) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for parent, child in session.execute(select(ListInclusion.parent_id, ListInclusion.child_id)
                                         .where(ListInclusion.child_id.is_not(None))):
        if child is not None:
            out.setdefault(parent, []).append(child)
    return out


def _names(session: Session) -> dict[int, str]:
    return {i: f"{n}@{d}" for i, n, d in session.execute(
        select(MailingList.id, MailingList.name, Domain.name).join(Domain))}


def includes_of(session: Session, ml: MailingList) -> list[str]:
    """The lists ``ml`` includes directly (ours and remote), sorted."""
    names = _names(session)
    rows = session.execute(select(ListInclusion.child_id, ListInclusion.remote_address).where(
        ListInclusion.parent_id == ml.id)).all()
    return sorted(names[c] if c is not None else str(r) for c, r in rows)


def included_in(session: Session, ml: MailingList) -> list[str]:
    """The lists that include ``ml`` directly, sorted."""
    names = _names(session)
    return sorted(names[p] for p in session.scalars(
        select(ListInclusion.parent_id).where(ListInclusion.child_id == ml.id)))


# ---------------------------------------------------------------------------- tree


@dataclass
class Node:
    address: str
    members: int | None                  # own members; None for a remote list
    reach: int | None = None             # distinct people a post reaches (our lists)
    remote: bool = False
    cycle: bool = False                  # already on the path above: not expanded again
    children: list["Node"] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"address": self.address, "remote": self.remote,
                               "members": self.members}
        if not self.remote:
            out["reach"] = self.reach
        if self.cycle:
            out["cycle"] = True
        out["includes"] = [c.as_json() for c in self.children]
        return out


def member_counts(session: Session) -> dict[int, int]:
    return {lid: n for lid, n in session.execute(
        select(Membership.list_id, func.count()).where(Membership.role == Role.member)
        .group_by(Membership.list_id))}


def reach_count(session: Session, list_id: int) -> int:
    """Distinct people a post to ``list_id`` reaches (regular delivery), plus remote lists."""
    q = post_recipients_query(list_id, None).subquery()
    return int(session.scalar(select(func.count()).select_from(q)) or 0)


def trees(session: Session, root: MailingList | None = None) -> list[Node]:
    """The inclusion tree of ``root``, or every tree: each list that is not included anywhere
    is a root (lists in no network are single-node trees)."""
    names = _names(session)
    counts = member_counts(session)
    edges: dict[int, list[tuple[int | None, str | None]]] = {}
    included: set[int] = set()
    for parent, child, remote in session.execute(
            select(ListInclusion.parent_id, ListInclusion.child_id,
                   ListInclusion.remote_address)):
        edges.setdefault(parent, []).append((child, remote))
        if child is not None:
            included.add(child)

    def build(list_id: int, path: frozenset[int]) -> Node:
        node = Node(names[list_id], counts.get(list_id, 0))
        if list_id in path:
            node.cycle = True
            return node
        node.reach = reach_count(session, list_id) if list_id in edges else None
        kids = sorted(edges.get(list_id, []), key=lambda e: names[e[0]] if e[0] else str(e[1]))
        for child, remote in kids:
            if child is not None:
                node.children.append(build(child, path | {list_id}))
            else:
                node.children.append(Node(str(remote), None, remote=True))
        if node.reach is None:
            node.reach = counts_regular(session, list_id)
        return node

    if root is not None:
        return [build(root.id, frozenset())]
    roots = [i for i in sorted(names, key=lambda i: names[i].split("@")[::-1])
             if i not in included]
    out = [build(i, frozenset()) for i in roots]
    # lists only reachable through a cycle (a hand-edited database) have no root of their own
    shown = _addresses(out)
    for i in sorted(edges):
        if names[i] not in shown:
            out.append(build(i, frozenset()))
            shown = _addresses(out)
    return out


def counts_regular(session: Session, list_id: int) -> int:
    return int(session.scalar(select(func.count()).select_from(
        _regular([list_id]).subquery())) or 0)


def _addresses(nodes: list[Node]) -> set[str]:
    out: set[str] = set()
    stack = list(nodes)
    while stack:
        n = stack.pop()
        out.add(n.address)
        stack.extend(n.children)
    return out
