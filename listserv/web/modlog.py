"""The public moderation log page: /lists/NAME@DOMAIN/moderation-log.

Shown for lists whose ``moderation_log`` is ``public`` (the web side has no sign-in yet: a
members-only or owners-only log answers 403 and points to the ``log`` mail command). The
entries are those of :mod:`listserv.pipeline.modlog`, as a reader who is not a moderator sees them.
"""

from __future__ import annotations

import datetime as dt

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from listserv.core import lists
from listserv.pipeline import modlog
from listserv.core.models import LogAccess
from listserv.core.views import ListView
from listserv.web import pages


def moderation_log(request: Request) -> Response:
    w = pages.web(request)
    address = str(request.path_params["address"])
    with w.app.db.unit_of_work() as session:
        ml = lists.find_list(session, address)
        if ml is None:
            raise HTTPException(404, f"There is no list {address} here.")
        lv = ListView.of(ml)
        if ml.moderation_log is not LogAccess.public:
            raise HTTPException(403, f"The moderation log of {ml.address} is not public. "
                                     f"Its readers can send 'log' to {lv.sub('request')} to "
                                     "receive it by mail.")
        since = w.app.now() - dt.timedelta(days=modlog.DAYS)
        found = modlog.entries(session, ml, since, moderator=False)
    return pages.render(request, "web/moderation-log.html.j2",
                        {"list": lv, "entries": found, "days": modlog.DAYS},
                        domain=lv.domain, list_address=lv.address)


ROUTES: tuple[BaseRoute, ...] = (
    Route("/lists/{address}/moderation-log", moderation_log, methods=["GET", "HEAD"]),
)
