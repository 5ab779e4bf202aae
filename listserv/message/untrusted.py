"""Pure helpers for text and structure that come from strangers (no DB, no clock).

- clean_text(): lone surrogates (surrogate-escaped bytes, UTF-7 halves) become U+FFFD, so that
  text taken from a message can always be encoded again (notices, database, logs).
- one_line(): one line, control and line-separator characters as spaces, length-capped: the
  form in which a Subject or address given by a sender is ever echoed.
- shape(): how deeply the MIME parts of raw bytes nest, how many there are, the largest
  header field of any part and the size of the message's own header section, found in one
  pass without recursion, so that absurd structure is refused before the email package
  recurses into it or spends minutes on one field (its header parsing and folding grow faster
  than the field: a 1 MB To: takes 46 s to prepare for the members, a 5 MB Subject: longer
  than the SMTP client waits for its answer).
- POLICY / SMTP_POLICY: email.policy.default (and its CRLF form) whose Date headers read a
  hostile value as an invalid date instead of raising OverflowError on access, and whose other
  headers, when the email package's parser fails on their value (bytes no address parser
  expects), are read as unstructured text with a defect instead of raising on access. Every
  parse of mail listserv stores goes through POLICY.
- header_date(): a Date header value as an aware UTC datetime, or None for hostile values
  (overflowing offsets, year 9999 with a negative offset...).
- serialisable() / fit_fields(): a message the generator can always write, in lines every
  relay takes: hostile 8-bit text as its bytes, and a header field it cannot fold (or only
  into lines over 998 octets, or lines that do not continue it) as RFC 2047 encoded words.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from email import _header_value_parser, errors, headerregistry, policy
from email.header import Header
from email.message import EmailMessage, Message
from email.utils import parsedate_to_datetime
from typing import Any

MAX_MIME_DEPTH = 50          # deeper nesting is refused at intake (554 5.6.0)
# More parts are refused at intake (554 5.6.0): each costs the email package's parse and every
# transform, archive and digest a walk (100,000 empty parts in 3.6 MB: 8 s to prepare for the
# members, 4 s more to index); a MIME digest of 200 posts has a few hundred.
MAX_MIME_PARTS = 10_000
# Larger header fields and sections are refused at intake (552 5.3.4). Sizes count a line end
# as one octet, as Postfix does: a field may be as long as Postfix's header_size_limit lets
# through (it cuts longer ones); the section as long as the Received: lines of a long relay
# chain and a few such fields.
MAX_HEADER_FIELD = 102_400   # octets of one field with its continuation lines, in any part
MAX_HEADER_SECTION = 262_144  # octets of the message's own header section
ECHO_LIMIT = 200             # characters of a sender's Subject we ever echo

_SURROGATE = re.compile("[\ud800-\udfff]")
# C0/C1 controls, DEL and the Unicode line/paragraph separators: anything that could end a line.
_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_SPACES = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """``text`` with every lone surrogate replaced by U+FFFD (always UTF-8 encodable)."""
    return _SURROGATE.sub("\ufffd", text)


def one_line(text: object, limit: int = ECHO_LIMIT) -> str:
    """A single line of at most ``limit`` characters ('…' marks a cut)."""
    value = _SPACES.sub(" ", _BREAKS.sub(" ", clean_text(str(text or "")))).strip()
    if limit and len(value) > limit:
        value = value[: max(limit - 1, 0)].rstrip() + "…"
    return value


_BOUNDARY = re.compile(rb'boundary\s*=\s*(?:"([^"\r\n]*)"|([^\s;"]+))', re.IGNORECASE)
_CONTENT_TYPE = re.compile(rb"^content-type\s*:", re.IGNORECASE)


def _part_type(header_lines: list[bytes]) -> tuple[bytes, bytes | None]:
    """(main/sub type lower case, boundary or None) from a part's raw header lines."""
    value = b""
    collecting = False
    for line in header_lines:           # the first Content-Type counts, as in the email package
        if collecting and line[:1] in (b" ", b"\t"):
            value += line
        elif collecting:
            break
        elif _CONTENT_TYPE.match(line):
            value, collecting = line.split(b":", 1)[1], True
    ctype = value.split(b";", 1)[0].strip().lower()
    if not ctype.startswith(b"multipart/"):
        return ctype, None
    m = _BOUNDARY.search(value)
    boundary = (m.group(1) if m and m.group(1) is not None else m.group(2) if m else None)
    return ctype, boundary.strip() if boundary else None


@dataclass(frozen=True)
class Shape:
    """What shape() finds in raw bytes."""

    depth: int          # MIME nesting (1 = a single part), counted up to shape()'s stop_at
    parts: int          # MIME parts, the message itself and every container included
    field: int          # octets of the largest header field of any part
    head: int           # octets of the message's own header section


def _fields_size(lines: list[bytes]) -> int:
    """The octets of the largest field of a header block (a line and the continuation lines,
    starting with a space or tab, after it), each line end counted as one."""
    largest = field = 0
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            field += len(line) + 1
        else:
            field = len(line) + 1
        largest = max(largest, field)
    return largest


