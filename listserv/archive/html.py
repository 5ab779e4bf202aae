"""Static HTML pages derived from the archive in the database (public-inbox style: the
archived messages are the truth, the pages can be deleted and rebuilt at any time).

    build(app, info, out, months=None, new_only=False) -> Report

renders templates/archive/*.html.j2 (autoescaped) into ``out``:
``index.html`` (the months), ``YYYY-MM/index.html`` (the month's threads, by In-Reply-To and
References) and ``YYYY-MM/N.html`` (one message: headers and text body, attachments listed, not
rendered). A file is only rewritten when its content changes, so a rebuild is idempotent.
Message pages never change once written (a message's number is its place in the append-only
month), hence ``new_only`` for the archive worker's cheap refresh of the months it touched.
"""

from __future__ import annotations

import collections
import datetime as dt
import fcntl
import json
import logging
import os
import re
import threading
import weakref
from dataclasses import dataclass, field
from email.message import EmailMessage, Message
from email.utils import getaddresses
from pathlib import Path
from typing import Any, Iterable

import jinja2
from markupsafe import Markup

from listserv.archive import files, read as archive_read, store as archive_store
from listserv.core import addresses, isolation, lists
from listserv.message import htmlmail, replies, untrusted
from listserv.core.app import App
from listserv.core.models import ArchivePolicy, MailingList
from listserv.core.templating import environment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ListInfo:
    address: str
    display_name: str
    archive: ArchivePolicy

    @classmethod
    def of(cls, ml: MailingList) -> "ListInfo":
        return cls(ml.address, ml.display_name or ml.name, ml.archive)

    @property
    def request_address(self) -> str:
        name, _, domain = self.address.rpartition("@")
        return addresses.subaddress(name, domain, addresses.REQUEST)


@dataclass
class Report:
    months: int = 0
    pages: int = 0          # pages rendered
    written: int = 0        # of which new or changed on disk
    out: Path | None = None


@dataclass
class Summary:
    """What the month page and threading need of one message."""

    number: int
    subject: str
    sender: str
    date: dt.datetime | None
    message_id: str
    parent_ids: list[str]           # In-Reply-To first, then References from the nearest
    parent: int | None = None
    children: list[int] = field(default_factory=list)


def default_out(app: App, address: str) -> Path:
    return archive_read.list_dir(app.settings.archive_path, address) / "html"


def hide_address(text: str) -> str:
    """'ann@a.example' -> 'ann at a.example' (pages are meant to be published)."""
    return text.replace("@", " at ")


def _sender_of(from_text: str) -> str:
    pairs = getaddresses([from_text])
    if not pairs:
        return "(unknown)"
    name, addr = pairs[0]
    return name.strip() or hide_address(addr) or "(unknown)"


SUMMARY_HEADERS = ("From", "Subject", "Date", "Message-ID", "In-Reply-To", "References")


def summarise(entry: archive_read.Entry, parsed: Message | None = None) -> Summary:
    """The summary of ``entry``, from its headers (``parsed``: the message already parsed,
    compat32, to spare a second parse)."""
    h = entry.headers() if parsed is None else parsed
    return _summary(entry, archive_read.text_headers(h, SUMMARY_HEADERS))


def _summary(entry: archive_read.Entry, texts: dict[str, str]) -> Summary:
    """A summary from the message's text_header() values (``texts``)."""
    parents = archive_read.msg_ids(texts["In-Reply-To"])[:1]
    parents += reversed(archive_read.msg_ids(texts["References"]))
    when = untrusted.header_date(texts["Date"])
    ids = archive_read.msg_ids(texts["Message-ID"])
    return Summary(entry.number, texts["Subject"] or "(no subject)", _sender_of(texts["From"]),
                   entry.archived_at if when is None else when, ids[0] if ids else "", parents)


def threads(summaries: list[Summary]) -> list[list[tuple[Summary, int]]]:
    """Messages grouped in threads: each thread a list of (message, depth) in reading order.
    A parent is the first of In-Reply-To / References (nearest first) archived earlier in the
    same month; a message without one starts a thread."""
    by_id = {s.message_id: s for s in summaries if s.message_id}
    by_number = {s.number: s for s in summaries}
    for s in summaries:
        for pid in s.parent_ids:
            p = by_id.get(pid)
            if p is not None and p.number < s.number:
                s.parent = p.number
                p.children.append(s.number)
                break
    out: list[list[tuple[Summary, int]]] = []
    for root in (s for s in summaries if s.parent is None):
        thread: list[tuple[Summary, int]] = []
        stack = [(root, 0)]
        while stack:
            s, depth = stack.pop()
            thread.append((s, depth))
            stack.extend((by_number[c], depth + 1) for c in reversed(s.children))
        out.append(thread)
    return out


