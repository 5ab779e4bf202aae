"""The Alembic history produces exactly the models' schema, and init is idempotent."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from listserv.app import App
from listserv.db import current_revision, head_revision
from listserv.models import Base


def test_migrations_match_models(app: App) -> None:
    with app.db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_database_at_head(app: App) -> None:
    assert current_revision(app.db) == head_revision(app.db) is not None
