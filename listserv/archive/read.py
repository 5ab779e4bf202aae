"""The mbox format of the archive exports, and reading archived messages' headers.

The files are what listserv.archive.mbox writes (and ``listserv archive export``):
``<data_dir>/archives/<list>/<yyyy-mm>.mbox``, mboxrd (every body line matching ``>*From ``
got one more ``>``), each entry ended by a blank line. The archive itself is in the database
(listserv.archive.store); these files are read back only to bring an older install's mbox
archive into it (``listserv archive reindex --from-mbox``). A crash between the append and
its commit can write an entry twice: readers drop an entry whose Message-ID they have seen.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path
from typing import Any, Iterable, Iterator

from listserv.message import untrusted
from listserv.message.parse import parse as parse_message

MONTH_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_FROM_LINE = re.compile(rb"^From ", re.MULTILINE)
_MESSAGE_ID = re.compile(rb"^message-id:\s*<([^<>\s]+)>", re.MULTILINE | re.IGNORECASE)
_FROM_HEADER = re.compile(rb"^from:[ \t]*(.*(?:\n[ \t].*)*)", re.MULTILINE | re.IGNORECASE)
_ADDRESS = re.compile(rb"[^\s<>\"'(),:;]+@[^\s<>\"'(),:;]+")
_ANY_FROM_LINE = re.compile(rb"^>*From ", re.MULTILINE)


@dataclass(frozen=True)
class Entry:
    """One archived message: its position in the month (1-based, after dropping duplicates),
    the raw message (From_ line removed, mboxrd quoting undone, LF endings) and the From_
    line's time (when it was archived)."""

    number: int
    raw: bytes
    archived_at: dt.datetime | None

    def headers(self) -> Message:
        """The header block only, parsed the cheap way (compat32; text_header() decodes)."""
        head = self.raw.split(b"\n\n", 1)[0] + b"\n\n"
        return BytesHeaderParser(policy=policy.compat32).parsebytes(head)

    def message(self) -> EmailMessage:
        return parse_message(self.raw)


def parse_compat32(raw: bytes) -> Message:
    """``raw`` parsed with compat32, the same Message as BytesParser(policy=compat32) gives,
    made cheaper for the common single-part message: only the header block goes through the
    feed parser (which works line by line), the body is set as the payload in one piece, as
    the parser would. Multipart and message/* bodies, and header blocks the parser ends
    early (a line that is no header), get the full parse."""
    head, sep, body = raw.partition(b"\n\n")
    if sep and b"\r" not in head:
        msg = BytesParser(policy=policy.compat32).parsebytes(head + b"\n\n", headersonly=True)
        if msg.get_payload() == "" and msg.get_content_maintype() not in ("multipart",
                                                                          "message"):
            msg.set_payload(body.decode("ascii", "surrogateescape"))
            return msg
    return BytesParser(policy=policy.compat32).parsebytes(raw)


def list_dir(archive_root: Path, list_address: str) -> Path:
    return archive_root / list_address.lower()


def months(archive_root: Path, list_address: str) -> list[str]:
    """The archived months of a list, oldest first ('2026-11')."""
    base = list_dir(archive_root, list_address)
    if not base.is_dir():
        return []
    return sorted(p.stem for p in base.glob("*.mbox") if MONTH_RE.match(p.stem))


def month_path(archive_root: Path, list_address: str, month: str) -> Path:
    if not MONTH_RE.match(month):
        raise ValueError(f"not a month (YYYY-MM): {month!r}")
    return list_dir(archive_root, list_address) / f"{month}.mbox"


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug",
                                        "Sep", "Oct", "Nov", "Dec"), 1)}
_DAYS = frozenset(("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"))
_CLOCK = re.compile(r"(\d\d):(\d\d):(\d\d)\Z")


def from_line_time(line: bytes) -> dt.datetime | None:
    # "From sender Thu Nov 26 23:55:04 2026"
    parts = line.decode("ascii", "replace").split()
    if len(parts) < 7:
        return None
    day, month, date, clock, year = parts[-5:]
    hms = _CLOCK.match(clock)
    if (day in _DAYS and month in _MONTHS and hms is not None and date.isdigit()
            and len(date) <= 2 and year.isdigit() and len(year) == 4):
        # The form time.asctime writes (every From_ line listserv writes), without strptime.
        try:
            return dt.datetime(int(year), _MONTHS[month], int(date), int(hms[1]), int(hms[2]),
                               int(hms[3]), tzinfo=dt.timezone.utc)
        except ValueError:
            return None
    try:
        t = dt.datetime.strptime(" ".join(parts[-5:]), "%a %b %d %H:%M:%S %Y")
    except ValueError:
        return None
    return t.replace(tzinfo=dt.timezone.utc)


