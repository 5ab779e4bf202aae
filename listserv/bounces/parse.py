"""Pure bounce parsing: who bounced, and how (hard, soft, policy), from one message.

Order of evidence: an RFC 3464 DSN (message/delivery-status, per-recipient Action/Status/
Diagnostic-Code) first; then flufl.bounce's detectors for the non-standard formats of real MTAs
(Exim's X-Failed-Recipients, qmail's QSBMF, old Exchange and Sendmail texts...). Auto-replies
(RFC 3834 Auto-Submitted: auto-replied, X-Autoreply, vacation subjects) are recognised so they
are never mistaken for bounces. No database, clock or network here.
"""

from __future__ import annotations

import base64
import logging
import quopri
import re
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr
from typing import Iterable

from listserv.core.addresses import try_normalise
from listserv.core.models import BounceKind

log = logging.getLogger(__name__)
# flufl.bounce logs a traceback for every detector that chokes on a malformed message (the
# detectors run one by one, and hostile mail to -bounces makes several choke): the message
# is still classified, from its text, so those are not errors of the service.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
SMTP_CODE_RE = re.compile(r"(?<!\d)([245])\d\d(?:[ -]|$)")
POLICY_RE = re.compile(
    r"block\s?-?list|black\s?-?list|deny\s?-?list|spam|dnsbl|\brbl\b|\bdmarc\b|\bspf\b|\bdkim\b"
    r"|reputation|\bpolicy\b|\bpolicies\b|blocked\s+(?:using|by|for|because|due|from)"
    r"|listed\s+(?:at|in|on|by)\b|\bbanned\b|barracuda|\bjunk\b|unsolicited"
    r"|message\s+(?:was\s+)?blocked|content\s+rejected",
    re.IGNORECASE)
DELAY_RE = re.compile(r"\bdelayed\b|will\s+(?:be\s+)?retr|not\s+yet\s+been\s+delivered"
                      r"|still\s+(?:being\s+)?retr|warning\s+only|has\s+been\s+postponed",
                      re.IGNORECASE)
AUTO_SUBJECT_RE = re.compile(
    r"out\s+of\s+(?:the\s+)?office|\bvacation\b|\bauto(?:matic)?[- _]?(?:reply|response|"
    r"responder|antwort|matische\s+antwort)|\bautoreply\b|\babwesen|\babsence\b|"
    r"away\s+from\s+(?:my|the)\s+(?:desk|office|email|mail)|\bon\s+(?:annual\s+)?leave\b|"
    r"\bholiday\b|ausser\s+haus|au\s+bureau|r[ée]ponse\s+automatique|\bcong[ée]s\b|"
    r"abwesenheit|respuesta\s+autom[áa]tica|fuera\s+de\s+(?:la\s+)?oficina|"
    r"risposta\s+automatica|automatisch\s+antwoord|afwezig|resposta\s+autom[áa]tica",
    re.IGNORECASE)
BOUNCE_SUBJECT_RE = re.compile(
    r"undeliver|undelivered|delivery\s+(?:status\s+)?(?:notification|failure|failed|report|"
    r"problem)|returned\s+mail|failure\s+notice|mail\s+delivery\s+fail|could\s+not\s+be\s+"
    r"delivered|non[- ]?delivery|delivery\s+has\s+failed|returned\s+to\s+sender|"
    r"nicht\s+zustellbar|unzustellbar|non\s+remis|non\s+distribu|no\s+entregad|"
    r"non\s+recapitat|onbestelbaar|niet\s+bezorgd|delayed\s+mail|warning:\s+could\s+not\s+send",
    re.IGNORECASE)
DAEMON_LOCALS = ("mailerdaemon", "postmaster", "maildaemon")   # compared without - _ .
NOT_BOUNCE_REPORTS = ("feedback-report",)   # abuse reports (ARF, RFC 5965)
SYSTEM_LOCALS = ("mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "abuse",
                 "hostmaster", "root", "noc", "security", "post_master")
ADDRESS_RE = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*"
                        r"[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+")
HEADER_BLOCK_RE = re.compile(r"^(?:Received|Return-Path|DKIM-Signature|Message-ID|"
                             r"Delivered-To):", re.IGNORECASE | re.MULTILINE)
