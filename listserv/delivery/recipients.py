"""Who gets a post: streamed straight from the database, never loaded whole.

A post goes to every enabled member (role member) with regular delivery, the poster included
(as Mailman does by default), except people already reached by another list's fan-out of the
same Message-ID: one NOT EXISTS against the Fanout table, no per-recipient round trip.

A list that includes other lists (listserv.core.network), or a cross-post to a list that does,
takes the network query instead: one recursive CTE, deduplicated by the database.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Iterator

from sqlalchemy import Select, exists, select
from sqlalchemy.orm import Session, aliased

from listserv.core import network
from listserv.core.models import Address, DeliveryMode, Fanout, Membership, Role

STREAM_CHUNK = 5000


def message_hash(message_id: str) -> str:
    """SHA-256 of a Message-ID (angle brackets and surrounding blanks ignored)."""
    value = message_id.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].strip()
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def post_recipients_query(list_id: int, message_hash: str | None) -> Select[str]:
    stmt = (select(Address.email)
            .join(Membership, Membership.address_id == Address.id)
            .where(Membership.list_id == list_id, Membership.role == Role.member,
                   Membership.delivery_mode == DeliveryMode.regular,
                   Membership.enabled.is_(True)))
    if message_hash is not None:
        other = aliased(Membership)
        reached = (exists()
                   .where(Fanout.message_id_hash == message_hash, Fanout.list_id != list_id,
                          other.list_id == Fanout.list_id,
                          other.address_id == Membership.address_id,
                          other.role == Role.member,
                          other.delivery_mode == DeliveryMode.regular,
                          other.enabled.is_(True)))
        stmt = stmt.where(~reached)
    return stmt.order_by(Membership.id)


def post_recipients(session: Session, list_id: int, message_hash: str | None = None,
                    skip_remote: Iterable[str] = ()) -> Iterator[str]:
    """Stream the addresses a post to ``list_id`` goes to, in chunks of STREAM_CHUNK.

    ``skip_remote``: remote included lists not to send to (those the post came through)."""
    others: list[int] = []
    if message_hash is not None:
        others = list(session.scalars(select(Fanout.list_id).where(
            Fanout.message_id_hash == message_hash, Fanout.list_id != list_id)))
        if not others:
            message_hash = None  # no other list sent it: skip the per-member NOT EXISTS probe
    if network.has_children(session, [list_id, *others]):
        stmt: Select[str] = network.post_recipients_query(list_id, message_hash, skip_remote)
    else:
        stmt = post_recipients_query(list_id, message_hash)
    for email in session.scalars(stmt.execution_options(yield_per=STREAM_CHUNK)):
        yield email
