"""The Alembic history produces exactly the models' schema, and init is idempotent."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from listserv.core.app import App
from listserv.core.db import current_revision, head_revision, require_schema, script_heads
from listserv.core.errors import ConfigError
from listserv.core.models import Base, include_in_comparison


def test_migrations_match_models(app: App) -> None:
    with app.db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                  "include_name": include_in_comparison})
        diff = compare_metadata(ctx, Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_database_at_head(app: App) -> None:
    assert current_revision(app.db) == head_revision(app.db) is not None


def test_schema_check_without_alembic(app: App) -> None:
    """require_schema's quick path reads the heads from the scripts: the same as Alembic's,
    and a database stamped elsewhere still gets Alembic's answer."""
    assert script_heads() == {head_revision(app.db)}
    require_schema(app.db)
    with app.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0001'")
    with pytest.raises(ConfigError, match="expected .*listserv db upgrade"):
        require_schema(app.db)
    with app.db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff_from_the_future'")
    with pytest.raises(ConfigError, match="newer listserv"):
        require_schema(app.db)


def test_fulltext_objects_exist_but_are_left_out(app: App) -> None:
    """The engine's full-text index is there (made by the migration), and the comparison
    above leaves out exactly those objects."""
    with app.db.engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            names = {r[0] for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE name LIKE 'archive_message_fts%'")}
            assert "archive_message_fts" in names
            assert {"archive_message_fts_insert", "archive_message_fts_delete",
                    "archive_message_fts_update"} <= names
        else:
            cols = {r[0] for r in conn.exec_driver_sql(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'archive_message'")}
            assert "fts" in cols
            idx = {r[0] for r in conn.exec_driver_sql(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'archive_message'")}
            assert "ix_archive_message_fts" in idx
    assert not include_in_comparison("archive_message_fts_data", "table", {})
    assert include_in_comparison("archive_message", "table", {})
    assert not include_in_comparison("fts", "column", {"table_name": "archive_message"})
    assert include_in_comparison("fts", "column", {"table_name": "other"})
