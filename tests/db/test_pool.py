"""PostgreSQL's connection pool (listserv.core.db): a connection that sat unused in the pool
is pinged before it is used again, and replaced when the ping fails; one reused at once is
not pinged (a round trip saved per unit of work), so a connection that broke meanwhile
fails one unit of work and the pool is then renewed."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from listserv.core import db as db_mod
from listserv.core.app import App


def _backend(app: App) -> int:
    with app.db.unit_of_work() as s:
        return int(s.scalar(text("SELECT pg_backend_pid()")))


def _terminate(app: App, pid: int) -> None:
    admin = create_engine(app.db.url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            assert c.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
    finally:
        admin.dispose()


@pytest.fixture
def pg_app(app: App) -> App:
    if app.db.is_sqlite:
        pytest.skip("tests PostgreSQL's connection pool; SQLite opens a file "
                    "(runs in the PostgreSQL pass)")
    return app


def test_a_connection_idle_in_the_pool_is_pinged_and_replaced_when_broken(
        pg_app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = _backend(pg_app)
    _terminate(pg_app, pid)
    monkeypatch.setattr(db_mod, "PING_AFTER_IDLE", 0.0)   # every connection counts as idle
    assert _backend(pg_app) != pid


def test_a_connection_reused_at_once_is_not_pinged(
        pg_app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    pid = _backend(pg_app)
    _terminate(pg_app, pid)
    monkeypatch.setattr(db_mod, "PING_AFTER_IDLE", 3600.0)
    with pytest.raises(OperationalError):     # the broken connection fails one unit of work
        _backend(pg_app)
    assert _backend(pg_app) != pid            # and the pool has been renewed
