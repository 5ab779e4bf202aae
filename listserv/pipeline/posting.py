"""The posting pipeline: accept -> fan-out, and the refusal of a rejected post.

accept_post() is the one way a post is distributed; moderation's approve calls it too, so an
approved post behaves exactly as a directly accepted one. It runs inside the caller's
transaction (helpers never commit): post number, prepared copy, digest entry, archive entry,
Fanout record, outbound message and its fan-out job all commit together or not at all; the
job then queues the recipients in chunks (listserv.delivery.fanout).
"""

from __future__ import annotations

import datetime as dt
import logging
from email.message import EmailMessage
from typing import Callable

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from listserv import digests
from listserv.archive import mbox as archive
from listserv.core import network, ratelimit
from listserv.delivery import fanout, notices, outbound, recipients, unsubscribe
from listserv.message import arc, transforms
from listserv.core.app import App
from listserv.core.models import (
    ArchivePolicy,
    Fanout,
    InboundMessage,
    InboundState,
    MailingList,
)
from listserv.core.templating import render
from listserv.core.views import ListView
from listserv.message.parse import to_bytes

log = logging.getLogger(__name__)

FOOTER_TEMPLATE = "footer/list.txt.j2"
REJECTED_TEMPLATE = "notice/user/rejected.txt.j2"
# A post that fans out in a job (more recipients than one SMTP transaction) is archived this
# long after its accept, not at once: archiving it (reading, indexing and storing the message
# in the database, the month's pages) would otherwise run on the other core and compete with
# the steps that send its first copies.
ARCHIVE_AFTER_FANOUT = dt.timedelta(seconds=1)


def reject_post(session: Session, app: App, ml: MailingList, inbound: InboundMessage,
                msg: EmailMessage, reasons: list[str], *, notify: bool = True) -> None:
    """Refuse a post; tell the poster (null envelope sender, so it can never loop)."""
    inbound.state = InboundState.rejected
    inbound.outcome = "; ".join(reasons)
    to = inbound.from_addr or inbound.mail_from
    if not notify or not to:
        return
    if not ratelimit.allow(session, app, ml.id, to.lower(), "reject"):
        return          # forged posts "from" a victim must not become a flood of notices
    lv = ListView.of(ml)
    notice = notices.build_notice(app, lv, REJECTED_TEMPLATE, to,
                                  {"reasons": reasons, "subject": inbound.subject,
                                   "sender": to},
                                  in_reply_to=inbound.message_id or None)
    notices.send_notice(session, app, lv, notice, [to], null_sender=True)


def _lock_message(session: Session, message_hash: str) -> None:
    """Serialise fan-outs of one Message-ID across lists and processes (PostgreSQL)."""
    if session.get_bind().dialect.name == "postgresql":
        key = int(message_hash[:15], 16)
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def _next_post_id(session: Session, list_id: int) -> int:
    """post_id += 1 under the row's write lock; safe on PostgreSQL and SQLite."""
    seq = session.scalar(update(MailingList).where(MailingList.id == list_id)
                         .values(post_id=MailingList.post_id + 1)
                         .returning(MailingList.post_id)
                         .execution_options(synchronize_session=False))
    assert seq is not None
    return seq


class _MemoResolver:
    """Remember DNS answers so prepare() can run a second time, inside the lock, without DNS."""

    def __init__(self, resolve: Callable[[str], list[str]]) -> None:
        self.resolve = resolve
        self.answers: dict[str, list[str]] = {}

    def __call__(self, name: str) -> list[str]:
        if name not in self.answers:
            self.answers[name] = self.resolve(name)
        return self.answers[name]


def render_footer(app: App, lv: ListView) -> str:
    return render(app.settings.data_dir, FOOTER_TEMPLATE, {"list": lv, "settings": app.settings},
                  domain=lv.domain, list_address=lv.address)


