"""The posting rules: an ordered tuple of small functions over a RuleContext snapshot.

Each rule looks at the snapshot and returns a Hit (action + reason) or None. Evaluation goes
down RULES in order: a hit whose action is discard or reject is a *gate* and decides at once;
hold hits are all collected so that moderators see every reason; accept means "no objection".
No rule touches the database: build_context() takes the snapshot first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listserv.core import addresses, network, senders
from listserv.message import replies, untrusted
from listserv.core.models import (
    Action,
    Address,
    InboundMessage,
    InboundState,
    MailingList,
    Membership,
    Role,
    SenderHeaders,
)

@dataclass(frozen=True)
class RuleContext:
    """Everything the rules may look at, taken from the list, the message and the sender."""

    list_address: str              # NAME@DOMAIN
    list_id: str                   # RFC 2919 NAME.DOMAIN
    mail_from: str                 # envelope sender, '' for the null reverse-path
    sender: str                    # the From: (or Sender:) address that matched, lower case
    roles: frozenset[Role]         # the sender's roles in this list
    moderated: bool                # the sender's member subscription is flagged moderated
    list_ids: tuple[str, ...]      # List-Id header values
    x_loops: tuple[str, ...]       # X-Loop header values
    auto_submitted: str            # Auto-Submitted header value, lower case
    precedence: str                # Precedence header value, lower case
    recipients: tuple[str, ...]    # addresses in To: and Cc:
    size: int                      # bytes
    max_message_size: int          # the list's setting (0 = no list limit)
    emergency: bool
    nonmember_action: Action
    member_action: Action
    subject: str = ""              # decoded Subject
    body_head: tuple[str, ...] = ()  # the first non-blank, non-quoted lines of the text body
    administrivia: bool = True
    max_recipients: int = 0        # 0 = no limit
    relayed_by: str = ""           # a remote list this list accepts posts from (its copy)
    banned_by: str = ""            # the list's ban pattern that a sender address matches
    sender_rule: senders.SenderRule | None = None   # per-address non-member action
    automatic_action: Action = Action.hold
    sender_problem: str = ""       # why the From names nobody (ambiguous, unparseable...)
    recent_posts: int = 0          # the sender's earlier posts to the list in FLOOD_WINDOW
    sender_post_limit: int = 0     # 0 = no limit
    repeats_post: str = ""         # Message-ID of an accepted post with the same text

    @property
    def is_member(self) -> bool:
        return bool(self.roles)

    @property
    def is_privileged(self) -> bool:
        return bool(self.roles & {Role.owner, Role.moderator})

    @property
    def is_auto(self) -> bool:
        """Mail from a machine (RFC 3834 and friends): never answered automatically."""
        return replies.automatic_reason(self.mail_from, self.auto_submitted,
                                        self.precedence) is not None


@dataclass(frozen=True)
class Hit:
    action: Action
    reason: str


@dataclass(frozen=True)
class Verdict:
    action: Action
    reasons: tuple[str, ...] = ()


Rule = Callable[[RuleContext], "Hit | None"]


def _bracketed(value: str) -> str:
    value = value.strip()
    if "<" in value and ">" in value.split("<", 1)[1]:
        return value.split("<", 1)[1].split(">", 1)[0].strip().lower()
    return value.lower()


# ---------------------------------------------------------------------------- gate rules


def loop(ctx: RuleContext) -> Hit | None:
    """Our own List-Id or X-Loop is already on the message: it came back to us."""
    if any(_bracketed(v) == ctx.list_id for v in ctx.list_ids):
        return Hit(Action.discard, f"loop: message already carries List-Id <{ctx.list_id}>")
    if any(_bracketed(v) == ctx.list_address for v in ctx.x_loops):
        return Hit(Action.discard, f"loop: message already carries X-Loop {ctx.list_address}")
    return None


def banned(ctx: RuleContext) -> Hit | None:
    """A banned sender's posts are dropped without a word."""
    if ctx.banned_by:
        return Hit(Action.discard, f"sender {ctx.sender or ctx.mail_from} is banned "
                                   f"({ctx.banned_by})")
    return None


