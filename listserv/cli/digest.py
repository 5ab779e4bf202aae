"""CLI: listserv digest send [LIST]."""

from __future__ import annotations

import click

from listserv.cli.base import Obj, cli, handle_errors, pass_obj


@cli.group()
def digest() -> None:
    """Digests: send pending digests now."""


@digest.command("send")
@click.argument("list_address", metavar="[LIST]", required=False)
@pass_obj
@handle_errors
def send_cmd(obj: Obj, list_address: str | None) -> None:
    """Send the pending digest of LIST (or of every list) now, due or not.

    Prints one line per list: the volume and issue sent and to how many digest members.
    """
    from listserv.digests import send_now

    results = send_now(obj.ready_app(), list_address)
    if not results:
        click.echo(f"{list_address}: no pending posts" if list_address
                   else "no pending digests")
    for r in results:
        click.echo(r.describe())
