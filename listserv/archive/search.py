"""Reading the archive index: full-text search, months, threads, one message with the
messages before and after it and the thread around it, its attachments.

    search(session, list_id, query, limit, offset) -> Results
    months(session, list_id) -> [(month, count)]
    month_threads(session, list_id, month) -> [[(message, depth)]]
    message(session, list_id, message_id) -> MessageView | None
    recent(session, list_id, limit) -> [message]
    raw(session, message) -> bytes;  attachments(raw) -> [Attachment]

Search uses the database's own engine (SQLite FTS5 ranked by bm25; PostgreSQL tsvector
ranked by ts_rank; subject counts most, then sender, then body). By relevance, the RANKED most
recently archived matches are ranked (a very common word matches most of the archive: scoring
all of them is what made such searches slow); by date, all matches. The query language is the
same on both: words (all must match), "a phrase", ``word*`` for a prefix, ``-word`` to
exclude.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Sequence

from sqlalchemy import func, select, text, tuple_
from sqlalchemy.orm import Session, defer

from listserv.archive import store as archive_store
from listserv.archive.index import is_attachment
from listserv.core.models import ArchiveMessage

MAX_TERMS = 12
RANKED = 2000               # matches (the most recently archived) ranked by relevance
MAX_THREAD = 500            # messages shown of one thread
SNIPPET_CHARS = 240
_TERM = re.compile(r'(-?)"([^"]*)"?|(-?)(\S+)')
_WORD = re.compile(r"[^\W_]", re.UNICODE)
_WORDS = re.compile(r"[^\W_]+", re.UNICODE)


class QueryError(ValueError):
    """A search that cannot run (nothing to look for); its text is shown to the reader."""


@dataclass(frozen=True)
class Term:
    text: str               # a word, or a phrase of several
    prefix: bool = False    # the last word may continue (word*)
    negated: bool = False   # must not occur (-word)


def parse_query(query: str) -> list[Term]:
    """The terms of a search box's text. Operators of either engine are plain words here."""
    terms: list[Term] = []
    for m in _TERM.finditer(query or ""):
        if m.group(2) is not None:
            negated, chunk, prefix = bool(m.group(1)), m.group(2), False
        else:
            negated, chunk = bool(m.group(3)), m.group(4)
            prefix = chunk.endswith("*")
            chunk = chunk.rstrip("*")
        chunk = " ".join(chunk.split())
        if _WORD.search(chunk):
            terms.append(Term(chunk, prefix, negated))
    return terms[:MAX_TERMS]


def fts5_query(terms: Sequence[Term]) -> str:
    """An FTS5 MATCH expression: every term a quoted string, ANDed; exclusions by NOT."""
    def quoted(t: Term) -> str:
        return '"' + t.text.replace('"', '""') + '"' + ("*" if t.prefix else "")
    positive = " AND ".join(quoted(t) for t in terms if not t.negated)
    negative = "".join(f" NOT {quoted(t)}" for t in terms if t.negated)
    return f"({positive}){negative}"


def pg_tsquery(terms: Sequence[Term]) -> tuple[str, dict[str, str]]:
    """A tsquery SQL expression with its bound parameters. A phrase goes through the
    engine's own parser (phraseto_tsquery), so 'ann@example.org' matches as indexed."""
    parts, params = [], {}
    for i, t in enumerate(terms):
        name = f"t{i}"
        if t.prefix:
            words = _WORDS.findall(t.text.lower())
            params[name] = " <-> ".join(f"'{w}'" for w in words) + ":*"
            part = f"to_tsquery('simple', :{name})"
        else:
            params[name] = t.text
            part = f"phraseto_tsquery('simple', :{name})"
        parts.append(f"!!{part}" if t.negated else part)
    return "(" + " && ".join(parts) + ")", params


@dataclass
class Hit:
    message: ArchiveMessage
    snippet: list[tuple[str, bool]]     # text pieces, True where a search word matched


@dataclass
class Results:
    query: str
    terms: list[Term]
    hits: list[Hit] = field(default_factory=list)
    offset: int = 0
    more: bool = False


