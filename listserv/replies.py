"""Reading mail that people send to the list's command addresses (pure, no DB).

- is_auto_reply(): RFC 3834 Auto-Submitted other than "no", Precedence bulk/junk/list, a null
  reverse-path, or the usual auto-responder markers. Such mail is never acted on nor answered.
- typed_blocks() / command_lines(): the text a person typed, without quotes, attribution
  lines, signatures and the original an Outlook-style reply carries below it.
- authenticated(): DKIM (aligned with the From domain) or a trusted Authentication-Results.
"""

from __future__ import annotations

import re
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Callable

from listserv import addresses, htmlmail, untrusted

AUTO_PRECEDENCE = ("bulk", "junk", "list")


def header_word(value: str | None) -> str:
    """The first word of a structured header value, lower case ('Auto-Submitted: x; p=1')."""
    return untrusted.one_line(str(value or "").split(";")[0], 100).lower()


def automatic_reason(mail_from: str, auto_submitted: str, precedence: str) -> str | None:
    """Why mail is automatic by RFC 3834's tests (null reverse-path, Auto-Submitted other
    than "no", Precedence bulk/junk/list), or None. The header values are header_word()s.
    The one test the posting rules (rules.automatic) and the command addresses share."""
    if not mail_from.strip().strip("<>"):
        return "null reverse-path (a bounce or auto-reply)"
    if auto_submitted not in ("", "no"):
        return f"automatic message (Auto-Submitted: {auto_submitted})"
    if precedence in AUTO_PRECEDENCE:
        return f"automatic message (Precedence: {precedence})"
    return None


def is_auto_reply(msg: Message, mail_from: str) -> bool:
    if automatic_reason(mail_from, header_word(msg.get("Auto-Submitted")),
                        header_word(msg.get("Precedence"))) is not None:
        return True
    for header in ("X-Autoreply", "X-Autorespond"):
        value = str(msg.get(header, "") or "").strip().lower()
        if value and value not in ("no", "false", "0"):
            return True
    return False


def from_address(msg: Message) -> str:
    """The normalised (lower-case) From address, '' when absent, invalid or ambiguous."""
    return sender_address(msg)[0]


def raw_values(msg: Message, name: str) -> list[str]:
    """The values of header ``name`` as they came (encoded words not decoded), unfolded."""
    return [re.sub(r"\r?\n(?=[ \t])", "", str(v)) for k, v in msg.raw_items()
            if k.lower() == name.lower()]


def sender_address(msg: Message, header: str = "From") -> tuple[str, str | None]:
    """(normalised address, None) from the raw addr-spec of exactly one ``header``, or
    ('', why) when there is none, several, or one that is unparseable or ambiguous.

    RFC 2047 forbids encoded words in an addr-spec, so '=?utf-8?q?bob=40x?=' names nobody;
    'bob@x <eve@y>' and two From headers could be read as two people: nobody either."""
    values = raw_values(msg, header)
    if not values:
        return "", f"no {header} header"
    if len(values) > 1:
        return "", f"{len(values)} {header} headers"
    shown = untrusted.one_line(values[0], 100)
    pairs = getaddresses([values[0]])
    if len(pairs) != 1 or not pairs[0][1]:
        return "", f"ambiguous {header}: {shown}"
    addr = pairs[0][1].strip()
    if "=?" in addr or addr.count("@") != 1:
        return "", f"unparseable {header}: {shown}"
    normal = addresses.try_normalise(addr)
    if normal is None:
        return "", f"unparseable {header}: {shown}"
    return normal, None


def body_text(msg: Message, *, reply: bool = False) -> str:
    """The first text/plain part, else the text/html part as text (htmlmail.to_text; with
    ``reply``, without the quoted original an HTML reply carries)."""
    if not isinstance(msg, EmailMessage):
        return ""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except Exception:  # noqa: BLE001 - a multipart without parts (no boundary) and the like
        return ""
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, ValueError, AttributeError):
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(text, str):
        return ""
    if part.get_content_subtype() == "html":
        return htmlmail.reply_text(text) if reply else htmlmail.to_text(text)
    return text


# What ends the typed part of a reply: a signature separator, a phone's signature, the start
# of a forwarded or Outlook-quoted original.
_SIGNATURE = re.compile(r"^(--|—|sent from my\b.*|get outlook for\b.*|von meinem\b.*gesendet"
                        r"|envoy[ée] de mon\b.*)$", re.IGNORECASE)
_ORIGINAL = re.compile(r"^(-{3,}\s*(original message|ursprüngliche nachricht|message d'origine"
                       r"|forwarded message)\s*-{3,}|_{10,}|begin forwarded message:)$",
                       re.IGNORECASE)
# Outlook's header block of the quoted original: "From: ..." then "Sent:"/"Date:" soon after.
_HEADER_FROM = re.compile(r"^\*?(from|von|de|van|da)\s*:\*?\s*\S", re.IGNORECASE)
_HEADER_SENT = re.compile(r"^\*?(sent|date|gesendet|datum|envoyé|enviado|verzonden|inviato)"
                          r"\s*:", re.IGNORECASE)
# "On Tue, 1 Dec 2026 at 10:00, Dev <dev-owner@example.org> wrote:" and its translations.
_WROTE = r"(wrote|writes|schrieb|a écrit|escribió|schreef|ha scritto|skrev|kirjoitti|napisał)\s*:$"
_ATTRIBUTION = re.compile(r"^(on|am|le|el|op|il|den|em|w dniu)\b.*" + _WROTE, re.IGNORECASE)
_WROTE_END = re.compile(r".*\b" + _WROTE, re.IGNORECASE)


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


