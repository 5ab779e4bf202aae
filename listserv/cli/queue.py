"""listserv queue status / prune / failed / retry."""

from __future__ import annotations


import click

from listserv.cli.base import Obj, cli, handle_errors, pass_obj
from listserv.cli.output import json_array, json_object
from listserv import jobs
from listserv.admin import retention
from listserv.intake import journal
from listserv.pipeline import failures
from listserv.delivery.queues import failed_deliveries, queue_status

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
    """Outbound queue depth (pending, retrying, in flight, failed, delivered), incoming
    (journaled: accepted by a `serve --role intake` on SQLite, not yet read by a worker), and
    background jobs by state (ready: waiting or due; running; dead: see `queue failed`)."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        st = queue_status(session, app.now())
        st["jobs"] = jobs.counts(session, app.now())
    st["incoming"]["journaled"] = journal.waiting(app)
    if as_json:
        json_object(st)
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
    for key in ("journaled", "new", "processing", "failed"):
        click.echo(f"  {key:<16} {inc[key]:>9} messages")
    js = st["jobs"]
    click.echo("jobs:")
    for key, label in (("ready", "ready"), ("due", "due now"), ("running", "running"),
                       ("dead", "dead")):
        click.echo(f"  {label:<16} {js[key]:>9} jobs")
    for kind, per in sorted(js["kinds"].items()):
        click.echo(f"    {kind:<20} " + ", ".join(f"{n} {state}" for state, n in per.items()
                                                  if n))


@queue_group.command("failed")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True,
              help="Show at most this many rows, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@pass_obj
@handle_errors
def failed(obj: Obj, limit: int, as_json: bool) -> None:
    """Mail that failed for good. Each row has a kind and an id:

    kind "incoming": accepted mail whose processing failed; it is held for the list owners
    (they got a notice with the error) and `listserv queue retry ID` processes it again.

    kind "job": background work (a periodic pass: archive, digests, bounces...) that failed
    every attempt; `job_kind` names it, `error` the last error. Its next run is already
    scheduled; `listserv queue retry ID --kind job` runs it again now.

    kind "outbound": batches refused or given up. blame "message": the next hop refused the message itself (size 5.3.x, content 5.6.x,
    policy 5.7.x, a refusal of the whole transaction, or the same refusal for every recipient);
    no member was scored and the owners got one notice per message. blame "recipient": the
    recipients' own failure, counted in their bounce scores (`listserv bounces ls`)."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        incoming = failures.failed_items(session)[:limit]
        rows = failed_deliveries(session, limit)
        dead = jobs.dead_items(session, limit)
    if as_json:
        json_array(incoming + rows + dead)
        return
    if not rows and not incoming and not dead:
        click.echo("no failed mail")
        return
    for it in incoming:
        click.echo(f"{it['received_at'][:19]}  {it['kind']} #{it['id']}  {it['list']}  "
                   f"from {it['sender'] or '-'}  {it['message_id']}  {it['subject']!r}")
        click.echo(f"    {it['error'][:200]}  (listserv queue retry {it['id']})")
    for r in rows:
        first = (r["error"].splitlines() or [""])[0]
        click.echo(f"{r['failed_at'] or '-'}  {r['kind']} #{r['id']}  {r['list'] or '-'}  "
                   f"{r['message_kind']} {r['message_id']}  blame={r['blame']}  "
                   f"{r['recipients']} recipient(s)")
        click.echo(f"    {first[:200]}")
    for j in dead:
        first = (j["error"].splitlines() or [""])[0]
        click.echo(f"{(j['failed_at'] or '-')[:19]}  job #{j['id']}  {j['job_kind']}  "
                   f"{j['attempts']} attempt(s)")
        click.echo(f"    {first[:200]}  (listserv queue retry {j['id']} --kind job)")


@queue_group.command("prune")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@pass_obj
@handle_errors
def prune(obj: Obj, dry_run: bool, as_json: bool) -> None:
    """Remove finished deliveries, old inbound mail, sent digest and archived entries, old
    bounce events, then the stored messages nothing refers to any more (serve does this
    hourly).

    Kept: delivered/failed batches 7 days, handled inbound mail 30 days (failed 90), held
    posts until decided, digest entries 30 days after their digest, appended archive entries 7
    days, bounce events 90 days, the moderation log for ever, stored messages used in the last
    hour."""
    app = obj.ready_app()
    now = app.now()
    stats = retention.prune(app, now=now, dry_run=dry_run)
    if not dry_run:
        retention.record_run(app, now)
    if as_json:
        json_object(stats.as_dict())
        return
    for line in stats.lines():
        click.echo(line)


@queue_group.command("retry")
@click.argument("item_id", metavar="ID", type=int)
@click.option("--kind", type=click.Choice(failures.KINDS), default="incoming",
              show_default=True, help="Which kind of failed item ID names.")
@pass_obj
@handle_errors
def retry(obj: Obj, item_id: int, kind: str) -> None:
    """Process a failed item (see `queue failed`) again; `serve` picks it up at once."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        text = failures.retry(session, app, item_id, kind)
    click.echo(text)
