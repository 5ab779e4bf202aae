"""listserv list sender add|remove|ls and list ban add|remove|ls."""

from __future__ import annotations

import click

from listserv.core import lists as lists_service
from listserv.core import senders
from listserv.cli.base import Obj, handle_errors, pass_obj
from listserv.cli.lists import list_group
from listserv.cli.output import json_array, table
from listserv.core.models import Action

PATTERN_HELP = ("PATTERN is one address, or a regular expression starting with ^ matched "
                "case-insensitively against the whole sender address (GNU Mailman's "
                "convention), e.g. '^.*@example\\.com$'.")
SENDER_PATTERN_HELP = (PATTERN_HELP + " For sender rules, @LIST (e.g. @team@example.org) "
                       "stands for the members of that other list on this server.")


@list_group.group("sender")
def sender_group() -> None:
    """Per-address actions for posts from non-members (before nonmember_action).

    When several patterns match a sender, accept wins over hold, hold over reject, reject
    over discard. Members are not affected: their posts follow member_action.
    """


@sender_group.command("add", epilog=SENDER_PATTERN_HELP)
@click.argument("list_address", metavar="LIST")
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@click.option("--action", type=click.Choice([a.value for a in Action]), required=True,
              help="What happens to a matching non-member's post.")
@pass_obj
@handle_errors
def sender_add(obj: Obj, list_address: str, patterns: tuple[str, ...], action: str) -> None:
    """Set ACTION for posts from non-members matching PATTERN (replaces its old action)."""
    for p in patterns:
        senders.normalise_pattern(p, list_members=True)   # a bad pattern: before the database
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        done = [senders.set_sender_action(session, ml, p, Action(action)) for p in patterns]
        address = ml.address
    for stored, changed in done:
        click.echo(f"{address}: {stored} -> {action}" + ("" if changed else " (unchanged)"))


@sender_group.command("remove", epilog=SENDER_PATTERN_HELP)
@click.argument("list_address", metavar="LIST")
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@pass_obj
@handle_errors
def sender_remove(obj: Obj, list_address: str, patterns: tuple[str, ...]) -> None:
    """Remove the rule for each PATTERN (all or nothing)."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        gone = [senders.remove_sender_action(session, ml, p) for p in patterns]
        address = ml.address
    click.echo(f"{address}: removed sender rules {', '.join(gone)}")


@sender_group.command("ls")
@click.argument("list_address", metavar="LIST")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (pattern, action).")
@pass_obj
@handle_errors
def sender_ls(obj: Obj, list_address: str, as_json: bool) -> None:
    """List the sender rules of LIST."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        rows = [{"pattern": r.pattern, "action": r.action.value}
                for r in senders.sender_rules(session, ml.id)]
        address = ml.address
    if as_json:
        json_array(rows)
        return
    table(["pattern", "action"], [(r["pattern"], r["action"]) for r in rows],
          empty=f"{address} has no sender rules")


@list_group.group("ban")
def ban_group() -> None:
    """Banned addresses: their posts are discarded, their subscriptions refused."""


@ban_group.command("add", epilog=PATTERN_HELP)
@click.argument("list_address", metavar="LIST")
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@pass_obj
@handle_errors
def ban_add(obj: Obj, list_address: str, patterns: tuple[str, ...]) -> None:
    """Ban each PATTERN from LIST (existing memberships stay; remove them separately)."""
    for p in patterns:
        senders.normalise_pattern(p)
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        done = [senders.add_ban(session, ml, p) for p in patterns]
        address = ml.address
    for stored, added in done:
        click.echo(f"{address}: banned {stored}" + ("" if added else " (already)"))


@ban_group.command("remove", epilog=PATTERN_HELP)
@click.argument("list_address", metavar="LIST")
@click.argument("patterns", nargs=-1, required=True, metavar="PATTERN...")
@pass_obj
@handle_errors
def ban_remove(obj: Obj, list_address: str, patterns: tuple[str, ...]) -> None:
    """Lift each ban (all or nothing)."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        gone = [senders.remove_ban(session, ml, p) for p in patterns]
        address = ml.address
    click.echo(f"{address}: lifted bans {', '.join(gone)}")


@ban_group.command("ls")
@click.argument("list_address", metavar="LIST")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (pattern).")
@pass_obj
@handle_errors
def ban_ls(obj: Obj, list_address: str, as_json: bool) -> None:
    """List the bans of LIST."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists_service.get_list(session, list_address)
        rows = [{"pattern": p} for p in senders.ban_patterns(session, ml.id)]
        address = ml.address
    if as_json:
        json_array(rows)
        return
    table(["pattern"], [(r["pattern"],) for r in rows], empty=f"{address} has no bans")
