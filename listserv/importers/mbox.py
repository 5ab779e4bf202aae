"""Add an existing mbox archive (Pipermail, HyperKitty export, any mbox) to a list's archive.

Nothing is sent and nothing enters the posting pipeline: each message is added to the
list's archive in the database (listserv.archive.index, as the archive job does) in the month
of its Date header, else of its From_ line, else of the import, and, when ``[archive] mbox``
is on, appended to that month's mbox export ``<archive>/<list>/<yyyy-mm>.mbox``; the HTML
pages of the touched months are rebuilt afterwards. Messages whose Message-ID the list's archive
already holds (or that came earlier in the same file) are skipped, so importing twice adds
nothing. A message without a Message-ID gets a stable one made from its content.

Reading: a message starts at a ``From `` line that follows a blank line (or the start of the
file) and carries a date — Pipermail's ``From ann at example.org  Mon Jan  5 10:00:00 2004``
included. One level of ``>From `` quoting is undone (mboxrd; for mboxo that is the escaping
the writer added). Pipermail's obfuscated headers (``From: ann at example.org (Ann)``) are
given their address back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time
from dataclasses import dataclass, field
from email.utils import formataddr, parsedate_to_datetime
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv.archive import (
    html as archive_html,
    index as archive_index,
    mbox as archive,
    read as archive_read,
)
from listserv.core import lists
from listserv.core.app import App
from listserv.core.errors import UsageError
from listserv.core.models import ArchiveMessage, ArchivePolicy

FLUSH_BYTES = 8 * 1024 * 1024
Pending = tuple[bytes, dt.datetime]      # message, archived_at
_FROM_LINE = re.compile(rb"^From \S+(?: at \S+)?\s.*\d\d:\d\d.*\d{4}")
_QUOTED_FROM = re.compile(rb"^>(>*From )", re.MULTILINE)
_HEADER = {name: re.compile(rb"^" + name + rb":[ \t]*(.*(?:\n[ \t].*)*)",
                            re.MULTILINE | re.IGNORECASE)
           for name in (b"message-id", b"date", b"from")}
_MSGID = re.compile(rb"<([^<>\s]+)>")
_OBFUSCATED = re.compile(r"^\s*([^\s@()<>\"]+) at ([^\s@()<>\"]+)\s*(?:\((.*)\))?\s*$")
_ADDRESS = re.compile(rb"[^\s<>\"'(),:;]+@[^\s<>\"'(),:;]+")


@dataclass
class MboxReport:
    list_address: str = ""
    messages: int = 0            # read from the file
    added: int = 0
    duplicates: int = 0          # Message-ID already archived or repeated in the file
    months: set[str] = field(default_factory=set)
    pages: int = 0
    indexed: int = 0             # rows offered to the search index
    seconds: float = 0.0


def split(fh: BinaryIO) -> Iterator[tuple[bytes, bytes, int]]:
    """(From_ line, raw message with LF endings, bytes consumed) for each message."""
    from_line: bytes | None = None
    lines: list[bytes] = []
    consumed = 0
    prev_blank = True
    for line in fh:
        consumed += len(line)
        if line.endswith(b"\r\n"):
            line = line[:-2] + b"\n"
        if prev_blank and line.startswith(b"From ") and _FROM_LINE.match(line):
            if from_line is not None or lines:
                yield from_line or b"", _finish(lines), consumed - len(line)
                consumed = len(line)
            from_line, lines = line.rstrip(b"\n"), []
        else:
            lines.append(line)
        prev_blank = line in (b"\n", b"")
    if from_line is not None or any(x.strip() for x in lines):
        yield from_line or b"", _finish(lines), consumed


def _finish(lines: list[bytes]) -> bytes:
    data = b"".join(lines)
    if data.endswith(b"\n\n"):
        data = data[:-1]             # the blank line that separates messages
    return _QUOTED_FROM.sub(rb"\1", data)


def _header(head: bytes, name: bytes) -> bytes | None:
    m = _HEADER[name].search(head)
    return m.group(1) if m else None


def _when(head: bytes, from_line: bytes, default: dt.datetime) -> dt.datetime:
    value = _header(head, b"date")
    if value:
        try:
            when = parsedate_to_datetime(" ".join(value.decode("latin-1").split()))
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
            if 1970 <= when.year <= default.year + 1:
                return when.astimezone(dt.timezone.utc)
        except (TypeError, ValueError, IndexError, OverflowError):
            pass
    return archive_read.from_line_time(from_line) or default


def deobfuscate_from(value: str) -> str | None:
    """'ann at example.org (Ann Smith)' -> 'Ann Smith <ann@example.org>' (Pipermail's
    published form); None when ``value`` is not in that form."""
    m = _OBFUSCATED.match(value)
    if m is None or "@" in value:
        return None
    return formataddr(((m.group(3) or "").strip(), f"{m.group(1)}@{m.group(2)}"))


def prepare(raw: bytes, from_line: bytes, list_domain: str,
            default: dt.datetime) -> tuple[bytes, str, dt.datetime, str]:
    """(message bytes, Message-ID, date, sender) of one mbox message, repaired as described
    in the module docstring."""
    head, sep, body = raw.partition(b"\n\n")
    if not sep:
        head, body = raw.rstrip(b"\n"), b""
    from_value = _header(head, b"from")
    if from_value is not None and b"@" not in from_value:
        fixed = deobfuscate_from(" ".join(from_value.decode("utf-8", "replace").split()))
        if fixed is not None:
            head = _HEADER[b"from"].sub(lambda _: b"From: " + fixed.encode("utf-8"), head,
                                        count=1)
            from_value = fixed.encode("utf-8")
    found = _MSGID.search(_header(head, b"message-id") or b"")
    if found is not None:
        msgid = found.group(1).decode("ascii", "replace")
    else:
        digest = hashlib.sha256(raw).hexdigest()[:32]
        msgid = f"imported.{digest}@{list_domain}"
        head = f"Message-ID: <{msgid}>\n".encode() + head
    sender_match = _ADDRESS.search(from_value or b"")
    sender = sender_match.group(0).decode("ascii", "replace") if sender_match else ""
    return head + b"\n\n" + body, msgid, _when(head, from_line, default), sender


def archived_ids(session: Session, list_id: int) -> set[str]:
    """Every Message-ID in the list's archive."""
    return set(session.scalars(select(ArchiveMessage.message_id)
                               .where(ArchiveMessage.list_id == list_id)))


