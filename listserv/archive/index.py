"""The archive in the database: one ArchiveMessage row per archived post (its month, headers,
thread, body text: what the web archive and its search read) and its bytes in ArchiveRaw
(public-inbox's lesson: the raw messages are the truth, the index is derived from them and
can be rebuilt at any time).

    add_messages(session, list_id, items) -> positions added
    reindex(app, session, ml) -> int          the index fields again, from the bytes
    ingest_mbox(app, session, ml) -> int      an older install's mbox files into the database

The archive job (listserv.archive) and the importers add messages with add_messages; the
engine's full-text index follows the rows by itself (migration 0009_archive_search).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message
from email.utils import getaddresses
from typing import Any, Iterable, cast

from sqlalchemy import Table, exists, func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from listserv.archive import read as archive_read
from listserv.message import htmlmail, untrusted
from listserv.core.app import App
from listserv.core.models import ArchiveMessage, ArchiveRaw, MailingList
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
    part = untrusted.body_part(msg, ("plain", "html"))
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
    """Parent and thread of a new message: the first of its parent ids already archived
    (earlier messages are added first, so replies follow their parents). ``known`` holds the
    messages seen in this run; with ``lookup`` the others are looked up in the database, else
    ``known`` is taken to be complete (preloaded, or a rebuild in archive order)."""

    def __init__(self, session: Session, list_id: int, lookup: bool) -> None:
        self.session, self.list_id, self.lookup = session, list_id, lookup
        self.known: dict[str, str] = {}

    def preload(self) -> "_Threads":
        for mid, tid in self.session.execute(
                select(ArchiveMessage.message_id, ArchiveMessage.thread_id)
                .where(ArchiveMessage.list_id == self.list_id)):
            self.known[mid] = tid
        return self

    def place(self, f: Fields) -> tuple[str | None, str]:
        found = {p: self.known[p] for p in f.parent_ids if p in self.known}
        missing = [p for p in f.parent_ids if p not in found]
        if self.lookup and missing:
            for mid, tid in self.session.execute(
                    select(ArchiveMessage.message_id, ArchiveMessage.thread_id)
                    .where(ArchiveMessage.list_id == self.list_id,
                           ArchiveMessage.message_id.in_(missing))):
                found[mid] = tid
        for pid in f.parent_ids:
            if pid in found:
                return pid, found[pid]
        return None, f.message_id

    def add(self, message_id: str, thread_id: str) -> None:
        self.known.setdefault(message_id, thread_id)


def _row(list_id: int, f: Fields, threads: _Threads, month: str,
         archived_at: dt.datetime) -> dict[str, Any]:
    parent, thread = threads.place(f)
    threads.add(f.message_id, thread)
    return {"list_id": list_id, "message_id": f.message_id, "month": month,
            "archived_at": archived_at, "sent_at": f.sent_at, "sender_name": f.sender_name,
            "sender_address": f.sender_address, "subject": f.subject, "parent_id": parent,
            "thread_id": thread, "body": f.body, "attachments": f.attachments}


def _insert(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert, skipping a Message-ID the list's archive has already (an importer running
    alongside the archive job, a message archived twice)."""
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    upsert = sqlite.insert if dialect == "sqlite" else postgresql.insert
    session.execute(upsert(ArchiveMessage).on_conflict_do_nothing(
        index_elements=["list_id", "message_id"]), rows)


Item = tuple[bytes, str, dt.datetime]       # message bytes (LF line ends), month, archived_at


def add_messages(session: Session, list_id: int, items: Iterable[Item], *,
                 preload: bool = False) -> list[int]:
    """Archive each (bytes, month, archived_at): its index row and its bytes. A Message-ID
    the list's archive already holds is skipped (its bytes are stored when its row had none:
    an archive indexed before the bytes were in the database). An unreadable message is
    logged and skipped. Returns the positions in ``items`` of the messages whose bytes were
    stored. ``preload``: read the list's threads once (many messages: importers); otherwise
    each message's parents are looked up."""
    threads = _Threads(session, list_id, lookup=not preload)
    if preload:
        threads.preload()
    return _add(session, list_id, items, threads)


