"""listserv list include / uninclude / tree: networks of lists."""

from __future__ import annotations

import click

from listserv.core import lists as service
from listserv.core import network
from listserv.cli.base import Obj, handle_errors, pass_obj
from listserv.cli.lists import list_group
from listserv.cli.output import json_array


@list_group.command("include")
@click.argument("parent", metavar="PARENT")
@click.argument("children", metavar="CHILD...", nargs=-1, required=True)
@pass_obj
@handle_errors
def list_include(obj: Obj, parent: str, children: tuple[str, ...]) -> None:
    """PARENT's posts also go to the members of each CHILD, recursively, each person once.

    A CHILD that is not one of our lists is a list on another server: it gets one copy of
    each post, as a member would. An include that would make a cycle is refused."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = service.get_list(session, parent)
        added = network.include(session, ml, list(children))
        name = ml.address
    for child in added:
        click.echo(f"{name} now includes {child}")
    if not added:
        click.echo(f"{name} already includes {', '.join(children)}")


@list_group.command("uninclude")
@click.argument("parent", metavar="PARENT")
@click.argument("children", metavar="CHILD...", nargs=-1, required=True)
@pass_obj
@handle_errors
def list_uninclude(obj: Obj, parent: str, children: tuple[str, ...]) -> None:
    """Stop sending PARENT's posts to each CHILD's members."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = service.get_list(session, parent)
        removed = network.uninclude(session, ml, list(children))
        name = ml.address
    for child in removed:
        click.echo(f"{name} no longer includes {child}")


def _print(node: network.Node, prefix: str = "", last: bool = True, top: bool = True) -> None:
    if node.remote:
        info = "remote list, one copy"
    else:
        info = f"{node.members} member{'' if node.members == 1 else 's'}"
        if node.children:
            info += f", reaches {node.reach}"
        if node.cycle:
            info = "cycle: already above, not expanded"
    branch = "" if top else ("`-- " if last else "|-- ")
    click.echo(f"{prefix}{branch}{node.address} ({info})")
    inner = prefix if top else prefix + ("    " if last else "|   ")
    for i, child in enumerate(node.children):
        _print(child, inner, i == len(node.children) - 1, False)


@list_group.command("tree")
@click.argument("address", metavar="[ADDR]", required=False)
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON array of trees: address, remote, members (own members), "
                   "reach (distinct people a post reaches) and includes (the children).")
@pass_obj
@handle_errors
def list_tree(obj: Obj, address: str | None, as_json: bool) -> None:
    """The inclusion tree of ADDR, or of every list (lists not included anywhere are roots),
    with member counts."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        root = service.get_list(session, address) if address else None
        forest = network.trees(session, root)
    if as_json:
        json_array(t.as_json() for t in forest)
        return
    if not forest:
        click.echo("no lists")
    for tree in forest:
        _print(tree)
