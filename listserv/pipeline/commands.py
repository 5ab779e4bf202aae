"""Email commands: -request, -join, -leave (and -leave+TOKEN), -confirm+TOKEN.

    handle_mail(session, app, inbound, msg) -> None
is called by the incoming worker for every message to those sub-addresses.

Who may act: the address in the From header (normalised). The envelope sender is not compared:
forwarding, SRS and provider bounce addresses make it differ from From for ordinary people; the
token itself (160 random bits, sent only to that address) is the credential, and with
``moderation.require_authenticated_replies`` the From domain must also be DKIM-authenticated.
Automatic mail (RFC 3834 Auto-Submitted other than "no", Precedence bulk/junk/list, a null
reverse-path) and mail from the list's own addresses is never acted on and never answered.
Anything else we cannot act on gets the help text (rate-limited per address per day).
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Mapping

from sqlalchemy.orm import Session

from listserv.pipeline import archive_commands as archive_access
from listserv.core import ratelimit, tokens
from listserv.delivery import unsubscribe
from listserv.message import replies
from listserv.pipeline import modlog, moderation, modreply, request_words, subscriptions
from listserv.core.addresses import parse_from
from listserv.core.app import App, site_secret
from listserv.core.models import (
    Decision,
    HeldMessage,
    InboundMessage,
    InboundState,
    MailingList,
    PendingToken,
    TokenKind,
)
from listserv.delivery.notices import build_notice, send_notice
from listserv.pipeline.subscriptions import Result
from listserv.core.views import ListView

log = logging.getLogger(__name__)

MAX_COMMANDS = 5
REQUEST_WORDS = {"help", "subscribe", "join", "unsubscribe", "leave", "confirm", "set",
                 "index", "get", "log", "end", "stop"}
SUBJECT_TOKEN_RE = re.compile(r"\bconfirm\s+([A-Za-z0-9]{16,})\b", re.IGNORECASE)


@dataclass
class Mail:
    """One command mail being handled."""

    session: Session
    app: App
    ml: MailingList
    inbound: InboundMessage
    msg: EmailMessage
    sender: str
    raw: bytes | None = None     # the spooled bytes, when the caller has them already

    @property
    def lv(self) -> ListView:
        return ListView.of(self.ml)


def handle_mail(session: Session, app: App, inbound: InboundMessage, msg: EmailMessage,
                raw: bytes | None = None) -> None:
    ml = session.get_one(MailingList, inbound.list_id)
    inbound.state = InboundState.handled
    if replies.is_auto_reply(msg, inbound.mail_from):
        inbound.outcome = "ignored: automatic mail"
        return
    sender = replies.from_address(msg)
    if not sender:
        inbound.outcome = "ignored: no usable From address"
        return
    if moderation.is_list_address(ml, sender) or moderation.is_list_address(ml,
                                                                             inbound.mail_from):
        inbound.outcome = "ignored: mail from the list itself"
        return
    mail = Mail(session, app, ml, inbound, msg, sender, raw)
    sub = inbound.subaddress
    if sub == "confirm":
        token = inbound.extra or token_in_subject(str(msg.get("Subject", "") or ""))
        result = confirm(mail, token, replies.command_lines(msg))
        if result.mail_needed or result.help:
            kind = "help" if result.help else "results" if result.already else None
            answer(mail, [("", result)], kind=kind)
        inbound.outcome = result.text[:500]
    elif sub == "leave" and inbound.extra and (member := unsubscribe.find_for_list(
            session, site_secret(session), inbound.extra, ml.id)) is not None:
        # NAME-leave+TOKEN@ from a member's own copy (RFC 8058's mailto): the token is the
        # credential, so the member is removed at once (from the list whose membership
        # brought them the post) and told so.
        inbound.outcome = subscriptions.unsubscribe_now(
            session, app, member.mailing_list, member.address.email).text[:500]
    elif sub in ("join", "leave"):
        display_name, _ = parse_from(str(msg.get("From", "")))
        result = (subscriptions.join(session, app, ml, sender, display_name) if sub == "join"
                  else subscriptions.leave(session, app, ml, sender))
        if result.mail_needed:
            answer(mail, [(sub, result)], kind="status")
        inbound.outcome = result.text[:500]
    elif sub == "request":
        inbound.outcome = request(mail)[:500]
    else:
        inbound.outcome = f"ignored: not a command address ({sub})"
    log.info("list_id=%s message_id=%s %s from %s: %s", ml.list_id, inbound.message_id, sub,
             sender, inbound.outcome)


def token_in_subject(subject: str) -> str:
    """The token of a reply that reached the bare -confirm address (a front MTA that drops
    the +TOKEN extension): our notices also carry '(confirm TOKEN)' in their Subject."""
    m = SUBJECT_TOKEN_RE.search(subject)
    return m.group(1) if m else ""


# ---------------------------------------------------------------------------- answers


def answer(mail: Mail, results: list[tuple[str, Result]], *, kind: str | None,
           reply_to: str | None = None) -> bool:
    """Mail the results (and help text when asked for or needed) to the sender.
    ``kind`` names the daily rate limit to apply (None: not limited)."""
    if kind and not ratelimit.allow(mail.session, mail.app, mail.ml.id, mail.sender, kind):
        return False
    show_help = any(r.help for _, r in results)
    lv = mail.lv
    subject = replies.strip_reply_prefix(str(mail.msg.get("Subject", "") or ""))
    notice = build_notice(mail.app, lv, "notice/user/results.txt.j2", mail.sender, {
        "results": [(cmd, r.text) for cmd, r in results], "show_help": show_help,
        "original_subject": subject, "request_address": lv.sub("request"),
    }, in_reply_to=mail.inbound.message_id or None, auto_submitted="auto-replied",
        reply_to=reply_to)
    send_notice(mail.session, mail.app, lv, notice, [mail.sender])
    return True


def _help(text: str) -> Result:
    return Result(text, help=True)


# ---------------------------------------------------------------------------- -confirm


def confirm(mail: Mail, token_text: str, lines: list[str], *,
            from_request: bool = False) -> Result:
    """A reply to NAME-confirm+TOKEN@ (or a 'confirm TOKEN' command)."""
    session, app, ml = mail.session, mail.app, mail.ml
    row = tokens.lookup(session, token_text)
    if row is None or row.list_id != ml.id:
        return _help("The confirmation token is unknown or has expired: nothing was done.")
    if not hmac.compare_digest(row.email.encode(), mail.sender.encode()):
        return _help("That confirmation was not sent to your address: nothing was done.")
    if row.used_at is not None:
        return Result(_already(session, row), already=True)
    if tokens.is_expired(app, row):
        return _help("The confirmation token has expired: nothing was done.")
    if row.kind in (TokenKind.moderate, TokenKind.approve_subscription) \
            and app.settings.moderation.require_authenticated_replies \
            and not _authenticated(mail):
        return _help("Your reply is not authenticated (no valid DKIM signature of your "
                     "domain): nothing was done.")
    if row.kind is TokenKind.moderate:
        if from_request:
            return _help("Reply to the moderation notice itself with approve, reject or "
                         "discard.")
        return _moderate(mail, row, token_text)
    if row.kind is TokenKind.cancel_post:
        if from_request:
            return _help("To withdraw your post, reply to the notice with the word 'cancel'.")
        return _poster_reply(mail, row, token_text)
    if row.kind in subscriptions.CONFIRM_KINDS:
        return subscriptions.confirm(session, app, ml, row, mail.sender, lines,
                                     subject=str(mail.msg.get("Subject", "") or ""))
    return _help("This token cannot be used here.")


def _already(session: Session, row: PendingToken) -> str:
    if row.held_id is not None:
        held = session.get(HeldMessage, row.held_id)
        if held is not None and held.decision is not None:
            return f"Already handled: {moderation.Outcome(held, False).describe()}."
    return f"Already handled by {row.used_by or 'someone else'}."


def _authenticated(mail: Mail) -> bool:
    settings = mail.app.settings.moderation
    data = mail.raw
    if data is None:
        try:
            data = mail.app.spool.get(mail.inbound.spool_sha)
        except OSError:
            return False
    return replies.authenticated(data, mail.msg, mail.sender,
                                 authserv_id=settings.trusted_authserv_id,
                                 resolve_txt=mail.app.resolve_txt)


def _reply(mail: Mail, words: Mapping[str, Decision]) -> modreply.Reply:
    return modreply.parse(replies.body_text(mail.msg, reply=True), words,
                          subject=str(mail.msg.get("Subject", "") or ""))


def _moderate(mail: Mail, row: PendingToken, token_text: str) -> Result:
    reply = _reply(mail, modreply.MODERATOR_WORDS)
    if reply.decision is None:
        return _no_command(mail, row, token_text, reply.line)
    return _decide(mail, row, reply.decision, reply.reason or None)


def _held_of(mail: Mail, row: PendingToken) -> HeldMessage:
    assert row.held_id is not None
    return mail.session.get_one(HeldMessage, row.held_id)


def _no_command(mail: Mail, row: PendingToken, token_text: str, line: str) -> Result:
    """A moderator's reply without a command word: say which line was read and keep the
    notice's Reply-To, so that replying to this answer works (rate-limited per day)."""
    text = f"no command in the first typed line: {line!r}" if line else "no command: empty reply"
    if not ratelimit.allow(mail.session, mail.app, mail.ml.id, mail.sender, "retry"):
        return Result(text + " (not answered: daily limit)", mail_needed=False)
    lv = mail.lv
    token = tokens.normalise(token_text) or token_text
    confirm_address = lv.sub("confirm", token)
    notice = build_notice(mail.app, lv, "notice/moderator/no-command.txt.j2", mail.sender, {
        "held": _held_of(mail, row), "line": line, "token": token,
        "confirm_address": confirm_address,
    }, reply_to=confirm_address, in_reply_to=mail.inbound.message_id or None,
        auto_submitted="auto-replied")
    send_notice(mail.session, mail.app, lv, notice, [mail.sender])
    return Result(text, mail_needed=False)


