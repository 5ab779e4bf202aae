"""Pure message transforms for a post.

    prepare(msg, lst, *, resolve_txt) -> EmailMessage
        Deep-copies ``msg`` and runs PREPARE_STEPS in order: cleanse, DMARC mitigation, strip
        inbound DKIM, subject prefix, Reply-To, List-* headers + Precedence. The result is what
        the archive and the digests store.
    decorate(msg, lst, footer) -> EmailMessage
        Adds the rendered footer MIME-correctly (at delivery preparation, before signing); see
        listserv/message/decorate.py.

No DB, no clock, no network: DNS comes in as the ``resolve_txt`` function
(``name -> list of TXT strings``, ``[]`` when there is none).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Callable

from listserv.message import dmarc, headers, lines
from listserv.message.decorate import decorate
from listserv.message.dmarc import set_header
from listserv.core.models import ReplyTo
from listserv.core.views import ListView

__all__ = ["prepare", "decorate", "PREPARE_STEPS", "Context", "prefixed_subject"]

Resolver = Callable[[str], list[str]]


@dataclass(frozen=True)
class Context:
    """What a prepare step may use besides the message and the list."""

    resolve_txt: Resolver


Step = Callable[[EmailMessage, ListView, Context], EmailMessage]

# Headers removed from every post (as Mailman's cleanse handler): moderator passwords, read- and
# delivery-receipt requests that would make every reader's client answer the poster, a stale
# Return-Path and a Bcc that must never be distributed.
CLEANSED_HEADERS = (
    "Approved", "Approve", "X-Approved", "X-Approve", "Urgent",
    "Return-Receipt-To", "Disposition-Notification-To", "X-Confirm-Reading-To", "X-PMRQC",
    "Return-Path", "Bcc",
)

# Headers we set on every list copy; any inbound instance (ours or an upstream list's) goes.
LIST_HEADERS = (
    "List-Id", "List-Post", "List-Help", "List-Subscribe", "List-Unsubscribe",
    "List-Unsubscribe-Post", "List-Owner", "List-Archive", "Precedence",
)

INBOUND_SIGNATURES = ("DKIM-Signature", "DomainKey-Signature")


# Fields RFC 5322 3.6 allows once. A second one (a broken mailer, or a spoofing attempt:
# clients show one From, DKIM verifies another) makes receivers such as Gmail refuse the
# message outright, and this list's DKIM signature ambiguous; each copy keeps the first.
SINGLE_FIELDS = ("Date", "From", "Sender", "Reply-To", "To", "Cc", "Message-ID",
                 "In-Reply-To", "References", "Subject")
_SINGLE = frozenset(n.lower() for n in SINGLE_FIELDS)


def cleanse(msg: EmailMessage, lst: ListView, ctx: Context) -> EmailMessage:
    for name in CLEANSED_HEADERS:
        del msg[name]
    seen: set[str] = set()
    kept = []
    for name, value in msg._headers:          # type: ignore[attr-defined]
        key = name.lower()
        if key in _SINGLE:
            if key in seen:
                continue                        # a later duplicate, where it was
            seen.add(key)
        kept.append((name, value))
    msg._headers = kept                       # type: ignore[attr-defined]
    return msg


def fit_lines(msg: EmailMessage, lst: ListView, ctx: Context) -> EmailMessage:
    """No body line longer than RFC 5322's 998 octets (listserv.message.lines)."""
    return lines.fit(msg)


def mitigate_dmarc(msg: EmailMessage, lst: ListView, ctx: Context) -> EmailMessage:
    return dmarc.mitigate(msg, lst, ctx.resolve_txt)


def strip_dkim(msg: EmailMessage, lst: ListView, ctx: Context) -> EmailMessage:
    """Inbound DKIM signatures break once we change Subject, body or List-* headers: remove
    them (ARC and Authentication-Results stay). A DMARC-wrapped original keeps its own."""
    for name in INBOUND_SIGNATURES:
        del msg[name]
    return msg


# Reply markers that collapse into one "Re:" (English, German, Scandinavian, Dutch, Polish,
# Turkish), optionally counted as "Re[2]:" / "Re^2:" / "Re(2):"; forward markers are kept.
_REPLY = r"re|aw|sv|vs|antw|odp|ynt"
_FORWARD = r"fwd?|wg|tr|enc|rv|doorst"
_MARKER = re.compile(rf"(?P<word>(?:(?P<reply>{_REPLY})|{_FORWARD})(?:\[\d+\]|\^\d+|\(\d+\))?)"
                     r"\s*[:\uff1a]\s*", re.IGNORECASE)
NO_SUBJECT = "(no subject)"


def prefixed_subject(subject: str, prefix: str) -> str:
    """``subject`` with ``prefix`` exactly once, in front (Mailman style):
    'Re: [dev] AW: hello' -> '[dev] Re: hello'; 'Fwd: [dev] x' -> '[dev] Fwd: x'.

    Every copy of the prefix (compared without surrounding blanks, case-insensitively) found in
    the leading run of reply/forward markers is removed, consecutive reply markers collapse to
    one 'Re:', and the prefix goes first. Text after that leading run is never touched.
    """
    tag = prefix.strip()
    rest = " ".join(subject.split())
    if not tag:
        return rest or subject
    markers: list[str] = []
    while rest:
        if rest[:len(tag)].lower() == tag.lower():
            rest = rest[len(tag):].lstrip()
            continue
        m = _MARKER.match(rest)
        if not m:
            break
        word = "Re:" if m.group("reply") else m.group("word") + ":"
        if not (word == "Re:" and markers and markers[-1] == "Re:"):
            markers.append(word)
        rest = rest[m.end():]
    if not rest and not markers:
        rest = NO_SUBJECT
    return prefix + " ".join(markers + ([rest] if rest else []))


