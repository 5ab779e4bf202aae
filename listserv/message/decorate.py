"""MIME-correct footer insertion (pure). The posting helper renders the footer text from
``footer/list.txt.j2`` and calls ``decorate(msg, lst, footer)`` once per distinct footer, before
signing.

* a lone inline text/plain body: the footer is appended to the text, in the part's charset
  (switched to UTF-8 only when the footer does not fit it) and Content-Transfer-Encoding
  (7bit becomes quoted-printable when the text stops being ASCII); format=flowed and other
  Content-Type parameters are kept;
* with ``footer_placement = inline`` (the default): a multipart/alternative gets the footer in
  its plain alternative (as above) and in its HTML one (HTML-escaped, in a ``<div>`` before
  ``</body>``), also inside multipart/related and as the first part of a multipart/mixed; a lone
  HTML body likewise. HTML readers see it, and Outlook shows no ``ATT00001.txt``. When a text
  cannot be decoded exactly, the footer goes in a part of its own instead;
* multipart/mixed: the footer becomes a new last text/plain part;
* anything else (multipart/alternative, /related, a lone HTML or attachment, a text part we
  cannot decode safely) and multipart/signed or /encrypted: the body is wrapped in a new
  multipart/mixed with the footer as the second part (Mailman's "wrap" approach). The signed
  or encrypted part is carried byte for byte, so its signature still verifies.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import html
import quopri
import re
from email.message import EmailMessage
from typing import Callable

from listserv.core.models import FooterPlacement
from listserv.core.views import ListView
from listserv.message import lines
from listserv.message.parse import to_bytes

FOOTER_SEPARATOR = "\n"


def decorate(msg: EmailMessage, lst: ListView, footer: str) -> EmailMessage:
    """A copy of ``msg`` carrying ``footer``; ``msg`` itself is not changed."""
    out = copy.deepcopy(msg)
    if not footer.strip():
        return out
    if lst.footer_placement is FooterPlacement.inline and _inline(out, footer):
        return out
    if out.is_multipart():
        if out.get_content_type() == "multipart/mixed":
            out.attach(footer_part(footer))
            return out
        return wrap_mixed(out, footer)
    if (out.get_content_type() == "text/plain" and out.get_content_disposition() != "attachment"
            and append_to_text(out, footer)):
        return out
    return wrap_mixed(out, footer)


def _is_body(part: EmailMessage, subtype: str) -> bool:
    return (part.get_content_type() == f"text/{subtype}"
            and part.get_content_disposition() != "attachment")


def _children(part: EmailMessage) -> list[EmailMessage]:
    payload = part.get_payload()
    return [c for c in payload if isinstance(c, EmailMessage)] if isinstance(payload, list) \
        else []


def _inline(msg: EmailMessage, footer: str) -> bool:
    """Put the footer into the message's text bodies in place; False (unchanged) when it has
    none we can edit exactly."""
    ctype = msg.get_content_type()
    if ctype == "multipart/alternative":
        return _into_alternative(msg, footer)
    if ctype == "multipart/mixed":
        first = next(iter(_children(msg)), None)
        if first is not None and first.get_content_type() == "multipart/alternative":
            return _into_alternative(first, footer)
        if first is None or not _is_body(first, "plain"):
            return False
        had_version = "MIME-Version" in first
        if not append_to_text(first, footer):
            return False
        if not had_version:
            del first["MIME-Version"]
        return True
    if _is_body(msg, "html"):
        return append_to_html(msg, footer)
    return False


def _into_alternative(alt: EmailMessage, footer: str) -> bool:
    """The footer into every plain and HTML alternative (HTML also inside multipart/related),
    all or none."""
    trial = copy.deepcopy(alt)
    edited = 0
    for child in _children(trial):
        if child.get_content_type() == "multipart/related":
            inner = next(iter(_children(child)), None)
            if inner is None or not _is_body(inner, "html"):
                return False
            child = inner
        had_version = "MIME-Version" in child
        if _is_body(child, "plain"):
            ok = append_to_text(child, footer)
        elif _is_body(child, "html"):
            ok = append_to_html(child, footer)
        else:
            continue
        if not ok:
            return False
        if not had_version:         # a body part needs none (append_to_* add it for a message)
            del child["MIME-Version"]
        edited += 1
    if not edited:
        return False
    alt.set_payload(trial.get_payload())
    return True


def html_footer(footer: str) -> str:
    lines = [html.escape(line) for line in footer.strip("\n").splitlines()]
    return '\n<div class="list-footer">' + "<br>\n".join(lines) + "</div>\n"


_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_HTML_END = re.compile(r"</html\s*>", re.IGNORECASE)


def _insert_html(text: str, footer: str) -> str:
    addition = html_footer(footer)
    if "\r\n" in text:
        addition = addition.replace("\n", "\r\n")
    for end in (_BODY_END, _HTML_END):
        found = list(end.finditer(text))
        if found:
            at = found[-1].start()
            return text[:at] + addition + text[at:]
    return text + addition


def append_to_html(part: EmailMessage, footer: str) -> bool:
    """Insert the HTML-escaped footer before ``</body>`` of a text/html ``part`` in place."""
    return _edit_text(part, lambda text: _insert_html(text, footer))


def footer_part(footer: str) -> EmailMessage:
    part = EmailMessage()
    if footer.isascii():
        part.set_content(footer, charset="us-ascii", cte="7bit", disposition="inline")
    else:
        part.set_content(footer, charset="utf-8", cte="quoted-printable", disposition="inline")
    del part["MIME-Version"]
    return part


def _python_charset(charset: str) -> str | None:
    import codecs

    try:
        return codecs.lookup(charset).name
    except (LookupError, ValueError):     # unknown, or not even a name ('utf-8\x00')
        return None


def append_to_text(part: EmailMessage, footer: str) -> bool:
    """Append ``footer`` to a text/plain ``part`` in place. False (part unchanged) when its
    content cannot be decoded exactly (unknown charset, bytes invalid in it)."""
    def add(text: str) -> str:
        crlf = "\r\n" in text
        if text and not text.endswith("\n"):
            text += "\n"
        addition = FOOTER_SEPARATOR + footer
        if not addition.endswith("\n"):
            addition += "\n"
        if crlf:
            addition = addition.replace("\r\n", "\n").replace("\n", "\r\n")
        return text + addition

    return _edit_text(part, add)


def _edit_text(part: EmailMessage, edit: Callable[[str], str]) -> bool:
    """Replace a text part's decoded text with ``edit(text)``, keeping its charset (UTF-8 when
    the new text does not fit it) and transfer encoding. False (unchanged) when the content
    cannot be decoded exactly."""
    declared = part.get_content_charset() or "us-ascii"
    codec = _python_charset(declared)
    cte = (part.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if codec is None or cte not in ("7bit", "8bit", "binary", "quoted-printable", "base64"):
        return False
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return False
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError:
        if codec != "ascii":
            return False
        codec, declared = "utf-8", "utf-8"   # 8-bit text labelled us-ascii: try UTF-8
        try:
            text = raw.decode(codec)
        except UnicodeDecodeError:
            return False
    new = edit(text)
    try:
        data = new.encode(codec)
    except UnicodeEncodeError:
        data, declared = new.encode("utf-8"), "utf-8"
    if declared != (part.get_content_charset() or "us-ascii"):
        _set_charset(part, declared)
    if cte == "base64":
        payload = base64.encodebytes(data).decode("ascii")
    elif cte == "quoted-printable":
        payload = quopri.encodestring(data).decode("ascii")
    elif max(map(len, data.split(b"\n"))) > lines.MAX_LINE or (cte == "7bit"
                                                               and not data.isascii()):
        cte = "quoted-printable"      # a line too long for SMTP, or 8-bit text in 7bit
        payload = quopri.encodestring(data).decode("ascii")
    elif data.isascii():
        payload = data.decode("ascii")
    else:   # 8bit/binary stays 8bit: the payload carries the raw bytes
        payload = data.decode("ascii", "surrogateescape")
    part.set_payload(payload)
    if (declared != "us-ascii" or cte != "7bit") and "MIME-Version" not in part:
        part["MIME-Version"] = "1.0"
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", cte)
    elif cte != "7bit":
        part["Content-Transfer-Encoding"] = cte
    return True


def _set_charset(part: EmailMessage, charset: str) -> None:
    """Change the charset parameter, keeping Content-Type where it is among the headers."""
    scratch = EmailMessage()
    scratch["Content-Type"] = part.get("Content-Type") or "text/plain"
    scratch.set_param("charset", charset)
    if "Content-Type" in part:
        part.replace_header("Content-Type", scratch["Content-Type"])
    else:
        part["Content-Type"] = scratch["Content-Type"]


def boundary_for(data: bytes, salt: str) -> str:
    """A boundary derived from the content (deterministic output for golden tests) that does
    not occur in it."""
    n = 0
    while True:
        b = "=_" + hashlib.sha256(f"{salt}:{n}".encode() + data).hexdigest()[:32]
        if b.encode() not in data:
            return b
        n += 1


def wrap_mixed(msg: EmailMessage, footer: str) -> EmailMessage:
    """Turn ``msg`` (in place) into a multipart/mixed whose first part is its former body with
    its Content-* headers, and whose second part is the footer. Other headers stay untouched."""
    inner = EmailMessage(policy=msg.policy)
    for name, value in msg.raw_items():
        if name.lower().startswith("content-") and name not in inner:
            inner.set_raw(name, value)   # as it came; the first of each (a hostile
            #                              duplicate cannot be set)
    inner.set_payload(_raw_payload(msg))  # type: ignore[call-overload]
    inner.preamble, inner.epilogue = msg.preamble, msg.epilogue
    if msg.get_default_type() != "text/plain":
        inner.set_default_type(msg.get_default_type())
    for name in {n.lower() for n, _ in msg.raw_items() if n.lower().startswith("content-")}:
        del msg[name]
    msg.preamble = msg.epilogue = None
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
    body = to_bytes(inner, inner.policy)     # (hostile header text too)
    msg["Content-Type"] = f'multipart/mixed; boundary="{boundary_for(body, footer)}"'
    msg.set_payload([inner, footer_part(footer)])
    return msg


def _raw_payload(msg: EmailMessage) -> object:
    """The payload exactly as parsed. ``get_payload()`` decodes undecodable 8-bit text (bytes
    not in the declared charset, or none declared) with U+FFFD replacements, which then can
    neither be serialised nor match the original: carry the raw bytes through instead."""
    if msg.is_multipart():
        return msg.get_payload()
    parsed = getattr(msg, "_payload", None)   # as parsed: 8-bit bytes as surrogate escapes,
    if isinstance(parsed, str):               # whatever the transfer encoding claims
        return parsed
    cte = (msg.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if cte in ("7bit", "8bit", "binary"):
        raw = msg.get_payload(decode=True)
        if isinstance(raw, bytes) and not raw.isascii():
            return raw.decode("ascii", "surrogateescape")
    return msg.get_payload()