def split_mbox(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(From_ line, raw message) pairs of an mboxrd file's bytes."""
    for _, _, first, raw in scan_mbox(data):
        yield first, raw


def scan_mbox(data: bytes) -> Iterator[tuple[int, int, bytes, bytes]]:
    """(offset, length, From_ line, raw message) of each entry of an mboxrd file's bytes:
    the entry is ``data[offset:offset + length]`` (what entry_raw() reads back)."""
    starts = [m.start() for m in _FROM_LINE.finditer(data)]
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(data)
        first, raw = unquote_entry(data[start:end])
        yield start, end - start, first, raw


def unquote_entry(chunk: bytes) -> tuple[bytes, bytes]:
    """One mboxrd entry (From_ line to the next) -> (From_ line, raw message)."""
    first, _, body = chunk.partition(b"\n")
    if body.endswith(b"\n\n"):
        body = body[:-1]        # the separating blank line the writer adds
    return first, _QUOTED_FROM.sub(rb"\1", body)


def message_id_of(raw: bytes) -> str:
    """The Message-ID of a raw message, found the cheap way ('' when it has none)."""
    found = _MESSAGE_ID.search(raw.split(b"\n\n", 1)[0])
    return found.group(1).decode("ascii", "replace") if found else ""


def read_month(archive_root: Path, list_address: str, month: str) -> list[Entry]:
    """The entries of one month's mbox file (empty when there is none), an entry whose
    Message-ID came earlier in the file left out."""
    path = month_path(archive_root, list_address, month)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[Entry] = []
    seen: set[str] = set()
    for from_line, raw in split_mbox(data):
        mid = message_id_of(raw)
        if mid:
            if mid in seen:
                continue
            seen.add(mid)
        out.append(Entry(len(out) + 1, raw, from_line_time(from_line)))
    return out


def from_line_sender(data: bytes) -> str:
    """The From_ line's address of a message: the first address of its From header."""
    found = _FROM_HEADER.search(data.split(b"\n\n", 1)[0])
    address = _ADDRESS.search(found.group(1)) if found else None
    return address.group(0).decode("ascii", "replace") if address else "MAILER-DAEMON"


def mbox_entry(data: bytes, when: float) -> bytes:
    """One mboxrd entry of a message: From_ line (the From address and ``when``, a POSIX
    time), body with LF endings and '>From ' quoting, blank line."""
    data = data.replace(b"\r\n", b"\n")
    sender = "".join(from_line_sender(data).split()) or "MAILER-DAEMON"
    stamp = time.asctime(time.gmtime(when))
    body = _ANY_FROM_LINE.sub(lambda m: b">" + m.group(0), data)
    if not body.endswith(b"\n"):
        body += b"\n"
    return f"From {sender} {stamp}\n".encode("utf-8", "replace") + body + b"\n"


# ---------------------------------------------------------------------------- header helpers


def text_header(msg: Message, name: str) -> str:
    """A header as display text (RFC 2047 decoded, folded whitespace collapsed), from a
    message parsed with policy.default or compat32."""
    value = msg.get(name)
    if value is None:
        return ""
    try:
        if msg.policy is policy.compat32:
            # compat32 hands back the stored string itself unless it holds raw 8-bit bytes
            # (then a Header object): only that case needs the stored value looked up.
            raw = value if isinstance(value, str) else next(
                v for k, v in msg.raw_items() if k.lower() == name.lower())
            text = _decode_compat32(str(raw))
        else:
            text = str(value)
    except Exception:  # noqa: BLE001 - a malformed header must not stop an archive page
        text = str(msg.get_all(name, [""])[0])
    return " ".join(text.split())


def text_headers(msg: Message, names: Iterable[str]) -> dict[str, str]:
    """text_header() of each name, from one walk over a compat32 message's headers (the
    same values; any other message: text_header() per name)."""
    names = list(names)
    if msg.policy is not policy.compat32:
        return {n: text_header(msg, n) for n in names}
    wanted = {n.lower(): n for n in names}
    raw: dict[str, Any] = {}
    for key, value in msg.raw_items():
        name = wanted.get(key.lower())
        if name is not None and name not in raw:
            raw[name] = value
    out: dict[str, str] = {}
    for name in names:
        if name not in raw:
            out[name] = ""
            continue
        try:
            text = _decode_compat32(str(raw[name]))
        except Exception:  # noqa: BLE001 - as text_header
            text = str(msg.get_all(name, [""])[0])
        out[name] = " ".join(text.split())
    return out


def _decode_compat32(text: str) -> str:
    if re.search("[\udc80-\udcff]", text):          # raw 8-bit bytes: UTF-8, else cp1252
        data = text.encode("ascii", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", "replace")
    if "=?" not in text:
        return text
    return str(make_header(decode_header(text)))


def message_id(msg: Message) -> str:
    ids = msg_ids(text_header(msg, "Message-ID"))
    return ids[0] if ids else ""


def msg_ids(value: str) -> list[str]:
    """The <...> ids of an In-Reply-To / References / Message-ID value, without brackets."""
    return re.findall(r"<([^<>\s]+)>", value)


def sent_at(msg: Message, fallback: dt.datetime | None) -> dt.datetime | None:
    """The Date header as UTC, or ``fallback`` when it is missing or hostile."""
    when = untrusted.header_date(text_header(msg, "Date"))
    return fallback if when is None else when
