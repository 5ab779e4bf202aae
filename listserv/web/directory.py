"""The directory (BASE_URL/: the advertised lists) and each list's page with its join form.

Joining from the web is always confirmed by mail, whatever the list's subscription policy
(anyone can type anyone's address): the confirmation subscribes, or, for a moderated list,
then asks the moderators. The answer page is the same whether the address was already a
member, had a confirmation sent a minute ago or got one now, so the form reveals nothing
about who is subscribed. Rate limited per client IP and per address.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from listserv.core import addresses, lists, network
from listserv.pipeline import subscriptions
from listserv.core.models import ArchivePolicy, MailingList, Membership, Role
from listserv.web import pages
from listserv.web.archive import Urls, find_list, urls

JOIN_PER_IP = (10, 3600.0)           # join requests per client IP per hour
JOIN_PER_ADDRESS = (3, 3600.0)       # per address per hour (the mail itself: once an hour)


def member_counts(session: Any, list_ids: list[int]) -> dict[int, int]:
    rows = session.execute(
        select(Membership.list_id, func.count()).where(
            Membership.list_id.in_(list_ids), Membership.role == Role.member)
        .group_by(Membership.list_id))
    return {list_id: n for list_id, n in rows}


def included_lists(session: Any, ml: MailingList) -> list[str]:
    """The addresses of the lists ``ml`` includes directly (its posts reach them too)."""
    return network.includes_of(session, ml)


def list_summary(u: Urls, ml: MailingList, members: int,
                 included: list[str]) -> dict[str, Any]:
    return {"address": ml.address, "name": ml.display_name or ml.name,
            "description": ml.description, "members": members, "included": included,
            "url": u.page(), "public_archive": ml.archive is ArchivePolicy.public,
            "archive_url": u.archive(), "search_url": u.search(), "feed_url": u.feed(),
            "join_url": u.join()}


def directory(request: Request) -> Response:
    w = pages.web(request)
    with w.app.db.unit_of_work() as session:
        shown = [ml for ml in lists.all_lists(session) if ml.advertised]
        counts = member_counts(session, [ml.id for ml in shown])
        entries = [list_summary(urls(request, ml.address), ml, counts.get(ml.id, 0),
                                included_lists(session, ml)) for ml in shown]
    return pages.render(request, "web/index.html.j2", {"lists": entries})


def _join_scope(address: str) -> str:
    return f"join:{address.lower()}"


def _list_page(request: Request, ml: MailingList, session: Any, *, status: int = 200,
               error: str = "", email: str = "") -> Response:
    u = urls(request, ml.address)
    info = list_summary(u, ml, member_counts(session, [ml.id]).get(ml.id, 0),
                        included_lists(session, ml))
    return pages.render(request, "web/list.html.j2",
                        {"list": info, "urls": u, "error": error, "email": email}, status,
                        domain=ml.domain.name, list_address=ml.address,
                        csrf_scope=_join_scope(ml.address))


def list_page(request: Request) -> Response:
    with pages.web(request).app.db.unit_of_work() as session:
        ml = find_list(session, request.path_params["address"])
        return _list_page(request, ml, session)


def _join(request: Request, list_address: str, email: str) -> Response:
    app = pages.web(request).app
    with app.db.unit_of_work() as session:
        ml = find_list(session, list_address)
        address = addresses.try_normalise(email)
        if address is None:
            return _list_page(request, ml, session, status=400, email=email,
                              error="That is not an email address. Please check it.")
        pages.rate_limit(request, "join-address", address, *JOIN_PER_ADDRESS)
        subscriptions.join(session, app, ml, address, always_confirm=True)
        return pages.render(request, "web/done.html.j2", {
            "title": "Check your mail",
            "lines": [f"If {address} can join {ml.address}, a message asking to confirm is on "
                      "its way to it. Open the link in that message (or reply to it) to "
                      "finish joining.",
                      "Nothing happens until the address confirms."]},
            domain=ml.domain.name, list_address=ml.address)


async def join(request: Request) -> Response:
    list_address = request.path_params["address"]
    form = await pages.read_form(request)
    pages.check_csrf(request, form, _join_scope(list_address))
    pages.rate_limit(request, "join-ip", pages.client_ip(request), *JOIN_PER_IP)
    email = form.get("email")
    if not isinstance(email, str):
        raise HTTPException(400, "The form needs an email address.")
    return await run_in_threadpool(_join, request, list_address, email.strip()[:320])


ROUTES: tuple[BaseRoute, ...] = (
    Route("/", directory, methods=["GET", "HEAD"]),
    Route("/lists/{address}/", list_page, methods=["GET", "HEAD"]),
    Route("/lists/{address}/join", join, methods=["POST"]),
)
