"""listserv serve: run the intake, the workers and the scheduler until SIGTERM/SIGINT."""

from __future__ import annotations

import click
from sqlalchemy import inspect

from listserv.core import db as dbmod
from listserv.core.app import App, ensure_site_secret
from listserv.cli.base import Obj, cli, handle_errors, pass_obj


def prepare_database(app: App) -> None:
    """Initialise a database that was never set up (first run); refuse one that is behind."""
    app.settings.data_path.mkdir(parents=True, exist_ok=True)
    app.db.check()
    if not inspect(app.db.engine).has_table("alembic_version"):
        click.echo(f"listserv: initialising {dbmod.safe_url(app.db.url)}", err=True)
        dbmod.upgrade(app.db)
    dbmod.require_schema(app.db)
    with app.db.unit_of_work() as session:
        ensure_site_secret(session)


@cli.command()
@click.option("--role", type=click.Choice(["all", "intake", "worker"]), default="all",
              show_default=True,
              help="all: everything in this process. intake: only the SMTP/LMTP intake and the "
                   "web pages; worker: every job and delivery, no listener. Run one intake and "
                   "workers (same config and data_dir; on SQLite one worker, on PostgreSQL "
                   "as many as you like) so that a large fan-out never slows the intake's "
                   "answers.")
@pass_obj
@handle_errors
def serve(obj: Obj, role: str) -> None:
    """Run the SMTP/LMTP intake, delivery workers and the scheduler until SIGTERM/SIGINT."""
    from listserv import daemon

    app = obj.app
    prepare_database(app)
    daemon.serve(app, role)