def _poster_reply(mail: Mail, row: PendingToken, token_text: str) -> Result:
    """The poster answered their "awaits moderation" notice: 'cancel' withdraws the post,
    anything else is passed to the moderators as a note about the held post."""
    reply = _reply(mail, modreply.POSTER_WORDS)
    if reply.decision is Decision.cancel:
        return _decide(mail, row, Decision.cancel, None)
    held = _held_of(mail, row)
    if not reply.text.strip():
        return _help("To withdraw your post, reply to the notice with the word 'cancel'.")
    if not ratelimit.allow(mail.session, mail.app, mail.ml.id, mail.sender, "note"):
        return Result("note to the moderators not passed on: daily limit", mail_needed=False)
    recipients = moderation.note_to_moderators(mail.session, mail.app, mail.ml, held,
                                               mail.sender, reply.text)
    token = tokens.normalise(token_text) or token_text
    text = (f"Your message was passed to the moderators of {mail.ml.address} as a note about "
            f"your held post ({held.subject!r}); they decide whether it is posted. To "
            "withdraw the post instead, reply to this message with the word 'cancel'.")
    if not recipients:
        text = (f"{mail.ml.address} has no moderators to pass your message to; your post "
                "stays held. To withdraw it, reply to this message with the word 'cancel'.")
    answer(mail, [("", Result(text))], kind=None, reply_to=mail.lv.sub("confirm", token))
    return Result(f"note from the poster passed to {len(recipients)} moderator(s)",
                  mail_needed=False)


