"""listserv list create / ls / show / set / delete."""

from __future__ import annotations

import click

from listserv.admin import list_info
from listserv.core import lists as service
from listserv.core import members as members_service
from listserv.core import network
from listserv.core import settings as settings_mod
from listserv.cli.base import Obj, cli, handle_errors, pass_obj
from listserv.cli.output import json_array, json_object, pairs, table
from listserv.core.errors import UsageError
from listserv.core.models import Role

SETTINGS_HELP = "\b\n" + "\n".join(s.describe() for s in settings_mod.SETTINGS)


@cli.group("list")
def list_group() -> None:
    """Create, inspect, configure and delete mailing lists."""


@list_group.command("create")
@click.argument("address", metavar="NAME@DOMAIN")
@click.option("--owner", "owners", multiple=True, metavar="EMAIL", help="An owner (repeatable).")
@click.option("--moderator", "moderators", multiple=True, metavar="EMAIL",
              help="A moderator (repeatable).")
@click.option("--display-name", metavar="TEXT", help="Human name of the list.")
@pass_obj
@handle_errors
def list_create(obj: Obj, address: str, owners: tuple[str, ...], moderators: tuple[str, ...],
                display_name: str | None) -> None:
    """Create the list NAME@DOMAIN (the domain is added if missing)."""
    owner_people = [members_service.parse_person(e) for e in owners]
    moderator_people = [members_service.parse_person(e) for e in moderators]
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = service.create_list(session, address, display_name=display_name)
        members_service.add_members(session, ml, owner_people, role=Role.owner)
        members_service.add_members(session, ml, moderator_people, role=Role.moderator)
        created = ml.address
    click.echo(f"created list {created}")


@list_group.command("ls")
@click.option("--domain", metavar="DOMAIN", help="Only the lists of DOMAIN.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array: address, display_name, members and every setting.")
@click.option("--tree", "as_tree", is_flag=True,
              help="Show the whole network: every list with the lists it includes "
                   "(as `list tree`).")
@pass_obj
@handle_errors
def list_ls(obj: Obj, domain: str | None, as_json: bool, as_tree: bool) -> None:
    """List the mailing lists."""
    if as_tree:
        # `list tree` (listserv.cli.network, which adds itself to list_group)
        click.get_current_context().invoke(list_group.commands["tree"], address=None,
                                           as_json=as_json)
        return
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        lists = service.all_lists(session, domain)
        counts = service.role_counts(session)
        rows = [service.summary(ml, counts.get(ml.id, {})) for ml in lists]
    if as_json:
        json_array(rows)
        return
    table(["list", "display name", "members", "owners", "moderators", "nonmembers",
           "subscription"],
          [(r["address"], r["display_name"], r["members"], r["owners"], r["moderators"],
            r["nonmember_action"], r["subscription_policy"]) for r in rows],
          empty="no lists")


@list_group.command("show")
@click.argument("address", metavar="ADDR")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_obj
@handle_errors
def list_show(obj: Obj, address: str, as_json: bool) -> None:
    """Show a list: its people, delivery counts and every setting."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        info = list_info.details(session, service.get_list(session, address))
    if as_json:
        json_object(info)
        return
    delivery = ", ".join(f"{k} {v}" for k, v in info["delivery"].items())
    pairs([
        ("list", info["address"]),
        ("list-id", info["list_id"]),
        ("owners", ", ".join(info["owner_emails"]) or None),
        ("moderators", ", ".join(info["moderator_emails"]) or None),
        ("members", f"{info['members']} ({delivery}; {info['disabled']} disabled)"),
        ("includes", ", ".join(info["includes"]) or None),
        ("included_in", ", ".join(info["included_in"]) or None),
        ("dkim_selector", info["dkim_selector"]),
        ("posts", info["posts"]),
        ("created_at", info["created_at"]),
        ("sender rules", ", ".join(f"{r['pattern']} -> {r['action']}"
                                   for r in info["sender_rules"]) or None),
        ("bans", ", ".join(info["bans"]) or None),
    ])
    click.echo("")
    pairs((s.name, repr(info[s.name]) if s.kind == "text" else
           settings_mod.format_value(info[s.name])) for s in settings_mod.SETTINGS)


@list_group.command("set", epilog="Settings:\n\n" + SETTINGS_HELP,
                    context_settings={"ignore_unknown_options": True})
@click.argument("address", metavar="ADDR")
@click.argument("key")
@click.argument("value")
@pass_obj
@handle_errors
def list_set(obj: Obj, address: str, key: str, value: str) -> None:
    """Change one setting KEY of the list ADDR to VALUE."""
    settings_mod.get(key)  # an unknown key is refused before touching the database
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = service.get_list(session, address)
        stored = service.set_setting(session, ml, key, value)
        name = settings_mod.get(key).name
        shown = repr(stored) if isinstance(stored, str) else settings_mod.format_value(stored)
        line = f"{ml.address}: {name} = {shown}"
    click.echo(line)


@list_group.command("delete")
@click.argument("address", metavar="ADDR")
@click.option("--yes", is_flag=True, help="Really delete (required).")
@pass_obj
@handle_errors
def list_delete(obj: Obj, address: str, yes: bool) -> None:
    """Delete the list ADDR with its members, held posts and pending requests."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = service.get_list(session, address)
        parents = network.included_in(session, ml)
        where = f" (it is included in {', '.join(parents)})" if parents else ""
        if not yes:
            raise UsageError(f"not deleting {ml.address} without --yes{where}")
        name = ml.address
        service.delete_list(session, ml)
    click.echo(f"deleted list {name}{where.replace('it is', 'it was')}")
