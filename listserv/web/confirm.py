"""Confirmation pages: ``/c/TOKEN`` for the links in confirmation mail and notices.

GET shows what would happen and the buttons; only POST acts (mail filters fetch links with
GET). The token rules are those of a reply to ``NAME-confirm+TOKEN@``: one list, one kind,
the address it was sent to, single use (the first action wins), an expiry. The page acts as
that address: having the link is the credential, as having the mail is for a reply.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from listserv.pipeline import moderation, subscriptions
from listserv.core.models import Decision, HeldMessage, MailingList, TokenKind
from listserv.core.views import ListView
from listserv.web import pages
from listserv.web import tokens as web_tokens
from listserv.web.pages import Web

KINDS = (*subscriptions.CONFIRM_KINDS, TokenKind.cancel_post, TokenKind.moderate)
ACTIONS = {
    TokenKind.subscribe: ("confirm",),
    TokenKind.unsubscribe: ("confirm",),
    TokenKind.reenable: ("confirm",),
    TokenKind.cancel_post: ("cancel",),
    TokenKind.approve_subscription: ("approve", "reject", "discard"),
}
PAGE_VIEWS = (120, 60.0)
POSTS = (30, 600.0)


@dataclass
class View:
    state: str
    kind: str = ""
    email: str = ""
    list: ListView | None = None
    detail: str = ""
    subscriber: str = ""
    subject: str = ""
    actions: tuple[str, ...] = field(default_factory=tuple)


def _view(w: Web, token: str) -> View:
    with w.app.db.unit_of_work() as session:
        c = web_tokens.check(session, w.app, token, KINDS)
        if c.row is None:
            return View(c.state)
        row = c.row
        ml = session.get_one(MailingList, row.list_id)
        v = View(c.state, row.kind.value, row.email, ListView.of(ml), c.detail,
                 str((row.payload or {}).get("subscriber") or ""),
                 actions=ACTIONS.get(row.kind, ()))
        if row.held_id is not None:
            held = session.get(HeldMessage, row.held_id)
            v.subject = held.subject if held is not None else ""
        return v


def _act(w: Web, token: str, action: str, reason: str) -> tuple[str, str]:
    """(state, text): carry out ``action`` with the token, as a reply would."""
    with w.app.db.unit_of_work() as session:
        c = web_tokens.check(session, w.app, token, KINDS)
        if c.row is None or c.state != "ok":
            return c.state, c.detail
        row = c.row
        if action not in ACTIONS.get(row.kind, ()):
            return "bad", ""
        ml = session.get_one(MailingList, row.list_id)
        if row.kind is TokenKind.cancel_post:
            assert row.held_id is not None
            outcome = moderation.decide(session, w.app, row.held_id, Decision.cancel,
                                        actor=row.email, via="web")
            if not outcome.won:
                return "used", f"Already handled: {outcome.describe()}."
            return "done", f"Your post {outcome.held.subject!r} was withdrawn."
        line = f"{action} {reason}".strip() if action == "reject" else action
        result = subscriptions.confirm(session, w.app, ml, row, row.email, [line], via="web")
        return ("used" if result.already else "done"), result.text


async def show(request: Request) -> Response:
    token = request.path_params["token"]
    pages.rate_limit(request, "page", pages.client_ip(request), *PAGE_VIEWS)
    w = pages.web(request)
    v = await run_in_threadpool(_view, w, token)
    if v.kind == TokenKind.moderate.value:
        return RedirectResponse(f"{w.prefix}/m/{token}", status_code=303)
    if v.state in web_tokens.STATE_PAGES:
        status, text = web_tokens.STATE_PAGES[v.state]
        raise HTTPException(status, text)
    lv = v.list
    assert lv is not None
    return pages.render(request, "web/confirm.html.j2", {"v": v, "list": lv},
                        domain=lv.domain, list_address=lv.address, csrf_scope=token)


async def act(request: Request) -> Response:
    token = request.path_params["token"]
    form = await pages.read_form(request)
    pages.check_csrf(request, form, token)
    pages.rate_limit(request, "confirm-post", pages.client_ip(request), *POSTS)
    action = str(form.get("action") or "")
    reason = str(form.get("reason") or "").strip()[:1000]
    w = pages.web(request)
    state, text = await run_in_threadpool(_act, w, token, action, reason)
    if state in web_tokens.STATE_PAGES:
        status, message = web_tokens.STATE_PAGES[state]
        raise HTTPException(status, message)
    if state == "bad":
        raise HTTPException(400, "Unknown action: nothing was done.")
    title = "Done" if state == "done" else "Already handled"
    return pages.render(request, "web/done.html.j2", {"title": title, "lines": [text]})


ROUTES: list[BaseRoute] = [
    Route("/c/{token}", show, methods=["GET", "HEAD"]),
    Route("/c/{token}", act, methods=["POST"]),
]
