"""The archive index: one ArchiveMessage row per archived post, for the web archive and its
full-text search (public-inbox's lesson: the mbox files are the truth, the index is derived
and can be rebuilt at any time).

    index_message(session, list_id, raw, month=, offset=, length=, archived_at=) -> bool
    reindex(app, ml) -> int

The archive worker calls index_message for each entry it appends, in the transaction that
marks the entry written; ``listserv archive reindex`` rebuilds a list's rows from its mbox
files. Importers that add to an archive call index_message (or reindex) the same way. The
engine's full-text index follows the rows by itself (migration 0009_archive_search).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Any, Iterable

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from listserv.archive import read as archive_read
from listserv.message import htmlmail, untrusted
from listserv.core.app import App
from listserv.core.models import ArchiveMessage, MailingList
from listserv.message.parse import parse as parse_message

log = logging.getLogger(__name__)

BODY_CAP = 100_000          # characters of body text kept and indexed per message
REINDEX_BATCH = 500


@dataclass(frozen=True)
class Fields:
    """What the index keeps of one message (pure: extract())."""

    message_id: str
    sent_at: dt.datetime | None
    sender_name: str
    sender_address: str
    subject: str
    parent_ids: tuple[str, ...]     # In-Reply-To, then References from the nearest
    body: str
    attachments: int


def _clean(text: str, cap: int) -> str:
    """Text the database accepts: no NUL, no lone surrogates, at most ``cap`` characters."""
    text = text.replace("\x00", "")
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text[:cap]


def body_text(msg: EmailMessage) -> str:
    """The readable text of a message: its text/plain body, else its HTML body as text."""
    part = msg.get_body(preferencelist=("plain", "html"))
    if part is None:
        return ""
    try:
        text = part.get_content()
    except (LookupError, ValueError, AttributeError, AssertionError):
        payload = part.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(text, str):
        return ""
    if part.get_content_subtype() == "html":
        return htmlmail.to_text(text)
    return text


def is_attachment(part: Any) -> bool:
    return not part.is_multipart() and (part.get_content_disposition() == "attachment"
                                         or bool(part.get_filename()))


def _plain_text(msg: Message) -> str | None:
    """The body of a single-part text/plain message, decoded as policy.default would (its
    charset, undecodable bytes replaced); None for any other structure."""
    if msg.is_multipart() or msg.get_content_type() != "text/plain":
        return None
    if msg.get_filename() or msg.get_content_disposition() == "attachment":
        return None
    payload = msg.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    try:
        return payload.decode(msg.get_content_charset() or "us-ascii", "replace")
    except LookupError:
        return None


def extract(raw: bytes) -> Fields:
    """The index fields of a raw message (LF or CRLF line ends). Never raises on bad mail.

    Plain single-part text messages (most list mail, and most of an imported archive) are
    read with the compat32 parser, several times cheaper than policy.default's header
    registry; anything else gets the full parse."""
    simple = archive_read.parse_compat32(raw)
    body = _plain_text(simple)
    if body is not None:
        return _fields(simple, raw, body, 0)
    msg = parse_message(raw)
    assert isinstance(msg, EmailMessage)
    try:
        body = body_text(msg)
    except Exception:  # noqa: BLE001 - a broken MIME structure still has searchable headers
        log.warning("archive index: no body text for <%s>", archive_read.message_id(msg))
        body = ""
    try:
        attachments = sum(1 for part in msg.walk() if is_attachment(part))
    except Exception:  # noqa: BLE001
        attachments = 0
    return _fields(msg, raw, body, attachments)


FIELD_HEADERS = ("Message-ID", "From", "In-Reply-To", "References", "Date", "Subject")


def _fields(msg: Message, raw: bytes, body: str, attachments: int) -> Fields:
    texts = archive_read.text_headers(msg, FIELD_HEADERS)      # one walk over the headers
    ids = archive_read.msg_ids(texts["Message-ID"])
    mid = ids[0] if ids else ""
    if not mid:     # stable across reindexing: derived from the content
        mid = hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()[:32] + "@archive.invalid"
    pairs = getaddresses([texts["From"]])
    name, address = pairs[0] if pairs else ("", "")
    parents = archive_read.msg_ids(texts["In-Reply-To"])[:1]
    parents += reversed(archive_read.msg_ids(texts["References"]))
    return Fields(message_id=_clean(mid, 998),
                  sent_at=untrusted.header_date(texts["Date"]),
                  sender_name=_clean(name.strip(), 255),
                  sender_address=_clean(address.strip().lower(), 320),
                  subject=_clean(texts["Subject"], 2000),
                  parent_ids=tuple(_clean(p, 998) for p in parents if p != mid),
                  body=_clean(body, BODY_CAP),
                  attachments=attachments)


class _Threads:
    """Parent and thread of a new message: the first of its parent ids already in the
    list's index (earlier messages are indexed first, so replies follow their parents)."""

    def __init__(self, session: Session, list_id: int, cache: bool) -> None:
        self.session, self.list_id = session, list_id
        self.known: dict[str, str] | None = {} if cache else None

    def place(self, f: Fields) -> tuple[str | None, str]:
        found: dict[str, str]
        if self.known is not None:
            found = {p: self.known[p] for p in f.parent_ids if p in self.known}
        elif f.parent_ids:
            found = {mid: tid for mid, tid in self.session.execute(
                select(ArchiveMessage.message_id, ArchiveMessage.thread_id)
                .where(ArchiveMessage.list_id == self.list_id,
                       ArchiveMessage.message_id.in_(f.parent_ids)))}
        else:
            found = {}
        for pid in f.parent_ids:
            if pid in found:
                return pid, found[pid]
        return None, f.message_id

    def add(self, message_id: str, thread_id: str) -> None:
        if self.known is not None:
            self.known.setdefault(message_id, thread_id)


