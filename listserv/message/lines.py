"""Body lines no longer than RFC 5322 allows (pure).

RFC 5322 2.1.1 and RFC 5321 4.5.3.1.6 limit a line to 998 octets before its CRLF. Senders
break the rule (web forms, HTML mail written in one line, base64 not wrapped), and the mail
then passes through us to MTAs that do not accept it: Postfix's SMTP client, by default,
breaks such a line by inserting CRLF and a space (``smtp_line_length_limit = 998``), which
damages the part and breaks the list's DKIM signature on every copy.

``fit(msg)`` re-encodes, in place, each part whose body has a longer line, keeping what it
decodes to:

* base64: the same characters wrapped at 76 (decoders ignore line breaks, RFC 2045 6.8);
* quoted-printable: decoded and encoded again (soft line breaks);
* 7bit, 8bit, binary or an unknown encoding: its bytes as quoted-printable for text, base64
  for anything else, with the Content-Transfer-Encoding changed to match;
* a multipart's preamble and epilogue (ignored by readers) are wrapped at 998;
* a header field that cannot be folded into such lines is set again as RFC 2047 encoded
  words (untrusted.fit_fields).

The parts inside multipart/signed and multipart/encrypted are left byte for byte: changing
them would break their signature for sure, where a relay may not.

``on_the_wire(data)`` is the last resort on serialised bytes (listserv.delivery.notices
applies it before sealing and signing; mail forwarded to a list's owners as it came gets it
too): what the generator writes as it came (a multipart
whose boundary never occurs, a signed part) gets CRLF line ends, and lines cut at 998
octets, as the next relay would otherwise cut them after our signature.
"""

from __future__ import annotations

import base64
import quopri
import re
from email.message import EmailMessage, Message

from listserv.message import untrusted

MAX_LINE = untrusted.MAX_LINE
_SEALED = ("multipart/signed", "multipart/encrypted")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_WSP = re.compile(r"\s+")


def longest_line(text: str) -> int:
    """The length in octets of the longest line of ``text`` (8-bit bytes as the email
    package's surrogate escapes count one octet each)."""
    return max((len(line.encode("utf-8", "surrogateescape"))
                for line in _LINE_BREAK.split(text)), default=0)


def fit(msg: EmailMessage) -> EmailMessage:
    """``msg`` with every line of its bodies at most MAX_LINE octets (in place)."""
    if _fit(msg) and "MIME-Version" not in msg:
        msg["MIME-Version"] = "1.0"        # a Content-Transfer-Encoding was set
    return msg


def _fit(part: Message) -> bool:
    """Fit ``part`` and what it contains; was a Content-Transfer-Encoding changed?"""
    untrusted.fit_fields(part)
    if part.is_multipart():
        for name in ("preamble", "epilogue"):
            text = getattr(part, name)
            if isinstance(text, str) and longest_line(text) > MAX_LINE:
                setattr(part, name, _hard_wrap(text))
        if part.get_content_type() in _SEALED:
            return False
        return any([_fit(child) for child in part.get_payload()
                    if isinstance(child, Message)])
    payload = getattr(part, "_payload", None)   # as parsed: 8-bit bytes as surrogate escapes
    if not isinstance(payload, str) or longest_line(payload) <= MAX_LINE:
        return False
    if part.get_content_maintype() == "multipart":
        part.set_payload(_hard_wrap(payload))   # no usable boundary: all of it is preamble
        return False
    cte = str(part.get("Content-Transfer-Encoding") or "7bit").strip().lower()
    if cte == "base64":
        text = _WSP.sub("", payload)
        _set(part, "\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + "\n", cte)
        return True
    if cte == "quoted-printable":
        data = quopri.decodestring(payload.encode("utf-8", "surrogateescape"))
    else:
        data = payload.encode("utf-8", "surrogateescape")
    if part.get_content_maintype() == "text":
        data = _LINE_BREAK.sub("\n", data.decode("latin-1")).encode("latin-1")
        _set(part, quopri.encodestring(data).decode("ascii"), "quoted-printable")
    else:
        _set(part, base64.encodebytes(data).decode("ascii"), "base64")
    return True


def _set(part: Message, payload: str, cte: str) -> None:
    part.set_payload(payload)
    if "Content-Transfer-Encoding" in part:
        part.replace_header("Content-Transfer-Encoding", cte)
    else:
        part["Content-Transfer-Encoding"] = cte


def _hard_wrap(text: str) -> str:
    """``text`` with its long lines cut (a preamble or epilogue: no reader shows it)."""
    out = []
    for line in _LINE_BREAK.split(text):
        step = MAX_LINE if line.isascii() else MAX_LINE // 4    # at most 4 octets a char
        while len(line.encode("utf-8", "surrogateescape")) > MAX_LINE:
            out.append(line[:step])
            line = line[step:]
        out.append(line)
    return "\n".join(out)


# a line end: CRLF, or a bare CR or LF (what delivery sends as CRLF too: smtpwire)
LINE_END = re.compile(rb"\r\n|\r|\n")
# the first empty line, whatever the line ends around it (CRLF, a bare CR, a bare LF)
_HEADER_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


def on_the_wire(data: bytes) -> bytes:
    """``data`` (CRLF line ends) with every line end CRLF, no line over MAX_LINE octets and
    every line of the header block a field or its continuation: a bare CR or LF in the
    header block, a line there that starts neither, and a cut there continue the field
    (CRLF and a space); in the body a bare CR or LF is a line end."""
    end = _HEADER_END.search(data)
    # the header block with the line end of its last field, and the body
    head, body = (data, b"") if end is None else (data[:end.start()] + b"\r\n",
                                                  data[end.end():])
    crlf_end = end is None or data[end.start():end.end()] == b"\r\n\r\n"
    if crlf_end and _fine(head) and _fine(body) and all(
            x[:1] in (b" ", b"\t") or _is_field_start(x) for x in head.split(b"\r\n")[:-1]):
        return data
    lines: list[bytes] = []
    for line in LINE_END.split(head):
        if lines and line and line[:1] not in (b" ", b"\t") and not _is_field_start(line):
            line = b" " + line            # inside a field: a fold
        lines.extend(_cut(line, b" "))
    out = b"\r\n".join(lines)
    if end is None:
        return out
    return out + b"\r\n" + b"\r\n".join(x for line in LINE_END.split(body)
                                       for x in _cut(line, b""))


def _fine(data: bytes) -> bool:
    """CRLF line ends only, and no line over MAX_LINE octets?"""
    stripped = data.replace(b"\r\n", b"")
    return b"\r" not in stripped and b"\n" not in stripped \
        and all(len(x) <= MAX_LINE for x in data.split(b"\r\n"))


def _is_field_start(line: bytes) -> bool:
    name, colon, _ = line.partition(b":")
    return bool(colon) and bool(name) and all(33 <= c <= 126 for c in name)


def _cut(line: bytes, lead: bytes) -> list[bytes]:
    out = []
    while len(line) > MAX_LINE:
        out.append(line[:MAX_LINE])
        line = lead + line[MAX_LINE:]
    out.append(line)
    return out
