"""Bulk member import: read a file of addresses, then insert them in batched transactions.

A file is either plain lines (one address per line, optionally ``Name <address>``; blank lines
and ``#`` comments are skipped) or CSV whose header row has an ``email`` column and optionally
``name``, ``role``, ``delivery`` and ``moderated`` columns (delimiter ``,``, ``;`` or tab). The
member exports of Google Groups and groups.io are CSV too; their column names and values are
mapped by listserv.importers.member_csv. Every line is validated; bad lines are reported by
number with the reason while the good ones are imported. Duplicates (within the file or
already on the list in that role) are skipped and counted.

The import runs one transaction per chunk: it pre-fetches the chunk's known addresses and
memberships, then inserts the rest with executemany — no per-row ORM flush.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, cast

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from listserv.core import senders
from listserv.core.db import Database
from listserv.core.errors import UsageError
from listserv.importers import member_csv
from listserv.core.lists import get_list
from listserv.core.members import locked_post_id, parse_person
from listserv.core.models import DIGEST_MODES, Address, DeliveryMode, Membership, Role, utcnow

ADDRESS = cast(Table, Address.__table__)
MEMBERSHIP = cast(Table, Membership.__table__)


@dataclass(frozen=True)
class ImportLine:
    lineno: int
    email: str | None      # normalised, or None when the line is bad
    name: str = ""
    error: str | None = None
    options: member_csv.Options = member_csv.Options()   # a CSV row's own settings


@dataclass
class ImportReport:
    list_address: str = ""
    added: int = 0
    existing: int = 0          # already on the list in that role
    duplicates: int = 0        # repeated within the file
    invalid: list[tuple[int, str]] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return self.existing + self.duplicates

    @property
    def ok(self) -> bool:
        return not self.invalid


def _decode(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _person(lineno: int, text: str, name: str = "",
            options: member_csv.Options = member_csv.Options()) -> ImportLine:
    try:
        parsed_name, email = parse_person(text)
    except UsageError as exc:
        return ImportLine(lineno, None, error=str(exc))
    return ImportLine(lineno, email, (name or parsed_name).strip(), options=options)


def _is_address(text: str) -> bool:
    try:
        parse_person(text)
    except UsageError:
        return False
    return True


def count_lines(path: str | Path) -> int:
    n = 0
    with open(path, "rb") as fh:
        for _ in fh:
            n += 1
    return n


def read_member_file(path: str | Path) -> Iterator[ImportLine]:
    """Parse ``path`` lazily into ImportLines (OSError when it cannot be read)."""
    with open(path, "rb") as fh:
        data = fh.read()
    return parse_member_data(data)


def parse_member_data(data: bytes) -> Iterator[ImportLine]:
    """Parse the bytes of a member file (plain lines or CSV with a header) into ImportLines."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.splitlines()
    nonblank = [i for i, raw in enumerate(lines[:200]) if raw.strip()]
    for i in nonblank[:member_csv.HEADER_SEARCH_LINES]:
        text = _decode(lines[i])
        cols = member_csv.header(text) if text is not None else None
        if cols is not None:
            yield from _csv(lines, i, cols)
            return
        if text is not None and _is_address(text):
            break           # an address line: a plain list, not a title line before a header
    yield from _plain(lines)


def _plain(lines: list[bytes]) -> Iterator[ImportLine]:
    for i, raw in enumerate(lines, start=1):
        text = _decode(raw)
        if text is None:
            yield ImportLine(i, None, error="not valid UTF-8")
            continue
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        yield _person(i, text)


def _csv(lines: list[bytes], header_index: int,
         cols: member_csv.Columns) -> Iterator[ImportLine]:
    for i in range(header_index + 1, len(lines)):
        lineno = i + 1
        text = _decode(lines[i])
        if text is None:
            yield ImportLine(lineno, None, error="not valid UTF-8")
            continue
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            cells = next(csv.reader(io.StringIO(text), delimiter=cols.delimiter))
        except (csv.Error, StopIteration) as exc:
            yield ImportLine(lineno, None, error=f"unreadable CSV row: {exc}")
            continue
        if cols.email >= len(cells) or not cells[cols.email].strip():
            yield ImportLine(lineno, None, error="no address in the email column")
            continue
        name = cells[cols.name].strip() if cols.name is not None and cols.name < len(cells) else ""
        try:
            options = member_csv.options(cols, cells)
        except ValueError as exc:
            yield ImportLine(lineno, None, error=str(exc))
            continue
        yield _person(lineno, cells[cols.email], name, options)


