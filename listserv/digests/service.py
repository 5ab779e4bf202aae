"""The digest service: collect accepted posts, decide when a digest is due, send it crash-safely.

Decisions (operators, see the report/README):
- Every accepted post is added to the list's pending digest, whether or not the list has digest
  members right now. When a digest falls due and the list has no digest member, the pending
  entries are consumed (deleted) without sending and the period restarts; so a member who
  switches to a digest mode receives the posts since the last digest point.
- A digest is due when (a) pending posts exceed ``digest_size_threshold_kb`` (0 = no size
  trigger), or (b) ``digest_frequency`` is daily/weekly/monthly and one period has passed since
  ``digest_last_sent_at`` (or, before the first digest, since the first pending post). After
  downtime, however many periods were missed, ONE digest catches up: the next period is then
  measured from that digest. ``never`` sends only on ``listserv digest send``.
- Sending is one transaction: lock the list row, create the Digest (volume/issue), claim the
  pending entries (UPDATE ... WHERE digest_id IS NULL, rowcount checked), build and DKIM-sign
  one MIME and one plain digest, queue both on the durable outbound queue (recipients streamed),
  bump the list counters. A crash before commit leaves everything pending; after commit the
  outbound queue owns delivery. Two ticks (or processes) cannot claim the same entries.
- A digest to more than IN_ONE_TRANSACTION digest members (the list's own and, for a list
  that includes others, those who read it through an included list) queues in that
  transaction only its messages and the members owed a last digest, with a Fanout row and a
  ``fanout`` job (listserv.digests.chunks): the job queues the digest members in chunks in
  address id order behind the Fanout row's cursor, as a post's members are, so the list is
  not locked while 100,000 recipients are queued, a crash resumes from the cursor and nobody
  is queued twice. Each member gets the digest message of their mode and start point when
  their chunk is queued; one who changed mode or left meanwhile is passed over (as with a
  post's fan-out), one who joined meanwhile is not reached. Cross-posted entries are left
  out chunk by chunk (the digests without them are built by the job as needed); the counts
  such a digest reports are of the readers when it was made.
- The volume increases with the first digest of a new calendar year; the issue then restarts
  at 1.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Iterable, Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from listserv import jobs
from listserv.core import isolation
from listserv.message import untrusted
from listserv.message.parse import to_bytes
from listserv.core.app import App
from listserv.digests import chunks, crosspost, groups
from listserv.digests.build import DigestItem
from listserv.digests.chunks import load_items
from listserv.core.errors import ListservError
from listserv.core.lists import get_list
from listserv.core.models import (
    DeliveryMode,
    Digest,
    DigestEntry,
    DigestFrequency,
    MailingList,
    OutboundMessage,
)
from listserv.delivery.outbound import queue_message
from listserv.core.views import ListView

log = logging.getLogger(__name__)

# A digest to more digest members than this is not queued for them in its transaction: a
# fan-out job queues them in chunks (listserv.digests.chunks).
IN_ONE_TRANSACTION = 5000


class DigestConflict(ListservError):
    """Another process claimed the pending entries first; nothing was sent by us."""


@dataclass(frozen=True)
class Pending:
    count: int
    size: int
    first_added: dt.datetime | None


@dataclass(frozen=True)
class SendResult:
    list_address: str
    volume: int
    number: int          # 0 when the entries were consumed without a digest (no digest members)
    posts: int
    mime_recipients: int
    plain_recipients: int
    reason: str
    bytes_queued: int = 0
    messages: int = 0    # distinct digest messages built (one per format and slice)
    # (posts held, recipients) per digest message: members who switched to a digest mode
    # during the period get only the posts since their switch.
    holds: tuple[tuple[int, int], ...] = ()

    def describe(self) -> str:
        if not self.number:
            return (f"{self.list_address}: {self.posts} pending post(s) consumed, "
                    "no digest members")
        head = f"{self.list_address}: Vol {self.volume}, Issue {self.number}: "
        members = self.mime_recipients + self.plain_recipients
        by_posts: dict[int, int] = {}
        for posts, recipients in self.holds:
            by_posts[posts] = by_posts.get(posts, 0) + recipients
        if len(by_posts) <= 1:
            posts = next(iter(by_posts), self.posts)
            return (head + f"{posts} post(s) to {members} digest member(s) "
                    f"({self.mime_recipients} MIME, {self.plain_recipients} plain)")
        parts = ", ".join(f"{p} post(s) to {r} member(s)"
                          for p, r in sorted(by_posts.items(), reverse=True))
        return (head + f"{parts} ({self.mime_recipients} MIME, {self.plain_recipients} "
                "plain)")


# ---------------------------------------------------------------------------- collecting


def add_post(session: Session, app: App, ml: MailingList, seq: int, prepared_sha: str,
             msg: EmailMessage, *, message_hash: str | None = None,
             size: int | None = None) -> None:
    """Record an accepted post (prepared bytes in the spool) for the list's next digest;
    ``message_hash``: its Message-ID's hash, as recorded in Fanout (listserv.delivery.recipients);
    ``size``: of the prepared bytes, when the caller has them."""
    if size is None:
        size = app.spool.size(prepared_sha, session)
    if size is None:
        size = len(to_bytes(msg))
    subject = untrusted.one_line(msg.get("Subject", "") or "", 998)   # no NUL for PostgreSQL
    sender = untrusted.one_line(msg.get("From", "") or "", 400)
    session.add(DigestEntry(list_id=ml.id, seq=seq, spool_sha=prepared_sha, size=size,
                            subject=subject, sender=sender, added_at=app.now(),
                            message_id_hash=message_hash))
    session.flush()
    limit = ml.digest_size_threshold_kb * 1024
    if limit > 0 and pending(session, ml.id).size > limit:
        jobs.kick(session, app, "digests")    # the digests pass runs now, not at its next tick


def pending(session: Session, list_id: int) -> Pending:
    count, size, first = session.execute(
        select(func.count(DigestEntry.id), func.coalesce(func.sum(DigestEntry.size), 0),
               func.min(DigestEntry.added_at))
        .where(DigestEntry.list_id == list_id, DigestEntry.digest_id.is_(None))).one()
    if first is not None and first.tzinfo is None:
        first = first.replace(tzinfo=dt.timezone.utc)
    return Pending(int(count), int(size), first)


# ---------------------------------------------------------------------------- when


def add_period(start: dt.datetime, frequency: DigestFrequency) -> dt.datetime | None:
    if frequency is DigestFrequency.daily:
        return start + dt.timedelta(days=1)
    if frequency is DigestFrequency.weekly:
        return start + dt.timedelta(days=7)
    if frequency is DigestFrequency.monthly:
        year, month = (start.year + 1, 1) if start.month == 12 else (start.year, start.month + 1)
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day)
    return None


def due_reason(frequency: DigestFrequency, threshold_kb: int, last_sent_at: dt.datetime | None,
               p: Pending, now: dt.datetime) -> str | None:
    """Why a digest is due now ('size' or 'schedule'), or None. Pure."""
    if p.count == 0:
        return None
    if threshold_kb > 0 and p.size > threshold_kb * 1024:
        return "size"
    start = last_sent_at or p.first_added
    if start is None:
        return None
    end = add_period(start, frequency)
    if end is not None and now >= end:
        return "schedule"
    return None


def due(session: Session, ml: MailingList, now: dt.datetime) -> str | None:
    return due_reason(ml.digest_frequency, ml.digest_size_threshold_kb, ml.digest_last_sent_at,
                      pending(session, ml.id), now)


# ---------------------------------------------------------------------------- sending


def _lock_list(session: Session, list_id: int) -> None:
    """Serialise digest sending per list: a row lock on PostgreSQL; on SQLite a no-op write
    taken first in the transaction, which holds the database's single write lock."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(update(MailingList).where(MailingList.id == list_id)
                        .values(digest_number=MailingList.digest_number))
    else:
        session.execute(select(MailingList.id).where(MailingList.id == list_id)
                        .with_for_update())


