"""Test helpers for stored message bytes (listserv.spool, table spool_blob)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select, update

from listserv.core.app import App
from listserv.core.models import SpoolBlob


def lose(app: App, sha: str) -> bytes:
    """Delete the stored bytes of ``sha`` (a lost message); returns them."""
    data = app.spool.get(sha)
    with app.db.unit_of_work() as s:
        s.execute(delete(SpoolBlob).where(SpoolBlob.sha == sha))
    return data


def age(app: App, days: float, *shas: str) -> None:
    """Make the stored messages (``shas``, default all) look ``days`` old: the retention
    sweep compares stored_at with the wall clock."""
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    with app.db.unit_of_work() as s:
        q = update(SpoolBlob).values(stored_at=when)
        s.execute(q.where(SpoolBlob.sha.in_(shas)) if shas else q)


def stored(app: App) -> set[str]:
    with app.db.unit_of_work() as s:
        return set(s.scalars(select(SpoolBlob.sha)))
