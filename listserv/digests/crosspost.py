"""A cross-posted message reaches a digest reader once across all our lists.

A message addressed to several of our lists is accepted by each of them (each archives and
counts it) and so enters each list's digest. When a digest is sent, a cross-posted entry (its
Message-ID distributed by another list too, per the Fanout table) is left out of a person's
digest when

- another list that distributed it reaches them with a regular copy (an enabled regular
  membership anywhere in that list's network): the regular copy wins, as regular beats digest
  in a network; or
- a list that processed it before this one reaches them as a digest reader (an enabled
  digest membership anywhere in that list's network): the first list's digest keeps it.

Everything is decided in the database, one query per cross-posted entry, over the people who
read this list's digest at all (or, for a digest queued in chunks by its fan-out job, over one
chunk's address range at a time: listserv.digests.chunks). People whose digest loses entries
get a digest of the rest (one message per distinct set of entries left out); the others share
the usual ones.

What this cannot see: a digest already sent before another list accepted the same message
(say a post held for moderation on one list and approved after the other list's digest went
out); memberships are read as they are when the digest is sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from sqlalchemy import CompoundSelect, Select, literal, or_, select
from sqlalchemy.orm import Session

from listserv.core import network
from listserv.core.models import (
    DIGEST_MODES,
    Address,
    Fanout,
    FinalDigest,
    MailingList,
    Membership,
    Role,
)

CHUNK = 500


def _subtree(list_ids: Sequence[int], name: str) -> Select[Any]:
    """list_id of ``list_ids`` and of every list they include (one recursive CTE)."""
    seeds = select(MailingList.id.label("list_id"), literal(network.MINE).label("side")).where(
        MailingList.id.in_(list_ids))
    tree = network.reach(seeds, name)
    return select(tree.c.list_id)


def _digest_members(list_ids: Any) -> Select[Any]:
    return select(Membership.address_id).where(
        Membership.list_id.in_(list_ids), Membership.role == Role.member,
        Membership.enabled.is_(True), Membership.delivery_mode.in_(DIGEST_MODES))


def _readers(list_id: int) -> CompoundSelect[Any]:
    """address_id of everyone who may get ``list_id``'s digest: digest members of it and of
    the lists it includes, and members owed a last digest by it."""
    return _digest_members(_subtree([list_id], "xown")).union(final_readers(list_id))


def final_readers(list_id: int) -> Select[Any]:
    """address_id of the members owed a last digest by ``list_id``."""
    return (select(Membership.address_id)
            .join(FinalDigest, FinalDigest.membership_id == Membership.id)
            .where(FinalDigest.list_id == list_id))


def exclusions(session: Session, list_id: int, hashes: Sequence[str | None], *,
               readers: Select[Any] | None = None, within: tuple[int, int] | None = None
               ) -> dict[str, frozenset[int]]:
    """Per address: the indexes (into ``hashes``, one per claimed entry) of the entries to
    leave out of that person's digest of ``list_id``. Empty when nothing was cross-posted.
    Only among ``readers`` (address ids; everyone who may get the digest when None); with
    ``within`` (after, last), among the address ids above ``after`` up to ``last`` instead
    (a digest's fan-out asks for the readers of one chunk at a time)."""

    def ranged(q: Select[Any]) -> Select[Any]:
        return q if within is None else q.where(Membership.address_id > within[0],
                                                Membership.address_id <= within[1])

    wanted = sorted({h for h in hashes if h})
    rows: list[Any] = []
    for i in range(0, len(wanted), CHUNK):
        rows += session.execute(select(Fanout.message_id_hash, Fanout.list_id, Fanout.id).where(
            Fanout.message_id_hash.in_(wanted[i:i + CHUNK]))).all()
    mine: dict[str, int] = {}
    others: dict[str, list[tuple[int, int]]] = {}
    for h, lid, fid in rows:
        if lid == list_id:
            mine[h] = fid
        else:
            others.setdefault(h, []).append((lid, fid))
    out: dict[str, set[int]] = {}
    for index, h in enumerate(hashes):
        if not h or h not in others:
            continue
        reached = ranged(network.regular_members(
            _subtree([lid for lid, _ in others[h]], "xregular")))
        earlier = [lid for lid, fid in others[h] if h not in mine or fid < mine[h]]
        conditions = [Address.id.in_(reached)]
        if earlier:
            conditions.append(Address.id.in_(ranged(
                _digest_members(_subtree(earlier, "xearlier")))))
        q = select(Address.email).where(or_(*conditions))
        if within is None:
            q = q.where(Address.id.in_(_readers(list_id) if readers is None else readers))
        else:
            q = q.where(Address.id > within[0], Address.id <= within[1])
        for email in session.scalars(q):
            out.setdefault(email, set()).add(index)
    return {email: frozenset(indexes) for email, indexes in out.items()}


@dataclass
class Split:
    """The recipients of entries[lo:hi], split into those who get all of them (streamed, in
    order) and those who get fewer (``fewer``: entries left out -> addresses), collected while
    the stream is read."""

    emails: Iterable[str]
    skip: dict[str, frozenset[int]]
    lo: int
    hi: int
    whole: int = 0
    fewer: dict[frozenset[int], list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._stream = self._sort()
        self._first = next(self._stream, None)

    def _sort(self) -> Iterator[str]:
        for email in self.emails:
            left_out = self.skip.get(email)
            here = frozenset(i for i in left_out if self.lo <= i < self.hi) if left_out else None
            if here:
                self.fewer.setdefault(here, []).append(email)
            else:
                self.whole += 1
                yield email

    @property
    def any_whole(self) -> bool:
        return self._first is not None

    def whole_recipients(self) -> Iterator[str]:
        """The addresses that get every entry of the slice (read once, to the end)."""
        if self._first is not None:
            yield self._first
            yield from self._stream
