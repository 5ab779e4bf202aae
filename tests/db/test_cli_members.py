"""listserv member add / remove / ls / set, and the bulk import."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from listserv.core.app import App
from listserv.core.models import Address, MailingList, Membership
from tests.clirun import Cli

MEMBER_KEYS = {"email", "name", "role", "delivery", "moderated", "enabled", "disabled_reason"}


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    c = Cli(cli_env)
    c("list", "create", "dev@example.org")
    return c


def test_add_and_ls_json(cli: Cli) -> None:
    out = cli("member", "add", "DEV@example.org", "Ann@Example.COM", "Bob Jones <bob@x.org>",
              "--delivery", "plain-digest", "--moderated").stdout
    assert "added 2 members" in out
    rows = cli.json("member", "ls", "dev@example.org")
    assert [r["email"] for r in rows] == ["ann@example.com", "bob@x.org"]
    assert MEMBER_KEYS <= set(rows[0])
    assert rows[1]["name"] == "Bob Jones"
    for r in rows:
        assert (r["role"], r["delivery"], r["moderated"], r["enabled"], r["disabled_reason"]) == (
            "member", "plain-digest", True, True, None)
    # adding again (any case) is reported, not duplicated
    out = cli("member", "add", "dev@example.org", "ANN@example.com").stdout
    assert "added 0 members" in out and "ann@example.com" in out
    assert len(cli.json("member", "ls", "dev@example.org")) == 2
    assert cli.json("list", "ls")[0]["members"] == 2


def test_roles_one_row_per_address_and_role(cli: Cli) -> None:
    cli("member", "add", "dev@example.org", "a@x.org", "b@x.org")
    cli("member", "add", "dev@example.org", "a@x.org", "--role", "owner")
    cli("member", "add", "dev@example.org", "c@x.org", "--role", "moderator")
    rows = cli.json("member", "ls", "dev@example.org")
    assert [(r["email"], r["role"]) for r in rows] == [
        ("a@x.org", "member"), ("a@x.org", "owner"), ("b@x.org", "member"),
        ("c@x.org", "moderator")]
    assert [r["email"] for r in cli.json("member", "ls", "dev@example.org", "--role",
                                         "owner")] == ["a@x.org"]
    lines = cli("member", "ls", "dev@example.org").stdout.splitlines()
    assert lines[0].split() == ["EMAIL", "NAME", "ROLE", "DELIVERY", "MODERATED", "ENABLED",
                                "DISABLED"]
    assert len(lines) == 5 and lines[1].split()[:3] == ["a@x.org", "-", "member"]
    assert lines[1].index("member") == lines[0].index("ROLE")
    cli("member", "ls", "dev@example.org", "--role", "boss", code=2)


def test_add_errors_are_atomic(cli: Cli) -> None:
    line = cli.error("member", "add", "dev@example.org", "good@x.org", "not-an-address")
    assert "invalid email address 'not-an-address'" in line
    assert cli.json("member", "ls", "dev@example.org") == []
    assert "no such list" in cli.error("member", "add", "nope@example.org", "a@x.org")
    assert "no such list" in cli.error("member", "ls", "nope@example.org")
    cli("member", "add", "dev@example.org", code=2)
    cli("member", "add", "dev@example.org", "a@x.org", "--delivery", "weekly", code=2)
    cli("member", "add", "dev@example.org", "a@x.org", "--file", "f.txt", code=2)


def test_remove(cli: Cli) -> None:
    cli("member", "add", "dev@example.org", "a@x.org", "b@x.org", "c@x.org")
    cli("member", "add", "dev@example.org", "a@x.org", "--role", "owner")
    cli("member", "add", "dev@example.org", "b@x.org", "--role", "moderator")
    out = cli("member", "remove", "dev@example.org", "A@X.org").stdout
    assert "a@x.org (member)" in out and "a@x.org (owner)" in out
    cli("member", "remove", "dev@example.org", "b@x.org", "--role", "moderator")
    assert [(r["email"], r["role"]) for r in cli.json("member", "ls", "dev@example.org")] == [
        ("b@x.org", "member"), ("c@x.org", "member")]
    line = cli.error("member", "remove", "dev@example.org", "c@x.org", "zed@x.org")
    assert "zed@x.org" in line and "c@x.org" not in line
    assert len(cli.json("member", "ls", "dev@example.org")) == 2  # all or nothing
    assert "moderator" in cli.error("member", "remove", "dev@example.org", "c@x.org",
                                    "--role", "moderator")
    assert "invalid email" in cli.error("member", "remove", "dev@example.org", "x@")
    cli("member", "remove", "dev@example.org", code=2)


def test_set(cli: Cli, app: App) -> None:
    cli("member", "add", "dev@example.org", "a@x.org")
    cli("member", "add", "dev@example.org", "a@x.org", "--role", "owner")
    cli("member", "set", "dev@example.org", "a@x.org", "--role", "member", "--delivery",
        "nomail", "--moderated", "--name", "Ann")
    rows = {r["role"]: r for r in cli.json("member", "ls", "dev@example.org")}
    assert (rows["member"]["delivery"], rows["member"]["moderated"]) == ("nomail", True)
    assert (rows["owner"]["delivery"], rows["owner"]["moderated"]) == ("nomail", False)  # no posts
    assert rows["member"]["name"] == "Ann"
    cli("member", "set", "dev@example.org", "a@x.org", "--disable")
    rows = {r["role"]: r for r in cli.json("member", "ls", "dev@example.org")}
    assert all((r["enabled"], r["disabled_reason"]) == (False, "admin") for r in rows.values())
    cli("member", "set", "dev@example.org", "a@x.org", "--unmoderated", "--role", "member")
    assert not cli.json("member", "ls", "dev@example.org", "--role", "member")[0]["moderated"]


def test_enable_clears_bounce_state(cli: Cli, app: App) -> None:
    cli("member", "add", "dev@example.org", "a@x.org")
    with app.db.unit_of_work() as s:
        m = s.scalars(select(Membership).join(Address).where(Address.email == "a@x.org")).one()
        m.enabled, m.disabled_reason, m.bounce_score, m.bounce_warnings_sent = (
            False, "bounce", 6.0, 2)
    row = cli.json("member", "ls", "dev@example.org")[0]
    assert (row["enabled"], row["disabled_reason"]) == (False, "bounce")
    cli("member", "set", "dev@example.org", "a@x.org", "--enable")
    row = cli.json("member", "ls", "dev@example.org")[0]
    assert (row["enabled"], row["disabled_reason"]) == (True, None)
    with app.db.unit_of_work() as s:
        m = s.scalars(select(Membership)).one()
        assert (m.bounce_score, m.bounce_warnings_sent) == (0.0, 0)


def test_set_errors(cli: Cli) -> None:
    cli("member", "add", "dev@example.org", "a@x.org")
    assert "nothing to change" in cli("member", "set", "dev@example.org", "a@x.org",
                                      code=2).stderr
    assert "not subscribed" in cli.error("member", "set", "dev@example.org", "b@x.org",
                                         "--disable")
    assert "not an owner" in cli.error("member", "set", "dev@example.org", "a@x.org",
                                      "--role", "owner", "--disable")
    assert "no such list" in cli.error("member", "set", "x@example.org", "a@x.org",
                                       "--disable")
    cli("member", "set", "dev@example.org", "a@x.org", "--delivery", "daily", code=2)


# ---------------------------------------------------------------------------- bulk import


def _thousand_lines(path: Path) -> tuple[set[str], dict[int, str], int]:
    """1,000 lines: good addresses, bad lines at known numbers, some repeats, a blank."""
    good: set[str] = set()
    bad: dict[int, str] = {}
    repeats = 0
    lines = []
    for n in range(1, 1001):
        if n % 100 == 13:
            text = f"broken-{n}.example.org"
            bad[n] = text
        elif n == 500:
            text = "two@@ats.org"
            bad[n] = text
        elif n % 250 == 0:
            text = "User1@Example.com"   # a repeat of line 1's address
            repeats += 1
        elif n == 777:
            text = ""
        else:
            text = f"User{n}@Example.com"
            good.add(f"user{n}@example.com")
        lines.append(text)
    path.write_text("\n".join(lines) + "\n")
    return good, bad, repeats


def test_import_thousand_lines_with_bad_ones(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "members.txt"
    good, bad, repeats = _thousand_lines(f)
    cli("member", "add", "dev@example.org", "existing@x.org", "user2@example.com")
    result = cli("member", "add", "dev@example.org", "--file", str(f), code=1)
    err = result.stderr.strip().splitlines()
    assert len(err) == len(bad)
    for (n, text), line in zip(sorted(bad.items()), err):
        assert f"line {n}:" in line and text in line
    assert "Traceback" not in result.output
    out = result.stdout
    assert f"imported {len(good) - 1}" in out          # user2 was already there
    assert f"{len(bad)} invalid" in out and f"{repeats} repeated" in out
    assert "1 already" in out
    emails = {r["email"] for r in cli.json("member", "ls", "dev@example.org")}
    assert emails == good | {"existing@x.org"}
    # A second run imports nothing new and still reports the bad lines.
    again = cli("member", "add", "dev@example.org", "--file", str(f), code=1)
    assert "imported 0" in again.stdout and f"{len(good)} already" in again.stdout


def test_import_all_good_exits_0_and_applies_options(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "m.txt"
    f.write_text("# staff\na@x.org\n\nAnn Smith <ann@x.org>\nA@X.ORG\n")
    out = cli("member", "add", "dev@example.org", "--file", str(f), "--delivery", "nomail",
              "--role", "moderator").stdout
    assert "imported 2" in out and "1 repeated" in out and "0 invalid" in out
    rows = cli.json("member", "ls", "dev@example.org")
    assert [(r["email"], r["name"], r["role"], r["delivery"]) for r in rows] == [
        ("a@x.org", "", "moderator", "nomail"), ("ann@x.org", "Ann Smith", "moderator", "nomail")]


def test_import_digest_members_start_at_the_current_post(cli: Cli, app: App,
                                                          tmp_path: Path) -> None:
    """As for `member add`: an imported digest member's digests start after the posts the
    list already sent (no earlier pending posts in their first digest)."""
    with app.db.unit_of_work() as s:
        s.execute(update(MailingList).values(post_id=7))
    f = tmp_path / "m.txt"
    f.write_text("d1@x.org\nd2@x.org\n")
    cli("member", "add", "dev@example.org", "--file", str(f), "--delivery", "mime-digest")
    cli("member", "add", "dev@example.org", "d3@x.org", "--delivery", "plain-digest")
    cli("member", "add", "dev@example.org", "--file", str(f), "--role", "owner")
    with app.db.unit_of_work() as s:
        got = {(e, r.value): seq for e, r, seq in s.execute(
            select(Address.email, Membership.role, Membership.digest_from_seq).join(Address))}
    assert got == {("d1@x.org", "member"): 7, ("d2@x.org", "member"): 7,
                   ("d3@x.org", "member"): 7, ("d1@x.org", "owner"): 0,
                   ("d2@x.org", "owner"): 0}


def test_import_csv(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_text('\ufeffName,Email,Notes\n"Smith, Ann",Ann@X.org,vip\nBob,bob@@x.org,\n'
                 'Carl,carl@x.org\nNobody,,\n')
    result = cli("member", "add", "dev@example.org", "--file", str(f), code=1)
    err = result.stderr.splitlines()
    assert len(err) == 2 and "line 3:" in err[0] and "line 5:" in err[1]
    rows = cli.json("member", "ls", "dev@example.org")
    assert [(r["email"], r["name"]) for r in rows] == [("ann@x.org", "Smith, Ann"),
                                                       ("carl@x.org", "Carl")]


def test_import_semicolon_csv_and_bad_encoding(cli: Cli, tmp_path: Path) -> None:
    f = tmp_path / "m.csv"
    f.write_bytes(b"email;name\na@x.org;A\n\xff\xfe@x.org;B\n")
    result = cli("member", "add", "dev@example.org", "--file", str(f), code=1)
    assert "line 3: not valid UTF-8" in result.stderr
    assert [r["email"] for r in cli.json("member", "ls", "dev@example.org")] == ["a@x.org"]


def test_import_errors(cli: Cli, tmp_path: Path) -> None:
    assert "cannot read" in cli.error("member", "add", "dev@example.org", "--file",
                                      str(tmp_path / "missing.txt"))
    f = tmp_path / "m.txt"
    f.write_text("a@x.org\n")
    assert "no such list" in cli.error("member", "add", "nope@example.org", "--file", str(f))


def test_import_from_stdin(cli: Cli) -> None:
    result = cli("member", "add", "dev@example.org", "--file", "-",
                 input="a@x.org\nnope\nb@x.org\n", code=1)
    assert result.stderr.strip() == (
        "stdin: line 2: invalid email address 'nope': An email address must have an @-sign.")
    assert result.stdout.count("\n") == 1  # no progress bar when stdout is not a terminal
    assert [r["email"] for r in cli.json("member", "ls", "dev@example.org")] == [
        "a@x.org", "b@x.org"]


def test_moderators_and_owners_show_the_delivery_that_happens(cli: Cli) -> None:
    cli("member", "add", "dev@example.org", "mem@x.org", "--delivery", "mime-digest")
    cli("member", "add", "dev@example.org", "mod@x.org", "mem@x.org", "--role", "moderator")
    cli("member", "add", "dev@example.org", "own@x.org", "--role", "owner")
    rows = {(r["email"], r["role"]): r for r in cli.json("member", "ls", "dev@example.org")}
    assert (rows[("mem@x.org", "member")]["delivery"],
            rows[("mem@x.org", "member")]["receives_posts"]) == ("mime-digest", True)
    for key in (("mem@x.org", "moderator"), ("mod@x.org", "moderator"), ("own@x.org", "owner")):
        assert (rows[key]["delivery"], rows[key]["receives_posts"]) == ("nomail", False)
    table = cli("member", "ls", "dev@example.org").stdout
    assert "nomail (not a member)" in table