def _row(list_id: int, f: Fields, threads: _Threads, month: str, offset: int, length: int,
         archived_at: dt.datetime) -> dict[str, Any]:
    parent, thread = threads.place(f)
    threads.add(f.message_id, thread)
    return {"list_id": list_id, "message_id": f.message_id, "month": month,
            "mbox_offset": offset, "mbox_length": length, "archived_at": archived_at,
            "sent_at": f.sent_at, "sender_name": f.sender_name,
            "sender_address": f.sender_address, "subject": f.subject, "parent_id": parent,
            "thread_id": thread, "body": f.body, "attachments": f.attachments}


def _insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert, skipping a Message-ID the list's index has already (a reindex running
    alongside the archive worker, a message archived twice)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    session.execute(insert(ArchiveMessage).on_conflict_do_nothing(
        index_elements=["list_id", "message_id"]), rows)


def index_message(session: Session, list_id: int, raw: bytes, *, month: str, offset: int,
                  length: int, archived_at: dt.datetime) -> bool:
    """Add one archived message to the index: ``raw`` is the message stored at ``offset``
    (``length`` bytes, From_ line included) in the list's ``month`` mbox. Returns False
    (and logs) when the message could not be read; the caller's transaction stays usable."""
    try:
        fields = extract(raw)
    except Exception:  # noqa: BLE001 - the archive must go on; reindex can retry later
        log.exception("archive index: message at %s:%d not indexed", month, offset)
        return False
    _insert(session, [_row(list_id, fields, _Threads(session, list_id, cache=False), month,
                           offset, length, archived_at)])
    return True


def _month_rows(app: App, address: str, list_id: int, month: str,
                threads: _Threads) -> Iterable[dict[str, Any]]:
    path = archive_read.month_path(app.settings.archive_path, address, month)
    data = path.read_bytes()
    fallback = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=dt.timezone.utc)
    for offset, length, first, raw in archive_read.scan_mbox(data):
        try:
            fields = extract(raw)
        except Exception:  # noqa: BLE001
            log.exception("archive index: %s %s:%d skipped", address, month, offset)
            continue
        if threads.known is not None and fields.message_id in threads.known:
            continue            # a duplicate entry (crash between append and commit)
        archived_at = archive_read.from_line_time(first) or fallback
        yield _row(list_id, fields, threads, month, offset, length, archived_at)


def reindex(app: App, session: Session, ml: MailingList) -> int:
    """Rebuild ``ml``'s index from its mbox files; returns how many messages it holds."""
    session.execute(delete(ArchiveMessage).where(ArchiveMessage.list_id == ml.id))
    threads = _Threads(session, ml.id, cache=True)
    count = 0
    for month in archive_read.months(app.settings.archive_path, ml.address):
        batch: list[dict[str, Any]] = []
        for row in _month_rows(app, ml.address, ml.id, month, threads):
            batch.append(row)
            if len(batch) >= REINDEX_BATCH:
                _insert(session, batch)
                count += len(batch)
                batch = []
        _insert(session, batch)
        count += len(batch)
    return count


def index_messages(session: Session, list_id: int,
                   items: Iterable[tuple[bytes, str, int, int, dt.datetime]]) -> int:
    """Bulk form of index_message for importers (listserv.importers.mbox): each item is
    (raw message, month, offset, length, archived_at). The list's known threads are read
    once and the rows inserted in batches; an unreadable message is logged and skipped.
    Returns how many rows were offered."""
    threads = _Threads(session, list_id, cache=True)
    assert threads.known is not None
    for mid, tid in session.execute(select(ArchiveMessage.message_id, ArchiveMessage.thread_id)
                                    .where(ArchiveMessage.list_id == list_id)):
        threads.known[mid] = tid
    batch: list[dict[str, Any]] = []
    count = 0
    for raw, month, offset, length, archived_at in items:
        try:
            fields = extract(raw)
        except Exception:  # noqa: BLE001 - the archive goes on; reindex can retry later
            log.exception("archive index: message at %s:%d not indexed", month, offset)
            continue
        batch.append(_row(list_id, fields, threads, month, offset, length, archived_at))
        if len(batch) >= REINDEX_BATCH:
            _insert(session, batch)
            count += len(batch)
            batch = []
    _insert(session, batch)
    return count + len(batch)