SENDER_LINE_RE = re.compile(
    r"[ \t>]*(?:from|sender|reply-to|return-path|mail\s+from|envelope-from|cc|bcc|"
    r"message-id|in-reply-to|references|x-original-from|original-sender)\b",
    re.IGNORECASE)
# Each run of blanks or marks can be matched one way only: a pattern with two runs that could
# share the same blanks (``[ \t]*[-=*_]*[ \t]*``) tries every split of a long blank line, and
# 20,000 spaces took 18 s.
ORIGINAL_MARKERS = re.compile(
    r"^[ \t]*(?:[-=*_]+[ \t]*)?(?:below\s+(?:this\s+line\s+)?is\s+a\s+copy|this\s+is\s+a\s+copy"
    r"\s+of|(?:the\s+)?original\s+message(?:[ \t]+(?:follows|below|headers))?[ \t]*"
    r"(?:[-=*_:]+[ \t]*)?$|original\s+message\s+follows|returned\s+mail\s+follows"
    r"|a\s+copy\s+of\s+the\s+original\s+message)"
    r"|^[ \t]*[-=*_]+[ \t]*(?:start\s+of\s+)?returned\s+(?:message|mail)",
    re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Failure:
    """One recipient a bounce names as failed or delayed."""

    email: str                      # preferred address (lower-case, validated)
    kind: BounceKind
    status: str = ""                # enhanced status code, e.g. 5.1.1
    diagnostic: str = ""
    source: str = "dsn"             # dsn | detector
    alternates: tuple[str, ...] = ()  # other addresses naming the same recipient

    @property
    def addresses(self) -> tuple[str, ...]:
        return (self.email, *self.alternates)


@dataclass(frozen=True)
class Report:
    failures: tuple[Failure, ...] = ()
    auto_reply: bool = False
    looks_like_bounce: bool = False
    success_dsn: bool = False       # a DSN that only reports delivered/relayed recipients
    text_kind: BounceKind = BounceKind.hard   # classification of the notification text
    text_status: str = ""
    text_diagnostic: str = ""
    guesses: tuple[Failure, ...] = ()  # addresses merely mentioned in a bounce's text


# ----------------------------------------------------------------------- classification


def find_status(*texts: str) -> str:
    """The first enhanced status code (x.y.z) in the texts, else one derived from an SMTP code."""
    for text in texts:
        if text and (mo := STATUS_RE.search(text)):
            return ".".join(mo.groups())
    for text in texts:
        if text and (mo := SMTP_CODE_RE.search(text)):
            return f"{mo.group(1)}.0.0"
    return ""


def is_policy(status: str, diagnostic: str) -> bool:
    """A refusal that is not the recipient's fault: x.7.x (policy), x.6.x (content), x.3.x
    (the receiving system, e.g. 5.3.4 message too big) or blocklist/spam words.

    Address-class statuses (x.1.x: no such user) always count as the recipient's own failure.
    """
    parts = status.split(".")
    if len(parts) == 3 and parts[1] in ("3", "6", "7"):
        return True
    if len(parts) == 3 and parts[1] == "1":
        return False
    return bool(POLICY_RE.search(diagnostic or ""))


def classify(action: str, status: str, diagnostic: str) -> BounceKind | None:
    """Kind of one DSN recipient block, or None when it reports success."""
    action = action.strip().lower()
    status = find_status(status) or find_status(diagnostic)
    if action.startswith(("delivered", "relayed", "expanded")):
        return None
    if action.startswith("delayed"):
        return BounceKind.soft
    if not action or not action.startswith(("fail", "error")):
        if status.startswith("2"):
            return None
        if status.startswith("4"):
            return BounceKind.soft
        if not status.startswith("5") and action:
            return None
    if is_policy(status, diagnostic):
        return BounceKind.policy
    return BounceKind.hard


def classify_text(text: str) -> tuple[BounceKind, str]:
    """Kind and status of a bounce known only by free text (VERP or detector context)."""
    status = find_status(text)
    if is_policy(status, text):
        return BounceKind.policy, status
    if status.startswith("4") or (not status.startswith("5") and DELAY_RE.search(text)):
        return BounceKind.soft, status
    return BounceKind.hard, status


def _clean(value: object) -> str:
    return " ".join(str(value or "").split())


def _address(value: str) -> str | None:
    """'rfc822; <User@Host>' (or '"user@host":' from a detector) -> 'user@host', validated."""
    value = _clean(value)
    _, semi, rest = value.partition(";")
    raw = (rest if semi else value).strip()
    _, addr = parseaddr(raw)
    addr = addr.strip().strip("<>").strip()
    if "@" not in addr or try_normalise(addr) is None:
        mo = ADDRESS_RE.search(raw)
        addr = mo.group(0) if mo else ""
    return try_normalise(addr) if "@" in addr else None


# ----------------------------------------------------------------------- DSN


def _status_blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    cte = str(part.get("content-transfer-encoding", "")).strip().lower()
    if isinstance(payload, list) and cte not in ("base64", "quoted-printable"):
        return [p for p in payload if isinstance(p, Message)]
    if isinstance(payload, list):
        # The parser read encoded text as header blocks: regenerate the body, then decode it.
        body = part.as_string().replace("\r\n", "\n").partition("\n\n")[2]
        try:
            data = body.encode("ascii", "replace")
            decoded = base64.b64decode(data) if cte == "base64" else quopri.decodestring(data)
            text = decoded.decode("utf-8", "replace")
        except ValueError:
            text = body
    else:
        raw = part.get_payload(decode=True)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload or "")
    text = text.replace("\r\n", "\n")
    parser = HeaderParser()
    return [parser.parsestr(block.strip("\n") + "\n")
            for block in re.split(r"\n[ \t]*\n", text) if block.strip()]


