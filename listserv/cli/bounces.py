"""CLI: listserv bounces ls / events."""

from __future__ import annotations


import click

from listserv.bounces import report as bounce_report, process as bounces
from listserv.cli.base import Obj, cli, handle_errors, pass_obj
from listserv.cli.output import json_array
from listserv.core.lists import get_list


@cli.group("bounces")
def bounces_group() -> None:
    """Bounce scores, disabled members and recent bounces."""


@bounces_group.command("ls")
@click.argument("list_address", metavar="LIST")
@click.option("--all", "include_all", is_flag=True,
              help="Every member, not only those with a score or disabled.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_obj
@handle_errors
def bounces_ls(obj: Obj, list_address: str, include_all: bool, as_json: bool) -> None:
    """Members of LIST with a bounce score or disabled delivery."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        rows = bounce_report.status(session, get_list(session, list_address),
                              include_all=include_all)
    if as_json:
        json_array(rows)
        return
    if not rows:
        click.echo("no bouncing or disabled members")
        return
    click.echo(f"{'EMAIL':40} {'SCORE':>5}  {'LAST BOUNCE':20} STATE")
    for r in rows:
        state = "enabled" if r["enabled"] else f"disabled ({r['disabled_reason'] or '-'})"
        if not r["enabled"] and r["disabled_reason"] == bounces.DISABLED_REASON:
            state += f", {r['warnings_sent']} warning(s) sent"
        last = (r["last_bounce"] or "-")[:19].replace("T", " ")
        click.echo(f"{r['email']:40} {r['score']:5g}  {last:20} {state}")


@bounces_group.command("events")
@click.argument("list_address", metavar="LIST")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100000),
              help="How many of the newest events.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_obj
@handle_errors
def bounces_events(obj: Obj, list_address: str, limit: int, as_json: bool) -> None:
    """Recent bounce events of LIST (hard, soft, policy, other), newest first."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        rows = bounce_report.events(session, get_list(session, list_address), limit=limit)
    if as_json:
        json_array(rows)
        return
    for r in rows:
        click.echo(f"{r['at'][:19].replace('T', ' ')}  {r['kind']:6} {r['source']:8} "
                   f"{r['status'] or '-':8} {r['email']}  {r['diagnostic'][:80]}")
