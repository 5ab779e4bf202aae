"""Reading mail that people send to the list's command addresses (pure, no DB).

- is_auto_reply(): RFC 3834 Auto-Submitted other than "no", Precedence bulk/junk/list, a null
  reverse-path, or the usual auto-responder markers. Such mail is never acted on nor answered.
- body_text() / command_lines(): the text a person typed (quoting.typed_blocks: without
  quotes, attribution lines, signatures and the original a reply carries below it).
- authenticated(): DKIM (aligned with the From domain) or a trusted Authentication-Results.
"""

from __future__ import annotations

import re
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Callable

from listserv.core import addresses
from listserv.message import htmlmail, quoting, untrusted

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


_LATIN1 = ("iso-8859-1", "latin-1", "latin1", "iso8859-1", "us-ascii", "ascii", "")


def _part_text(part: Message) -> str:
    """A text part decoded: its charset, windows-1252 where a Latin-1 label hides Windows
    quotes (as browsers read it), UTF-8 with replacement for an unknown charset."""
    charset = str(part.get_content_charset() or "").lower()
    payload = part.get_payload(decode=True)
    raw = payload if isinstance(payload, bytes) else b""
    if charset in _LATIN1 and any(0x80 <= b <= 0x9F for b in raw):
        return raw.decode("cp1252", "replace")
    try:
        text = part.get_content()   # type: ignore[attr-defined]
    except (LookupError, ValueError, AttributeError, KeyError):
        text = raw.decode("utf-8", "replace")
    return text if isinstance(text, str) else ""


def body_text(msg: Message, *, reply: bool = False) -> str:
    """The first text/plain part, else the text/html part as text (htmlmail.to_text; with
    ``reply``, quoting.html_reply_text: without the quoted original an HTML reply carries,
    and format=flowed text unflowed; an empty plain alternative gives way to the HTML one)."""
    if not isinstance(msg, EmailMessage):
        return ""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
        if reply and part is not None and part.get_content_subtype() == "plain" \
                and not _part_text(part).strip():
            part = msg.get_body(preferencelist=("html", "plain"))
    except Exception:  # noqa: BLE001 - a multipart without parts (no boundary) and the like
        return ""
    if part is None:
        return ""
    text = _part_text(part)
    if part.get_content_subtype() == "html":
        return quoting.html_reply_text(text) if reply else htmlmail.to_text(text)
    if reply and str(part.get_param("format", "")).lower() == "flowed":
        text = quoting.unflow(text, str(part.get_param("delsp", "")).lower() == "yes")
    return text


def command_lines(msg: Message, limit: int = 50) -> list[str]:
    """Non-blank typed lines of the body (typed_blocks), at most ``limit``."""
    blocks = quoting.typed_blocks(body_text(msg, reply=True))
    out = [line for block in blocks for line in block if line]
    return out[:limit]


def first_word(line: str) -> str:
    """The command word a line starts with, lower case ('*Subscribe!*' -> 'subscribe')."""
    words = quoting.strip_decoration(line).split(None, 1)
    return words[0].lower().rstrip(":,.!*_") if words else ""


# Reply and forward prefixes, also as localised clients write them ("RE :", "AW:", "SV:",
# "Antw:", "Odp:", "R:", "RIF:", "Res:", "VS:", "Ynt:", "ΑΠ:", "回复:", "WG:", "TR:", "Doorst:").
_REPLY_PREFIX = re.compile(r"^(re|aw|sv|antw|odp|r|rif|res|vs|ynt|απ|回复|答复|回覆|fwd?|wg|tr"
                           r"|rv|enc|doorst|pd|i|vb)\s*(\[\d+\]|\^\d+)?\s*[:：]\s*",
                           re.IGNORECASE)


def strip_reply_prefix(subject: str) -> str:
    """'Re: Fwd: AW: confirm x' -> 'confirm x'."""
    s = quoting.clean_line(subject)
    while True:
        m = _REPLY_PREFIX.match(s)
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
    from listserv.message import signing

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
