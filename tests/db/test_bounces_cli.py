"""listserv bounces ls / events through click's CliRunner."""

from __future__ import annotations

import json

from click.testing import CliRunner

from listserv.bounces import process as bounces
from listserv.core.app import App
from listserv.cli import cli
from listserv.core.lists import create_list
from listserv.core.members import add_member, find_membership


def _setup(app: App) -> None:
    with app.db.unit_of_work() as s:
        ml = create_list(s, "dev@lists.example.org")
        for e in ("a@example.com", "b@example.com", "c@example.com"):
            add_member(s, ml, e)
        bounces.record(s, app, ml, ["a@example.com"], bounces.BounceKind.hard, source="smtp",
                       status="5.1.1", diagnostic="550 user unknown")
        m = find_membership(s, ml, "b@example.com")
        m.enabled, m.disabled_reason = False, "bounce"


def test_bounces_ls_json(app: App, cli_env: dict[str, str], clock) -> None:  # noqa: ANN001
    _setup(app)
    r = CliRunner().invoke(cli, ["bounces", "ls", "dev@lists.example.org", "--json"],
                           env=cli_env)
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["email"] for x in rows] == ["a@example.com", "b@example.com"]
    a, b = rows
    assert a["score"] == 1 and a["enabled"] is True and a["disabled_reason"] is None
    assert a["last_bounce"].startswith(clock().date().isoformat())
    assert b["enabled"] is False and b["disabled_reason"] == "bounce"
    assert set(a) >= {"email", "score", "last_bounce", "enabled", "disabled_reason"}
    r = CliRunner().invoke(cli, ["bounces", "ls", "dev@lists.example.org", "--json", "--all"],
                           env=cli_env)
    assert len(json.loads(r.output)) == 3
    r = CliRunner().invoke(cli, ["bounces", "ls", "dev@lists.example.org"], env=cli_env)
    assert r.exit_code == 0 and "disabled (bounce)" in r.output and "a@example.com" in r.output


def test_bounces_events(app: App, cli_env: dict[str, str]) -> None:
    _setup(app)
    r = CliRunner().invoke(cli, ["bounces", "events", "dev@lists.example.org", "--json"],
                           env=cli_env)
    assert r.exit_code == 0, r.output
    (e,) = json.loads(r.output)
    assert (e["email"], e["kind"], e["source"], e["status"]) == \
        ("a@example.com", "hard", "smtp", "5.1.1")


def test_unknown_list_is_one_line_error(app: App, cli_env: dict[str, str]) -> None:
    r = CliRunner().invoke(cli, ["bounces", "ls", "nope@example.org"], env=cli_env)
    assert r.exit_code == 1
    assert "no such list" in r.output and "Traceback" not in r.output
