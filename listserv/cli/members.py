"""listserv member add / remove / ls / set."""

from __future__ import annotations

import sys

import click

from listserv.core import lists as lists_service
from listserv.core import members as service
from listserv.admin import member_import
from listserv.core import senders
from listserv.cli.base import Obj, cli, handle_errors, pass_obj
from listserv.cli.output import json_array, table
from listserv.core.errors import UsageError
from listserv.core.models import DeliveryMode, Role

ROLE = click.Choice([r.value for r in Role])
DELIVERY = click.Choice([d.value for d in DeliveryMode])


@cli.group("member")
def member_group() -> None:
    """Add, remove, list and change members, moderators and owners of a list."""


@member_group.command("add")
@click.argument("list_address", metavar="LIST")
@click.argument("emails", nargs=-1, metavar="[EMAIL]...")
@click.option("--file", "path", metavar="PATH",
              help="Bulk import: one address per line, or CSV with an 'email' column "
                   "(optional: 'name', 'role', 'delivery', 'moderated'); Google Groups and "
                   "groups.io member exports are read as they are; '-' reads standard input.")
@click.option("--role", type=ROLE, default="member", show_default=True)
@click.option("--delivery", type=DELIVERY, default="regular", show_default=True)
@click.option("--moderated", is_flag=True, help="Hold this member's posts (member_action).")
@pass_obj
@handle_errors
def member_add(obj: Obj, list_address: str, emails: tuple[str, ...], path: str | None,
               role: str, delivery: str, moderated: bool) -> None:
    """Add EMAIL... to LIST directly (no confirmation), or import a file with --file.

    EMAIL may be 'Name <address>'. With --file, invalid lines are reported by line number and
    the valid ones imported; duplicates are skipped and counted; the exit status is 0 only if
    every line was good.
    """
    if path is not None and emails:
        raise click.UsageError("give addresses or --file, not both")
    if path is None and not emails:
        raise click.UsageError("give at least one EMAIL or --file PATH")
    r, d = Role(role), DeliveryMode(delivery)
    if path is not None:
        _import(obj, list_address, path, r, d, moderated)
        return
    people = [service.parse_person(e) for e in emails]
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        for _, email in people:
            pattern = senders.banned(session, ml, email)
            if pattern:
                raise UsageError(f"{email} is banned from {ml.address} ({pattern}); "
                                 "lift the ban first: listserv list ban remove")
        added, existing = service.add_members(session, ml, people, role=r, delivery_mode=d,
                                              moderated=moderated)
        address = ml.address
    what = role if len(added) == 1 else role + "s"
    msg = f"{address}: added {len(added)} {what}"
    if existing:
        msg += f"; already {role}: {', '.join(existing)}"
    click.echo(msg)


def _import(obj: Obj, list_address: str, path: str, role: Role, delivery: DeliveryMode,
            moderated: bool) -> None:
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
    app = obj.ready_app()
    total = len(data.splitlines())
    lines = member_import.parse_member_data(data)
    kwargs = dict(role=role, delivery_mode=delivery, moderated=moderated)
    if sys.stdout.isatty():
        with click.progressbar(length=total, label="importing", file=sys.stdout) as bar:
            report = member_import.import_members(app.db, list_address, lines,
                                                  progress=bar.update, **kwargs)  # type: ignore
    else:
        report = member_import.import_members(app.db, list_address, lines,
                                              **kwargs)  # type: ignore[arg-type]
    source = "stdin" if path == "-" else path
    for lineno, reason in report.invalid:
        click.echo(f"{source}: line {lineno}: {reason}", err=True)
    click.echo(f"{report.list_address}: imported {report.added}, "
               f"skipped {report.skipped} duplicates ({report.existing} already "
               f"{role.value}s, {report.duplicates} repeated in the file), "
               f"{len(report.invalid)} invalid lines")
    if not report.ok:
        sys.exit(1)


@member_group.command("remove")
@click.argument("list_address", metavar="LIST")
@click.argument("emails", nargs=-1, required=True, metavar="EMAIL...")
@click.option("--role", type=ROLE, default=None,
              help="Remove only this role (default: every role of the address).")
@pass_obj
@handle_errors
def member_remove(obj: Obj, list_address: str, emails: tuple[str, ...],
                  role: str | None) -> None:
    """Remove EMAIL... from LIST (all or nothing: an address not on the list is an error)."""
    people = [service.parse_person(e)[1] for e in emails]
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        removed = service.remove_members(session, ml, people,
                                         Role(role) if role else None)
        address = ml.address
        gone = [f"{m.address.email} ({m.role.value})" for m in removed]
    click.echo(f"{address}: removed {', '.join(gone)}")


@member_group.command("ls")
@click.argument("list_address", metavar="LIST")
@click.option("--role", type=ROLE, default=None, help="Only this role.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array (email, name, role, delivery, receives_posts, "
                   "moderated, enabled, disabled_reason, bounce_score, joined_at).")
@pass_obj
@handle_errors
def member_ls(obj: Obj, list_address: str, role: str | None, as_json: bool) -> None:
    """List the people of LIST: one row per address and role.

    Posts reach member rows only: a moderator or owner who is not also a member gets none,
    and their row shows delivery 'nomail (not a member)'."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        rows = service.member_rows(session, ml, Role(role) if role else None)
        if as_json:
            json_array(rows)
            return
        table(["email", "name", "role", "delivery", "moderated", "enabled", "disabled"],
              [(r["email"], r["name"] or None, r["role"],
                r["delivery"] if r["role"] == "member" else "nomail (not a member)",
                r["moderated"],
                r["enabled"], r["disabled_reason"]) for r in rows],
              empty=f"{ml.address} has no {role or 'member'}s")


@member_group.command("set")
@click.argument("list_address", metavar="LIST")
@click.argument("email")
@click.option("--delivery", type=DELIVERY, default=None)
@click.option("--moderated/--unmoderated", default=None, help="Hold this member's posts or not.")
@click.option("--enable/--disable", default=None,
              help="Enable delivery (also clears a bounce disable and the bounce score) "
                   "or disable it.")
@click.option("--name", metavar="TEXT", default=None, help="Set the display name.")
@click.option("--role", type=ROLE, default=None,
              help="Change only this role's membership (default: every role).")
@pass_obj
@handle_errors
def member_set(obj: Obj, list_address: str, email: str, delivery: str | None,
               moderated: bool | None, enable: bool | None, name: str | None,
               role: str | None) -> None:
    """Change how EMAIL is subscribed to LIST."""
    if delivery is None and moderated is None and enable is None and name is None:
        raise click.UsageError("nothing to change: give --delivery, --moderated/--unmoderated, "
                               "--enable/--disable or --name")
    addr = service.parse_person(email)[1]
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        rows = service.set_member(session, ml, addr, role=Role(role) if role else None,
                                  delivery_mode=DeliveryMode(delivery) if delivery else None,
                                  moderated=moderated, enabled=enable, display_name=name)
        lines = [f"{ml.address}: {m.address.email} ({m.role.value}): "
                 f"delivery {m.delivery_mode.value}, "
                 f"{'moderated' if m.moderated else 'unmoderated'}, "
                 + ("enabled" if m.enabled else f"disabled ({m.disabled_reason})")
                 for m in rows]
    click.echo("\n".join(lines))
