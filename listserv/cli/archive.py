"""CLI: listserv archive build LIST [--out DIR]; archive export LIST [--month M] [--to DIR];
archive reindex [LIST] [--from-mbox]."""

from __future__ import annotations

from pathlib import Path

import click

from listserv.cli.base import Obj, cli, handle_errors, pass_obj


@cli.group()
def archive() -> None:
    """The list archives: kept in the database; mbox files and HTML pages are exports."""


@archive.command("build")
@click.argument("list_address", metavar="LIST")
@click.option("--out", "out_dir", metavar="DIR", type=click.Path(file_okay=False),
              default=None,
              help="Write the pages here (default: <data_dir>/archives/LIST/html/).")
@pass_obj
@handle_errors
def build_cmd(obj: Obj, list_address: str, out_dir: str | None) -> None:
    """Render LIST's static HTML archive from its archive in the database.

    One index page (the months), a page per month (its threads) and a page per message
    (headers and text; attachments listed, not rendered). Only changed files are rewritten:
    running it again is harmless. The pages of a private list are written only into the
    data directory unless --out says otherwise.
    """
    from listserv.archive import html as archive_html
    from listserv.core import lists
    from listserv.core.errors import UsageError
    from listserv.core.models import ArchivePolicy

    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists.get_list(session, list_address)
        if ml.archive is ArchivePolicy.none:
            raise UsageError(f"{ml.address} is not archived (archive = none)")
        info = archive_html.ListInfo.of(ml)
    out = Path(out_dir) if out_dir else archive_html.default_out(app, info.address)
    report = archive_html.build(app, info, out)
    click.echo(f"{info.address}: {report.months} months, {report.pages} pages "
               f"({report.written} written) in {out}")


@archive.command("export")
@click.argument("list_address", metavar="LIST")
@click.option("--month", "months", metavar="YYYY-MM", multiple=True,
              help="Only this month (repeatable; default: every archived month).")
@click.option("--to", "to_dir", metavar="DIR", type=click.Path(file_okay=False), default=None,
              help="Write the files here (default: <data_dir>/archives/LIST/).")
@pass_obj
@handle_errors
def export_cmd(obj: Obj, list_address: str, months: tuple[str, ...], to_dir: str | None
               ) -> None:
    """Write LIST's archive as mbox files, one YYYY-MM.mbox per month (mboxrd, in the order
    the messages were archived), each replaced whole.

    The archive job also appends each archived post to these files while [archive] mbox is
    on (the default); export writes them from the database, e.g. on another host, after
    turning mbox off, or to repair a file.
    """
    from listserv.archive import mbox as archive, read as archive_read, store as archive_store
    from listserv.core import lists
    from listserv.core.errors import UsageError

    app = obj.ready_app()
    for month in months:
        if not archive_read.MONTH_RE.match(month):
            raise UsageError(f"not a month (YYYY-MM): {month!r}")
    with app.db.unit_of_work() as session:
        ml = lists.get_list(session, list_address)
        archived = archive_store.months(session, ml.id)
        missing = [m for m in months if m not in archived]
        if missing:
            raise UsageError(f"{ml.address} has no archived messages in {', '.join(missing)}")
        out = (Path(to_dir) if to_dir
               else archive_read.list_dir(app.settings.archive_path, ml.address))
        written = archive.export(app, session, ml, out, list(months) or None)
    total = sum(written.values())
    click.echo(f"{ml.address}: {total} messages in {len(written)} mbox files in {out}")


@archive.command("reindex")
@click.argument("list_address", metavar="[LIST]", required=False)
@click.option("--from-mbox", is_flag=True,
              help="First add the messages of the mbox files in <data_dir>/archives/LIST/ "
                   "that the database lacks (upgrading an older install).")
@pass_obj
@handle_errors
def reindex_cmd(obj: Obj, list_address: str | None, from_mbox: bool) -> None:
    """Rebuild the search index and threads of LIST's archive (of every list without LIST)
    from the archived messages in the database.

    With --from-mbox, the list's mbox files are read first and every message the database
    does not hold yet is added (the upgrade path from an install that kept the archive in
    mbox files; running it again adds nothing).
    """
    from listserv.archive import index as archive_index
    from listserv.core import lists

    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        addresses = ([lists.get_list(session, list_address).address] if list_address
                     else [ml.address for ml in lists.all_lists(session)])
    for address in addresses:
        added = 0
        if from_mbox:
            with app.db.unit_of_work() as session:
                added = archive_index.ingest_mbox(app, session,
                                                  lists.get_list(session, address))
        with app.db.unit_of_work() as session:
            count, bare = archive_index.reindex(app, session, lists.get_list(session, address))
        line = f"{address}: {count} messages indexed"
        if from_mbox:
            line += f", {added} added from its mbox files"
        if bare:
            line += (f"; {bare} without their text in the database "
                     "(run: listserv archive reindex --from-mbox)")
        click.echo(line)
