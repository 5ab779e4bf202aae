"""Shared fixtures: a fresh, migrated database per test (SQLite file, or PostgreSQL when
LISTSERV_TEST_DATABASE_URL is set), an App bound to it, and a controllable clock.

Under pytest-xdist (`pytest -n N`) each worker builds its own template database and copies it
per test; PostgreSQL database names carry the worker's id (``listserv_t_gw0_...``), so workers
never share a database, and everything else a test starts (sinks, daemons, Postfix) listens on
ephemeral ports under the worker's own temp dirs."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from listserv.core import config
from listserv.core.app import App, ensure_site_secret
from listserv.core.db import Database, upgrade

PG_URL = os.environ.get("LISTSERV_TEST_DATABASE_URL", "").strip()
if PG_URL.startswith("postgresql://"):
    PG_URL = "postgresql+psycopg://" + PG_URL[len("postgresql://"):]


class Clock:
    """A settable clock: ``clock()`` returns the current fake time; ``advance(**timedelta)``."""

    def __init__(self, start: dt.datetime | None = None) -> None:
        self.t = start or dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.t

    def advance(self, **kw: float) -> dt.datetime:
        self.t += dt.timedelta(**kw)
        return self.t


# "gw0", "gw1"... under pytest-xdist; "main" in a plain run
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def pg_database_name(kind: str) -> str:
    """A new PostgreSQL database name of this worker: listserv_KIND_WORKER_RANDOM."""
    return f"listserv_{kind}_{WORKER}_{uuid.uuid4().hex[:10]}"


def _pg_admin_url() -> str:
    base, _, _ = PG_URL.rpartition("/")
    return base + "/postgres"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` first (a stable sort: the others keep their order), so that
    pytest-xdist starts them first instead of finishing with them."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


@pytest.fixture(scope="session")
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A migrated template database, built once per session."""
    if PG_URL:
        admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
        name = pg_database_name("tmpl")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        url = PG_URL.rpartition("/")[0] + "/" + name
        d = Database(url)
        upgrade(d)
        with d.unit_of_work() as s:
            ensure_site_secret(s)
        d.dispose()
        yield name
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    else:
        path = tmp_path_factory.mktemp("tmpl") / "template.db"
        d = Database(f"sqlite:///{path}")
        upgrade(d)
        with d.unit_of_work() as s:
            ensure_site_secret(s)
        with d.engine.connect() as c:
            c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        d.dispose()
        yield str(path)


@pytest.fixture
def db_url(_template_db: str, tmp_path: Path) -> Iterator[str]:
    """URL of a fresh, migrated database with a site secret, private to this test."""
    if PG_URL:
        admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
        name = pg_database_name("t")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{_template_db}"'))
        yield PG_URL.rpartition("/")[0] + "/" + name
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    else:
        path = tmp_path / "data" / "listserv.db"
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_template_db, path)
        yield f"sqlite:///{path}"


@pytest.fixture(autouse=True)
def _fresh_failure_registries() -> Iterator[None]:
    """Periodic passes remember failed items per process; each test starts with none."""
    yield
    from listserv.core import isolation

    for registry in isolation.REGISTRIES:
        registry.clear()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> config.Settings:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    return config.load(environ={
        "LISTSERV_DATA_DIR": str(data),
        "LISTSERV_DATABASE_URL": db_url,
    })


@pytest.fixture
def app(settings: config.Settings, clock: Clock) -> Iterator[App]:
    a = App.from_settings(settings, now=clock, resolve_txt=lambda name: [])
    yield a
    a.db.dispose()


@pytest.fixture
def cli_env(settings: config.Settings) -> dict[str, str]:
    """Environment for running the CLI (CliRunner or subprocess) against this test's db."""
    return {"LISTSERV_DATA_DIR": settings.data_dir,
            "LISTSERV_DATABASE_URL": settings.database.url,
            # `serve` also serves the web pages: on a free port, not the shared default 8080
            "LISTSERV_WEB_LISTEN": "127.0.0.1:0"}