def _add(session: Session, list_id: int, items: Iterable[Item], threads: _Threads) -> list[int]:
    added: list[int] = []
    batch: list[tuple[int, bytes, dict[str, Any]]] = []
    for position, (data, month, archived_at) in enumerate(items):
        try:
            fields = extract(data)
        except Exception:  # noqa: BLE001 - the archive goes on; reindex can retry later
            log.exception("archive: message %d of %s not readable, not archived", position,
                          month)
            continue
        batch.append((position, data, _row(list_id, fields, threads, month, archived_at)))
        if len(batch) >= REINDEX_BATCH:
            added += _store(session, list_id, batch)
            batch = []
    return added + _store(session, list_id, batch)


def _store(session: Session, list_id: int,
           batch: list[tuple[int, bytes, dict[str, Any]]]) -> list[int]:
    """Insert the batch's index rows, then the bytes of each row that has none yet."""
    if not batch:
        return []
    _insert(session, [row for _, _, row in batch])
    first: dict[str, tuple[int, bytes]] = {}
    for position, data, row in batch:
        first.setdefault(row["message_id"], (position, data))
    bare = session.execute(
        select(ArchiveMessage.id, ArchiveMessage.message_id)
        .where(ArchiveMessage.list_id == list_id, ArchiveMessage.message_id.in_(list(first)),
               ~exists().where(ArchiveRaw.message_pk == ArchiveMessage.id))).all()
    if not bare:
        return []
    # Core executemany: the ORM's bulk insert would send one statement per row here.
    session.connection().execute(insert(cast(Table, ArchiveRaw.__table__)),
                                 [{"message_pk": pk, "data": first[mid][1]} for pk, mid in bare])
    return sorted(first[mid][0] for _, mid in bare)


def reindex(app: App, session: Session, ml: MailingList) -> tuple[int, int]:
    """Compute ``ml``'s index fields and threads again from the archived bytes (a newer
    listserv reads mail better, or the rows were edited). Returns (messages reindexed,
    messages without bytes in the database, left as they are)."""
    threads = _Threads(session, ml.id, lookup=False)      # rows come in archive order
    count = last = 0
    while True:
        rows = session.execute(
            select(ArchiveMessage.id, ArchiveMessage.message_id, ArchiveMessage.month,
                   ArchiveMessage.archived_at, ArchiveRaw.data)
            .join(ArchiveRaw, ArchiveRaw.message_pk == ArchiveMessage.id)
            .where(ArchiveMessage.list_id == ml.id, ArchiveMessage.id > last)
            .order_by(ArchiveMessage.id).limit(REINDEX_BATCH)).all()
        if not rows:
            break
        updates = []
        for pk, mid, month, archived_at, data in rows:
            try:
                fields = dataclasses.replace(extract(bytes(data)), message_id=mid)
            except Exception:  # noqa: BLE001
                log.exception("archive reindex: %s message <%s> skipped", ml.address, mid)
                continue
            row = _row(ml.id, fields, threads, month, archived_at)
            del row["list_id"], row["message_id"], row["month"], row["archived_at"]
            updates.append({"id": pk, **row})
        if updates:
            session.execute(update(ArchiveMessage), updates)
        count += len(updates)
        last = rows[-1][0]
    bare = session.scalar(select(func.count()).select_from(ArchiveMessage).where(
        ArchiveMessage.list_id == ml.id,
        ~exists().where(ArchiveRaw.message_pk == ArchiveMessage.id))) or 0
    return count, bare


def ingest_mbox(app: App, session: Session, ml: MailingList) -> int:
    """Add the messages of ``ml``'s mbox files under <data_dir>/archives (an install from
    before the archive was in the database, or files put back from a backup) that the
    database lacks; returns how many were added (bytes stored)."""
    threads = _Threads(session, ml.id, lookup=False).preload()
    added = 0
    for month in archive_read.months(app.settings.archive_path, ml.address):
        path = archive_read.month_path(app.settings.archive_path, ml.address, month)
        fallback = dt.datetime.strptime(month, "%Y-%m").replace(tzinfo=dt.timezone.utc)
        items = [(raw, month, archive_read.from_line_time(first) or fallback)
                 for _, _, first, raw in archive_read.scan_mbox(path.read_bytes())]
        added += len(_add(session, ml.id, items, threads))
    return added
