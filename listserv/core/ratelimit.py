"""Per-address, per-day limits for automatic mail (models.AutoResponse)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from listserv.core.app import App
from listserv.core.models import AutoResponse

# Automatic answers one address may get from one list per day, by kind.
DAILY_LIMITS = {
    "hold": 3,         # "your post awaits moderation"
    "help": 3,         # help text for a command mail we could not act on
    "results": 10,     # answers to -request commands
    "status": 2,       # "you are already subscribed" / "you are not subscribed"
    "reject": 3,       # "your post was rejected" (nonmember_action reject, a moderator)
    "retry": 5,        # "your moderation reply had no command" (to a moderator)
    "note": 3,         # a poster's note about their held post, passed to the moderators
    "confirm": 5,      # confirmation requests (join, leave, delivery change), all kinds
}


def allow(session: Session, app: App, list_id: int, email: str, kind: str,
          limit: int | None = None, amount: int = 1) -> bool:
    """Count one automatic mail of ``kind`` to ``email`` today (``amount``: what it costs,
    e.g. bytes); False when it would go over the limit.

    The counter row is read FOR UPDATE: two workers (several `serve` processes on
    PostgreSQL) counting for the same address take turns, so the limit holds."""
    limit = DAILY_LIMITS.get(kind, 3) if limit is None else limit
    today = app.now().date()
    row = session.scalar(select(AutoResponse).where(
        AutoResponse.list_id == list_id, AutoResponse.email == email, AutoResponse.kind == kind
    ).with_for_update())
    if row is None:
        try:
            with session.begin_nested():     # a concurrent worker may insert the same row
                session.add(AutoResponse(list_id=list_id, email=email, kind=kind, day=today,
                                         count=0))
        except IntegrityError:
            pass
        row = session.scalar(select(AutoResponse).where(
            AutoResponse.list_id == list_id, AutoResponse.email == email,
            AutoResponse.kind == kind).with_for_update())
        if row is None:
            return False
    if row.day != today:
        row.day, row.count = today, 0
    if row.count + amount > limit:
        return False
    row.count += amount
    return True


def used(session: Session, app: App, list_id: int, email: str, kind: str) -> int:
    """How much of ``kind`` ``email`` has used today."""
    row = session.scalar(select(AutoResponse).where(
        AutoResponse.list_id == list_id, AutoResponse.email == email, AutoResponse.kind == kind))
    return row.count if row is not None and row.day == app.now().date() else 0


def purge(session: Session, app: App) -> None:
    """Forget counters of earlier days."""
    session.execute(delete(AutoResponse).where(AutoResponse.day < app.now().date()))
