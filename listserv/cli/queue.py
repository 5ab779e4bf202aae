"""listserv queue status."""

from __future__ import annotations

import json

import click

from listserv.cli import Obj, cli, handle_errors, pass_obj
from listserv.queues import queue_status

ROWS = [("pending", "pending (all)"), ("ready", "ready now"), ("retrying", "retrying (4xx)"),
        ("in_flight", "in flight"), ("failed_24h", "failed (24h)"), ("failed", "failed (all)"),
        ("done_24h", "delivered (24h)")]


@cli.group("queue")
def queue_group() -> None:
    """The outbound delivery queue and the incoming queue."""


@queue_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_obj
@handle_errors
def status(obj: Obj, as_json: bool) -> None:
    """Outbound queue depth (pending, retrying, in flight, failed, delivered) and incoming."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        st = queue_status(session, app.now())
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    out = st["outbound"]
    click.echo(f"outbound queue ({app.settings.outbound}):")
    for key, label in ROWS:
        c = out[key]
        click.echo(f"  {label:<16} {c['recipients']:>9} recipients in {c['batches']} batches")
    if out["next_retry_at"]:
        click.echo(f"  next retry at    {out['next_retry_at']}")
    inc = st["incoming"]
    click.echo("incoming queue:")
    for key in ("new", "processing", "failed"):
        click.echo(f"  {key:<16} {inc[key]:>9} messages")