def import_mbox(app: App, list_address: str, path: str | Path, *, dry_run: bool = False,
                html: bool = True, progress: Callable[[int], None] | None = None
                ) -> MboxReport:
    """Append the messages of the mbox file ``path`` to the list's archive (see module doc)."""
    started = time.monotonic()
    with app.db.unit_of_work() as session:
        ml = lists.get_list(session, list_address)
        if ml.archive is ArchivePolicy.none:
            raise UsageError(f"{ml.address} is not archived (archive = none); "
                             "set archive to public or private first")
        info = archive_html.ListInfo.of(ml)
        domain, list_id = ml.domain.name, ml.id
        seen = archived_ids(session, list_id)
    report = MboxReport(list_address=info.address)
    now = app.now()
    pending: dict[str, list[Pending]] = {}
    size = 0

    def flush() -> None:
        if not dry_run:
            report.indexed += _flush(app, list_id, info.address, pending)
        pending.clear()

    with open(path, "rb") as fh:
        for from_line, raw, consumed in split(fh):
            report.messages += 1
            data, msgid, when, sender = prepare(raw, from_line, domain, now)
            if msgid in seen:
                report.duplicates += 1
            else:
                seen.add(msgid)
                report.added += 1
                month = f"{when.year:04d}-{when.month:02d}"
                report.months.add(month)
                pending.setdefault(month, []).append((data, when))
                size += len(data)
                if size >= FLUSH_BYTES:
                    flush()
                    size = 0
            if progress is not None:
                progress(consumed)
    flush()
    if html and report.months and not dry_run:
        built = archive_html.build(app, info, archive_html.default_out(app, info.address),
                                   sorted(report.months), new_only=True)
        report.pages = built.pages
    report.seconds = time.monotonic() - started
    return report


def _flush(app: App, list_id: int, address: str, pending: dict[str, list[Pending]]) -> int:
    """Add the pending messages to the list's archive in one transaction and, when
    ``[archive] mbox`` is on, append them to their months' mbox exports before the commit.
    Returns the messages added."""
    items = [(data, month, when) for month, entries in pending.items()
             for data, when in entries]
    with app.db.unit_of_work() as session:
        added = archive_index.add_messages(session, list_id, items, preload=True)
        if app.settings.archive.mbox:
            by_month: dict[str, list[bytes]] = {}
            for i in added:
                data, month, when = items[i]
                by_month.setdefault(month, []).append(
                    archive_read.mbox_entry(data, when.timestamp()))
            for month, chunks in by_month.items():
                archive.append_file(archive_read.month_path(app.settings.archive_path,
                                                            address, month), b"".join(chunks))
        return len(added)
