"""member add --file with the member exports of Google Groups and groups.io."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clirun import Cli

DATA = Path(__file__).resolve().parent.parent / "data" / "import"


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    c = Cli(cli_env)
    c("list", "create", "dev@example.org")
    return c


def _people(cli: Cli) -> set[tuple[str, str, str, str, bool]]:
    return {(r["email"], r["name"], r["role"], r["delivery"], r["moderated"])
            for r in cli.json("member", "ls", "dev@example.org")}


def test_google_groups_export(cli: Cli) -> None:
    result = cli("member", "add", "dev@example.org", "--file",
                 str(DATA / "google-groups-members.csv"), code=1)
    assert "line 7:" in result.stderr and "not-an-address" in result.stderr
    assert "imported 5" in result.stdout
    assert _people(cli) == {
        # owners and moderators get no posts: member ls shows nomail for their rows
        ("ann@example.org", "Ann Example", "owner", "nomail", False),
        ("bob.manager@example.org", "", "moderator", "nomail", False),
        ("carla@example.net", "Müller, Carla", "member", "plain-digest", True),
        ("dan@example.com", "Dan", "member", "nomail", False),
        ("erin@example.com", "Erin", "member", "regular", False),
    }
    again = cli("member", "add", "dev@example.org", "--file",
                str(DATA / "google-groups-members.csv"), code=1)
    assert "imported 0" in again.stdout and "5 already" in again.stdout


def test_groupsio_export(cli: Cli) -> None:
    result = cli("member", "add", "dev@example.org", "--file",
                 str(DATA / "groupsio-members.csv"), code=1)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and "line 8:" in err[0] and "Weekly Carrier Pigeon".lower() in err[0]
    assert "Email Delivery" in err[0]
    assert _people(cli) == {
        ("fay@example.org", "Fay", "owner", "nomail", False),
        ("gus@example.org", "gus", "moderator", "nomail", False),
        ("hal@example.org", "Hal", "member", "plain-digest", True),
        ("ida@example.org", "Ida", "member", "plain-digest", False),
        ("jon@example.org", "Jon", "member", "nomail", True),
        ("kim@example.org", "Kim", "member", "nomail", False),
    }


def test_row_columns_win_over_command_line_defaults(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text("Members for group dev@example.org\n"
                 "Email address,Nickname,Group status,Email preference\n"
                 "a@x.org,A,,Digest\nb@x.org,B,Owner,\n")
    cli("member", "add", "dev@example.org", "--file", str(f), "--delivery", "nomail",
        "--moderated")
    assert _people(cli) == {("a@x.org", "A", "member", "mime-digest", True),
                            ("b@x.org", "B", "owner", "nomail", True)}
