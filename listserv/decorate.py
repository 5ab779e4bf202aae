"""MIME-correct footer insertion (pure). The posting helper renders the footer text from
``footer/list.txt.j2`` and calls ``decorate(msg, lst, footer)`` once per distinct footer, before
signing.

* a lone inline text/plain body: the footer is appended to the text, in the part's charset
  (switched to UTF-8 only when the footer does not fit it) and Content-Transfer-Encoding
  (7bit becomes quoted-printable when the text stops being ASCII); format=flowed and other
  Content-Type parameters are kept;
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
import quopri
from email.message import EmailMessage

from listserv.views import ListView

FOOTER_SEPARATOR = "\n"


def decorate(msg: EmailMessage, lst: ListView, footer: str) -> EmailMessage:
    """A copy of ``msg`` carrying ``footer``; ``msg`` itself is not changed."""
    out = copy.deepcopy(msg)
    if not footer.strip():
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
    crlf = "\r\n" in text
    if text and not text.endswith("\n"):
        text += "\n"
    addition = FOOTER_SEPARATOR + footer
    if not addition.endswith("\n"):
        addition += "\n"
    if crlf:
        addition = addition.replace("\r\n", "\n").replace("\n", "\r\n")
    new = text + addition
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
    elif data.isascii() and max(map(len, data.split(b"\n"))) <= 998:
        payload = data.decode("ascii")
    elif cte == "7bit":
        cte = "quoted-printable"
        payload = quopri.encodestring(data).decode("ascii")
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
    for name, value in msg.items():
        if name.lower().startswith("content-") and name not in inner:
            inner[name] = value     # the first of each: a hostile duplicate cannot be set
    inner.set_payload(_raw_payload(msg))  # type: ignore[call-overload]
    inner.preamble, inner.epilogue = msg.preamble, msg.epilogue
    if msg.get_default_type() != "text/plain":
        inner.set_default_type(msg.get_default_type())
    for name in {n.lower() for n, _ in msg.raw_items() if n.lower().startswith("content-")}:
        del msg[name]
    msg.preamble = msg.epilogue = None
    if "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"
    body = inner.as_bytes()
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
