"""Alembic environment: the engine comes from listserv.core.db via config.attributes."""

from alembic import context

from listserv.core.models import Base, include_in_comparison

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from listserv.core.db import make_engine

        url = config.get_main_option("sqlalchemy.url")
        if not url:
            raise RuntimeError("no engine and no sqlalchemy.url given to the migrations")
        engine = make_engine(url)
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
            include_name=include_in_comparison,
        )
        context.run_migrations()


run_migrations_online()
