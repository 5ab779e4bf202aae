"""A digest to many readers, queued chunk by chunk by a ``fanout`` job.

The digest's own transaction (listserv.digests.service.send) builds, signs and stores one
message per slice (format and first entry) and queues the readers it must queue itself, those
owed a last digest (their FinalDigest rows are settled in that transaction). For the digest
members, the list's own and, for a list that includes others, the people who read it only
through an included list, it records a Fanout row and enqueues a ``fanout`` job in the list's
fan-out partition (start()), whose payload says which message each kind of reader gets (Plan).

The job (step()) reads the readers after the Fanout row's cursor in address id order, at most
``chunk`` rows per query (keyset pagination over the own members' query and the included
readers' queries, merged: a chunk ends at the lowest last id of a query that filled up, so
every address up to it has been read from every query), and queues them and moves the cursor
in one transaction (listserv.delivery.fanout.writing and move_cursor: compare-and-set, so a
worker whose lease was taken over cannot queue a chunk twice). A crash resumes from the
cursor; each address id is in exactly one chunk, and within a chunk each person is queued
once, so nobody gets the digest twice and nobody is skipped.

Who gets what is decided when their chunk is read:
- a member gets the message of their mode and start point then; one who left, was disabled or
  left digest delivery is passed over; one whose membership was made after the digest is not
  reached (memberships with an id up to Fanout.members_upto), as with a post's fan-out;
- in a network, whoever reads a list of it as a regular member gets no digest, and whoever
  reads it only through an included list gets the digest of every entry (as when the digest
  is queued whole, listserv.digests.groups);
- an entry cross-posted to another list (listserv.digests.crosspost) is left out of the digest
  of whoever it reached there. Those people get a digest of the other entries, built by the
  first chunk that needs it and found again by later chunks through its Message-ID: the
  slice's own Message-ID with a suffix naming the entries left out (variant_id()).
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Callable, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listserv.core import network
from listserv.core.app import App
from listserv.core.models import (
    Address,
    DeliveryMode,
    Digest,
    DigestEntry,
    Fanout,
    MailingList,
    Membership,
    OutboundMessage,
    Role,
)
from listserv.core.views import ListView
from listserv.delivery import fanout, notices, outbound, recipients
from listserv.digests import crosspost
from listserv.digests.build import DigestItem, build_mime_digest, build_plain_digest
from listserv.jobs import engine
from listserv.message.parse import parse as parse_message

log = logging.getLogger(__name__)

CHUNK = 5000                             # readers read per query and chunk
NETWORK_CHUNK = recipients.NETWORK_CHUNK  # a network's queries evaluate its whole membership

BUILDERS: dict[DeliveryMode, Callable[..., EmailMessage]] = {
    DeliveryMode.mime_digest: build_mime_digest,
    DeliveryMode.plain_digest: build_plain_digest}


@dataclass(frozen=True)
class Target:
    """Who gets digest message ``outbound_id``: the list's own members in ``mode`` whose
    digest_from_seq is in [lowest, below) (lowest None: any below), or, when ``below`` is
    None, the people who read the digest in ``mode`` only through an included list."""

    mode: DeliveryMode
    outbound_id: int
    lowest: int | None = None
    below: int | None = None

    def takes(self, mode: DeliveryMode, from_seq: int | None) -> bool:
        seq = from_seq or 0
        return (self.below is not None and mode is self.mode and seq < self.below
                and (self.lowest is None or seq >= self.lowest))

    def first(self, seqs: Sequence[int]) -> int:
        """The index of the first entry (of the digest's, sorted ``seqs``) the message holds."""
        return 0 if self.below is None else bisect.bisect_left(seqs, self.below)


@dataclass(frozen=True)
class Plan:
    """A digest fan-out job's payload."""

    fanout_id: int
    own: tuple[Target, ...]
    included: tuple[Target, ...] = ()
    networked: bool = False
    digest_id: int | None = None

    @classmethod
    def of(cls, payload: dict[str, Any]) -> "Plan":
        own = tuple(Target(DeliveryMode(m), int(o), lo, int(hi))
                    for m, lo, hi, o in payload.get("digest") or ())
        included = tuple(Target(DeliveryMode(m), int(o)) for m, o in payload.get("included")
                         or ())
        digest_id = payload.get("digest_id")
        return cls(int(payload["fanout"]), own, included, bool(payload.get("network")),
                   None if digest_id is None else int(digest_id))

    def payload(self) -> dict[str, Any]:
        return {"fanout": self.fanout_id,
                "digest": [[t.mode.value, t.lowest, t.below, t.outbound_id] for t in self.own],
                "included": [[t.mode.value, t.outbound_id] for t in self.included],
                "network": self.networked, "digest_id": self.digest_id}


def is_digest(payload: dict[str, Any]) -> bool:
    """Whether a ``fanout`` job's payload is a digest's (else a post's)."""
    return "digest" in payload


def start(session: Session, app: App, list_id: int, digest_id: int,
          own: Sequence[Target], included: Sequence[Target]) -> Fanout:
    """In the digest's transaction: record the fan-out of its built and stored messages to
    the digest members (``own``, ``included``) and enqueue its job."""
    upto = session.scalar(select(func.max(Membership.id)))
    fan = Fanout(message_id_hash=recipients.message_hash(f"digest {digest_id}"),
                 list_id=list_id, at=app.now(),
                 outbound_id=min(t.outbound_id for t in (*own, *included)),
                 members_upto=upto or 0)
    session.add(fan)
    session.flush()
    plan = Plan(fan.id, tuple(own), tuple(included),
                network.has_children(session, [list_id]), digest_id)
    engine.enqueue(session, app, fanout.KIND, plan.payload(),
                   partition_key=fanout.partition(list_id))
    return fan


def load_items(app: App, entries: Sequence[Any]) -> list[DigestItem]:
    """The posts of digest entries (rows with seq and spool_sha), parsed."""
    return [DigestItem(e.seq, parse_message(app.spool.get(e.spool_sha))) for e in entries]


def compose(app: App, lv: ListView, mode: DeliveryMode, items: Sequence[DigestItem],
            volume: int, number: int, date: dt.datetime, message_id: str | None = None
            ) -> tuple[str, bytes]:
    """A digest message's Message-ID and final bytes (CRLF, DKIM-signed when the domain has
    a key)."""
    msg = BUILDERS[mode](list(items), lv, volume, number, date=date,
                         data_dir=app.settings.data_dir)
    if message_id is not None:
        msg.replace_header("Message-ID", message_id)
    return str(msg["Message-ID"]), notices.finalise(msg, lv)


def variant_id(message_id: str, left_out: frozenset[int]) -> str:
    """The Message-ID of a digest message without the entries ``left_out`` (indexes)."""
    tag = hashlib.sha256(",".join(map(str, sorted(left_out))).encode()).hexdigest()[:16]
    local, at, domain = message_id.strip().strip("<>").rpartition("@")
    return f"<{local}.without-{tag}{at}{domain}>"


@dataclass
class Variant:
    """A digest message a chunk builds: to ``recipients``."""

    message_id: str
    data: bytes
    envelope_from: str
    recipients: list[str]


@dataclass
class Chunk:
    by_message: dict[int, list[str]] = field(default_factory=dict)   # outbound id -> emails
    variants: list[Variant] = field(default_factory=list)
    last: int = 0
    complete: bool = True


def _own_query(list_id: int, plan: Plan, after: int, limit: int, upto: int | None
               ) -> Any:
    modes = sorted({t.mode for t in plan.own}, key=lambda m: m.value)
    stmt = (select(Membership.address_id, Address.email, Membership.delivery_mode,
                   Membership.digest_from_seq)
            .join(Address, Address.id == Membership.address_id)
            .where(Membership.list_id == list_id, Membership.role == Role.member,
                   Membership.enabled.is_(True), Membership.delivery_mode.in_(modes),
                   Membership.address_id > after)
            .order_by(Membership.address_id).limit(limit))
    if upto is not None:
        stmt = stmt.where(Membership.id <= upto)
    if plan.networked:
        stmt = stmt.where(Membership.address_id.not_in(
            network.regular_members(network.subtree_ids(list_id))))
    return stmt


def read(session: Session, app: App, list_id: int, plan: Plan, *, after: int, limit: int,
         upto: int | None) -> Chunk:
    """The readers after address id ``after``, up to about ``limit`` of them, and the message
    each gets (digest messages they need that do not exist yet are built here, outside the
    chunk's write transaction)."""
    conn = session.connection()          # plain rows: no ORM result layer
    people: dict[int, tuple[str, Target]] = {}     # own members first
    full: list[int] = []                 # the last address id of each query that filled up
    seen = after                         # the highest address id read
    if plan.own:
        rows = conn.execute(_own_query(list_id, plan, after, limit, upto)).all()
        by_mode: dict[DeliveryMode, list[Target]] = {}
        for t in plan.own:
            by_mode.setdefault(t.mode, []).append(t)
        for address_id, email, mode, from_seq in rows:
            for t in by_mode.get(mode, ()):
                if t.takes(mode, from_seq):
                    people[address_id] = (email, t)
                    break
        if rows:
            seen = rows[-1][0]
        if len(rows) >= limit:
            full.append(seen)
    if plan.included:
        queries = dict(network.included_digest_queries(list_id, upto))
        for t in plan.included:
            q = (queries[t.mode].with_only_columns(Address.id, Address.email)
                 .where(Address.id > after).order_by(Address.id).limit(limit))
            if full:                     # nothing beyond what the chunk can hold anyway
                q = q.where(Address.id <= min(full))
            rows = conn.execute(q).all()
            for address_id, email in rows:
                people.setdefault(address_id, (email, t))
            if rows:
                seen = max(seen, rows[-1][0])
            if len(rows) >= limit:
                full.append(rows[-1][0])
    last = min(full) if full else seen
    chunk = Chunk(last=last, complete=not full)
    people = {a: p for a, p in people.items() if a <= last}
    if not people:
        return chunk
    skip: dict[str, frozenset[int]] = {}
    entries: list[Any] = []
    if plan.digest_id is not None:
        entries = list(session.execute(
            select(DigestEntry.seq, DigestEntry.spool_sha, DigestEntry.message_id_hash)
            .where(DigestEntry.digest_id == plan.digest_id)
            .order_by(DigestEntry.seq, DigestEntry.id)).all())
        skip = crosspost.exclusions(session, list_id, [e.message_id_hash for e in entries],
                                    within=(after, last))
    seqs = [e.seq for e in entries]
    fewer: dict[tuple[int, frozenset[int]], list[str]] = {}
    targets: dict[int, Target] = {}
    for email, t in people.values():
        left_out = skip.get(email)
        if left_out:
            lo = t.first(seqs)
            here = frozenset(i for i in left_out if i >= lo)
            if here:
                fewer.setdefault((t.outbound_id, here), []).append(email)
                targets[t.outbound_id] = t
                continue
        chunk.by_message.setdefault(t.outbound_id, []).append(email)
    if fewer:
        _variants(session, app, list_id, plan, entries, targets, fewer, chunk)
    return chunk


def _variants(session: Session, app: App, list_id: int, plan: Plan, entries: list[Any],
              targets: dict[int, Target], fewer: dict[tuple[int, frozenset[int]], list[str]],
              chunk: Chunk) -> None:
    """Give the readers who get fewer entries their digest message: one an earlier chunk
    built, else one built now (chunk.variants); nothing when every entry reached them
    through another list."""
    seqs = [e.seq for e in entries]
    base = {i: m for i, m in session.execute(select(
        OutboundMessage.id, OutboundMessage.message_id).where(OutboundMessage.id.in_(targets)))}
    first = min(t.outbound_id for t in (*plan.own, *plan.included))
    digest = session.get(Digest, plan.digest_id)
    ml = session.get(MailingList, list_id)
    if digest is None or ml is None:
        return
    lv = ListView.of(ml)
    date = digest.created_at
    if date.tzinfo is None:
        date = date.replace(tzinfo=dt.timezone.utc)
    items: list[DigestItem] | None = None
    for (outbound_id, left_out), emails in sorted(fewer.items(),
                                                  key=lambda kv: (kv[0][0], sorted(kv[0][1]))):
        t = targets[outbound_id]
        chosen = [i for i in range(t.first(seqs), len(seqs)) if i not in left_out]
        if not chosen:
            continue                       # every entry reached them through another list
        mid = variant_id(base.get(outbound_id) or f"<digest.{plan.digest_id}@{lv.domain}>",
                         left_out)
        made = session.scalar(select(OutboundMessage.id).where(
            OutboundMessage.id >= first, OutboundMessage.list_id == list_id,
            OutboundMessage.message_id == mid).limit(1))
        if made is not None:
            chunk.by_message.setdefault(made, []).extend(emails)
            continue
        if items is None:
            items = load_items(app, entries)
        _, data = compose(app, lv, t.mode, [items[i] for i in chosen], digest.volume,
                          digest.number, date, mid)
        chunk.variants.append(Variant(mid, data, lv.bounces, emails))


def step(app: App, payload: dict[str, Any], *, chunk: int | None = None) -> tuple[bool, int]:
    """Queue the digest's next chunk of readers: (complete, recipients queued). ``chunk``:
    readers read per query (CHUNK, or NETWORK_CHUNK for a list that includes others)."""
    plan = Plan.of(payload)
    app.db.let_writer_finish()      # reading the chunk is the fan-out's computing
    with app.db.unit_of_work() as session:
        fan = session.get(Fanout, plan.fanout_id)
        if fan is None or fan.expanded_at is not None:
            return True, 0
        after, queued, list_id = fan.after_address_id, fan.queued, fan.list_id
        got: Chunk | None = None
        if fan.outbound_id is not None:
            limit = chunk or (NETWORK_CHUNK if plan.networked else CHUNK)
            got = read(session, app, list_id, plan, after=after, limit=limit,
                       upto=fan.members_upto)
    with fanout.writing(app) as session:
        now = app.now()
        if got is None:                      # the messages were pruned: nothing to send
            fanout.end_pruned(session, plan.fanout_id, after=after, queued=queued, now=now)
            return True, 0
        added = 0
        for outbound_id, emails in got.by_message.items():
            added += outbound.add_recipients(session, app, outbound_id, emails)
        for v in got.variants:
            out = outbound.create_message(session, app, v.data, kind="digest",
                                          envelope_from=v.envelope_from, list_id=list_id,
                                          verp=app.settings.delivery.verp,
                                          message_id=v.message_id)
            added += outbound.add_recipients(session, app, out.id, v.recipients)
        fanout.move_cursor(session, plan.fanout_id, after=after, queued=queued, last=got.last,
                           added=added, complete=got.complete, now=now)
    if got.complete:
        log.info("list_id %s: digest fan-out %s queued for %d digest member(s)", list_id,
                 plan.fanout_id, queued + added)
    return got.complete, added


def expand(app: App, payload: dict[str, Any], *, chunk: int | None = None,
           max_chunks: int | None = None,
           after_chunk: Callable[[int], None] | None = None) -> bool:
    """Queue the digest's chunks until it is complete (or ``max_chunks`` were queued);
    whether it is complete (listserv.delivery.fanout.expand)."""
    def one(app: App, payload: dict[str, Any]) -> tuple[bool, int]:
        return step(app, payload, chunk=chunk)
    return fanout.expand(app, payload, max_chunks=max_chunks, after_chunk=after_chunk,
                         queue_chunk=one)


def run(app: App, payload: dict[str, Any]) -> None:
    """The ``fanout`` job's handler for a digest's payload (listserv.workers)."""
    expand(app, payload)
