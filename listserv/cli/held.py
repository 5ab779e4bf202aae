"""listserv held ls / approve / reject / discard / log: the moderation queue from the shell."""

from __future__ import annotations

import getpass
import logging
from typing import Any

import click

from sqlalchemy.exc import SQLAlchemyError

from listserv.core import lists
from listserv.message import untrusted
from listserv.pipeline import moderation
from listserv.cli.base import Obj, cli, handle_errors, pass_obj
from listserv.cli.output import json_array
from listserv.core.errors import ListservError, UsageError
from listserv.core.models import Decision, MailingList


log = logging.getLogger(__name__)


@cli.group("held")
def held_group() -> None:
    """The moderation queue: posts held for approval."""


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user} (shell)"


@held_group.command("ls")
@click.argument("list_address", metavar="[LIST]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_obj
@handle_errors
def held_ls(obj: Obj, list_address: str | None, as_json: bool) -> None:
    """Show posts awaiting a decision (of one list, or of all lists)."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists.get_list(session, list_address) if list_address else None
        rows = moderation.pending(session, ml)
        names = {}
        for h in rows:
            if h.list_id not in names:
                names[h.list_id] = session.get_one(MailingList, h.list_id).address
        items = [moderation.held_json(h, names[h.list_id]) for h in rows]
    if as_json:
        json_array(items)
        return
    if not items:
        click.echo("no held messages")
        return
    for it in items:
        click.echo(f"{it['id']:>6}  {it['held_at'][:16]}  {it['list']}  {it['sender']}  "
                   f"{it['subject']!r}  [{'; '.join(it['reasons'])}]")


def _decide(obj: Obj, held_id: int, decision: Decision, reason: str | None = None) -> None:
    app = obj.ready_app()
    try:
        with app.db.unit_of_work() as session:
            outcome = moderation.decide(session, app, held_id, decision, actor=_actor(),
                                        via="cli", reason=reason)
            text = outcome.describe()
            won = outcome.won
    except (ListservError, SQLAlchemyError, OSError):
        raise
    except Exception as exc:  # noqa: BLE001 - a post we cannot process: say so, keep it held
        log.exception("held message %d: %s failed", held_id, decision.value)
        raise UsageError(f"cannot {decision.value} held message {held_id}: "
                         f"{type(exc).__name__}: {untrusted.one_line(exc, 200)}; "
                         "it stays held") from None
    if not won:
        raise UsageError(f"already handled: {text}")
    click.echo(text)


@held_group.command("approve")
@click.argument("held_id", metavar="ID", type=int)
@pass_obj
@handle_errors
def held_approve(obj: Obj, held_id: int) -> None:
    """Deliver a held post to the list."""
    _decide(obj, held_id, Decision.approve)


@held_group.command("reject")
@click.argument("held_id", metavar="ID", type=int)
@click.option("--reason", default=None, metavar="TEXT", help="Told to the poster.")
@pass_obj
@handle_errors
def held_reject(obj: Obj, held_id: int, reason: str | None) -> None:
    """Refuse a held post; the poster is told (with the reason)."""
    _decide(obj, held_id, Decision.reject, reason)


@held_group.command("discard")
@click.argument("held_id", metavar="ID", type=int)
@pass_obj
@handle_errors
def held_discard(obj: Obj, held_id: int) -> None:
    """Drop a held post silently."""
    _decide(obj, held_id, Decision.discard)


@held_group.command("log")
@click.argument("list_address", metavar="LIST")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@pass_obj
@handle_errors
def held_log(obj: Obj, list_address: str, as_json: bool) -> None:
    """The list's moderation log: who decided what, when and how."""
    app = obj.ready_app()
    with app.db.unit_of_work() as session:
        ml = lists.get_list(session, list_address)
        items: list[dict[str, Any]] = [
                 {"at": e.at.isoformat(), "held_id": e.held_id, "actor": e.actor,
                  "action": e.action, "via": e.via, "detail": e.detail}
                 for e in moderation.log_entries(session, ml)]
    if as_json:
        json_array(items)
        return
    for it in items:
        ref = f"#{it['held_id']}" if it["held_id"] is not None else "-"
        click.echo(f"{it['at'][:19]}  {ref:>6}  {it['action']:<22} {it['via']:<8} "
                   f"{it['actor']}  {it['detail']}")