def search(session: Session, list_id: int, query: str, limit: int = 20,
           offset: int = 0, order: str = "relevance") -> Results:
    """Messages of the list matching ``query``, best first (``order='date'``: newest first).
    Raises QueryError when the query has no word to look for."""
    terms = parse_query(query)
    if not any(not t.negated for t in terms):
        raise QueryError("Type at least one word to search for.")
    limit = max(1, min(limit, 100))
    offset = max(0, offset)
    params: dict[str, Any] = {"list_id": list_id, "limit": limit + 1, "offset": offset}
    # By relevance, only the RANKED most recently archived matches are scored and sorted:
    # for a word in most posts, scoring every match cost 0.3-0.4 s over 100,000 posts.
    params["ranked"] = RANKED
    if session.get_bind().dialect.name == "sqlite":
        # CROSS JOIN: SQLite's planner keeps the full-text match as the outer loop (else
        # it may walk the list's messages by date and test each against the match).
        match = ("FROM archive_message_fts CROSS JOIN archive_message m "
                 "ON m.id = archive_message_fts.rowid "
                 "WHERE archive_message_fts MATCH :match AND m.list_id = :list_id ")
        if order == "relevance":
            # newest first in the index's own rowid order (no sort), bm25 of those only
            sql = ("SELECT id FROM (SELECT m.id AS id, m.archived_at AS at, "
                   f"bm25(archive_message_fts, 10.0, 4.0, 4.0, 1.0) AS score {match}"
                   "ORDER BY archive_message_fts.rowid DESC LIMIT :ranked) "
                   "ORDER BY score, at DESC, id DESC LIMIT :limit OFFSET :offset")
        else:
            sql = (f"SELECT m.id {match}"
                   "ORDER BY m.archived_at DESC, m.id DESC LIMIT :limit OFFSET :offset")
        params["match"] = fts5_query(terms)
    else:
        tsquery, extra = pg_tsquery(terms)
        params.update(extra)
        # The tsquery is written out (not a subquery) so that the planner sees its value and
        # estimates how many rows match: few, the GIN index; very many, the date index.
        match = f"FROM archive_message WHERE list_id = :list_id AND fts @@ {tsquery} "
        if order == "relevance":
            sql = (f"SELECT id FROM (SELECT id, archived_at, fts {match}"
                   "ORDER BY archived_at DESC, id DESC LIMIT :ranked) AS newest "
                   f"ORDER BY ts_rank(fts, {tsquery}) DESC, archived_at DESC, id DESC "
                   "LIMIT :limit OFFSET :offset")
        else:
            sql = (f"SELECT id {match}"
                   "ORDER BY archived_at DESC, id DESC LIMIT :limit OFFSET :offset")
    ids = [r[0] for r in session.execute(text(sql), params)]
    more = len(ids) > limit
    ids = ids[:limit]
    found = {m.id: m for m in session.scalars(
        select(ArchiveMessage).where(ArchiveMessage.id.in_(ids)))} if ids else {}
    words = [w for t in terms if not t.negated for w in _WORDS.findall(t.text)]
    hits = [Hit(found[i], snippet(found[i].body, words)) for i in ids if i in found]
    return Results(query, terms, hits, offset, more)