def shape(raw: bytes, stop_at: int = MAX_MIME_DEPTH + 1) -> Shape:
    """The nesting depth of the MIME tree of ``raw``, its number of parts, its largest header
    field and the size of its own header section (line ends counted as one octet), in one
    pass without recursion.

    It follows multipart boundaries and message/* parts as the email package's feed parser
    does, and stops (the sizes then cover the parts read so far) once the depth reaches
    ``stop_at`` (hostile input can be deep)."""
    stack: list[bytes | None] = []      # open containers: a boundary, or None for message/*
    depth = parts = 1
    blocks: list[list[bytes]] = []      # the header blocks read, the message's own first
    headers: list[bytes] | None = []    # collecting a header block (None: in a body)
    for line in raw.splitlines():
        if headers is not None:
            if line.strip():
                headers.append(line)
                continue
            blocks.append(headers)
            ctype, boundary = _part_type(headers)
            headers = None
            if boundary is not None:
                stack.append(b"--" + boundary)
            elif ctype.startswith(b"message/") and ctype not in (
                    b"message/delivery-status", b"message/disposition-notification",
                    b"message/external-body", b"message/feedback-report"):
                stack.append(None)
                headers = []            # the enclosed message's own header block follows
                parts += 1
            depth = max(depth, len(stack) + 1)
            if depth >= stop_at:
                break
            continue
        if not line.startswith(b"--"):
            continue
        text = line.rstrip()
        for i in range(len(stack) - 1, -1, -1):
            marker = stack[i]
            if marker is None:
                continue
            if text == marker:
                del stack[i + 1:]       # a new part of this multipart begins
                headers = []
                parts += 1
                break
            if text == marker + b"--":
                del stack[i:]           # this multipart (and all inside it) ends
                break
    if headers:                         # a header block that the end of the bytes ended
        blocks.append(headers)
    return Shape(depth, parts, max(map(_fields_size, blocks), default=0),
                 sum(len(x) + 1 for x in blocks[0]) if blocks else 0)


def header_date(value: object) -> dt.datetime | None:
    """A Date header value as an aware UTC datetime, or None when absent or unusable."""
    text = str(value or "").strip()
    if not text:
        return None
    try:
        when = parsedate_to_datetime(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        return when.astimezone(dt.timezone.utc)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class _SafeDateHeader(headerregistry.DateHeader):
    """A Date header whose unusable value (an offset of 20 digits...) is a defect, not a raise."""

    @classmethod
    def parse(cls, value: Any, kwds: dict[str, Any]) -> None:
        try:
            super().parse(value, kwds)
        except (OverflowError, ValueError):
            kwds["defects"].append(errors.InvalidDateDefect("Invalid date value or format"))
            kwds["datetime"] = None
            kwds["decoded"] = str(value)
            kwds["parse_tree"] = _header_value_parser.TokenList()


class _UnparsedHeader(headerregistry.UnstructuredHeader):
    """A structured header whose value the email package could not parse: its text, and the
    empty structure (no addresses, no parameters) for code that asks for it."""

    @classmethod
    def parse(cls, value: Any, kwds: dict[str, Any]) -> None:
        super().parse(value, kwds)
        kwds["defects"].append(errors.HeaderDefect("unparseable header value"))

    addresses: tuple[Any, ...] = ()
    groups: tuple[Any, ...] = ()
    params: dict[str, str] = {}
    datetime = None
    content_disposition = None


class _SafeRegistry(headerregistry.HeaderRegistry):
    """Header objects that never raise on access: the email package's structured parsers
    have bugs on hostile values (an AttributeError on an address list of raw bytes...).

    The email package parses a header again each time it is read (``msg["Content-Type"]``,
    ``get_content_type()``...), and a post's way through rules, transforms and decoration
    reads the same few fields dozens of times: the last CACHE header objects made from
    short values are kept and handed out again (they are read-only strings with their
    parse; equal name and value give an equal object)."""

    CACHE = 256
    CACHED_LENGTH = 2000           # longer values are parsed every time (hostile mail)

    def __init__(self) -> None:
        super().__init__()
        self._made: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict[int, Any]) -> "_SafeRegistry":
        return self               # one registry (and cache) for every copy of the policy

    def __call__(self, name: str, value: Any) -> Any:
        key = (name, value) if type(value) is str and len(value) <= self.CACHED_LENGTH \
            else None
        if key is not None:
            with self._lock:
                made = self._made.get(key)
                if made is not None:
                    self._made.move_to_end(key)
                    return made
        try:
            made = super().__call__(name, value)
        except Exception:   # noqa: BLE001 - any parser failure: read the value as text
            cls = type("_UnparsedHeader", (_UnparsedHeader, self.base_class), {})
            made = cls(name, value)
        if key is not None:
            with self._lock:
                self._made[key] = made
                if len(self._made) > self.CACHE:
                    self._made.popitem(last=False)
        return made