def automatic(ctx: RuleContext) -> Hit | None:
    """RFC 3834 auto-replies, bulk mail and bounces: held for the moderators (the sender, a
    machine, is never told), or discarded when the list's automatic_action says so. A copy
    relayed by a list this list accepts (listserv.core.network.relaying_list) carries that list's
    Precedence: list and is a post all the same."""
    precedence = "" if ctx.relayed_by else ctx.precedence
    reason = replies.automatic_reason(ctx.mail_from, ctx.auto_submitted, precedence)
    if reason is None:
        return None
    action = Action.discard if ctx.automatic_action is Action.discard else Action.hold
    return Hit(action, reason)


# ---------------------------------------------------------------------------- hold rules


def emergency(ctx: RuleContext) -> Hit | None:
    if ctx.emergency:
        return Hit(Action.hold, "the list is in emergency moderation")
    return None


def max_size(ctx: RuleContext) -> Hit | None:
    if ctx.max_message_size and ctx.size > ctx.max_message_size:
        return Hit(Action.hold, f"message size {ctx.size} bytes exceeds the list limit of "
                                f"{ctx.max_message_size} bytes")
    return None


FLOOD_WINDOW = dt.timedelta(minutes=10)
REPEAT_WINDOW = dt.timedelta(hours=1)


