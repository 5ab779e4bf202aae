"""listserv import mailman2 / import mbox: bring lists and archives from elsewhere."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

import click

from listserv.core.app import App
from listserv.cli.base import Obj, cli, handle_errors, pass_obj
from listserv.core.errors import UsageError

if TYPE_CHECKING:
    from listserv.importers.mbox import MboxReport


@cli.group("import")
def import_group() -> None:
    """Import lists, members and archives from other list managers."""


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _mbox(app: App, address: str, mbox: str, dry_run: bool, pages: bool) -> "MboxReport":
    from listserv.importers import mbox as mbox_import

    try:
        size = os.path.getsize(mbox)
    except OSError as exc:
        raise UsageError(f"cannot read {mbox}: {exc.strerror or exc}") from None
    if sys.stdout.isatty() and not dry_run:
        with click.progressbar(length=size, label="archive", file=sys.stdout) as bar:
            step: Callable[[int], None] = bar.update
            return mbox_import.import_mbox(app, address, mbox, dry_run=dry_run, html=pages,
                                           progress=step)
    return mbox_import.import_mbox(app, address, mbox, dry_run=dry_run, html=pages)


def _mbox_line(report: "MboxReport", dry_run: bool) -> str:
    verb = "would add" if dry_run else "added"
    pages = "" if dry_run or not report.pages else f", {report.pages} pages rendered"
    return (f"archive: {report.messages} messages read, {verb} {report.added}, skipped "
            f"{report.duplicates} already archived, {len(report.months)} months{pages} "
            f"({report.seconds:.1f} s)")


@import_group.command("mailman2")
@click.argument("config_pck", metavar="CONFIG_PCK", type=click.Path(dir_okay=False))
@click.option("--list", "list_address", metavar="ADDR",
              help="The list to create or update (default: NAME@host_name, NAME being the "
                   "directory that holds CONFIG_PCK, as in Mailman's lists/NAME/config.pck).")
@click.option("--archive", "mbox", metavar="MBOX", type=click.Path(dir_okay=False),
              help="Also import this mbox archive (archives/private/NAME.mbox/NAME.mbox).")
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option("--no-pages", is_flag=True,
              help="Do not render the static HTML pages (later: listserv archive build).")
@pass_obj
@handle_errors
def import_mailman2(obj: Obj, config_pck: str, list_address: str | None, mbox: str | None,
                    dry_run: bool, no_pages: bool) -> None:
    """Import a GNU Mailman 2.1 list from its config.pck.

    Settings, members with their names, delivery (regular, MIME or plain digest, nomail),
    moderation and disabled flags and bounce scores, owners, moderators, per-address
    non-member rules and bans. The pickle is read with a restricted unpickler: anything but
    plain data is refused. Importing again changes nothing; nobody is ever removed. What has
    no equivalent here is listed at the end under "not imported".
    """
    from listserv.importers.apply import import_mailman2 as run

    app = obj.ready_app()
    changes, plan = run(app.db, config_pck, list_address, dry_run=dry_run)
    would = "would " if dry_run else ""
    head = f"{changes.list_address}: "
    if changes.created:
        head += f"{would}create the list"
    elif changes.nothing:
        head += "nothing to change" if dry_run else "nothing changed"
    else:
        head += f"{would}update the list"
    click.echo(head + (" (dry run)" if dry_run else ""))
    for key, old, new in changes.settings:
        click.echo(f"  {key}: {_show(new)}" if changes.created
                   else f"  {key}: {_show(old)} -> {_show(new)}")
    added = ", ".join(f"{n} {role.value}{'' if n == 1 else 's'}" for role, n in sorted(
        changes.added.items(), key=lambda kv: kv[0].value)) or "nobody"
    click.echo(f"people: {would}add {added}; {would}update {changes.updated}; "
               f"{changes.unchanged} unchanged; {would}name {changes.names} addresses")
    click.echo(f"sender rules: {would}add or change {changes.sender_rules} of "
               f"{len(plan.sender_rules)}; bans: {would}add {changes.bans} of {len(plan.bans)}")
    if mbox is not None:
        if dry_run and changes.created:
            click.echo("archive: the list does not exist yet (dry run): not read")
        else:
            report = _mbox(app, changes.list_address, mbox, dry_run, not no_pages)
            click.echo(_mbox_line(report, dry_run))
    if plan.not_imported:
        click.echo("not imported:")
        for line in plan.not_imported:
            click.echo(f"  - {line}")


@import_group.command("mbox")
@click.argument("list_address", metavar="LIST")
@click.argument("mbox", metavar="MBOX", type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Count what would be added; write nothing.")
@click.option("--no-pages", is_flag=True,
              help="Do not render the static HTML pages (later: listserv archive build).")
@pass_obj
@handle_errors
def import_mbox(obj: Obj, list_address: str, mbox: str, dry_run: bool, no_pages: bool) -> None:
    """Add the messages of MBOX to LIST's archive, without sending anything.

    Pipermail and HyperKitty exports and any mbox file are read; messages already in the
    archive (same Message-ID) are skipped, so running it twice adds nothing. Each message is
    filed under the month of its Date; the HTML pages of those months are rebuilt.
    """
    app = obj.ready_app()
    report = _mbox(app, list_address, mbox, dry_run, not no_pages)
    click.echo(f"{report.list_address}: " + _mbox_line(report, dry_run))