def snippet(body: str, words: Sequence[str], width: int = SNIPPET_CHARS) -> list[tuple[str, bool]]:
    """A piece of ``body`` around the first search word, split into (text, matched) parts."""
    flat = " ".join(body.split())
    if not words:
        return [(flat[:width], False)] if flat else []
    pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in words) + r")",
                         re.IGNORECASE)
    first = pattern.search(flat)
    start = max(0, first.start() - width // 3) if first else 0
    if start:
        space = flat.find(" ", start)
        start = space + 1 if 0 <= space < start + 20 else start
    piece = flat[start:start + width]
    out: list[tuple[str, bool]] = [("… ", False)] if start else []
    pos = 0
    for m in pattern.finditer(piece):
        if m.start() > pos:
            out.append((piece[pos:m.start()], False))
        out.append((m.group(0), True))
        pos = m.end()
    if pos < len(piece):
        out.append((piece[pos:], False))
    if start + width < len(flat):
        out.append((" …", False))
    return out


# ---------------------------------------------------------------------------- browsing

_LISTING = (defer(ArchiveMessage.body),)


def months(session: Session, list_id: int) -> list[tuple[str, int]]:
    """The list's archived months, newest first, with their message counts."""
    rows = session.execute(
        select(ArchiveMessage.month, func.count())
        .where(ArchiveMessage.list_id == list_id)
        .group_by(ArchiveMessage.month).order_by(ArchiveMessage.month.desc()))
    return [(m, n) for m, n in rows]


def count(session: Session, list_id: int) -> int:
    return session.scalar(select(func.count()).select_from(ArchiveMessage)
                          .where(ArchiveMessage.list_id == list_id)) or 0


def _in_order(stmt: Any) -> Any:
    return stmt.order_by(ArchiveMessage.archived_at, ArchiveMessage.id).options(*_LISTING)


def month_messages(session: Session, list_id: int, month: str) -> list[ArchiveMessage]:
    return list(session.scalars(_in_order(select(ArchiveMessage).where(
        ArchiveMessage.list_id == list_id, ArchiveMessage.month == month))))


def tree(messages: Sequence[ArchiveMessage]) -> list[tuple[ArchiveMessage, int]]:
    """Messages (in archive order) as a reply tree in reading order: (message, depth). A
    message whose parent is not among them starts at depth 0."""
    present = {m.message_id for m in messages}
    children: dict[str, list[ArchiveMessage]] = {}
    roots = []
    for m in messages:
        if m.parent_id and m.parent_id in present:
            children.setdefault(m.parent_id, []).append(m)
        else:
            roots.append(m)
    out: list[tuple[ArchiveMessage, int]] = []
    stack = [(r, 0) for r in reversed(roots)]
    while stack:
        m, depth = stack.pop()
        out.append((m, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(m.message_id, [])))
    return out


def month_threads(session: Session, list_id: int,
                  month: str) -> list[list[tuple[ArchiveMessage, int]]]:
    """The month's messages by thread (threads in the order they started this month)."""
    groups: dict[str, list[ArchiveMessage]] = {}
    for m in month_messages(session, list_id, month):
        groups.setdefault(m.thread_id, []).append(m)
    return [tree(g) for g in groups.values()]


def thread(session: Session, list_id: int, thread_id: str) -> list[tuple[ArchiveMessage, int]]:
    """A whole thread (across months) as a reply tree, at most MAX_THREAD messages."""
    return tree(list(session.scalars(_in_order(select(ArchiveMessage).where(
        ArchiveMessage.list_id == list_id, ArchiveMessage.thread_id == thread_id))
        .limit(MAX_THREAD))))


def recent(session: Session, list_id: int, limit: int = 20) -> list[ArchiveMessage]:
    """The newest messages, newest first (bodies loaded: the Atom feed shows them)."""
    return list(session.scalars(
        select(ArchiveMessage).where(ArchiveMessage.list_id == list_id)
        .order_by(ArchiveMessage.archived_at.desc(), ArchiveMessage.id.desc()).limit(limit)))


@dataclass
class MessageView:
    message: ArchiveMessage
    prev: ArchiveMessage | None
    next: ArchiveMessage | None
    thread: list[tuple[ArchiveMessage, int]]


def find(session: Session, list_id: int, message_id: str) -> ArchiveMessage | None:
    return session.scalar(select(ArchiveMessage).where(
        ArchiveMessage.list_id == list_id, ArchiveMessage.message_id == message_id))


def message(session: Session, list_id: int, message_id: str) -> MessageView | None:
    """One message with the list's previous and next message (archive order) and its thread."""
    m = find(session, list_id, message_id)
    if m is None:
        return None
    key = tuple_(ArchiveMessage.archived_at, ArchiveMessage.id)
    here = tuple_(m.archived_at, m.id)
    base = select(ArchiveMessage).where(ArchiveMessage.list_id == list_id).options(*_LISTING)
    prev = session.scalar(base.where(key < here).order_by(
        ArchiveMessage.archived_at.desc(), ArchiveMessage.id.desc()).limit(1))
    nxt = session.scalar(base.where(key > here).order_by(
        ArchiveMessage.archived_at, ArchiveMessage.id).limit(1))
    return MessageView(m, prev, nxt, thread(session, list_id, m.thread_id))


# ---------------------------------------------------------------------------- the message itself


def raw(session: Session, m: ArchiveMessage) -> bytes:
    """The archived message's bytes (LookupError when the database has none: an archive
    indexed before they were kept there; README, upgrading)."""
    return archive_store.raw(session, m.id)


@dataclass(frozen=True)
class Attachment:
    number: int             # 1-based, in MIME order
    filename: str
    content_type: str
    size: int
    data: bytes


def attachments(msg: EmailMessage) -> list[Attachment]:
    out: list[Attachment] = []
    for part in msg.walk():
        if not is_attachment(part):
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        name = " ".join(str(part.get_filename() or "").split())
        out.append(Attachment(len(out) + 1, name, part.get_content_type(), len(data), data))
    return out


def attachment(msg: EmailMessage, number: int) -> Attachment | None:
    return next((a for a in attachments(msg) if a.number == number), None)
