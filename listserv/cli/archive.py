"""CLI: listserv archive build LIST [--out DIR]; listserv archive reindex [LIST]."""

from __future__ import annotations

from pathlib import Path

import click

from listserv.cli.base import Obj, cli, handle_errors, pass_obj


@cli.group()
def archive() -> None:
    """The list archives: mbox files (the truth) and HTML pages derived from them."""


@archive.command("build")
@click.argument("list_address", metavar="LIST")
@click.option("--out", "out_dir", metavar="DIR", type=click.Path(file_okay=False),
              default=None,
              help="Write the pages here (default: <data_dir>/archives/LIST/html/).")
@pass_obj
@handle_errors
def build_cmd(obj: Obj, list_address: str, out_dir: str | None) -> None:
    """Render LIST's static HTML archive from its mbox files.

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


@archive.command("reindex")
@click.argument("list_address", metavar="[LIST]", required=False)
@pass_obj
@handle_errors
def reindex_cmd(obj: Obj, list_address: str | None) -> None:
    """Rebuild the search index of LIST's archive (of every list without LIST) from its
    mbox files.

    The archive worker keeps the index up to date as it appends; run this after restoring
    or editing mbox files, or to index an archive from before the index existed. The
    archive pages and search answer from the rebuilt index once it is committed.
    """
    from listserv.archive import index as archive_index
    from listserv.core import lists

    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        addresses = ([lists.get_list(session, list_address).address] if list_address
                     else [ml.address for ml in lists.all_lists(session)])
    for address in addresses:
        with app.db.unit_of_work() as session:
            count = archive_index.reindex(app, session, lists.get_list(session, address))
        click.echo(f"{address}: {count} messages indexed")