def _registry() -> headerregistry.HeaderRegistry:
    registry = _SafeRegistry()
    for name in ("date", "resent-date", "orig-date"):
        registry.map_to_type(name, _SafeDateHeader)  # type: ignore[arg-type]
    return registry


POLICY = policy.default.clone(header_factory=_registry())
SMTP_POLICY = POLICY.clone(linesep="\r\n")


def body_part(msg: EmailMessage, preferencelist: tuple[str, ...]) -> EmailMessage | None:
    """``msg.get_body(preferencelist)``, or None when the email package fails on the
    message's structure (a multipart without parts inside another, and the like)."""
    try:
        return msg.get_body(preferencelist=preferencelist)  # type: ignore[return-value]
    except Exception:          # noqa: BLE001 - whatever it raises on a stranger's MIME
        return None


def safe(pol: Any) -> Any:
    """``pol`` reading header fields as POLICY does (an EmailPolicy; compat32 as it is)."""
    if isinstance(pol, policy.EmailPolicy) and pol.header_factory is not POLICY.header_factory:
        return pol.clone(header_factory=POLICY.header_factory)
    return pol


def serialisable(msg: EmailMessage) -> EmailMessage:
    """``msg`` (in place) with every text payload, preamble and epilogue that is not ASCII
    turned into its UTF-8 bytes (as surrogate escapes), so the generator can always write it:
    a transform that decoded hostile 8-bit text leaves U+FFFD and the like behind; and every
    header field the generator cannot write (fit_fields)."""
    for part in msg.walk():
        fit_fields(part, every=True)
        payload = getattr(part, "_payload", None)
        if isinstance(payload, str) and part.get_content_maintype() == "multipart":
            # A multipart without parts (no usable boundary): the generator re-decodes its
            # text as ASCII, so only ASCII can be written; other bytes become '?'.
            raw = payload.encode("utf-8", "surrogateescape")
            part.set_payload(raw.decode("ascii", "replace").replace("\ufffd", "?"))
        elif isinstance(payload, str) and not payload.isascii():
            part.set_payload(_as_bytes_text(payload))
        for name in ("preamble", "epilogue"):
            value = getattr(part, name)
            if isinstance(value, str) and not value.isascii():
                setattr(part, name, _as_bytes_text(value))
    return msg


MAX_LINE = 998             # octets of a line, without its CRLF (RFC 5322 2.1.1)


def fit_fields(part: Message, every: bool = False) -> None:
    """Set again, as RFC 2047 encoded words in lines of at most 76 characters, each header
    field of ``part`` (in place, where it is) that the generator cannot write, or only with
    a line longer than RFC 5322 allows, or with a line that does not continue it: the email
    package's refolding of a hostile address field can raise, a field without a fold point
    stays one line however long, and a bare CR or LF inside a value starts a line of its
    own. Unless ``every``, only the fields as parsed that are refolded (a line longer than
    the policy's max_line_length) or have such a line are checked: the others are written
    as they came."""
    fields = part._headers                    # type: ignore[attr-defined]
    pol = part.policy if isinstance(part.policy, policy.EmailPolicy) else POLICY
    limit = pol.max_line_length or MAX_LINE
    for i, (name, value) in enumerate(fields):
        if not every and not (isinstance(value, str) and _odd_lines(value, limit)):
            continue
        try:
            folded: bytes | None = pol.fold_binary(name, value)
        except Exception:      # noqa: BLE001 - whatever the email package raises on it
            folded = None
        if folded is not None and _well_folded(folded):
            continue
        fields[i] = (name, _encoded_field(pol, name, value))


def _well_folded(folded: bytes) -> bool:
    """Is ``folded`` (a field as the generator writes it) in lines of at most 998 octets,
    each after the first continuing it? (CPython's folding of a hostile address list can
    start a line with an encoded word instead of a space.)"""
    lines = folded.rstrip(b"\r\n").split(b"\n")
    return (all(len(x.rstrip(b"\r")) <= MAX_LINE for x in lines)
            and all(x[:1] in (b" ", b"\t") for x in lines[1:]))


def _odd_lines(value: str, limit: int) -> bool:
    """Would the generator refold this parsed value (a line over ``limit``), or write a
    line of it that does not continue the field (a bare CR or LF inside it)?"""
    lines = value.splitlines()
    return (any(len(x) > limit for x in lines)
            or any(x[:1] not in (" ", "\t") for x in lines[1:]))


def _encoded_field(pol: Any, name: str, value: object) -> str:
    """A field's value as its text in RFC 2047 encoded words, folded (a source value)."""
    try:
        text = str(pol.header_fetch_parse(name, value) if isinstance(value, str) else value)
    except Exception:          # noqa: BLE001
        text = str(value)
    text = _SPACES.sub(" ", text.encode("utf-8", "surrogateescape")
                       .decode("utf-8", "replace")).strip()
    return Header(text, "utf-8", header_name=name).encode(linesep="\n")


def _as_bytes_text(text: str) -> str:
    return text.encode("utf-8", "surrogateescape").decode("ascii", "surrogateescape")
