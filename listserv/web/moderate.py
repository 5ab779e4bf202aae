"""A moderator's page for one held post: ``/m/TOKEN`` (the token of that moderator's notice).

GET shows the post rendered safely (its plain text, or its HTML through htmlmail.sanitise),
its attachments with sizes (each downloadable, always as an attachment), the reasons it was
held, and approve / reject (with a reason) / discard; once it was decided, what was done and by
whom. POST decides through moderation.decide: the first decision wins, by page, mail or CLI,
and the moderation log records it with ``via`` "web".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any
from urllib.parse import quote

from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from listserv.message import htmlmail, untrusted
from listserv.pipeline import moderation
from listserv.core.models import Decision, HeldMessage, InboundMessage, MailingList, TokenKind
from listserv.core.views import ListView
from listserv.web import pages
from listserv.web import tokens as web_tokens
from listserv.web.pages import Web
from listserv.message.parse import parse as parse_message

KINDS = (TokenKind.moderate,)
DECISIONS = {"approve": Decision.approve, "reject": Decision.reject,
             "discard": Decision.discard}
SHOWN_HEADERS = ("From", "To", "Cc", "Subject", "Date", "Message-ID")
MAX_TEXT = 200_000          # characters of a body shown on the page
PAGE_VIEWS = (120, 60.0)
POSTS = (30, 600.0)


@dataclass
class Part:
    index: int
    filename: str
    content_type: str
    size: int


@dataclass
class Post:
    headers: list[tuple[str, str]] = field(default_factory=list)
    text: str = ""
    html: Markup | None = None
    attachments: list[Part] = field(default_factory=list)


def _parse(data: bytes) -> EmailMessage:
    return parse_message(data)


def _content(part: Any) -> str | bytes:
    try:
        value = part.get_content()
    except (LookupError, ValueError, AssertionError):
        value = part.get_payload(decode=True) or b""
    return value if isinstance(value, (str, bytes)) else b""


def _leaves(msg: EmailMessage) -> list[Any]:
    return [p for p in msg.walk() if not p.is_multipart()]


def render_post(data: bytes) -> Post:
    """What the page shows of a held post: never raw HTML, never a script."""
    msg = _parse(data)
    post = Post()
    for name in SHOWN_HEADERS:
        value = msg.get(name)
        if value is not None:
            post.headers.append((name, str(value)))
    body = untrusted.body_part(msg, ("plain", "html"))
    for i, part in enumerate(_leaves(msg)):
        if part is body:
            continue
        if part.get_content_maintype() == "text" and not part.get_filename() \
                and part.get_content_disposition() != "attachment":
            continue                                       # the other alternative
        payload = part.get_payload(decode=True) or b""
        post.attachments.append(Part(i, part.get_filename() or f"part-{i}",
                                     part.get_content_type(), len(payload)))
    if body is not None:
        content = _content(body)
        text = content if isinstance(content, str) else content.decode("utf-8", "replace")
        if body.get_content_subtype() == "html":
            post.html = Markup(htmlmail.sanitise(text[:MAX_TEXT]))
        else:
            post.text = text[:MAX_TEXT]
    return post


@dataclass
class View:
    state: str
    detail: str = ""
    list: ListView | None = None
    moderator: str = ""
    held: HeldMessage | None = None
    post: Post | None = None
    outcome: str = ""


def _view(w: Web, token: str) -> View:
    with w.app.db.unit_of_work() as session:
        c = web_tokens.check(session, w.app, token, KINDS)
        if c.row is None or c.row.held_id is None:
            return View("unknown")
        held = session.get(HeldMessage, c.row.held_id)
        if held is None:
            return View("unknown")
        session.expunge(held)
        ml = session.get_one(MailingList, c.row.list_id)
        v = View(c.state, c.detail, ListView.of(ml), c.row.email, held)
        if held.decision is not None:
            v.state = "used"
            v.outcome = moderation.Outcome(held, False).describe()
            return v
        if c.state != "ok":
            return v
        inbound = session.get_one(InboundMessage, held.inbound_id)
        try:
            v.post = render_post(w.app.spool.get(inbound.spool_sha))
        except OSError:
            v.post = Post(text="(the held message could not be read)")
        return v


def _attachment(w: Web, token: str, index: int) -> tuple[str, bytes] | None:
    with w.app.db.unit_of_work() as session:
        c = web_tokens.check(session, w.app, token, KINDS)
        if c.row is None or c.state != "ok" or c.row.held_id is None:
            return None
        held = session.get_one(HeldMessage, c.row.held_id)
        inbound = session.get_one(InboundMessage, held.inbound_id)
        data = w.app.spool.get(inbound.spool_sha, session=session)
    leaves = _leaves(_parse(data))
    if not 0 <= index < len(leaves):
        return None
    part = leaves[index]
    return part.get_filename() or f"part-{index}", part.get_payload(decode=True) or b""


def _decide(w: Web, token: str, action: str, reason: str) -> tuple[str, str]:
    with w.app.db.unit_of_work() as session:
        c = web_tokens.check(session, w.app, token, KINDS)
        if c.row is None or c.row.held_id is None:
            return "unknown", ""
        if c.state == "used":
            return "used", c.detail
        if c.state != "ok":
            return c.state, ""
        decision = DECISIONS[action]
        outcome = moderation.decide(session, w.app, c.row.held_id, decision,
                                    actor=c.row.email, via="web",
                                    reason=(reason or None) if action == "reject" else None)
        if not outcome.won:
            return "used", f"Already handled: {outcome.describe()}."
        h = outcome.held
        text = f"Held message {h.id} from {h.sender} ({h.subject!r}) {moderation.PAST[decision]}."
        if decision is Decision.reject and reason:
            text += f" Reason given to the poster: {reason}"
        return "done", text


def _state_page(state: str) -> None:
    if state in web_tokens.STATE_PAGES:
        status, text = web_tokens.STATE_PAGES[state]
        raise HTTPException(status, text)


async def show(request: Request) -> Response:
    token = request.path_params["token"]
    pages.rate_limit(request, "page", pages.client_ip(request), *PAGE_VIEWS)
    v = await run_in_threadpool(_view, pages.web(request), token)
    _state_page(v.state)
    lv = v.list
    assert lv is not None and v.held is not None
    return pages.render(request, "web/moderate.html.j2", {
        "v": v, "list": lv, "held": v.held, "post": v.post, "token": token},
        domain=lv.domain, list_address=lv.address, csrf_scope=token)


async def download(request: Request) -> Response:
    token = request.path_params["token"]
    pages.rate_limit(request, "page", pages.client_ip(request), *PAGE_VIEWS)
    found = await run_in_threadpool(_attachment, pages.web(request), token,
                                    request.path_params["index"])
    if found is None:
        raise HTTPException(404, "There is no such attachment (or the post was decided).")
    name, data = found
    ascii_name = name.encode("ascii", "replace").decode().replace('"', "'").replace("\\", "_")
    disposition = f'attachment; filename="{ascii_name}"; filename*=UTF-8\'\'{quote(name)}'
    return Response(data, media_type="application/octet-stream", headers={
        "Content-Disposition": disposition, "Content-Security-Policy": "sandbox"})


async def decide(request: Request) -> Response:
    token = request.path_params["token"]
    form = await pages.read_form(request)
    pages.check_csrf(request, form, token)
    pages.rate_limit(request, "moderate-post", pages.client_ip(request), *POSTS)
    action = str(form.get("action") or "")
    if action not in DECISIONS:
        raise HTTPException(400, "Unknown action: nothing was done.")
    reason = str(form.get("reason") or "").strip()[:2000]
    state, text = await run_in_threadpool(_decide, pages.web(request), token, action, reason)
    _state_page(state)
    title = "Done" if state == "done" else "Already handled"
    return pages.render(request, "web/done.html.j2", {"title": title, "lines": [text]})


ROUTES: list[BaseRoute] = [
    Route("/m/{token}", show, methods=["GET", "HEAD"]),
    Route("/m/{token}", decide, methods=["POST"]),
    Route("/m/{token}/attachment/{index:int}", download, methods=["GET"]),
]
