"""The notices of a held post: one per moderator and owner, each with its own token and the
post attached, and, when the list says so, one to the poster whose token withdraws the post.

listserv.pipeline.moderation.hold() records the held post and enqueues one ``hold-notices``
job (KIND) in the same transaction; the job runs run(). Making a notice (templates, the post
parsed and attached, serialised, DKIM-signed) costs milliseconds of CPU per notice, so run()
makes them all before its transaction writes anything, then writes the tokens and queues the
notices in a short transaction: on SQLite the database's one write lock, which the intake
waits for to answer, is not held while they are made. A run that finds the post's tokens made
already (a rerun after a crash) sends nothing again.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv.core import links as web_links
from listserv.core import members, ratelimit, tokens
from listserv.core.app import App
from listserv.core.models import (
    HeldMessage,
    InboundMessage,
    MailingList,
    PendingToken,
    TokenKind,
)
from listserv.core.views import ListView
from listserv.delivery import notices
from listserv.message import replies
from listserv.message.parse import parse as parse_message, to_bytes
from listserv.pipeline import rules

log = logging.getLogger(__name__)

KIND = "hold-notices"
EXCERPT_LINES = 20
EXCERPT_CHARS = 2000
MAX_ATTACHED = 1024 * 1024     # a larger held post is described, not attached


def handle_job(app: App, payload: dict[str, Any]) -> None:
    """The ``hold-notices`` job kind."""
    run(app, int(payload["held_id"]))


@dataclass(frozen=True)
class Notice:
    """A notice made, not yet written: its token and its final bytes."""

    kind: TokenKind
    email: str           # whom the token is for (and the notice to)
    token: str
    data: bytes
    message_id: str


def run(app: App, held_id: int) -> int:
    """Send the notices of held post ``held_id`` (nothing when it was decided already or
    its notices were sent). Returns how many were queued."""
    with app.db.unit_of_work() as session:
        with session.no_autoflush:           # reads only, until the notices are made
            # the held row locked (PostgreSQL): a second run of this job waits, then finds
            # the tokens this one wrote
            held = session.get(HeldMessage, held_id, with_for_update=True)
            if held is None or held.decision is not None or _sent(session, held_id):
                return 0
            ml = session.get_one(MailingList, held.list_id)
            inbound = session.get(InboundMessage, held.inbound_id)
            original = _raw(app, inbound) if inbound is not None else None
            msg = parse_message(original) if original is not None else EmailMessage()
            now = app.now()
            made = for_moderators(session, app, ml, held, msg, original, now)
            poster = (for_poster(app, ml, held, inbound, msg, now)
                      if ml.notify_poster_on_hold and inbound is not None else None)
        # the writes: tokens and queued notices
        lv = ListView.of(ml)
        if not made:
            log.warning("list_id=%s held #%d but the list has no moderator or owner",
                        ml.list_id, held.id)
        for n in made:
            _write(session, app, ml, lv, held, n, now)
        if poster is not None and ratelimit.allow(session, app, ml.id, poster.email, "hold"):
            _write(session, app, ml, lv, held, poster, now)
            made.append(poster)
        return len(made)


def _sent(session: Session, held_id: int) -> bool:
    return session.scalar(select(PendingToken.id).where(
        PendingToken.held_id == held_id,
        PendingToken.kind.in_([TokenKind.moderate, TokenKind.cancel_post])).limit(1)) is not None


def _write(session: Session, app: App, ml: MailingList, lv: ListView, held: HeldMessage,
           n: Notice, now: dt.datetime) -> None:
    tokens.create(session, app, n.kind, ml, n.email, held_id=held.id, token=n.token, now=now)
    notices.queue_notice(session, app, lv, n.data, n.message_id, [n.email])


def _raw(app: App, inbound: InboundMessage) -> bytes | None:
    try:
        return app.spool.get(inbound.spool_sha)
    except OSError:
        return None


def excerpt(msg: EmailMessage) -> list[str]:
    lines = replies.body_text(msg).splitlines()[:EXCERPT_LINES]
    out, total = [], 0
    for line in lines:
        total += len(line) + 1
        if total > EXCERPT_CHARS:
            break
        out.append(line)
    return out


def mailto(address: str, subject: str, body: str) -> str:
    return f"mailto:{address}?subject={quote(subject, safe='')}&body={quote(body, safe='')}"


def attach_original(notice: EmailMessage, original: bytes | None) -> bool:
    """Attach the held post as message/rfc822 (as Mailman does), so a moderator's client shows
    it as it is. Not when larger than MAX_ATTACHED, or when it cannot be re-serialised."""
    if original is None or len(original) > MAX_ATTACHED:
        return False
    try:
        held_msg = parse_message(original)
        part = EmailMessage()
        part.set_content(held_msg, disposition="attachment")   # type: ignore[arg-type]
        to_bytes(part)             # (hostile fields and text made writable, in place)
    except Exception:  # noqa: BLE001 - a hostile post must not stop the notice
        log.warning("held post not attached to the moderators' notice: cannot serialise")
        return False
    notice.make_mixed()
    notice.attach(part)
    return True


def for_moderators(session: Session, app: App, ml: MailingList, held: HeldMessage,
                   msg: EmailMessage, original: bytes | None, now: dt.datetime) -> list[Notice]:
    """One notice per moderator and owner, each with its own token, the held post attached."""
    lv = ListView.of(ml)
    lines = excerpt(msg)
    expires_at = now + tokens.lifetime(app)
    made: list[Notice] = []
    for moderator in members.moderators_and_owners(session, ml):
        token = tokens.new_token()
        confirm = lv.sub("confirm", token)
        subject = f"Re: confirm {token}"
        links = {word: mailto(confirm, subject, word)
                 for word in ("approve", "reject", "discard")}
        attached = original is not None and len(original) <= MAX_ATTACHED
        notice = notices.build_notice(app, lv, "notice/moderator/held.txt.j2", moderator, {
            "held": held, "token": token, "confirm_address": confirm, "links": links,
            "excerpt": lines, "expires_at": expires_at, "moderator": moderator,
            "attached": attached, "moderate_url": web_links.moderate(app.settings, token),
        }, reply_to=confirm)
        attach_original(notice, original if attached else None)
        made.append(Notice(TokenKind.moderate, moderator, token, notices.finalise(notice, lv),
                           str(notice["Message-ID"])))
    return made


def for_poster(app: App, ml: MailingList, held: HeldMessage, inbound: InboundMessage,
               msg: EmailMessage, now: dt.datetime) -> Notice | None:
    """The poster's notice that the post awaits moderation; None for auto-senders and the
    list's own addresses (the daily limit is counted when it is written)."""
    poster = replies.from_address(msg)
    if not poster or replies.is_auto_reply(msg, inbound.mail_from):
        return None
    if is_list_address(ml, poster) or is_list_address(ml, inbound.mail_from):
        return None
    lv = ListView.of(ml)
    token = tokens.new_token()
    confirm = lv.sub("confirm", token)
    notice = notices.build_notice(app, lv, "notice/user/held.txt.j2", poster, {
        "held": held, "token": token, "confirm_address": confirm,
        "cancel_link": mailto(confirm, f"Re: confirm {token}", "cancel"),
        "cancel_url": web_links.confirm(app.settings, token),
        "expires_at": now + tokens.lifetime(app),
        "looks_like_command": any(r.startswith(rules.COMMAND_REASON) for r in held.reasons),
    }, reply_to=confirm, in_reply_to=inbound.message_id or None,
        auto_submitted="auto-replied")
    return Notice(TokenKind.cancel_post, poster, token, notices.finalise(notice, lv),
                  str(notice["Message-ID"]))


def is_list_address(ml: MailingList, address: str) -> bool:
    """Is ``address`` one of the list's own addresses (NAME@, NAME-owner@, NAME-bounces+x@...)?"""
    from listserv.core import addresses

    return any(r.list_address == ml.address for r in addresses.route_candidates(address or ""))