def _decoded_subject(msg: EmailMessage) -> str:
    """The Subject as text. RFC 2047 words are decoded by the policy; raw 8-bit bytes (which
    the parser turns into U+FFFD) are recovered as UTF-8, else Windows-1252."""
    value = msg.get("Subject")
    if value is None:
        return ""
    text = str(value)
    if "\ufffd" in text:
        for name, raw in msg.raw_items():
            if (name.lower() == "subject" and isinstance(raw, str)
                    and re.search("[\udc80-\udcff]", raw)):
                data = raw.encode("utf-8", "surrogateescape")
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    text = data.decode("cp1252", "replace")
                text = re.sub(r"\r?\n[ \t]", " ", text)
                break
    return text


def add_subject_prefix(msg: EmailMessage, lst: ListView, ctx: Context) -> EmailMessage:
    prefix = lst.prefix
    if not prefix.strip():
        return msg
    old = _decoded_subject(msg)
    new = prefixed_subject(old, prefix)
    if new != old or len(msg.get_all("Subject", [])) != 1:
        set_header(msg, "Subject", headers.unstructured("Subject", new))
    return msg


def list_address(lst: ListView) -> Address:
    local, _, domain = lst.address.rpartition("@")
    return Address(display_name=lst.display_name or "", username=local, domain=domain)


def set_reply_to(msg: EmailMessage, lst: ListView, ctx: Context) -> EmailMessage:
    """reply_to=list: replies go to the list (a poster's own Reply-To is replaced);
    reply_to=poster: the message's Reply-To is left as it is."""
    if lst.reply_to is ReplyTo.list:
        set_header(msg, "Reply-To", list_address(lst))
    return msg


_ATOM_PHRASE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~ -]+$")


def list_id_value(lst: ListView) -> str:
    """RFC 2919: 'Display Name <name.domain>' (the phrase quoted when it needs it; a non-ASCII
    name is RFC 2047 encoded by the policy when the message is serialised)."""
    name = " ".join((lst.display_name or "").split())
    if not name:
        return f"<{lst.list_id}>"
    if not _ATOM_PHRASE.match(name) and name.isascii():
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{lst.list_id}>"


def list_headers(lst: ListView) -> list[tuple[str, str]]:
    """The RFC 2919/2369 headers of every list copy, in order. List-Unsubscribe names the
    list's web page when one is set, and the -leave address (members' own VERP'd copies get
    RFC 8058 one-click headers at delivery, listserv.delivery.unsubscribe); List-Archive for an
    archived list (archive != none): its web URL when one is set, else the -request address's
    'index' command."""
    leave = f"<mailto:{lst.sub('leave')}>"
    out = [
        ("List-Id", list_id_value(lst)),
        ("List-Post", f"<mailto:{lst.address}>"),
        ("List-Help", f"<mailto:{lst.sub('request')}?subject=help>"),
        ("List-Subscribe", f"<mailto:{lst.sub('join')}>"),
        ("List-Unsubscribe",
         f"<{lst.unsubscribe_url}>, {leave}" if lst.unsubscribe_url else leave),
        ("List-Owner", f"<mailto:{lst.owner}>"),
    ]
    if lst.archive_link:
        out.append(("List-Archive", f"<{lst.archive_link}>"))
    out.append(("Precedence", "list"))
    return out


def add_list_headers(msg: EmailMessage, lst: ListView, ctx: Context) -> EmailMessage:
    """Our List-* headers replace any upstream ones, except that the List-Id values of the
    lists a post already went through stay, after ours: the chain a list on another server
    needs to recognise its own post coming back (a loop)."""
    ours = lst.list_id.lower()
    upstream = [str(v) for v in (msg.get_all("List-Id") or [])
                if str(v).rpartition("<")[2].strip().rstrip(">").strip().lower() != ours]
    for name in LIST_HEADERS:
        del msg[name]
    for name, value in list_headers(lst):
        msg[name] = value
        if name == "List-Id":
            for previous in upstream:
                msg["List-Id"] = previous
    return msg


PREPARE_STEPS: tuple[Step, ...] = (
    cleanse,
    fit_lines,
    mitigate_dmarc,
    strip_dkim,
    add_subject_prefix,
    set_reply_to,
    add_list_headers,
)


def prepare(msg: EmailMessage, lst: ListView, *,
            resolve_txt: Resolver) -> EmailMessage:
    """A distributable copy of ``msg`` for ``lst``; ``msg`` itself is not changed."""
    ctx = Context(resolve_txt=resolve_txt)
    out = copy.deepcopy(msg)
    for step in PREPARE_STEPS:
        out = step(out, lst, ctx)
    return out