def _decide(mail: Mail, row: PendingToken, decision: Decision, reason: str | None) -> Result:
    assert row.held_id is not None
    outcome = moderation.decide(mail.session, mail.app, row.held_id, decision,
                                actor=mail.sender, via="email", reason=reason)
    held = outcome.held
    if not outcome.won:
        return Result(f"Already handled: {outcome.describe()}.", already=True)
    what = moderation.PAST[decision]
    text = f"Held message {held.id} from {held.sender} ({held.subject!r}) {what}."
    if decision is Decision.reject and reason:
        text += f" Reason given to the poster: {reason}"
    return Result(text)


# ---------------------------------------------------------------------------- -request


MAX_UNKNOWN = 2          # unknown command lines answered before the rest is taken as prose


def parse_request(msg: EmailMessage) -> list[str]:
    """Command lines: the Subject when it is one (or names 'confirm TOKEN' anywhere), then
    typed body lines (quotes and signature skipped) up to the first line of prose, at most
    MAX_COMMANDS, duplicates dropped. Short unknown lines are kept (answered by name), at most
    MAX_UNKNOWN of them."""
    candidates: list[str] = []
    subject = replies.strip_reply_prefix(str(msg.get("Subject", "") or ""))
    if subject and replies.first_word(subject) in REQUEST_WORDS:
        candidates.append(subject)
    elif token_in_subject(subject):
        candidates.append(f"confirm {token_in_subject(subject)}")
    unknown = 0
    for line in replies.command_lines(msg):
        if replies.first_word(line) not in REQUEST_WORDS:
            if not request_words.looks_like_command(line) or unknown >= MAX_UNKNOWN:
                break
            unknown += 1
        candidates.append(line)
    out: list[str] = []
    for line in candidates:
        if replies.first_word(line) in ("end", "stop"):
            break
        if line.lower() not in (seen.lower() for seen in out):
            out.append(line)
        if len(out) >= MAX_COMMANDS:
            break
    return out


