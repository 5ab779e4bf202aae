"""Pure digest builders: MIME (RFC 2046 multipart/digest) and plain text (RFC 1153).

No database, no clock, no network: the caller passes the posts (already parsed), the list
snapshot, the numbering and the date. Templates (``templates/digest/*.j2``) are rendered through
listserv.core.templating, so a site or list can override the prose; the structure is built here.
"""

from __future__ import annotations

import datetime as dt
import email.utils
from dataclasses import dataclass
from email.message import EmailMessage, Message, MIMEPart
from typing import Any, Sequence

from listserv.core import addresses
from listserv.message import headers, htmlmail
from listserv.message.parse import to_bytes
from listserv.core.templating import render
from listserv.message.transforms import list_headers
from listserv.core.views import ListView

# RFC 1153: headers kept in an enclosed message, in this order (Summary: is optional; we keep it).
RFC1153_HEADERS = ("Date", "From", "To", "Cc", "Subject", "Message-ID", "Keywords", "Summary")
PREAMBLE_SEPARATOR = "-" * 70
MESSAGE_SEPARATOR = "-" * 30


@dataclass(frozen=True)
class DigestItem:
    """One post in a digest: its sequence number on the list and the prepared message."""

    seq: int
    message: EmailMessage

    @property
    def subject(self) -> str:
        return _one_line(_header(self.message, "Subject")) or "(no subject)"

    @property
    def sender(self) -> str:
        """The poster's display name, else the address."""
        name, addr = addresses.parse_from(_header(self.message, "From"))
        return _one_line(name) or addr or "unknown sender"


@dataclass(frozen=True)
class Topic:
    number: int
    subject: str
    sender: str


def _header(msg: Message, name: str) -> str:
    try:
        value = msg.get(name)
    except (ValueError, TypeError, IndexError):  # a header the parser cannot make sense of
        return ""
    return "" if value is None else str(value)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def digest_subject(lst: ListView, volume: int, number: int) -> str:
    return f"{lst.display_name} Digest, Vol {volume}, Issue {number}"


def strip_prefix(subject: str, lst: ListView) -> str:
    """The subject without the list's prefix (the table of contents names the list once)."""
    prefix = lst.prefix.strip()
    if prefix and prefix in subject:
        subject = _one_line(subject.replace(prefix, "", 1))
    return subject or "(no subject)"


def topics(items: Sequence[DigestItem], lst: ListView) -> list[Topic]:
    return [Topic(i, strip_prefix(it.subject, lst), it.sender)
            for i, it in enumerate(items, start=1)]


def _context(lst: ListView, volume: int, number: int, date: dt.datetime,
             items: Sequence[DigestItem]) -> dict[str, Any]:
    return {"list": lst, "volume": volume, "number": number,
            "date": email.utils.format_datetime(date), "day": date.strftime("%a, %d %b %Y"),
            "subject": digest_subject(lst, volume, number), "topics": topics(items, lst),
            "count": len(items), "request": lst.sub(addresses.REQUEST)}


def _render(data_dir: str, lst: ListView, name: str, ctx: dict[str, Any]) -> str:
    return render(data_dir, name, ctx, domain=lst.domain, list_address=lst.address)