def _next_text(lines: list[str], i: int) -> int:
    while i < len(lines) and not lines[i].strip():
        i += 1
    return i


def _attribution(lines: list[str], i: int) -> int:
    """How many lines (1 or 2: clients wrap long ones) an attribution at ``i`` takes; 0."""
    line = lines[i].strip()
    for n in (1, 2):
        text = " ".join(x.strip() for x in lines[i:i + n])
        if _ATTRIBUTION.match(text):
            return n
        if _WROTE_END.match(text) and len(text) < 300:
            after = _next_text(lines, i + n)
            if after < len(lines) and _is_quoted(lines[after]):
                return n
        if n == 1 and not line.lower().startswith(("on ", "am ", "le ", "el ")):
            break
    return 0


def _outlook_header(lines: list[str], i: int) -> bool:
    if not _HEADER_FROM.match(lines[i].strip()):
        return False
    return any(_HEADER_SENT.match(x.strip()) for x in lines[i + 1:i + 5])


def typed_blocks(text: str) -> list[list[str]]:
    """What a person typed into a reply, top- or bottom-posted: blocks of lines (stripped,
    blank lines kept inside a block) separated by the quoted text between them. Left out:
    ``>`` quotes, attribution lines ("On ... wrote:"), and everything from a signature
    separator, a phone signature, Outlook's original-message separator or its
    "From: ... Sent: ..." header block on. After an attribution that is not followed by a
    ``>`` quote, the original follows unquoted: reading stops there too."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[str]] = []
    current: list[str] = []

    def close() -> None:
        while current and not current[-1]:
            current.pop()
        if current:
            blocks.append(current.copy())
        current.clear()

    i = 0
    while i < len(lines):
        raw = lines[i]
        line = raw.strip()
        if raw.rstrip() == "--" or raw.startswith("-- ") or _SIGNATURE.match(line) \
                or _ORIGINAL.match(line) or _outlook_header(lines, i):
            break
        if _is_quoted(raw):
            close()
            i += 1
            continue
        n = _attribution(lines, i) if line else 0
        if n:
            close()
            after = _next_text(lines, i + n)
            if after < len(lines) and not _is_quoted(lines[after]):
                break
            i += n
            continue
        if line or current:
            current.append(line)
        i += 1
    close()
    return blocks


def command_lines(msg: Message, limit: int = 50) -> list[str]:
    """Non-blank typed lines of the body (typed_blocks), at most ``limit``."""
    out = [line for block in typed_blocks(body_text(msg, reply=True)) for line in block if line]
    return out[:limit]


def first_word(line: str) -> str:
    words = line.split(None, 1)
    return words[0].lower().rstrip(":,.!") if words else ""


def strip_reply_prefix(subject: str) -> str:
    """'Re: Fwd: AW: confirm x' -> 'confirm x'."""
    s = subject.strip()
    while True:
        m = re.match(r"^(re|aw|sv|fwd?|wg|tr)\s*(\[\d+\])?\s*:\s*", s, re.IGNORECASE)
        if not m:
            return s
        s = s[m.end():]


# ---------------------------------------------------------------------------- authentication


def _aligned(signing_domain: str, from_domain: str) -> bool:
    d, f = signing_domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    return bool(d) and (f == d or f.endswith("." + d))


def dkim_aligned_pass(data: bytes, from_domain: str,
                      resolve_txt: Callable[[str], list[str]]) -> bool:
    """True when one DKIM-Signature of ``data`` verifies and its d= is the From domain or a
    parent of it. DNS goes through the injected ``resolve_txt``."""
    from listserv import signing

    try:
        domains = signing.verified_domains(data, resolve_txt)
    except Exception:  # noqa: BLE001 - dkimpy raises many types on malformed input
        return False
    return any(_aligned(d, from_domain) for d in domains)


def trusted_ar_pass(msg: Message, from_domain: str, authserv_id: str) -> bool:
    """The topmost Authentication-Results (the one our MTA added) names ``authserv_id`` and
    reports dkim=pass with header.d (or header.i) aligned with the From domain."""
    if not authserv_id:
        return False
    values = msg.get_all("Authentication-Results") or []
    if not values:
        return False
    top = re.sub(r"\s+", " ", str(values[0]))
    top = re.sub(r"\([^()]*\)", "", top)          # drop comments
    head, _, rest = top.partition(";")
    if head.strip().split(" ")[0].lower() != authserv_id.lower():
        return False
    for clause in rest.split(";"):
        words = clause.strip().split()
        if not words or words[0].lower() != "dkim=pass":
            continue
        for w in words[1:]:
            key, _, value = w.partition("=")
            value = value.strip('"')
            if key.lower() == "header.d" and _aligned(value, from_domain):
                return True
            if key.lower() == "header.i" and _aligned(value.rpartition("@")[2], from_domain):
                return True
    return False


def authenticated(data: bytes, msg: Message, from_addr: str, *, authserv_id: str,
                  resolve_txt: Callable[[str], list[str]]) -> bool:
    domain = from_addr.rpartition("@")[2]
    if not domain:
        return False
    return (trusted_ar_pass(msg, domain, authserv_id)
            or dkim_aligned_pass(data, domain, resolve_txt))
