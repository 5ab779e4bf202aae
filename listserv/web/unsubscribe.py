"""Unsubscribe pages: a member's one-click link (RFC 8058) and the list's own page.

* ``GET /u/TOKEN`` shows one button; it never changes anything (mail filters fetch links).
* ``POST /u/TOKEN`` with ``List-Unsubscribe=One-Click`` removes the member at once and
  answers 200: the mail provider's one-click POST (no CSRF token: the URL's token is the
  credential, RFC 8058) or our page's button (its CSRF token is then checked). A browser's
  cross-site POST without our token is refused.
* ``GET/POST /leave/NAME@DOMAIN`` (the List-Unsubscribe of batched copies, which cannot name
  a member): asks for the address and mails it a confirmation, as NAME-leave@ does. The answer
  is the same whether or not the address is subscribed.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from listserv.core import lists, members
from listserv.delivery import unsubscribe
from listserv.pipeline import subscriptions
from listserv.core.addresses import try_normalise
from listserv.core.views import ListView
from listserv.web import pages, security
from listserv.web.pages import Web

BAD_TOKENS = (30, 600.0)        # unknown tokens per client address per 10 minutes
PAGE_VIEWS = (120, 60.0)        # GETs per client address per minute
LEAVE_FORMS_IP = (10, 3600.0)   # list-page requests per client address per hour
LEAVE_FORMS_ADDR = (3, 3600.0)  # ... and per address asked for


@dataclass
class Member:
    email: str
    list: ListView


def _member(w: Web, token: str) -> Member | None:
    with w.app.db.unit_of_work() as session:
        m = unsubscribe.find(session, w.secret, token)
        if m is None:
            return None
        return Member(m.address.email, ListView.of(m.mailing_list))


def _remove(w: Web, token: str) -> Member | None:
    with w.app.db.unit_of_work() as session:
        m = unsubscribe.find(session, w.secret, token)
        if m is None:
            return None
        ml = m.mailing_list
        found = Member(m.address.email, ListView.of(ml))
        subscriptions.unsubscribe_now(session, w.app, ml, found.email)
        return found


def _invalid(request: Request) -> HTTPException:
    pages.rate_limit(request, "unsubscribe-bad", pages.client_ip(request), *BAD_TOKENS)
    return HTTPException(404, "This unsubscribe link is not valid (any more). If you used it "
                              "before, you have already left the list.")


async def show(request: Request) -> Response:
    token = request.path_params["token"]
    pages.rate_limit(request, "page", pages.client_ip(request), *PAGE_VIEWS)
    w = pages.web(request)
    member = await run_in_threadpool(_member, w, token)
    if member is None:
        raise _invalid(request)
    return pages.render(request, "web/unsubscribe.html.j2",
                        {"list": member.list, "email": member.email},
                        domain=member.list.domain, list_address=member.list.address,
                        csrf_scope=token)


async def one_click(request: Request) -> Response:
    token = request.path_params["token"]
    form = await pages.read_form(request)
    if form.get("List-Unsubscribe") != "One-Click":
        raise HTTPException(400, "To unsubscribe, use the button on this page.")
    if "csrf" in form or not security.same_site(request.headers, pages.web(request).base_url):
        pages.check_csrf(request, form, token)
    w = pages.web(request)
    member = await run_in_threadpool(_remove, w, token)
    if member is None:
        raise _invalid(request)
    return pages.render(request, "web/done.html.j2", {
        "title": "Unsubscribed",
        "lines": [f"{member.email} has left {member.list.display_name} "
                  f"({member.list.address}).",
                  "You will get no more posts from this list. A short goodbye is on its way."],
    }, domain=member.list.domain, list_address=member.list.address)


def _list(w: Web, address: str) -> ListView | None:
    with w.app.db.unit_of_work() as session:
        ml = lists.find_list(session, address)
        return ListView.of(ml) if ml is not None else None


def _ask(w: Web, address: str, email: str) -> None:
    with w.app.db.unit_of_work() as session:
        ml = lists.find_list(session, address)
        if ml is not None and members.find_membership(session, ml, email) is not None:
            subscriptions.leave(session, w.app, ml, email)


async def leave_page(request: Request) -> Response:
    address = request.path_params["address"]
    pages.rate_limit(request, "page", pages.client_ip(request), *PAGE_VIEWS)
    lv = await run_in_threadpool(_list, pages.web(request), address)
    if lv is None:
        raise HTTPException(404, "There is no such list here.")
    return pages.render(request, "web/leave.html.j2", {"list": lv, "sent_to": None, "error": ""},
                        domain=lv.domain, list_address=lv.address, csrf_scope="leave:" + address)


async def leave_submit(request: Request) -> Response:
    address = request.path_params["address"]
    form = await pages.read_form(request)
    pages.check_csrf(request, form, "leave:" + address)
    w = pages.web(request)
    lv = await run_in_threadpool(_list, w, address)
    if lv is None:
        raise HTTPException(404, "There is no such list here.")
    raw = form.get("email")
    email = try_normalise(raw) if isinstance(raw, str) and len(raw) < 320 else None
    if email is None:
        return pages.render(request, "web/leave.html.j2",
                            {"list": lv, "sent_to": None,
                             "error": "Please give a valid email address."}, 400,
                            domain=lv.domain, list_address=lv.address,
                            csrf_scope="leave:" + address)
    pages.rate_limit(request, "leave-ip", pages.client_ip(request), *LEAVE_FORMS_IP)
    pages.rate_limit(request, "leave-addr", f"{lv.address} {email}", *LEAVE_FORMS_ADDR)
    await run_in_threadpool(_ask, w, address, email)
    return pages.render(request, "web/leave.html.j2", {"list": lv, "sent_to": email, "error": ""},
                        domain=lv.domain, list_address=lv.address)


ROUTES: list[BaseRoute] = [
    Route("/u/{token}", show, methods=["GET", "HEAD"]),
    Route("/u/{token}", one_click, methods=["POST"]),
    Route("/leave/{address}", leave_page, methods=["GET", "HEAD"]),
    Route("/leave/{address}", leave_submit, methods=["POST"]),
]