def _new_digest(lst: ListView, volume: int, number: int, date: dt.datetime,
                kind: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = email.utils.formataddr((lst.display_name, lst.sub(addresses.REQUEST)))
    msg["To"] = lst.address
    msg["Reply-To"] = lst.address
    msg["Subject"] = headers.unstructured("Subject", digest_subject(lst, volume, number))
    msg["Date"] = email.utils.format_datetime(date)
    msg["Message-ID"] = email.utils.make_msgid(f"digest.{kind}.{volume}.{number}",
                                               domain=lst.domain)
    msg["MIME-Version"] = "1.0"
    for name, value in list_headers(lst):   # List-Id, List-Post ... List-Owner, Precedence
        msg[name] = value
    return msg


def _text_part(text: str, description: str) -> MIMEPart:
    part = MIMEPart()
    _set_text(part, text)
    part["Content-Description"] = description
    return part


def _set_text(part: Message, text: str) -> None:
    """text/plain; utf-8; 7bit when it can be, else quoted-printable (readable, 7-bit safe)."""
    if not text.endswith("\n"):
        text += "\n"
    plain = text.isascii() and max((len(line) for line in text.splitlines()), default=0) <= 900
    part.set_content(text, charset="utf-8", cte="7bit" if plain else "quoted-printable")  # type: ignore[attr-defined]


def build_mime_digest(items: Sequence[DigestItem], lst: ListView, volume: int, number: int,
                      *, date: dt.datetime, data_dir: str) -> EmailMessage:
    """multipart/mixed: [text/plain table of contents, multipart/digest of message/rfc822
    parts (one per post, RFC 2046 5.1.5), text/plain footer]."""
    ctx = _context(lst, volume, number, date, items)
    msg = _new_digest(lst, volume, number, date, "mime")
    msg["Content-Type"] = "multipart/mixed"
    msg.attach(_text_part(_render(data_dir, lst, "digest/mime_toc.txt.j2", ctx),  # type: ignore[arg-type]
                          f"Today's Topics ({len(items)} messages)"))
    digest = MIMEPart()
    digest["Content-Type"] = "multipart/digest"
    digest["Content-Description"] = f"{digest_subject(lst, volume, number)}"
    for it in items:
        part = MIMEPart()
        part.set_content(it.message)
        digest.attach(part)
    if not items:   # a multipart needs at least one body part
        digest.attach(_text_part("(no messages)\n", "empty digest"))
    msg.attach(digest)  # type: ignore[arg-type]
    msg.attach(_text_part(_render(data_dir, lst, "digest/footer.txt.j2", ctx),  # type: ignore[arg-type]
                          "Digest Footer"))
    return msg


# ---------------------------------------------------------------------------- RFC 1153


def human_size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def attachment_summary(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        size = len(payload)
    else:  # message/* or multipart: the serialised size
        size = len(to_bytes(part))  # type: ignore[arg-type]
    name = part.get_filename() or "unnamed"
    return f"[attachment: {name}, {part.get_content_type()}, {human_size(size)}]"


def html_to_text(source: str) -> str:
    return htmlmail.to_text(source).strip("\n")


def _text_of(part: Message) -> str:
    try:
        content = part.get_content()  # type: ignore[attr-defined]
    except (LookupError, ValueError, AssertionError):
        raw = part.get_payload(decode=True)
        content = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if isinstance(content, bytes):
        content = content.decode("utf-8", "replace")
    return str(content)


def _is_attachment(part: Message) -> bool:
    return part.get_content_disposition() == "attachment"


def body_blocks(part: Message) -> list[str]:
    """The readable text of a message for a plain digest; every other part summarised."""
    ctype = part.get_content_type()
    if part.is_multipart():
        payload = part.get_payload()
        children = [c for c in payload if isinstance(c, Message)] if isinstance(payload, list) \
            else []
        if ctype == "multipart/alternative":
            plain = [c for c in children if c.get_content_type() == "text/plain"]
            chosen = plain[0] if plain else (children[-1] if children else None)
            return body_blocks(chosen) if chosen is not None else []
        return [b for c in children for b in body_blocks(c)]
    if ctype == "text/plain" and not _is_attachment(part):
        return [_text_of(part)]
    if ctype == "text/html" and not _is_attachment(part):
        return [html_to_text(_text_of(part))]
    return [attachment_summary(part)]


def _clean_body(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    # RFC 1153: a body line of exactly 30 hyphens would read as a separator: blank its first char.
    # The signature separator "-- " keeps its trailing space (readers' clients look for it).
    lines = [" " + line[1:] if line == MESSAGE_SEPARATOR else
             "-- " if line.rstrip() == "--" and line.startswith("-- ") else line.rstrip()
             for line in lines]
    return "\n".join(lines).strip("\n")


def plain_message_text(msg: EmailMessage) -> str:
    """One enclosed message, RFC 1153 style: kept headers in order, a blank line, the body."""
    head = []
    for name in RFC1153_HEADERS:
        value = _header(msg, name)
        if value:
            head.append(f"{name}: {_one_line(value)}")
    body = _clean_body("\n\n".join(b.strip("\n") for b in body_blocks(msg) if b.strip()))
    return "\n".join(head) + "\n\n" + body if body else "\n".join(head)


def build_plain_digest(items: Sequence[DigestItem], lst: ListView, volume: int, number: int,
                       *, date: dt.datetime, data_dir: str) -> EmailMessage:
    """A text/plain digest in the RFC 1153 layout: preamble (title line, masthead, table of
    contents), a line of 70 hyphens, the messages separated by lines of 30 hyphens, then the
    trailer "End of ... Digest, Vol V, Issue N" over a line of asterisks."""
    ctx = _context(lst, volume, number, date, items)
    footer = _render(data_dir, lst, "digest/footer.txt.j2", ctx).strip("\n")
    end = f"End of {digest_subject(lst, volume, number)}"
    body = _render(data_dir, lst, "digest/plain.txt.j2", {
        **ctx, "messages": [plain_message_text(it.message) for it in items],
        "footer": footer, "end_line": end, "preamble_separator": PREAMBLE_SEPARATOR,
        "separator": MESSAGE_SEPARATOR})
    msg = _new_digest(lst, volume, number, date, "plain")
    _set_text(msg, body)
    return msg
