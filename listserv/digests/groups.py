"""Who gets which part of a digest, so that no post is lost or doubled across mode changes.

The claimed entries of a digest are sorted by seq. A member in a digest mode gets the entries
after their ``digest_from_seq`` (the list's post_id when they entered the mode: earlier posts
reached them as regular copies, or they had asked for no mail). A member who went back to
regular delivery gets one last digest of the entries in their FinalDigest range. Members who
get the same slice in the same format share one message: in practice one MIME and one plain
digest, plus a few short ones around mode changes. Recipients are streamed per slice.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from listserv.core import network
from listserv.core.models import DIGEST_MODES, Address, DeliveryMode, FinalDigest, Membership, Role


@dataclass
class Slice:
    """entries[lo:hi] in ``mode``, for the recipients of ``queries``."""

    mode: DeliveryMode
    lo: int
    hi: int
    count: int = 0
    queries: list[Select[Any]] = field(default_factory=list)
    # The list's own digest members in ``mode`` whose digest_from_seq is in [lowest, below)
    # (lowest None: any below): (lowest, below), their query (one of ``queries``) and count.
    members: tuple[int | None, int] | None = None
    member_query: Select[Any] | None = None
    member_count: int = 0
    # The people who read the digest in ``mode`` only through the lists this one includes
    # (slices of all the entries): their query (one of ``queries``) and count.
    included_query: Select[Any] | None = None
    included_count: int = 0

    @property
    def readers(self) -> int:
        """How many of the recipients a fan-out job can queue later in chunks (the digest
        members, own and included); the others are owed a last digest (FinalDigest rows,
        settled when the digest is made) and are queued with it."""
        return self.member_count + self.included_count

    def recipients(self, session: Session, *, without_members: bool = False) -> Iterator[str]:
        """Everyone the slice goes to; ``without_members``: all but the digest members (own
        and included: the ones a fan-out job queues)."""
        queries = [q for q in self.queries if not (without_members and (
            q is self.member_query or q is self.included_query))]
        if not queries:
            return
        if len(queries) == 1:    # the common case: one streamed query, no set kept
            yield from session.scalars(queries[0].execution_options(yield_per=2000))
            return
        seen: set[str] = set()
        for q in queries:
            for email in session.scalars(q.execution_options(yield_per=2000)):
                if email not in seen:
                    seen.add(email)
                    yield email


def _members(list_id: int, mode: DeliveryMode) -> Select[Any]:
    return (select(Address.email).join(Membership, Membership.address_id == Address.id)
            .where(Membership.list_id == list_id, Membership.role == Role.member,
                   Membership.enabled.is_(True), Membership.delivery_mode == mode))


def plan(session: Session, list_id: int, seqs: Sequence[int]) -> list[Slice]:
    """The slices of the claimed entries (sorted ``seqs``) to build and whom they go to."""
    n = len(seqs)
    slices: dict[tuple[DeliveryMode, int, int], Slice] = {}

    def slot(mode: DeliveryMode, lo: int, hi: int) -> Slice:
        key = (mode, lo, hi)
        if key not in slices:
            slices[key] = Slice(mode, lo, hi)
        return slices[key]

    # A list that includes others: whoever a post reaches as a regular copy through any list
    # of the network gets no digest of it; digest-only people of the included lists get one.
    networked = network.has_children(session, [list_id])
    regular = network.regular_members(network.subtree_ids(list_id)) if networked else None

    for mode in DIGEST_MODES:
        counted = (select(Membership.digest_from_seq, func.count(Membership.id))
                   .where(Membership.list_id == list_id, Membership.role == Role.member,
                          Membership.enabled.is_(True), Membership.delivery_mode == mode)
                   .group_by(Membership.digest_from_seq))
        if regular is not None:
            counted = counted.where(Membership.address_id.not_in(regular))
        rows = session.execute(counted).all()
        per_lo: dict[int, int] = {}
        for from_seq, count in rows:
            lo = bisect.bisect_right(seqs, from_seq)
            if lo < n:
                per_lo[lo] = per_lo.get(lo, 0) + int(count)
        for lo, count in per_lo.items():
            s = slot(mode, lo, n)
            s.count += count
            # members whose digest_from_seq falls in [seqs[lo-1], seqs[lo]) get entries[lo:]
            q = _members(list_id, mode).where(Membership.digest_from_seq < seqs[lo])
            if lo > 0:
                q = q.where(Membership.digest_from_seq >= seqs[lo - 1])
            if regular is not None:
                q = q.where(Membership.address_id.not_in(regular))
            q = q.order_by(Address.email)
            s.queries.append(q)
            s.members = (seqs[lo - 1] if lo > 0 else None, seqs[lo])
            s.member_query, s.member_count = q, count
    if networked and n:
        for mode, q in network.included_digest_queries(list_id):
            count = int(session.scalar(select(func.count()).select_from(q.subquery())) or 0)
            if count:
                s = slot(mode, 0, n)
                s.count += count
                s.included_query = q.order_by(Address.email)
                s.queries.append(s.included_query)
                s.included_count = count

    finals = session.execute(
        select(FinalDigest.mode, FinalDigest.from_seq, FinalDigest.to_seq,
               func.count(FinalDigest.id))
        .join(Membership, Membership.id == FinalDigest.membership_id)
        .where(FinalDigest.list_id == list_id, Membership.enabled.is_(True))
        .group_by(FinalDigest.mode, FinalDigest.from_seq, FinalDigest.to_seq)).all()
    for mode, from_seq, to_seq, count in finals:
        lo, hi = bisect.bisect_right(seqs, from_seq), bisect.bisect_right(seqs, to_seq)
        if lo >= hi:
            continue
        s = slot(mode, lo, hi)
        s.count += int(count)
        s.queries.append(
            select(Address.email).join(Membership, Membership.address_id == Address.id)
            .join(FinalDigest, FinalDigest.membership_id == Membership.id)
            .where(FinalDigest.list_id == list_id, FinalDigest.mode == mode,
                   FinalDigest.from_seq == from_seq, FinalDigest.to_seq == to_seq,
                   Membership.enabled.is_(True)).order_by(Address.email))
    return sorted(slices.values(), key=lambda s: (s.mode.value, s.lo, s.hi))


def settle_finals(session: Session, list_id: int, last_seq: int) -> None:
    """The one-last-digest debts are paid up to ``last_seq`` (the newest claimed entry)."""
    session.execute(delete(FinalDigest).where(FinalDigest.list_id == list_id,
                                              FinalDigest.to_seq <= last_seq))
    session.execute(update(FinalDigest).where(FinalDigest.list_id == list_id,
                                              FinalDigest.from_seq < last_seq)
                    .values(from_seq=last_seq))