def _numbering(session: Session, ml: MailingList, now: dt.datetime) -> tuple[int, int]:
    last = session.scalar(select(Digest.created_at).where(Digest.list_id == ml.id)
                          .order_by(Digest.id.desc()).limit(1))
    if last is not None and last.year < now.year:
        return ml.digest_volume + 1, 1
    return ml.digest_volume, ml.digest_number + 1


def _rowcount(result: object) -> int:
    """Rows matched by an UPDATE/DELETE (a CursorResult's rowcount)."""
    return int(getattr(result, "rowcount", 0))


def send(session: Session, app: App, ml: MailingList, *, force: bool = False,
         in_one_transaction: int = IN_ONE_TRANSACTION) -> SendResult | None:
    """Send the list's pending digest if due (or ``force``): see the module docstring.
    ``in_one_transaction``: up to how many digest members are queued in this transaction.

    Returns what was done, or None when nothing was pending / due. Raises DigestConflict when
    another process claimed the entries meanwhile (the caller's transaction rolls back)."""
    _lock_list(session, ml.id)
    session.refresh(ml)
    now = app.now()
    p = pending(session, ml.id)
    reason = "manual" if force and p.count else due_reason(
        ml.digest_frequency, ml.digest_size_threshold_kb, ml.digest_last_sent_at, p, now)
    if reason is None:
        return None
    entries = list(session.scalars(
        select(DigestEntry).where(DigestEntry.list_id == ml.id, DigestEntry.digest_id.is_(None))
        .order_by(DigestEntry.seq, DigestEntry.id)))
    ids = [e.id for e in entries]
    seqs = [e.seq for e in entries]
    slices = groups.plan(session, ml.id, seqs)
    if not slices:
        done = 0
        for i in range(0, len(ids), 500):
            done += _rowcount(session.execute(delete(DigestEntry).where(
                DigestEntry.id.in_(ids[i:i + 500]), DigestEntry.digest_id.is_(None))))
        if done != len(ids):
            raise DigestConflict(f"{ml.address}: pending digest entries changed while sending")
        groups.settle_finals(session, ml.id, seqs[-1])
        ml.digest_last_sent_at = now
        log.info("digest %s: %d post(s) consumed, no digest members", ml.address, len(ids))
        return SendResult(ml.address, ml.digest_volume, 0, len(ids), 0, 0, reason)

    volume, number = _numbering(session, ml, now)
    digest = Digest(list_id=ml.id, volume=volume, number=number, created_at=now, sent_at=now)
    session.add(digest)
    session.flush()
    claimed = 0
    for i in range(0, len(ids), 500):
        claimed += _rowcount(session.execute(
            update(DigestEntry).where(DigestEntry.id.in_(ids[i:i + 500]),
                                      DigestEntry.digest_id.is_(None))
            .values(digest_id=digest.id)))
    if claimed != len(ids):
        raise DigestConflict(f"{ml.address}: pending digest entries claimed by another process")

    lv = ListView.of(ml)
    items = load_items(app, entries)
    total = 0
    counts = {mode: 0 for mode in groups.DIGEST_MODES}
    holds: list[tuple[int, int]] = []
    built = 0

    own: list[chunks.Target] = []
    included: list[chunks.Target] = []

    def queue(mode: DeliveryMode, chosen: Sequence[DigestItem], to: Iterable[str],
              message_id: str | None = None) -> OutboundMessage:
        nonlocal total, built
        message_id, data = chunks.compose(app, lv, mode, chosen, volume, number, now,
                                          message_id)
        total += len(data)
        built += 1
        return queue_message(session, app, data, to, kind="digest", envelope_from=lv.bounces,
                             list_id=ml.id, verp=app.settings.delivery.verp,
                             message_id=message_id)

    # Many digest members: only the messages (and the few owed a last digest) are queued here,
    # the members are queued in chunks by a fan-out job.
    fan_out = sum(sl.readers for sl in slices) > in_one_transaction
    # a cross-posted entry reaches each person in one digest only (listserv.digests.crosspost);
    # for a fan-out, the job leaves them out of the members' digests chunk by chunk
    skip = crosspost.exclusions(session, ml.id, [e.message_id_hash for e in entries],
                                readers=crosspost.final_readers(ml.id) if fan_out else None)
    for sl in slices:
        later = sl.readers if fan_out else 0      # queued by the fan-out job
        emails = sl.recipients(session, without_members=fan_out)
        split = crosspost.Split(emails, skip, sl.lo, sl.hi) if skip else None
        whole: OutboundMessage | None = None
        if later or split is None or split.any_whole:
            whole = queue(sl.mode, items[sl.lo:sl.hi],
                          emails if split is None else split.whole_recipients())
            if later and sl.members is not None and sl.member_count:
                own.append(chunks.Target(sl.mode, whole.id, *sl.members))
            if later and sl.included_count:
                included.append(chunks.Target(sl.mode, whole.id))
        parts = [(sl.hi - sl.lo, sl.count if split is None else later + split.whole)]
        for left_out, people in (sorted(split.fewer.items(), key=lambda kv: sorted(kv[0]))
                                 if split is not None else ()):
            chosen = [items[i] for i in range(sl.lo, sl.hi) if i not in left_out]
            if chosen:      # else every entry reached them through another list
                # named as the fan-out job names the same digest, which then reuses it
                queue(sl.mode, chosen, people, None if whole is None else
                      chunks.variant_id(whole.message_id, left_out))
                parts.append((len(chosen), len(people)))
        for posts, people_count in parts:
            if people_count:
                counts[sl.mode] += people_count
                holds.append((posts, people_count))
    if own or included:
        chunks.start(session, app, ml.id, digest.id, own, included)
    groups.settle_finals(session, ml.id, seqs[-1])
    ml.digest_volume, ml.digest_number, ml.digest_last_sent_at = volume, number, now
    log.info("digest %s: Vol %d, Issue %d (%s): %d post(s), %d message(s), %d MIME + %d plain "
             "recipient(s)", ml.address, volume, number, reason, len(ids), built,
             counts[DeliveryMode.mime_digest], counts[DeliveryMode.plain_digest])
    return SendResult(ml.address, volume, number, len(ids), counts[DeliveryMode.mime_digest],
                      counts[DeliveryMode.plain_digest], reason, total, built,
                      tuple(holds))