def unknown_command(line: str) -> Result:
    """'unknown command: who', with the nearest command we have when there is one."""
    word = replies.first_word(line)
    name = " ".join(line.split()[:3]) if word == "set" else word
    text = f"unknown command: {name[:80]}"
    near = request_words.nearest(line)
    if near:
        text += f" (the nearest command here is: {near})"
    return Result(text)


def request(mail: Mail) -> str:
    commands = parse_request(mail.msg)
    if not commands:
        answer(mail, [("(no command)", _help("No command found in your message."))],
               kind="help")
        return "no command: help sent"
    results = [(line, run_command(mail, line)) for line in commands]
    known = any(replies.first_word(line) in REQUEST_WORDS for line in commands)
    if not known:       # nothing we understood: the answer also lists the commands
        results = [(line, Result(r.text, help=True)) for line, r in results]
    if any(r.mail_needed for _, r in results):
        answer(mail, results, kind="results" if known else "help")
    return "; ".join(f"{c}: {r.text}" for c, r in results)


def run_command(mail: Mail, line: str) -> Result:
    session, app, ml = mail.session, mail.app, mail.ml
    words = line.split()
    word = replies.first_word(line)
    if word == "help":
        return Result("The commands are listed below.", help=True)
    if word in ("subscribe", "join"):
        display_name, _ = parse_from(str(mail.msg.get("From", "")))
        return subscriptions.join(session, app, ml, mail.sender, display_name)
    if word in ("unsubscribe", "leave"):
        return subscriptions.leave(session, app, ml, mail.sender)
    if word == "confirm":
        if len(words) < 2:
            return _help("confirm needs the token: confirm TOKEN")
        return confirm(mail, words[1].strip("<>.,:;"), [], from_request=True)
    if word == "set":
        if len(words) == 3 and words[1].lower() == "delivery" \
                and words[2].lower() not in ("on", "off"):
            trusted = app.settings.moderation.require_authenticated_replies \
                and _authenticated(mail)
            return subscriptions.set_delivery(session, app, ml, mail.sender, words[2],
                                              confirmed=trusted)
        if len(words) >= 2:
            return unknown_command(line)
        return _help("Usage: set delivery regular|mime-digest|plain-digest|nomail")
    if word in ("index", "get"):
        return archive_access.command(mail, word, words[1:])
    if word == "log":
        return modlog.command(mail)
    return unknown_command(line)