def accept_post(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage, *,
                approved_by: str | None = None) -> int | None:
    """Accept a post for distribution. Returns its sequence number, or None for a duplicate
    Message-ID that this list already distributed (the inbound message is then marked
    discarded).

    Everything slow (DNS, preparing, decorating, ARC and DKIM) is done before the list's
    lock, for the post number the list will most likely give it; under the lock the post is
    only numbered and recorded: prepared and final bytes, OutboundMessage, Fanout row, digest
    and archive entries, and the one fan-out job that queues its recipients afterwards
    (listserv.delivery.fanout)."""
    # Nothing is written before the lock either: a change left pending by the rules (the body
    # digest), flushed by a read here, would take SQLite's one write lock for the whole
    # preparation.
    with session.no_autoflush:
        ml = session.get(MailingList, inbound.list_id)
        assert ml is not None
        message_id = str(msg.get("Message-ID") or inbound.message_id or "").strip()
        mhash = recipients.message_hash(message_id or inbound.spool_sha)
        verp = app.settings.delivery.verp
        # DNS (DMARC, ARC) before taking any lock: a slow resolver must not hold the list row.
        resolver = _MemoResolver(app.resolve_txt)
        guess = _with_post_id(unsubscribe.with_web(ListView.of(ml), app.settings.web),
                              ml.post_id + 1)
        found = _arc_results(session, app, guess, inbound)
        early = _copies(app, msg, guess, resolver, found, verp)

    _lock_message(session, mhash)
    seq = _next_post_id(session, ml.id)   # from here on we hold the list's write lock
    if session.scalar(select(Fanout.id).where(Fanout.message_id_hash == mhash,
                                              Fanout.list_id == ml.id)) is not None:
        session.execute(update(MailingList).where(MailingList.id == ml.id)
                        .values(post_id=MailingList.post_id - 1)
                        .execution_options(synchronize_session=False))
        inbound.state = InboundState.discarded
        inbound.outcome = f"duplicate: {message_id} was already distributed by this list"
        return None
    set_committed_value(ml, "post_id", seq)
    lv = unsubscribe.with_web(ListView.of(ml), app.settings.web)
    prepared, raw, data = early if lv == guess else _copies(app, msg, lv, resolver, found,
                                                            verp)
    prepared_sha = app.spool.put(raw, session=session)
    now = app.now()
    # VERP'd copies are one per member: each gets its own one-click unsubscribe headers and
    # DKIM signature at delivery (listserv.delivery.unsubscribe): their bytes are sealed,
    # not signed.
    out = outbound.create_message(session, app, data, kind="post", envelope_from=lv.bounces,
                                  list_id=ml.id, verp=verp, message_id=message_id[:998],
                                  per_member=verp)
    fan = fanout.record(session, app, ml.id, mhash, out.id)
    digests.add_post(session, app, ml, seq, prepared_sha, prepared, message_hash=mhash,
                     size=len(raw))
    everyone = fanout.start(session, app, fan, inbound_id=inbound.id, seq=seq,
                            skip_remote=network.came_through(msg), approved_by=approved_by)
    if ml.archive is not ArchivePolicy.none:     # after the fan-out: its job runs first
        archive.add_entry(session, app, ml.id, seq, prepared_sha, message_id, now,
                          delay=ARCHIVE_AFTER_FANOUT if everyone is None else None)
    inbound.state = InboundState.accepted
    inbound.outcome = (fanout.outcome(seq, everyone, approved_by) if everyone is not None else
                       f"accepted as post {seq}; its recipients are being queued"
                       + (f", approved by {approved_by}" if approved_by else ""))
    log.info("list %s message %s: accepted as post %d", ml.list_id, message_id, seq)
    return seq


def _copies(app: App, msg: EmailMessage, lv: ListView, resolver: _MemoResolver,
            found: list[str] | None, verp: bool) -> tuple[EmailMessage, bytes, bytes]:
    """(prepared message, its bytes, final bytes) of a post for ``lv`` (its post number
    included): the prepared copy decorated, CRLF, the ARC set, then DKIM-signed when the
    domain has a key (not for VERP'd posts: their members' copies are signed at delivery)."""
    prepared = transforms.prepare(msg, lv, resolve_txt=resolver)
    raw = to_bytes(prepared)   # first: it makes hostile decoded text writable, in place
    final = transforms.decorate(prepared, lv, render_footer(app, lv))
    seal = None if found is None else (lambda b: arc.seal(b, lv, found))
    data = notices.serialise(final, seal) if verp else notices.finalise(final, lv, seal)
    return prepared, raw, data


def _arc_results(session: Session, app: App, lv: ListView, inbound: InboundMessage
                 ) -> list[str] | None:
    """The incoming post's authentication results for its ARC seal; None: not sealed."""
    if not (lv.arc and lv.dkim_key and lv.dkim_selector):
        return None
    try:
        raw = app.spool.get(inbound.spool_sha, session=session)
    except OSError as exc:
        log.warning("list %s message %s: not ARC-sealed, original unreadable: %s",
                    lv.list_id, inbound.message_id, exc)
        return None
    return arc.results(raw, app.resolve_txt, app.settings.moderation.trusted_authserv_id)


def _with_post_id(lv: ListView, post_id: int) -> ListView:
    import dataclasses

    return dataclasses.replace(lv, post_id=post_id)
