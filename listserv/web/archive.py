"""Public archives on the web, served from the archive index (listserv.archive.search) and
the mbox files: months, a month's threads, one message with previous/next and its thread,
attachments as downloads, full-text search and an Atom feed per list.

Only lists whose ``archive`` is ``public`` are served; a private archive answers 403 and an
unarchived list 404, each with a page that says why. Message HTML goes through
htmlmail.sanitise; everything else is escaped by the templates.
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote, urlencode

from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from listserv.archive import read as archive_read, search as archive_search
from listserv.core import lists
from listserv.message import htmlmail, untrusted
from listserv.archive.html import hide_address
from listserv.core.models import ArchiveMessage, ArchivePolicy, MailingList
from listserv.web import pages
from listserv.message.parse import parse as parse_message

PER_PAGE = 20
FEED_ENTRIES = 20
SEARCH_LIMIT = (30, 60.0)           # searches per client IP per minute
# Attachments keep their type only when no browser runs anything in it; all are downloads.
SAFE_TYPES = {"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf",
              "text/plain", "text/csv", "application/zip", "audio/mpeg", "video/mp4"}
ATTACHMENT_CSP = "default-src 'none'; sandbox"
MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")


@dataclass(frozen=True)
class Urls:
    """Paths of one list's pages (under the site's prefix)."""

    prefix: str
    address: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/lists/{quote(self.address, safe='@')}"

    def page(self) -> str:
        return self.base + "/"

    def join(self) -> str:
        return self.base + "/join"

    def archive(self) -> str:
        return self.base + "/archive/"

    def month(self, month: str) -> str:
        return f"{self.base}/archive/{month}/"

    def search(self, query: str = "", page: int = 1) -> str:
        if not query:
            return self.base + "/archive/search"
        params = {"q": query, **({"page": str(page)} if page > 1 else {})}
        return self.base + "/archive/search?" + urlencode(params)

    def feed(self) -> str:
        return self.base + "/archive/atom.xml"

    def message(self, message_id: str) -> str:
        return f"{self.base}/message/{quote(message_id, safe='@')}"

    def attachment(self, message_id: str, number: int) -> str:
        return f"{self.base}/attachment/{number}/{quote(message_id, safe='@')}"


def urls(request: Request, address: str) -> Urls:
    return Urls(pages.web(request).prefix, address)


def when(value: dt.datetime | None) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC") if value else ""


def sender(m: ArchiveMessage) -> str:
    return m.sender_name or hide_address(m.sender_address) or "(unknown)"


def summary(u: Urls, m: ArchiveMessage, depth: int = 0) -> dict[str, Any]:
    """What a listing shows of a message."""
    return {"subject": m.subject or "(no subject)", "sender": sender(m),
            "date": when(m.sent_at or m.archived_at), "url": u.message(m.message_id),
            "depth": min(depth, 12), "attachments": m.attachments,
            "message_id": m.message_id}


# ---------------------------------------------------------------------------- access


def find_list(session: Session, address: str) -> MailingList:
    ml = lists.find_list(session, address)
    if ml is None:
        raise HTTPException(404, f"There is no list {address} here.")
    return ml


def readable_list(session: Session, address: str) -> MailingList:
    """The list whose archive may be shown to anyone, else a 404/403 that says why."""
    ml = find_list(session, address)
    if ml.archive is ArchivePolicy.none:
        raise HTTPException(404, f"{ml.address} keeps no archive.")
    if ml.archive is not ArchivePolicy.public:
        raise HTTPException(403, f"The archive of {ml.address} is open to its members only, "
                                 "and these pages have no login. Members can ask for it by "
                                 f"mail: send 'index' to {ml.name}-request@{ml.domain.name}.")
    return ml


def _list_context(request: Request, ml: MailingList) -> dict[str, Any]:
    return {"list": {"address": ml.address, "name": ml.display_name or ml.name,
                     "description": ml.description}, "urls": urls(request, ml.address)}


def _render(request: Request, ml: MailingList, template: str, context: dict[str, Any],
            status: int = 200) -> Response:
    return pages.render(request, template, {**_list_context(request, ml), **context}, status,
                        domain=ml.domain.name, list_address=ml.address)


# ---------------------------------------------------------------------------- pages


def months_page(request: Request) -> Response:
    address = request.path_params["address"]
    with pages.web(request).app.db.unit_of_work() as session:
        ml = readable_list(session, address)
        u = urls(request, ml.address)
        months = [{"month": m, "count": n, "url": u.month(m)}
                  for m, n in archive_search.months(session, ml.id)]
        return _render(request, ml, "web/archive.html.j2", {"months": months})


def month_page(request: Request) -> Response:
    address, month = request.path_params["address"], request.path_params["month"]
    if not MONTH.match(month):
        raise HTTPException(404)
    with pages.web(request).app.db.unit_of_work() as session:
        ml = readable_list(session, address)
        u = urls(request, ml.address)
        threads = [[summary(u, m, d) for m, d in t]
                   for t in archive_search.month_threads(session, ml.id, month)]
        if not threads:
            raise HTTPException(404, f"The archive of {ml.address} has no messages "
                                     f"from {month}.")
        known = [m for m, _ in archive_search.months(session, ml.id)]
        i = known.index(month)
        nav = {"newer": u.month(known[i - 1]) if i > 0 else "",
               "older": u.month(known[i + 1]) if i + 1 < len(known) else ""}
        return _render(request, ml, "web/archive-month.html.j2",
                       {"month": month, "threads": threads, "nav": nav,
                        "count": sum(len(t) for t in threads)})


def _load(request: Request) -> tuple[Any, MailingList, archive_search.MessageView, bytes]:
    """(app, list, view, raw) of the message in the URL; 404 when it is not archived."""
    app = pages.web(request).app
    address, mid = request.path_params["address"], request.path_params["message_id"]
    with app.db.unit_of_work() as session:
        ml = readable_list(session, address)
        view = archive_search.message(session, ml.id, mid)
        if view is None:
            raise HTTPException(404, f"The archive of {ml.address} has no message <{mid}>.")
        try:
            data = archive_search.raw(session, view.message)
        except LookupError:
            raise HTTPException(404, "This message is indexed but its text is not in the "
                                     "database; the site's admin can run 'listserv archive "
                                     "reindex --from-mbox'.") from None
    return app, ml, view, data


def body_of(msg: EmailMessage) -> tuple[str, Markup | None]:
    """(text, None) for a text body, ('', sanitised HTML) for an HTML-only message."""
    part = untrusted.body_part(msg, ("plain", "html"))
    if part is None:
        return "", None
    try:
        content = part.get_content()
    except (LookupError, ValueError, AttributeError, AssertionError):
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if not isinstance(content, str):
        return "", None
    if part.get_content_subtype() == "html":
        return "", Markup(htmlmail.sanitise(content))
    return content, None


def message_page(request: Request) -> Response:
    _, ml, view, data = _load(request)
    u = urls(request, ml.address)
    msg = parse_message(data)
    text, html = body_of(msg)
    m = view.message
    headers = [("From", sender(m)), ("Date", when(m.sent_at or m.archived_at)),
               ("Subject", m.subject or "(no subject)")]
    to = archive_read.text_header(msg, "To")
    if to:
        headers.insert(1, ("To", hide_address(to)))
    files = [{"filename": a.filename or f"attachment-{a.number}",
              "content_type": a.content_type, "size": a.size,
              "url": u.attachment(m.message_id, a.number)}
             for a in archive_search.attachments(msg)]
    context = {"message": summary(u, m), "headers": headers, "text": text, "html": html,
               "attachments": files,
               "prev": summary(u, view.prev) if view.prev else None,
               "next": summary(u, view.next) if view.next else None,
               "thread": [summary(u, t, d) for t, d in view.thread],
               "month_url": u.month(m.month), "month": m.month}
    return _render(request, ml, "web/message.html.j2", context)


def safe_filename(name: str, number: int) -> str:
    name = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(c for c in name if c.isprintable() and c not in '"<>:|?*;').strip(" .")
    return name[:200] or f"attachment-{number}"


def attachment_download(request: Request) -> Response:
    number = request.path_params["number"]
    _, _, _, data = _load(request)
    found = archive_search.attachment(parse_message(data), number)
    if found is None:
        raise HTTPException(404, "This message has no such attachment.")
    filename = safe_filename(found.filename, number)
    ascii_name = filename.encode("ascii", "replace").decode("ascii").replace("?", "_")
    media = found.content_type if found.content_type in SAFE_TYPES else \
        "application/octet-stream"
    disposition = (f'attachment; filename="{ascii_name}"; '
                   f"filename*=UTF-8''{quote(filename, safe='')}")
    return Response(found.data, media_type=media, headers={
        "Content-Disposition": disposition, "Content-Security-Policy": ATTACHMENT_CSP,
        "Cache-Control": "public, max-age=86400"})


def search_page(request: Request) -> Response:
    query = request.query_params.get("q", "").strip()[:500]
    page_text = request.query_params.get("page", "1")
    page = int(page_text) if page_text.isdigit() and 0 < int(page_text) <= 500 else 1
    order = "date" if request.query_params.get("order") == "date" else "relevance"
    with pages.web(request).app.db.unit_of_work() as session:
        ml = readable_list(session, request.path_params["address"])
        u = urls(request, ml.address)
        context: dict[str, Any] = {"query": query, "order": order, "hits": [], "error": "",
                                   "page": page, "newer": "", "older": ""}
        if query:
            pages.rate_limit(request, "search", pages.client_ip(request), *SEARCH_LIMIT)
            try:
                results = archive_search.search(session, ml.id, query, limit=PER_PAGE,
                                                offset=(page - 1) * PER_PAGE, order=order)
            except archive_search.QueryError as e:
                context["error"] = str(e)
            else:
                context["hits"] = [{**summary(u, h.message), "snippet": h.snippet}
                                   for h in results.hits]
                extra = "&order=date" if order == "date" else ""
                if results.more:
                    context["older"] = u.search(query, page + 1) + extra
                if page > 1:
                    context["newer"] = u.search(query, page - 1) + extra
        return _render(request, ml, "web/search.html.j2", context)


ATOM = "http://www.w3.org/2005/Atom"


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def feed(request: Request) -> Response:
    """Atom (RFC 4287): the newest messages, their text as summary."""
    w = pages.web(request)
    with w.app.db.unit_of_work() as session:
        ml = readable_list(session, request.path_params["address"])
        u = urls(request, ml.address)
        recent = archive_search.recent(session, ml.id, FEED_ENTRIES)
        origin = w.base_url[: len(w.base_url) - len(w.prefix)] if w.prefix else w.base_url
        ET.register_namespace("", ATOM)
        root = ET.Element(f"{{{ATOM}}}feed")
        ET.SubElement(root, f"{{{ATOM}}}title").text = ml.display_name or ml.address
        if ml.description:
            ET.SubElement(root, f"{{{ATOM}}}subtitle").text = ml.description
        ET.SubElement(root, f"{{{ATOM}}}id").text = origin + u.feed()
        ET.SubElement(root, f"{{{ATOM}}}link", rel="self", href=origin + u.feed())
        ET.SubElement(root, f"{{{ATOM}}}link", rel="alternate", href=origin + u.archive())
        ET.SubElement(root, f"{{{ATOM}}}updated").text = _iso(
            recent[0].archived_at if recent else ml.created_at)
        for m in recent:
            entry = ET.SubElement(root, f"{{{ATOM}}}entry")
            link = origin + u.message(m.message_id)
            ET.SubElement(entry, f"{{{ATOM}}}title").text = _xml_text(m.subject or
                                                                       "(no subject)")
            ET.SubElement(entry, f"{{{ATOM}}}id").text = link
            ET.SubElement(entry, f"{{{ATOM}}}link", rel="alternate", href=link)
            ET.SubElement(entry, f"{{{ATOM}}}updated").text = _iso(m.archived_at)
            author = ET.SubElement(entry, f"{{{ATOM}}}author")
            ET.SubElement(author, f"{{{ATOM}}}name").text = _xml_text(sender(m))
            ET.SubElement(entry, f"{{{ATOM}}}summary", type="text").text = _xml_text(
                m.body[:2000])
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(data, media_type="application/atom+xml",
                    headers={"Cache-Control": "public, max-age=300"})


_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml_text(text: str) -> str:
    """Text XML 1.0 can carry (control characters dropped)."""
    return _XML_INVALID.sub("", text)


ROUTES: tuple[BaseRoute, ...] = (
    Route("/lists/{address}/archive/", months_page, methods=["GET", "HEAD"]),
    Route("/lists/{address}/archive/search", search_page, methods=["GET", "HEAD"]),
    Route("/lists/{address}/archive/atom.xml", feed, methods=["GET", "HEAD"]),
    Route("/lists/{address}/archive/{month}/", month_page, methods=["GET", "HEAD"]),
    Route("/lists/{address}/message/{message_id:path}", message_page, methods=["GET", "HEAD"]),
    Route("/lists/{address}/attachment/{number:int}/{message_id:path}", attachment_download,
          methods=["GET", "HEAD"]),
)
