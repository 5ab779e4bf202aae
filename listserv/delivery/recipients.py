"""Who gets a post: streamed straight from the database, never loaded whole.

A post goes to every enabled member (role member) with regular delivery, the poster included
(as Mailman does by default), except people already reached by another list's fan-out of the
same Message-ID: one NOT EXISTS against the Fanout table, no per-recipient round trip.

A list that includes other lists (listserv.core.network), or a cross-post to a list that does,
takes the network query instead: one recursive CTE, deduplicated by the database.

Both are read in chunks in address id order (keyset pagination): the fan-out job
(listserv.delivery.fanout) queues one chunk per transaction behind a durable cursor. (A digest
to many members is read the same way by listserv.digests.chunks.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Iterator

from sqlalchemy import Select, exists, select
from sqlalchemy.orm import Session, aliased

from listserv.core import network
from listserv.core.models import Address, DeliveryMode, Fanout, Membership, Role

STREAM_CHUNK = 5000
# Each chunk of a network's query evaluates the whole network's membership: after the first,
# its chunks are this big (a few such queries instead of one per STREAM_CHUNK).
NETWORK_CHUNK = 25000


def message_hash(message_id: str) -> str:
    """SHA-256 of a Message-ID (angle brackets and surrounding blanks ignored)."""
    value = message_id.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def post_recipients_query(list_id: int, message_hash: str | None,
                          before: int | None = None, upto: int | None = None
                          ) -> Select[int, str]:
    """(address id, email) of the regular members a post to ``list_id`` goes to, in address id
    order: minus the members of another list that distributed ``message_hash`` first (a
    fanout row with an id below ``before``; any other list when None), and only memberships
    with an id up to ``upto`` (those that existed when the post was accepted)."""
    stmt = (select(Membership.address_id, Address.email)
            .join(Address, Address.id == Membership.address_id)
            .where(Membership.list_id == list_id, Membership.role == Role.member,
                   Membership.delivery_mode == DeliveryMode.regular,
                   Membership.enabled.is_(True)))
    if upto is not None:
        stmt = stmt.where(Membership.id <= upto)
    if message_hash is not None:
        other = aliased(Membership)
        reached = (exists()
                   .where(Fanout.message_id_hash == message_hash, Fanout.list_id != list_id,
                          other.list_id == Fanout.list_id,
                          other.address_id == Membership.address_id,
                          other.role == Role.member,
                          other.delivery_mode == DeliveryMode.regular,
                          other.enabled.is_(True)))
        if before is not None:
            reached = reached.where(Fanout.id < before)
        stmt = stmt.where(~reached)
    return stmt.order_by(Membership.address_id)


@dataclass(frozen=True)
class Chunk:
    """Up to ``limit`` recipients after address id ``after``; ``last`` the highest address id
    among them; ``complete`` when no member is left after them (``remote`` then holds the
    remote included lists to send to as well)."""

    people: list[str]
    last: int
    complete: bool
    remote: list[str]


def earlier_lists(session: Session, list_id: int, message_hash: str | None,
                  before: int | None = None) -> list[int]:
    """Lists other than ``list_id`` that distributed ``message_hash`` (before fanout id
    ``before``, when given)."""
    if message_hash is None:
        return []
    q = select(Fanout.list_id).where(Fanout.message_id_hash == message_hash,
                                     Fanout.list_id != list_id)
    if before is not None:
        q = q.where(Fanout.id < before)
    return list(session.scalars(q))


def next_chunk(session: Session, list_id: int, message_hash: str | None, *, after: int,
               limit: int, before: int | None = None, upto: int | None = None,
               skip_remote: Iterable[str] = ()) -> Chunk:
    """The next ``limit`` recipients of a post to ``list_id`` in address id order, after
    address id ``after`` (keyset pagination: each chunk is one index range, whatever the
    list's size; a network's chunks after the first hold at least NETWORK_CHUNK).
    ``skip_remote``: remote included lists not to send to (those the post came through)."""
    others = earlier_lists(session, list_id, message_hash, before)
    if not others:
        message_hash = None  # no other list sent it: skip the per-member NOT EXISTS probe
    networked = network.has_children(session, [list_id, *others])
    if networked:
        if after:
            limit = max(limit, NETWORK_CHUNK)
        people_q = network.post_people_query(list_id, message_hash, before, upto)
        key = people_q.selected_columns[0]
        stmt = people_q.where(key > after).order_by(key).limit(limit)
    else:
        stmt = post_recipients_query(list_id, message_hash, before, upto).where(
            Membership.address_id > after).limit(limit)
    rows = session.connection().execute(stmt).all()    # plain rows: no ORM result layer
    people = [r[1] for r in rows]
    last = rows[-1][0] if rows else after
    if len(rows) == limit:
        return Chunk(people, last, False, [])
    remote = (list(session.scalars(network.post_remote_query(list_id, message_hash, before,
                                                             skip_remote)))
              if networked else [])
    return Chunk(people, last, True, remote)


def post_recipients(session: Session, list_id: int, message_hash: str | None = None,
                    skip_remote: Iterable[str] = (), before: int | None = None,
                    upto: int | None = None) -> Iterator[str]:
    """Stream every address a post to ``list_id`` goes to, in chunks of STREAM_CHUNK (the
    fan-out job itself queues them chunk by chunk: listserv.delivery.fanout)."""
    after = 0
    while True:
        chunk = next_chunk(session, list_id, message_hash, after=after, limit=STREAM_CHUNK,
                           before=before, upto=upto, skip_remote=skip_remote)
        yield from chunk.people
        if chunk.complete:
            yield from chunk.remote
            return
        after = chunk.last