def flood(ctx: RuleContext) -> Hit | None:
    """More than sender_post_limit posts from one sender in FLOOD_WINDOW: a loop (an
    auto-responder without RFC 3834 headers, with reply_to list) or a flood."""
    if ctx.sender_post_limit and ctx.recent_posts >= ctx.sender_post_limit:
        minutes = int(FLOOD_WINDOW.total_seconds() // 60)
        return Hit(Action.hold, f"too many posts: {ctx.recent_posts + 1} from "
                                f"{ctx.sender or ctx.mail_from} in {minutes} minutes (the "
                                f"list holds more than {ctx.sender_post_limit})")
    return None


def repeated_text(ctx: RuleContext) -> Hit | None:
    """The same text the same sender posted within REPEAT_WINDOW (a loop, a resend)."""
    if ctx.repeats_post:
        return Hit(Action.hold, f"same text as {ctx.repeats_post}, posted by the same sender "
                                "less than an hour ago")
    return None


# Email commands and how many words may follow them (as the -request parser takes them).
COMMAND_ARGS = {"subscribe": 2, "unsubscribe": 1, "join": 0, "leave": 0, "help": 0,
                "confirm": 1, "set": 2, "signoff": 1, "remove": 1}
BODY_LINES_CHECKED = 5
_REPLY_MARK = re.compile(r"^((re|aw|sv|fwd?|wg)(\[\d+\])?\s*:\s*)+", re.IGNORECASE)


def looks_like_command(line: str) -> bool:
    words = _REPLY_MARK.sub("", line.strip()).split()
    if not words:
        return False
    first = words[0].lower().rstrip(":")
    return first in COMMAND_ARGS and len(words) - 1 <= COMMAND_ARGS[first]


COMMAND_REASON = "looks like an email command"


def administrivia(ctx: RuleContext) -> Hit | None:
    """A 'subscribe'/'unsubscribe'/'help' sent to the whole list instead of -request@."""
    if not ctx.administrivia:
        return None
    for line in (ctx.subject, *ctx.body_head[:BODY_LINES_CHECKED]):
        if looks_like_command(line):
            name, _, domain = ctx.list_address.rpartition("@")
            request = addresses.subaddress(name, domain, addresses.REQUEST)
            return Hit(Action.hold, f"{COMMAND_REASON} ({line.strip()[:40]!r}) "
                                    f"meant for {request}")
    return None


def max_recipients(ctx: RuleContext) -> Hit | None:
    count = len(set(ctx.recipients))
    if ctx.max_recipients and count >= ctx.max_recipients:
        return Hit(Action.hold, f"too many recipients: {count} addresses in To and Cc "
                                f"(the list holds posts with {ctx.max_recipients} or more)")
    return None


def _by_action(action: Action, who: str, refusal: str) -> Hit | None:
    """The hit for a sender whose posts the list treats with ``action``."""
    if action is Action.accept:
        return None
    reasons = {Action.hold: f"post by {who}", Action.reject: refusal,
               Action.discard: f"post by {who} discarded"}
    return Hit(action, reasons[action])


def nonmember(ctx: RuleContext) -> Hit | None:
    """The list's nonmember_action, unless a per-address sender rule decides first."""
    if ctx.is_member:
        return None
    if ctx.sender_problem:            # nobody to reject or to tell: a person decides
        return Hit(Action.hold, f"post by non-member: {ctx.sender_problem}")
    who = ctx.sender or ctx.mail_from or "unknown sender"
    if ctx.sender_rule is not None:
        return _by_action(ctx.sender_rule.action,
                          f"non-member {who} (sender rule {ctx.sender_rule.pattern})",
                          f"{who} may not post to {ctx.list_address}")
    return _by_action(ctx.nonmember_action, f"non-member {who}",
                      f"non-members may not post to {ctx.list_address}")


def moderated_member(ctx: RuleContext) -> Hit | None:
    if not ctx.is_member or ctx.is_privileged or not ctx.moderated:
        return None
    return _by_action(ctx.member_action, f"moderated member {ctx.sender}",
                      f"{ctx.sender} may not post to {ctx.list_address}")


def implicit_destination(ctx: RuleContext) -> Hit | None:
    if ctx.list_address in ctx.recipients or ctx.relayed_by in ctx.recipients:
        return None
    return Hit(Action.hold, f"implicit destination: {ctx.list_address} is in neither To nor Cc")


RULES: tuple[Rule, ...] = (
    loop,
    banned,
    automatic,
    emergency,
    max_size,
    flood,
    repeated_text,
    administrivia,
    max_recipients,
    nonmember,
    moderated_member,
    implicit_destination,
)

GATES = (Action.discard, Action.reject)


def evaluate(ctx: RuleContext, rules: tuple[Rule, ...] = RULES) -> Verdict:
    """Run the rules in order: a gate hit decides alone; every hold reason is collected."""
    holds: list[str] = []
    for rule in rules:
        hit = rule(ctx)
        if hit is None:
            continue
        if hit.action in GATES:
            return Verdict(hit.action, (hit.reason,))
        if hit.action is Action.hold:
            holds.append(hit.reason)
    if holds:
        return Verdict(Action.hold, tuple(holds))
    return Verdict(Action.accept)


# ---------------------------------------------------------------------------- snapshot


def _values(msg: EmailMessage, name: str) -> tuple[str, ...]:
    try:
        return tuple(str(v) for v in (msg.get_all(name) or []))
    except Exception:
        return ()


def _first(msg: EmailMessage, name: str) -> str:
    values = _values(msg, name)
    return values[0].strip().lower() if values else ""


def _sender_roles(session: Session, ml: MailingList,
                  candidates: list[str]) -> tuple[str, frozenset[Role], bool]:
    """The first candidate address with any role in the list, its roles, moderated flag."""
    for email in candidates:
        rows = session.execute(select(Membership.role, Membership.moderated).join(Address).where(
            Membership.list_id == ml.id, Address.email == email)).all()
        if rows:
            roles = frozenset(r.role for r in rows)
            moderated = any(r.moderated for r in rows if r.role is Role.member)
            return email, roles, moderated
    return (candidates[0] if candidates else ""), frozenset(), False


def build_context(session: Session, ml: MailingList, inbound: InboundMessage,
                  msg: EmailMessage) -> RuleContext:
    sender, problem = replies.sender_address(msg)
    candidates = [sender] if sender else []
    if ml.sender_headers is SenderHeaders.from_sender:
        also = [replies.sender_address(msg, "Sender")[0], inbound.mail_from.lower()]
        candidates += [a for a in also if a and a not in candidates]
    # A ban is matched against every identity the message claims (From, Sender, envelope),
    # whatever sender_headers allows for membership.
    identities = [*candidates, replies.sender_address(msg, "Sender")[0],
                  (inbound.mail_from or "").lower()]
    banned_by = senders.first_match(senders.ban_patterns(session, ml.id),
                                    [a for a in dict.fromkeys(identities) if a]) or ""
    sender, roles, moderated = _sender_roles(session, ml, candidates)
    relayed_by = network.relaying_list(session, ml, inbound.mail_from or "",
                                       _values(msg, "List-Id"))
    if not roles and relayed_by:
        sender, roles = relayed_by, frozenset({Role.member})
    elif not roles and ml.included_members_can_post:
        found = network.included_member(session, ml.id, candidates)
        if found is not None:
            sender, moderated = found
            roles = frozenset({Role.member})
    sender_rule = (None if roles else
                   senders.action_for(senders.sender_rules(session, ml.id), candidates,
                                      senders.list_member_check(session)))
    if roles:
        problem = None
    try:
        recipients = tuple(addresses.all_addresses(*_values(msg, "To"), *_values(msg, "Cc")))
    except Exception:
        recipients = ()
    return RuleContext(
        list_address=ml.address.lower(), list_id=ml.list_id.lower(),
        mail_from=inbound.mail_from or "", sender=sender, roles=roles, moderated=moderated,
        list_ids=_values(msg, "List-Id"), x_loops=_values(msg, "X-Loop"),
        auto_submitted=replies.header_word(_first(msg, "Auto-Submitted")),
        precedence=replies.header_word(_first(msg, "Precedence")),
        recipients=recipients, size=inbound.size, max_message_size=ml.max_message_size,
        emergency=ml.emergency, nonmember_action=ml.nonmember_action,
        member_action=ml.member_action, subject=_subject(msg), body_head=_body_head(msg),
        administrivia=ml.administrivia, max_recipients=ml.max_recipients,
        automatic_action=ml.automatic_action, sender_problem=problem or "",
        sender_post_limit=ml.sender_post_limit, relayed_by=relayed_by, banned_by=banned_by,
        sender_rule=sender_rule,
        **_history(session, inbound))


def body_digest(msg: EmailMessage) -> str | None:
    """SHA-256 of a post's text, whitespace collapsed; None when it has no text."""
    try:
        text = " ".join(replies.body_text(msg).split())
    except Exception:  # noqa: BLE001 - hostile structure: no text to compare
        return None
    if not text:
        return None
    return hashlib.sha256(untrusted.clean_text(text).encode("utf-8")).hexdigest()


def _history(session: Session, inbound: InboundMessage) -> dict[str, Any]:
    """The sender's recent posts to the list: how many in FLOOD_WINDOW, and an accepted one
    with the same text (inbound.body_sha) within REPEAT_WINDOW."""
    sender = inbound.from_addr
    if not sender:
        return {}
    I = InboundMessage
    mine = (I.list_id == inbound.list_id, I.from_addr == sender, I.id < inbound.id,
            I.subaddress == addresses.POST, I.received_at <= inbound.received_at)
    recent = session.scalar(select(func.count(I.id)).where(
        *mine, I.received_at >= inbound.received_at - FLOOD_WINDOW,
        I.state != InboundState.failed)) or 0
    repeats = ""
    if inbound.body_sha:
        repeats = session.scalar(select(I.message_id).where(
            *mine, I.received_at >= inbound.received_at - REPEAT_WINDOW,
            I.body_sha == inbound.body_sha, I.state == InboundState.accepted,
            I.message_id != inbound.message_id).limit(1)) or ""    # that is a duplicate
    return {"recent_posts": recent, "repeats_post": repeats}


def _subject(msg: EmailMessage) -> str:
    try:
        return untrusted.one_line(msg.get("Subject", "") or "", 998)
    except Exception:
        return ""


def _body_head(msg: EmailMessage, n: int = BODY_LINES_CHECKED) -> tuple[str, ...]:
    """The first ``n`` non-blank lines of the text/plain body that are not quoted."""
    try:
        part = msg.get_body(preferencelist=("plain",))
        text = part.get_content() if part is not None else ""
    except Exception:
        return ()
    lines: list[str] = []
    for line in str(text).splitlines():
        if line.rstrip() == "--":
            break                       # signature
        if line.strip() and not line.lstrip().startswith(">"):
            lines.append(untrusted.clean_text(line).replace("\x00", " "))
            if len(lines) >= n:
                break
    return tuple(lines)
