"""listserv init / db upgrade."""

from __future__ import annotations

import click

from listserv.core import db as dbmod
from listserv.core.app import App, ensure_site_secret
from listserv.cli.base import Obj, cli, handle_errors, pass_obj


@cli.command()
@pass_obj
@handle_errors
def init(obj: Obj) -> None:
    """Create data_dir, the database schema and the site secret (idempotent)."""
    app = obj.app
    app.settings.data_path.mkdir(parents=True, exist_ok=True)
    app.db.check()
    dbmod.upgrade(app.db)
    _import_spool(app)
    with app.db.unit_of_work() as session:
        ensure_site_secret(session)
    click.echo(f"initialised {app.settings.data_path} "
               f"(database {dbmod.safe_url(app.db.url)}, schema {dbmod.current_revision(app.db)})")


@cli.group("db")
def db_group() -> None:
    """Database schema management."""


@db_group.command("upgrade")
@pass_obj
@handle_errors
def db_upgrade(obj: Obj) -> None:
    """Apply schema migrations to an existing database."""
    app = obj.app
    app.db.check()
    before = dbmod.current_revision(app.db)
    dbmod.upgrade(app.db)
    after = dbmod.current_revision(app.db)
    if before == after:
        click.echo(f"database already at {after}")
    else:
        click.echo(f"database upgraded from {before or 'empty'} to {after}")
    _import_spool(app)


def _import_spool(app: App) -> None:
    """Message files of the spool directory of older versions go into the database."""
    files, size = app.spool.import_files()
    if files:
        click.echo(f"imported {files} message file(s) ({size} bytes) from "
                   f"{app.spool.legacy_root} into the database; the directory is no longer "
                   "used and may be removed")