def parse_dsn(msg: Message) -> tuple[set[str], list[Failure]]:
    """(every recipient named, failures) from every message/delivery-status part."""
    found: set[str] = set()
    failures: list[Failure] = []
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        for block in _status_blocks(part):
            names = [_address(str(block.get(h, ""))) for h in
                     ("original-recipient", "final-recipient", "x-actual-recipient")]
            # Exchange may put an encapsulated X.500 name (IMCEAEX-...) in Original-Recipient.
            addrs = list(dict.fromkeys(a for a in names if a and not a.startswith("imcea")))
            if not addrs:
                continue
            found.update(addrs)
            diag = _clean(block.get("diagnostic-code", ""))
            dtype, semi, rest = diag.partition(";")
            diag = rest.strip() if semi and len(dtype) < 20 else diag
            status = find_status(_clean(block.get("status", ""))) or find_status(diag)
            kind = classify(_clean(block.get("action", "")), status, diag)
            if kind is None:
                continue
            failures.append(Failure(addrs[0], kind, status, diag[:1000], "dsn",
                                    tuple(addrs[1:])))
    return found, failures


# ----------------------------------------------------------------------- heuristics


def _leaf_texts(msg: Message) -> Iterable[str]:
    """Decoded text/plain leaves outside any attached message/rfc822."""
    stack: list[Message] = [msg]
    while stack:
        part = stack.pop(0)
        ctype = part.get_content_type()
        if part.is_multipart():
            if ctype == "message/rfc822" and part is not msg:
                continue
            payload = part.get_payload()
            if isinstance(payload, list):
                stack[0:0] = [p for p in payload if isinstance(p, Message)]
            continue
        if ctype == "text/plain" or (part is msg and part.get_content_maintype() == "text"):
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    yield raw.decode(charset, "replace")
                except LookupError:
                    yield raw.decode("utf-8", "replace")


def notification_text(msg: Message, limit: int = 20000) -> str:
    """The human-readable report of a bounce, without the returned original message."""
    text = "\n".join(_leaf_texts(msg))[:limit]
    if mo := ORIGINAL_MARKERS.search(text):
        text = text[:mo.start()]
    return text


def _context(text: str, address: str) -> str:
    """The paragraphs of the notification that mention ``address`` (at most three), each cut
    to the 400 characters before the address and the 600 after it: a report that is one long
    line would otherwise be classified whole once for every address in it."""
    low = text.lower()
    needle = address.lower()
    pieces: list[str] = []
    i = low.find(needle)
    while i >= 0 and len(pieces) < 3:
        end = low.find("\n\n", i + len(needle))
        end = min(len(text) if end < 0 else end, i + 600)
        start = max(low.rfind("\n", 0, i) + 1, i - 400)
        piece = " ".join(text[start:end].split())
        if piece not in pieces:
            pieces.append(piece)
        i = low.find(needle, end)
    return " | ".join(pieces)