# Saved with ".txt" appended: a web server must never serve an attachment as a page or script
# of the archive's own site.
_ACTIVE_EXTENSIONS = frozenset({"html", "htm", "xhtml", "shtml", "xht", "svg", "svgz", "js",
                                "mjs", "xml", "xsl", "xslt", "php", "swf", "mht", "mhtml"})


def safe_filename(name: str, index: int) -> str:
    """A file name for the ``index``-th attachment: ASCII letters, digits, '.', '-', '_' only,
    no path, at most about 100 characters, an active extension neutralised."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:100] or "attachment"
    ext = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    if ext in _ACTIVE_EXTENSIONS:
        base += ".txt"
    return f"{index}-{base}"


def _attachments(msg: Message) -> list[dict[str, Any]]:
    """The message's attachments (and inline parts with a file name), each with its bytes and
    the file name it is saved under next to the message page."""
    out: list[dict[str, Any]] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        if part.get_content_disposition() != "attachment" and not part.get_filename():
            continue
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        name = part.get_filename() or "(no name)"
        out.append({"filename": name, "content_type": part.get_content_type(),
                    "size": len(data), "data": data,
                    "file": safe_filename(name if part.get_filename() else "", len(out) + 1),
                    "content_id": str(part.get("Content-ID", "") or "").strip().strip("<>")})
    return out


def _html_body(msg: EmailMessage, number: int, attachments: list[dict[str, Any]]) -> Markup | None:
    """The post's HTML body, sanitised, with cid: images pointing at their saved files;
    None when the post has no HTML body."""
    part = untrusted.body_part(msg, ("html",))
    if part is None:
        return None
    try:
        source = part.get_content()
    except (LookupError, ValueError, AssertionError):
        raw = part.get_payload(decode=True)
        source = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    if not isinstance(source, str):
        return None
    html = htmlmail.sanitise(source)
    for a in attachments:
        if a["content_id"]:
            html = html.replace(f'src="cid:{a["content_id"]}"', f'src="{number}/{a["file"]}"')
    return Markup(html)


MESSAGE_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID", "In-Reply-To")
PAGE_HEADERS = tuple(dict.fromkeys(MESSAGE_HEADERS + SUMMARY_HEADERS))


def _plain_body(msg: Message) -> str | None:
    """The text of a single-part text/plain message, decoded cheaply (compat32); None for
    anything else (then the full policy.default parse decides)."""
    if msg.is_multipart() or msg.get_content_type() != "text/plain":
        return None
    payload = msg.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    try:
        return payload.decode(msg.get_content_charset() or "us-ascii", "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def parse_compat32(entry: archive_read.Entry) -> Message:
    """The whole message parsed the cheap way (compat32: several times cheaper than
    policy.default's header registry; enough for the headers and a plain body)."""
    return archive_read.parse_compat32(entry.raw)


def _message_context(entry: archive_read.Entry, summary: Summary,
                     parsed: Message | None = None,
                     texts: dict[str, str] | None = None) -> dict[str, Any]:
    # The full policy.default parse is only needed for the body of a multipart or non-plain
    # message. ``texts``: text_header() values already read (MESSAGE_HEADERS at least).
    msg = parse_compat32(entry) if parsed is None else parsed
    if texts is None:
        texts = archive_read.text_headers(msg, MESSAGE_HEADERS)
    headers = []
    for name in MESSAGE_HEADERS:
        value = texts[name]
        if value:
            headers.append((name, hide_address(value) if name in ("From", "To", "Cc")
                            else value))
    attachments = _attachments(msg)
    body = _plain_body(msg)
    html = None
    if body is None:
        full = entry.message()
        body = replies.body_text(full)
        html = _html_body(full, entry.number, attachments)
    return {"message": summary, "headers": headers, "body": body, "html": html,
            "attachments": attachments}


class _Writer:
    def __init__(self, app: App, info: ListInfo, out: Path, report: Report) -> None:
        self.app, self.info, self.out, self.report = app, info, out, report
        # A private list's pages are readable by the service's group only, as its mbox files.
        self.mode = 0o644 if info.archive is ArchivePolicy.public else 0o640
        # Templates are looked up once per build (Jinja would stat their files per render).
        self.env = environment(app.settings.data_dir, info.address.rpartition("@")[2],
                               info.address)
        self.templates: dict[str, jinja2.Template] = {}

    def page(self, rel: str, template: str, context: dict[str, Any], *,
             fresh: bool = False) -> None:
        """Render ``template`` into ``rel``; ``fresh``: the file is known not to exist."""
        compiled = self.templates.get(template)
        if compiled is None:
            compiled = self.templates[template] = self.env.get_template(template)
        text = compiled.render(list=self.info, root="../" * rel.count("/"), **context)
        self.report.pages += 1
        if _write(self.out / rel, text.encode("utf-8"), self.mode, fresh=fresh):
            self.report.written += 1

    def attachments(self, month: str, number: int, attachments: list[dict[str, Any]]) -> None:
        """Save a message's attachments next to its page: MONTH/NUMBER/INDEX-NAME."""
        for a in attachments:
            write_if_changed(self.out / month / str(number) / a["file"], a["data"], self.mode)


def write_if_changed(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write ``data`` to ``path`` (atomically: a temporary file renamed over it) unless the
    file already holds it; return whether it was written. No fsync: the pages are derived
    from the database and a crash is repaired by rebuilding them."""
    return _write(path, data, mode)


def _write(path: Path, data: bytes, mode: int, *, fresh: bool = False) -> bool:
    """``fresh``: the file does not exist and its directory does, and the caller repairs a
    partial file after a crash (_build_month's marker): written in place, one file creation
    instead of two metadata operations."""
    if fresh:
        files.write(path, [data], mode=mode)
        return True
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return False
    except FileNotFoundError:
        pass
    files.replace(path, [data], mode=mode)
    return True


def build(app: App, info: ListInfo, out: Path, months: Iterable[str] | None = None, *,
          new_only: bool = False) -> Report:
    """Render the list index and ``months`` (all when None) from the archive in the database
    (listserv.archive.store). ``new_only``: write only the message pages that do not exist
    yet (month and index pages are always refreshed).

    Each month is read once and each message parsed once; every page is rendered once per
    build, so a bulk import that touched many months builds each of them a single time."""
    report = Report(out=out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)       # one builder at a time per output directory
        writer = _Writer(app, info, out, report)
        with app.db.unit_of_work() as session:
            ml = lists.get_list(session, info.address)
            list_id = ml.id
            known = archive_store.month_counts(session, list_id)
        all_months = list(known)
        wanted = all_months if months is None else [m for m in months if m in known]
        for month in wanted:
            known[month] = _build_month(writer, list_id, month, new_only)
            report.months += 1
        write_if_changed(out / "months.json", json.dumps(known, indent=1).encode(),
                         writer.mode)
        writer.page("index.html", "archive/index.html.j2",
                    {"months": [{"month": m, "count": known[m]} for m in reversed(all_months)]})
    return report


KEEP_PARSED_BYTES = 64 * 1024 * 1024


Key = tuple[int, Any]     # (ArchiveMessage id, archived_at)


class _SummaryCache:
    """The summaries of archived messages by their ArchiveMessage id and archive time, so
    that refreshing a month page after a post reads and parses only the new messages, not
    the whole month (a message's bytes never change once archived; the time tells a row
    apart from a later one that got the id of a deleted row, as SQLite may give). Least
    recently used ones are dropped beyond ``size``. One per database (summaries_of), shared
    by the process's archive jobs."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[Key, tuple[Any, ...]] = collections.OrderedDict()

    def get(self, key: Key, number: int) -> Summary | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
        subject, sender, date, message_id, parents = item
        return Summary(number, subject, sender, date, message_id, list(parents))

    def put(self, key: Key, summary: Summary) -> None:
        item = (summary.subject, summary.sender, summary.date, summary.message_id,
                tuple(summary.parent_ids))
        with self._lock:
            self._items[key] = item
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


SUMMARY_CACHE_SIZE = 20_000
_SUMMARIES: "weakref.WeakKeyDictionary[Any, _SummaryCache]" = weakref.WeakKeyDictionary()
_SUMMARIES_LOCK = threading.Lock()


def summaries_of(app: App) -> _SummaryCache:
    """The summary cache of ``app``'s database."""
    with _SUMMARIES_LOCK:
        cache = _SUMMARIES.get(app.db)
        if cache is None:
            cache = _SUMMARIES[app.db] = _SummaryCache(SUMMARY_CACHE_SIZE)
        return cache


def _build_month(writer: _Writer, list_id: int, month: str, new_only: bool) -> int:
    """The month's page and its message pages; returns the month's message count."""
    month_dir = writer.out / month
    month_dir.mkdir(parents=True, exist_ok=True)
    # New message pages are written in place (not renamed over): the marker says a build of
    # this month was under way, so after a crash every page of the month is checked again.
    marker = writer.out / f".building-{month}"
    if marker.exists():
        new_only = False
    else:
        marker.touch()
    # One directory listing instead of a stat per message page.
    existing = {n for n in os.listdir(month_dir) if n.endswith(".html")}
    # Only the bytes of messages whose page is to be written, or whose summary is not known
    # yet, are read: a refresh after a post costs its new messages, not the month.
    cache = summaries_of(writer.app)
    with writer.app.db.unit_of_work() as session:
        index = archive_store.month_index(session, list_id, month)
        known: dict[int, Summary] = {}
        if new_only:
            for number, key in enumerate(index, 1):
                cached = cache.get(key, number) if f"{number}.html" in existing else None
                if cached is not None:
                    known[number] = cached
        raws = archive_store.raw_of(session, [pk for number, (pk, _) in enumerate(index, 1)
                                              if number not in known])
    entries = [archive_read.Entry(number, raws.get(pk, b""), at)
               for number, (pk, at) in enumerate(index, 1)]
    # The parsed messages are kept for their pages unless the month is big (then each is
    # parsed again for its page: memory stays near the size of the month's file).
    keep = sum(len(e.raw) for e in entries) <= KEEP_PARSED_BYTES
    parsed: dict[int, tuple[Message | None, dict[str, str]]] = {}
    summaries = []
    for entry, key in zip(entries, index):
        summary = known.get(entry.number)
        if summary is None and new_only and f"{entry.number}.html" in existing:
            summary = summarise(entry)
            cache.put(key, summary)
        elif summary is None:
            msg = parse_compat32(entry)
            texts = archive_read.text_headers(msg, PAGE_HEADERS)
            parsed[entry.number] = (msg if keep else None), texts
            summary = _summary(entry, texts)
            cache.put(key, summary)
        summaries.append(summary)
    writer.page(f"{month}/index.html", "archive/month.html.j2",
                {"month": month, "threads": threads(summaries), "count": len(entries)})
    for entry, summary in zip(entries, summaries):
        if entry.number not in parsed:
            continue
        kept, texts = parsed.pop(entry.number)
        msg = parse_compat32(entry) if kept is None else kept
        name = f"{entry.number}.html"
        context = _message_context(entry, summary, msg, texts)
        writer.attachments(month, entry.number, context["attachments"])
        writer.page(f"{month}/{name}", "archive/message.html.j2", {"month": month, **context},
                    fresh=name not in existing)
    marker.unlink()
    return len(entries)


PAGE_FAILURES = isolation.Failures("archive pages", log)


def refresh(app: App, touched: dict[str, set[str]]) -> None:
    """After the archive worker appended: rebuild the touched months of each list into its
    data_dir pages (never elsewhere). Errors are logged: the database is the truth, the
    pages can be rebuilt with ``listserv archive build``."""
    try:
        with app.db.unit_of_work() as session:
            infos = {}
            for address in touched:
                ml = lists.find_list(session, address)
                if ml is not None and ml.archive is not ArchivePolicy.none:
                    infos[address] = ListInfo.of(ml)
    except Exception:  # noqa: BLE001 - derived pages must never stop the archive worker
        log.exception("archive pages not refreshed (run: listserv archive build LIST)")
        return
    for address, info in infos.items():     # one list's pages failing spares the others
        PAGE_FAILURES.run(address, f"list {address} months {', '.join(sorted(touched[address]))}"
                          " (run: listserv archive build LIST)",
                          lambda: build(app, info, default_out(app, address), touched[address],
                                        new_only=True))