Row = tuple[str, str, Role, DeliveryMode, bool]    # email, name, role, delivery, moderated


def import_members(db: Database, list_address: str, lines: Iterable[ImportLine], *,
                   role: Role = Role.member,
                   delivery_mode: DeliveryMode = DeliveryMode.regular,
                   moderated: bool = False, chunk_size: int = 2000,
                   progress: Callable[[int], None] | None = None) -> ImportReport:
    """Import ``lines`` into the list, one transaction per chunk. Bad lines are collected in
    the report; good ones are kept even when others fail. A CSV row's own role, delivery or
    moderation column wins over the ``role``/``delivery_mode``/``moderated`` defaults."""
    with db.unit_of_work() as session:
        ml = get_list(session, list_address)
        list_id, report = ml.id, ImportReport(list_address=ml.address)
        bans = senders.ban_patterns(session, list_id)
    seen: set[tuple[str, Role]] = set()
    chunk: list[Row] = []
    consumed = 0
    for line in lines:
        consumed += 1
        opts = line.options
        r = opts.role or role
        if line.email is None:
            report.invalid.append((line.lineno, line.error or "invalid line"))
        elif bans and (pattern := senders.first_match(bans, [line.email])):
            report.invalid.append((line.lineno, f"{line.email} is banned ({pattern})"))
        elif (line.email, r) in seen:
            report.duplicates += 1
        else:
            seen.add((line.email, r))
            chunk.append((line.email, line.name, r, opts.delivery or delivery_mode,
                          moderated if opts.moderated is None else opts.moderated))
            if len(chunk) >= chunk_size:
                _import_chunk(db, list_id, chunk, report)
                chunk = []
                if progress is not None:
                    progress(consumed)
                    consumed = 0
    if chunk:
        _import_chunk(db, list_id, chunk, report)
    if progress is not None and consumed:
        progress(consumed)
    return report


def _import_chunk(db: Database, list_id: int, chunk: list[Row], report: ImportReport) -> None:
    try:
        added, existing = _insert_chunk(db, list_id, chunk)
    except IntegrityError:
        # Another writer added some of these addresses meanwhile: the retry sees them.
        added, existing = _insert_chunk(db, list_id, chunk)
    report.added += added
    report.existing += existing


def _insert_chunk(db: Database, list_id: int, chunk: list[Row]) -> tuple[int, int]:
    now = utcnow()
    emails = list(dict.fromkeys(row[0] for row in chunk))
    names = dict((row[0], row[1]) for row in chunk if row[1])
    with db.unit_of_work() as session:
        known = {email: (aid, name) for email, aid, name in session.execute(
            select(Address.email, Address.id, Address.display_name).where(
                Address.email.in_(emails)))}
        new = [{"email": email, "display_name": names.get(email, ""), "created_at": now}
               for email in emails if email not in known]
        if new:
            session.execute(insert(ADDRESS), new)
        renamed = [{"b_id": known[email][0], "b_name": name} for email, name in names.items()
                   if email in known and not known[email][1]]
        if renamed:
            session.execute(update(ADDRESS).where(ADDRESS.c.id == bindparam("b_id")).values(
                display_name=bindparam("b_name")), renamed)
        ids = {email: aid for email, aid in session.execute(select(
            Address.email, Address.id).where(Address.email.in_(emails)))}
        have = set(session.execute(select(Membership.address_id, Membership.role).where(
            Membership.list_id == list_id, Membership.address_id.in_(list(ids.values())))))
        # A digest reader's digests start after the list's current post, as in
        # members.add_member.
        from_seq = (locked_post_id(session, list_id)
                    if any(row[3] in DIGEST_MODES for row in chunk) else 0)
        rows = [{"list_id": list_id, "address_id": ids[email], "role": role,
                 "delivery_mode": mode, "moderated": moderated, "enabled": True,
                 "bounce_score": 0.0, "bounce_warnings_sent": 0, "joined_at": now,
                 "digest_from_seq": from_seq if mode in DIGEST_MODES else 0}
                for email, _, role, mode, moderated in chunk
                if (ids[email], role) not in have]
        if rows:
            session.execute(insert(MEMBERSHIP), rows)
    return len(rows), len(chunk) - len(rows)
