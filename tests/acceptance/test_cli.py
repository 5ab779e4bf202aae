"""Issue #2 from outside: the `listserv` command, its --json output, its errors and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from listserv.cli import cli as click_cli
from tests.acceptance.conftest import Site, clean_env
from tests.waiting import free_port

JSON_KEYS = {
    ("list", "ls"): {"address", "display_name", "members", "nonmember_action", "member_action",
                     "emergency", "subscription_policy", "subject_prefix", "reply_to",
                     "max_message_size", "dmarc_mitigation", "digest_frequency",
                     "digest_size_threshold_kb", "archive", "bounce_score_threshold",
                     "bounce_info_stale_after_days", "bounce_warnings",
                     "bounce_warning_interval_days"},
    ("member", "ls"): {"email", "name", "role", "delivery", "moderated", "enabled",
                       "disabled_reason"},
    ("held", "ls"): {"id", "list", "sender", "subject", "reasons", "held_at"},
    ("bounces", "ls"): {"email", "score", "last_bounce", "enabled", "disabled_reason"},
    ("domain", "ls"): {"domain", "dkim_selector"},
}


def listserv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "listserv", *args], capture_output=True,
                          text=True, env=clean_env(), cwd=cwd, timeout=60)


def refused(p: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A user mistake: exit 1, exactly one line on stderr naming the problem, no traceback."""
    assert p.returncode == 1, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr + p.stdout, p.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_configuration_and_database_mistakes(tmp_path: Path) -> None:
    refused(listserv("--config", str(tmp_path / "missing.toml"), "list", "ls"), "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[delivery]\nverp = true\nretries = 3\n')
    refused(listserv("--config", str(bad), "list", "ls"), "delivery.retries")
    nohost = tmp_path / "nohost.toml"
    nohost.write_text('[delivery]\noutbound = "smtp://:25"\n')
    refused(listserv("--config", str(nohost), "serve"), "delivery.outbound")
    closed = tmp_path / "closed.toml"
    closed.write_text(f'[database]\nurl = "postgresql+psycopg://u:secret@127.0.0.1:'
                      f'{free_port()}/db"\n')
    p = listserv("--config", str(closed), "list", "ls")
    refused(p, "127.0.0.1")
    assert "secret" not in p.stderr                             # no password in the message
    refused(listserv("list", "ls", cwd=tmp_path), "listserv init")   # not initialised yet
    p = listserv("list", "create", cwd=tmp_path)                    # malformed: usage, exit 2
    assert p.returncode == 2 and "Usage:" in p.stderr


def test_every_command_describes_itself() -> None:
    top = listserv("--help")
    assert top.returncode == 0 and "Usage: listserv" in top.stdout
    runner = CliRunner()

    def walk(group: click.Group, path: list[str]) -> int:
        n = 0
        for name, cmd in group.commands.items():
            r = runner.invoke(click_cli, [*path, name, "--help"])
            assert r.exit_code == 0 and "Usage:" in r.stdout, (path, name, r.output)
            assert (cmd.help or cmd.short_help or "").strip(), f"{path + [name]} has no help"
            n += 1
            if isinstance(cmd, click.Group):
                n += walk(cmd, [*path, name])
        return n

    assert walk(click_cli, []) >= 25


def test_admin_commands_end_to_end(site: Site, tmp_path: Path) -> None:
    lst = "cli@admin.example"
    assert "already" in site.run("db", "upgrade")            # init ran: nothing to do
    site.run("init")                                         # idempotent
    out = site.run("list", "create", lst, "--owner", "o@admin.example", "--moderator",
                   "m@admin.example", "--display-name", "CLI test")
    assert lst in out
    refused(site.cli("list", "create", lst, code=None), lst)
    site.refused("list", "show", "nosuch@admin.example", naming="nosuch@admin.example")
    site.refused("list", "set", lst, "nonmember_action", "maybe", naming="maybe")
    site.refused("list", "set", lst, "colour", "blue", naming="colour")
    site.refused("member", "add", lst, "not-an-address", naming="not-an-address")
    site.run("list", "set", lst, "subject_prefix", "<{list}> ")
    site.run("list", "set", lst, "bounce_score_threshold", "2.5")
    (row,) = [r for r in site.json("list", "ls") if r["address"] == lst]
    assert JSON_KEYS["list", "ls"] <= set(row)
    assert (row["display_name"], row["subject_prefix"], row["bounce_score_threshold"],
            row["members"]) == ("CLI test", "<{list}> ", 2.5, 0)
    assert json.loads(site.run("list", "show", lst, "--json"))["address"] == lst

    # a 1,000-line import with bad lines: the good ones kept, each bad one reported
    lines, bad = [], []
    for i in range(1000):
        if i % 97 == 13:
            lines.append(f"broken line {i}")
            bad.append(i + 1)
        elif i % 101 == 7:
            lines.append(f"user{i}@")
            bad.append(i + 1)
        elif i % 250 == 0:
            lines.append(f"Person {i} <Person{i}@Import.Example>")
        else:
            lines.append(f"user{i}@import.example")
    people = tmp_path / "people.txt"
    people.write_text("\n".join(lines) + "\n")
    p = site.cli("member", "add", lst, "--file", str(people), code=None)
    assert p.returncode == 1 and "Traceback" not in p.stderr
    for n in bad:
        assert f"line {n}:" in p.stderr, n
    assert f"imported {1000 - len(bad)}" in p.stdout + p.stderr
    rows = site.json("member", "ls", lst, "--role", "member")
    assert len(rows) == 1000 - len(bad)
    assert JSON_KEYS["member", "ls"] <= set(rows[0])
    by = {r["email"]: r for r in rows}
    assert by["person250@import.example"]["name"] == "Person 250"

    site.run("member", "set", lst, "user1@import.example", "--delivery", "plain-digest",
             "--moderated", "--disable")
    one = {r["email"]: r for r in site.json("member", "ls", lst)}["user1@import.example"]
    assert (one["delivery"], one["moderated"], one["enabled"]) == ("plain-digest", True, False)
    site.run("member", "remove", lst, "user1@import.example", "user2@import.example")
    site.refused("member", "remove", lst, "user1@import.example", naming="user1@import.example")
    assert len(site.json("member", "ls", lst, "--role", "member")) == 998 - len(bad)
    assert {r["email"] for r in site.json("member", "ls", lst, "--role", "owner")} == {
        "o@admin.example"}

    for cmd in (("held", "ls"), ("bounces", "ls", lst), ("domain", "ls")):
        assert isinstance(site.json(*cmd), list)
    (dom,) = [d for d in site.json("domain", "ls") if d["domain"] == "admin.example"]
    assert JSON_KEYS["domain", "ls"] <= set(dom)

    site.refused("list", "delete", lst, naming="--yes")
    site.run("list", "delete", lst, "--yes")
    assert lst not in {r["address"] for r in site.json("list", "ls")}
    refused(site.cli("member", "ls", lst, code=None), lst)
