"""-request index / get: the daily limits of archive answers."""

from __future__ import annotations

import datetime as dt
from typing import Any

from listserv.archive import index as archive_index
from listserv.pipeline import archive_commands as archive_access
from listserv.core.models import ArchivePolicy
from tests.db.modsupport import Outbox, command, make_list, message

ADDR = "dev@example.org"


def test_archive_answers_are_rate_limited(app: Any, clock: Any) -> None:
    list_id = make_list(app, people=("ann@a.example",), archive=ArchivePolicy.private)
    with app.db.unit_of_work() as session:
        archive_index.add_messages(session, list_id, [(
            message("ann@a.example", ADDR, "First"), "2026-11",
            dt.datetime.fromtimestamp(1_793_600_000.0, dt.timezone.utc))])
    outbox = Outbox(app)
    limit = archive_access.DAILY_LIMITS["archive-get"]
    for _ in range(limit + 2):
        command(app, list_id, "request", message("ann@a.example", "dev-request@x", "get 2026-11"))
    got = outbox.new()
    assert len(got) == limit
    assert all(m.msg.get_content_type() == "multipart/mixed" for m in got)
    clock.advance(days=1)
    command(app, list_id, "request", message("ann@a.example", "dev-request@x", "index"))
    assert [str(m.msg["Subject"]) for m in outbox.new()] == [f"Archive index of {ADDR}"]