def is_auto_reply(msg: Message) -> bool:
    auto = _clean(msg.get("auto-submitted", "")).lower()
    if auto.startswith("auto-replied"):
        return True
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder", "x-vacation"):
        if msg.get(name) is not None:
            return True
    if _clean(msg.get("precedence", "")).lower() == "auto_reply":
        return True
    return bool(AUTO_SUBJECT_RE.search(_clean(msg.get("subject", ""))))


def looks_like_bounce(msg: Message) -> bool:
    if msg.get_content_type() == "multipart/report" or msg.get("x-failed-recipients"):
        return True
    _, sender = parseaddr(_clean(msg.get("from", "")))
    local = re.sub(r"[-_.]", "", sender.partition("@")[0].lower())
    if local in DAEMON_LOCALS or "mailer-daemon" in _clean(msg.get("from", "")).lower():
        return True
    return bool(BOUNCE_SUBJECT_RE.search(_clean(msg.get("subject", ""))))


def detect(msg: Message, text: str) -> list[Failure]:
    """flufl.bounce's detectors (temporary and permanent sets), classified from nearby text."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(msg)
    except Exception:  # a detector choking on a malformed message must not park it
        log.exception("flufl.bounce detectors failed")
        return []
    out: dict[str, Failure] = {}
    for raw, perm in [(a, True) for a in permanent] + [(a, False) for a in temporary]:
        addr = _address(raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw))
        if addr is None or addr in out:
            continue
        ctx = _context(text, addr)
        kind, status = classify_text(ctx)
        if not perm:
            kind = BounceKind.soft
        elif kind is BounceKind.soft:
            kind = BounceKind.hard    # the detector says permanent; text only hints
        out[addr] = Failure(addr, kind, status, ctx[:1000], "detector")
    return list(out.values())


def parse(msg: Message) -> Report:
    """Everything we can learn from one message sent to a -bounces address."""
    bouncy = looks_like_bounce(msg)
    text = notification_text(msg)
    kind, status = classify_text(text)
    diag = " ".join(text.split())[:500]
    base = dict(looks_like_bounce=bouncy, text_kind=kind, text_status=status,
                text_diagnostic=diag)
    report_type = str(msg.get_param("report-type", "") or "").lower()
    if msg.get_content_type() == "multipart/report" and report_type in NOT_BOUNCE_REPORTS:
        return Report(**base)  # type: ignore[arg-type]
    found, failures = parse_dsn(msg)
    if found and not failures:
        return Report(success_dsn=True, **base)  # type: ignore[arg-type]
    if not failures and is_auto_reply(msg) and not bouncy:
        return Report(auto_reply=True, **base)  # type: ignore[arg-type]
    failures = _dedupe(failures) if failures else detect(msg, text)
    named = found | {a for f in failures for a in f.addresses}
    guesses = [g for g in guess(msg, text) if g.email not in named] if bouncy else []
    return Report(failures=tuple(failures), guesses=tuple(guesses),
                  **base)  # type: ignore[arg-type]


def guess(msg: Message, text: str) -> list[Failure]:
    """Every address the notification text of an unrecognised bounce mentions, except the
    reporting system's own. The caller keeps only those that are list members."""
    if mo := HEADER_BLOCK_RE.search(text):
        text = text[:mo.start()]        # a returned original pasted without a marker
    skip = {a.lower() for _, a in getaddresses([str(v) for v in (msg.get_all("from") or [])])}
    out: dict[str, Failure] = {}
    for mo in ADDRESS_RE.finditer(text):
        addr = _address(mo.group(0))
        if addr is None or addr in out or addr in skip or \
                addr.partition("@")[0] in SYSTEM_LOCALS:
            continue
        line_start = text.rfind("\n", 0, mo.start()) + 1
        if SENDER_LINE_RE.match(text, line_start, mo.start()):
            continue                    # the original's sender, quoted in the report
        ctx = _context(text, addr)
        kind, status = classify_text(ctx or text)
        out[addr] = Failure(addr, kind, status, ctx[:1000], "detector")
    return list(out.values())


def _dedupe(failures: list[Failure]) -> list[Failure]:
    seen: dict[str, Failure] = {}
    for f in failures:
        seen.setdefault(f.email, f)
    return list(seen.values())