# ---------------------------------------------------------------------------- boundaries


def lists_with_pending(session: Session) -> list[int]:
    return list(session.scalars(select(DigestEntry.list_id)
                                .where(DigestEntry.digest_id.is_(None))
                                .group_by(DigestEntry.list_id).order_by(DigestEntry.list_id)))


def due_lists(session: Session, now: dt.datetime) -> list[int]:
    """Ids of lists whose digest is due: one grouped query over the pending entries."""
    rows = session.execute(
        select(MailingList.id, MailingList.digest_frequency, MailingList.digest_size_threshold_kb,
               MailingList.digest_last_sent_at, func.count(DigestEntry.id),
               func.sum(DigestEntry.size), func.min(DigestEntry.added_at))
        .join(DigestEntry, DigestEntry.list_id == MailingList.id)
        .where(DigestEntry.digest_id.is_(None))
        .group_by(MailingList.id, MailingList.digest_frequency,
                  MailingList.digest_size_threshold_kb, MailingList.digest_last_sent_at)
        .order_by(MailingList.id)).all()
    out = []
    for list_id, freq, kb, last, count, size, first in rows:
        if due_reason(freq, kb, last, Pending(int(count), int(size or 0), first), now):
            out.append(list_id)
    return out


def _send_one(app: App, list_id: int, force: bool,
              in_one_transaction: int = IN_ONE_TRANSACTION) -> SendResult | None:
    with app.db.unit_of_work() as session:
        ml = session.get(MailingList, list_id)
        if ml is None:
            return None
        return send(session, app, ml, force=force, in_one_transaction=in_one_transaction)


