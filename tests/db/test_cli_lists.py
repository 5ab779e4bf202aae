"""listserv list create / ls / show / set / delete."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from listserv.core import settings as settings_mod
from listserv.core.app import App
from listserv.core.models import Address, Membership
from tests.clirun import Cli

INTERFACE_DEFAULTS = {
    "nonmember_action": "hold", "member_action": "hold", "emergency": False,
    "subscription_policy": "confirm", "subject_prefix": "[{list}] ", "reply_to": "poster",
    "max_message_size": 0, "dmarc_mitigation": "munge_from", "digest_frequency": "daily",
    "digest_size_threshold_kb": 30, "archive": "private", "bounce_score_threshold": 5,
    "bounce_info_stale_after_days": 7, "bounce_warnings": 3, "bounce_warning_interval_days": 7,
    "notify_poster_on_hold": True,
}


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    return Cli(cli_env)


def test_create_and_ls_json_has_every_setting(cli: Cli) -> None:
    out = cli("list", "create", "Dev@Example.ORG", "--owner", "Ann <Ann@X.org>",
              "--moderator", "bob@y.org", "--moderator", "carol@y.org",
              "--display-name", "Developers").stdout
    assert "created list dev@example.org" in out
    [row] = cli.json("list", "ls")
    assert row["address"] == "dev@example.org" and row["display_name"] == "Developers"
    assert row["members"] == 0 and row["owners"] == 1 and row["moderators"] == 2
    for key, value in INTERFACE_DEFAULTS.items():
        assert row[key] == value, key
    # the domain was added
    assert cli.json("domain", "ls")[0] == {"domain": "example.org", "dkim_selector": None,
                                           "dkim_key": False, "lists": 1}
    people = cli.json("member", "ls", "dev@example.org")
    assert {(p["email"], p["role"]) for p in people} == {
        ("ann@x.org", "owner"), ("bob@y.org", "moderator"), ("carol@y.org", "moderator")}
    assert [p["name"] for p in people if p["role"] == "owner"] == ["Ann"]


def test_ls_table_and_domain_filter(cli: Cli) -> None:
    assert "no lists" in cli("list", "ls").stdout
    cli("list", "create", "b@one.org")
    cli("list", "create", "a@two.org")
    cli("list", "create", "a@one.org")
    lines = cli("list", "ls").stdout.splitlines()
    assert lines[0].split()[0] == "LIST"
    assert [line.split()[0] for line in lines[1:]] == ["a@one.org", "b@one.org", "a@two.org"]
    assert [r["address"] for r in cli.json("list", "ls", "--domain", "ONE.org")] == [
        "a@one.org", "b@one.org"]


def test_unicode_domain_is_found_in_either_form(cli: Cli, app: App) -> None:
    """A list created as dev@exämple.org is stored in IDNA form and found by both spellings
    (the CLI and RCPT routing share lists.find_list)."""
    assert "dev@xn--exmple-cua.org" in cli("list", "create", "dev@exämple.org").stdout
    for spelling in ("dev@exämple.org", "DEV@EXÄMPLE.ORG.", "dev@xn--exmple-cua.org"):
        assert cli.json("list", "show", spelling)["address"] == "dev@xn--exmple-cua.org"
    assert "no such list" in cli.error("list", "show", "dev@bad..domain")
    from listserv.intake import smtp as intake

    assert intake.Router(app).resolve("dev-request@Exämple.org").route.subaddress == "request"


def test_create_errors(cli: Cli, app: App) -> None:
    cli("list", "create", "dev@example.org")
    assert "already exists" in cli.error("list", "create", "DEV@example.org")
    for bad in ("dev-request@example.org", "x-owner@example.org", "y-bounces@example.org"):
        assert "reserved" in cli.error("list", "create", bad)
    assert "NAME@DOMAIN" in cli.error("list", "create", "nodomain")
    assert "invalid" in cli.error("list", "create", "bad name@example.org")
    assert "invalid email" in cli.error("list", "create", "new@example.org", "--owner", "x@")
    assert [r["address"] for r in cli.json("list", "ls")] == ["dev@example.org"]
    cli("list", "create", code=2)


def test_show(cli: Cli) -> None:
    cli("list", "create", "dev@example.org", "--owner", "o@x.org", "--moderator", "m@x.org")
    cli("member", "add", "dev@example.org", "a@x.org", "b@x.org")
    cli("member", "add", "dev@example.org", "c@x.org", "--delivery", "mime-digest")
    cli("member", "set", "dev@example.org", "b@x.org", "--disable")
    out = cli("list", "show", "DEV@example.org").stdout
    assert "list:" in out and "dev@example.org" in out and "o@x.org" in out
    assert "3 (regular 2, mime-digest 1" in out and "1 disabled" in out
    for s in settings_mod.SETTINGS:
        assert f"\n{s.name}:" in out
    obj = json.loads(cli("list", "show", "dev@example.org", "--json").stdout)
    assert obj["owner_emails"] == ["o@x.org"] and obj["moderator_emails"] == ["m@x.org"]
    assert obj["members"] == 3 and obj["delivery"]["mime-digest"] == 1 and obj["disabled"] == 1
    assert "no such list" in cli.error("list", "show", "nope@example.org")


@pytest.mark.parametrize("key, value, expected", [
    ("nonmember_action", "REJECT", "reject"),
    ("member_action", "accept", "accept"),
    ("emergency", "true", True),
    ("emergency", "off", False),
    ("subscription_policy", "confirm_then_moderate", "confirm_then_moderate"),
    ("subject_prefix", "[{list} news] ", "[{list} news] "),
    ("subject_prefix", "", ""),
    ("reply_to", "list", "list"),
    ("max_message_size", "20000", 20000),
    ("dmarc_mitigation", "wrap", "wrap"),
    ("digest_frequency", "never", "never"),
    ("digest_size_threshold_kb", "100", 100),
    ("archive", "public", "public"),
    ("bounce_score_threshold", "2.5", 2.5),
    ("bounce_info_stale_after_days", "10", 10),
    ("bounce_warnings", "0", 0),
    ("bounce_warning_interval_days", "3", 3),
    ("notify_poster_on_hold", "false", False),
    ("display_name", "Developers' list", "Developers' list"),
    ("description", "Talk about development", "Talk about development"),
])
def test_set_every_setting(cli: Cli, key: str, value: str, expected: object) -> None:
    cli("list", "create", "dev@example.org")
    out = cli("list", "set", "dev@Example.org", key, value).stdout
    assert out.startswith(f"dev@example.org: {key} = ")
    assert cli.json("list", "ls")[0][key] == expected


@pytest.mark.parametrize("key, value, needle", [
    ("nonmember_action", "bogus", "accept, hold, reject, discard"),
    ("member_action", "reject", "accept, hold"),
    ("emergency", "maybe", "true, false"),
    ("subscription_policy", "closed", "open, confirm, moderate, confirm_then_moderate"),
    ("reply_to", "everyone", "list, poster"),
    ("max_message_size", "-1", "whole number"),
    ("max_message_size", "big", "whole number"),
    ("dmarc_mitigation", "x", "none, munge_from, wrap"),
    ("digest_frequency", "hourly", "daily, weekly, monthly, never"),
    ("archive", "secret", "public, private, none"),
    ("bounce_score_threshold", "0", "number > 0"),
    ("bounce_warnings", "1.5", "whole number"),
    ("subject_prefix", "a\nb", "single line"),
])
def test_set_bad_value_is_one_clear_line(cli: Cli, key: str, value: str, needle: str) -> None:
    cli("list", "create", "dev@example.org")
    line = cli.error("list", "set", "dev@example.org", key, value)
    assert key in line and needle in line
    assert cli.json("list", "ls")[0][key] == INTERFACE_DEFAULTS[key]


def test_set_unknown_key_and_list(cli: Cli) -> None:
    cli("list", "create", "dev@example.org")
    line = cli.error("list", "set", "dev@example.org", "colour", "blue")
    assert "unknown setting 'colour'" in line and "nonmember_action" in line
    assert "no such list" in cli.error("list", "set", "nope@example.org", "archive", "none")
    cli("list", "set", "dev@example.org", "archive", code=2)


def test_delete(cli: Cli, app: App) -> None:
    cli("list", "create", "dev@example.org", "--owner", "o@x.org")
    cli("list", "create", "other@example.org")
    cli("member", "add", "dev@example.org", "a@x.org", "b@x.org")
    cli("member", "add", "other@example.org", "a@x.org")
    assert "--yes" in cli.error("list", "delete", "dev@example.org")
    assert len(cli.json("list", "ls")) == 2
    assert "deleted list dev@example.org" in cli("list", "delete", "dev@example.org",
                                                 "--yes").stdout
    assert [r["address"] for r in cli.json("list", "ls")] == ["other@example.org"]
    assert "no such list" in cli.error("list", "delete", "dev@example.org", "--yes")
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(Membership)) == 1
        assert s.scalar(select(func.count()).select_from(Address)) == 3  # addresses stay
    # the name can be reused
    cli("list", "create", "dev@example.org")
    assert cli.json("member", "ls", "dev@example.org") == []
