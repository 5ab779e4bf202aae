"""Reading the archive from the database: each archived message is an ArchiveMessage row (its
month, headers, thread, text; listserv.archive.index writes them) and its bytes in ArchiveRaw.

The web archive, the static pages (listserv.archive.html), ``get``/``index`` by mail and the
mbox export all read here, so any process on any host that reaches the database serves the
same archive. A month's messages are in archive order: the order they were archived (row id),
which is the order of the month's mbox export.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listserv.archive import files, read as archive_read
from listserv.core.models import ArchiveMessage, ArchiveRaw

READ_BATCH = 200            # messages read per query when streaming a month


def months(session: Session, list_id: int) -> list[str]:
    """The list's archived months, oldest first ('2026-11')."""
    return list(session.scalars(select(ArchiveMessage.month).distinct()
                                .where(ArchiveMessage.list_id == list_id)
                                .order_by(ArchiveMessage.month)))


def month_counts(session: Session, list_id: int) -> dict[str, int]:
    """Messages per archived month, oldest first."""
    return {m: n for m, n in session.execute(
        select(ArchiveMessage.month, func.count())
        .where(ArchiveMessage.list_id == list_id)
        .group_by(ArchiveMessage.month).order_by(ArchiveMessage.month))}


def raw(session: Session, message_pk: int) -> bytes:
    """The bytes of an archived message; LookupError when the database has none for it (an
    archive indexed before its bytes moved into the database: README, upgrading)."""
    data = session.scalar(select(ArchiveRaw.data).where(ArchiveRaw.message_pk == message_pk))
    if data is None:
        raise LookupError(f"archived message {message_pk} has no bytes in the database")
    return bytes(data)


def _stream(session: Session, list_id: int, month: str
            ) -> Iterator[tuple[int, bytes, dt.datetime]]:
    """(id, bytes, archived_at) of the month's messages in archive order, READ_BATCH per query;
    messages without bytes are left out."""
    last = 0
    while True:
        rows = session.execute(
            select(ArchiveMessage.id, ArchiveRaw.data, ArchiveMessage.archived_at)
            .join(ArchiveRaw, ArchiveRaw.message_pk == ArchiveMessage.id)
            .where(ArchiveMessage.list_id == list_id, ArchiveMessage.month == month,
                   ArchiveMessage.id > last)
            .order_by(ArchiveMessage.id).limit(READ_BATCH)).all()
        if not rows:
            return
        for pk, data, archived_at in rows:
            yield pk, bytes(data), archived_at
        last = rows[-1][0]


def month_index(session: Session, list_id: int, month: str
                ) -> list[tuple[int, dt.datetime]]:
    """(id, archived_at) of the month's messages in archive order, without their bytes
    (messages without bytes are left out, as by the mbox export); the static pages number
    them from 1 in this order."""
    return [(pk, at) for pk, at in session.execute(
        select(ArchiveMessage.id, ArchiveMessage.archived_at)
        .join(ArchiveRaw, ArchiveRaw.message_pk == ArchiveMessage.id)
        .where(ArchiveMessage.list_id == list_id, ArchiveMessage.month == month)
        .order_by(ArchiveMessage.id))]


def raw_of(session: Session, pks: list[int]) -> dict[int, bytes]:
    """The bytes of the messages ``pks`` (READ_BATCH per query)."""
    out: dict[int, bytes] = {}
    for i in range(0, len(pks), READ_BATCH):
        out.update((pk, bytes(data)) for pk, data in session.execute(
            select(ArchiveRaw.message_pk, ArchiveRaw.data)
            .where(ArchiveRaw.message_pk.in_(pks[i:i + READ_BATCH]))))
    return out


def mbox_entries(session: Session, list_id: int, month: str) -> Iterator[bytes]:
    """The month's mbox export, one mboxrd entry per message, in archive order."""
    for _, data, archived_at in _stream(session, list_id, month):
        yield archive_read.mbox_entry(data, archived_at.timestamp())


def month_size(session: Session, list_id: int, month: str) -> int:
    """The bytes of the month's messages (its mbox export is a little larger: From_ lines)."""
    return int(session.scalar(
        select(func.coalesce(func.sum(func.length(ArchiveRaw.data)), 0))
        .join(ArchiveMessage, ArchiveRaw.message_pk == ArchiveMessage.id)
        .where(ArchiveMessage.list_id == list_id, ArchiveMessage.month == month)) or 0)


def month_mbox(session: Session, list_id: int, month: str, cap: int) -> tuple[bytes, int, int]:
    """The month as an mbox, cut at a message boundary to fit in ``cap`` bytes: (bytes,
    messages included, messages in the month)."""
    total = session.scalar(select(func.count()).select_from(ArchiveMessage).where(
        ArchiveMessage.list_id == list_id, ArchiveMessage.month == month)) or 0
    chunks: list[bytes] = []
    size = 0
    for entry in mbox_entries(session, list_id, month):
        if size + len(entry) > cap:
            break
        chunks.append(entry)
        size += len(entry)
    return b"".join(chunks), len(chunks), total


def export_month(session: Session, list_id: int, month: str, path: Path) -> int:
    """Write the month's mbox export to ``path`` (atomically and durably: a reader never sees
    half a file, listserv.archive.files); how many messages it holds."""
    count = 0

    def entries() -> Iterator[bytes]:
        nonlocal count
        for entry in mbox_entries(session, list_id, month):
            count += 1
            yield entry

    files.replace(path, entries(), durable=True)
    return count