FAILURES = isolation.Failures("digest", log, retry_after=0)   # retried every tick, logged once


def tick(app: App) -> list[SendResult]:
    """Send every digest that is due. One transaction per list; a failing list is logged and
    retried at the next tick, the others go on."""
    with app.db.unit_of_work() as session:
        ids = due_lists(session, app.now())
    results = []
    waiting = FAILURES.waiting()
    for list_id in ids:
        if list_id in waiting:
            continue
        try:
            r = _send_one(app, list_id, force=False)
        except DigestConflict as exc:
            log.info("digest: %s", exc)
            continue
        except Exception as exc:
            FAILURES.failed(list_id, f"list id {list_id}", exc)
            continue
        FAILURES.succeeded(list_id)
        if r is not None:
            results.append(r)
    return results


def send_now(app: App, list_address: str | None = None, *,
             in_one_transaction: int = IN_ONE_TRANSACTION) -> list[SendResult]:
    """``listserv digest send [LIST]``: send pending digests now, due or not
    (``in_one_transaction``: as in send())."""
    if list_address is not None:
        with app.db.unit_of_work() as session:
            ids = [get_list(session, list_address).id]
    else:
        with app.db.unit_of_work() as session:
            ids = lists_with_pending(session)
    results = []
    for list_id in ids:
        r = _send_one(app, list_id, force=True, in_one_transaction=in_one_transaction)
        if r is not None:
            results.append(r)
    return results
