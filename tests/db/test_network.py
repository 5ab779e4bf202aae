"""Networks of lists: include / uninclude / tree, cycles, and the recipients query."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import insert

from listserv.core import lists
from listserv.delivery import recipients
from listserv.core.app import App
from listserv.core.models import DeliveryMode, ListInclusion
from tests.clirun import Cli
from tests.integration.harness import make_list


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    return Cli(cli_env)


def ids(app: App, *addresses: str) -> list[int]:
    with app.db.unit_of_work() as s:
        return [lists.get_list(s, a).id for a in addresses]


def post_to(app: App, address: str, mhash: str | None = None) -> list[str]:
    with app.db.unit_of_work() as s:
        ml = lists.get_list(s, address)
        return list(recipients.post_recipients(s, ml.id, mhash))


def network(app: App) -> None:
    """national includes north and south; north includes two locals; people overlap."""
    make_list(app, "national@example.org", members=["nat@x.org", "both@x.org"])
    make_list(app, "north@example.org", members=["n1@x.org", "both@x.org"])
    make_list(app, "south@example.org", members=["s1@x.org", "Both@X.org"])
    make_list(app, "local-a@example.org", members=["a1@x.org", "n1@x.org"])
    make_list(app, "local-b@example.org", members=["b1@x.org"])


def test_include_tree_and_recipients_once(cli: Cli, app: App) -> None:
    network(app)
    out = cli("list", "include", "national@example.org", "north@example.org",
              "south@example.org").stdout
    assert "national@example.org now includes north@example.org" in out
    cli("list", "include", "north@example.org", "local-a@example.org", "local-b@example.org")
    # again: nothing new, still exit 0
    assert "already includes" in cli("list", "include", "north@example.org",
                                     "local-a@example.org").stdout
    got = post_to(app, "national@example.org")
    assert sorted(got) == ["a1@x.org", "b1@x.org", "both@x.org", "n1@x.org", "nat@x.org",
                           "s1@x.org"]
    assert sorted(post_to(app, "north@example.org")) == [
        "a1@x.org", "b1@x.org", "both@x.org", "n1@x.org"]
    assert post_to(app, "local-b@example.org") == ["b1@x.org"]

    [tree] = cli.json("list", "tree", "national@example.org")
    assert tree["address"] == "national@example.org" and tree["members"] == 2
    assert tree["reach"] == 6
    assert [c["address"] for c in tree["includes"]] == ["north@example.org",
                                                       "south@example.org"]
    north = tree["includes"][0]
    assert north["reach"] == 4 and [c["members"] for c in north["includes"]] == [2, 1]
    text = cli("list", "tree").stdout
    assert "national@example.org (2 members, reaches 6)" in text
    assert "`-- local-b@example.org (1 member)" in text
    assert cli("list", "ls", "--tree").stdout == text

    show = cli.json("list", "show", "north@example.org")
    assert show["includes"] == ["local-a@example.org", "local-b@example.org"]
    assert show["included_in"] == ["national@example.org"]
    shown = cli("list", "show", "north@example.org").stdout
    assert re.search(r"^included_in: +national@example.org$", shown, re.M)

    out = cli("list", "uninclude", "national@example.org", "south@example.org").stdout
    assert "no longer includes south@example.org" in out
    assert "s1@x.org" not in post_to(app, "national@example.org")
    assert "does not include" in cli.error("list", "uninclude", "national@example.org",
                                           "south@example.org")


def test_cycles_are_refused_with_one_line(cli: Cli, app: App) -> None:
    network(app)
    cli("list", "include", "national@example.org", "north@example.org")
    cli("list", "include", "north@example.org", "local-a@example.org")
    err = cli.error("list", "include", "local-a@example.org", "national@example.org")
    assert err == ("listserv: error: including national@example.org in local-a@example.org "
                   "would make a cycle: local-a@example.org -> national@example.org -> "
                   "north@example.org -> local-a@example.org")
    assert "cannot include itself" in cli.error("list", "include", "north@example.org",
                                                "north@example.org")
    assert "not a list" in cli.error("list", "include", "north@example.org",
                                     "national-request@example.org")
    assert "no such list" in cli.error("list", "include", "nope@example.org",
                                       "north@example.org")
    assert "invalid email" in cli.error("list", "include", "north@example.org", "x@")
    # nothing of a refused command was kept
    assert cli.json("list", "show", "local-a@example.org")["includes"] == []


def test_hand_made_cycle_cannot_loop_or_duplicate(cli: Cli, app: App) -> None:
    network(app)
    nat, north, a = ids(app, "national@example.org", "north@example.org",
                        "local-a@example.org")
    with app.db.unit_of_work() as s:
        s.execute(insert(ListInclusion), [
            {"parent_id": nat, "child_id": north}, {"parent_id": north, "child_id": a},
            {"parent_id": a, "child_id": nat}, {"parent_id": a, "child_id": a}])
    for address in ("national@example.org", "north@example.org", "local-a@example.org"):
        got = post_to(app, address)
        assert sorted(got) == ["a1@x.org", "both@x.org", "n1@x.org", "nat@x.org"]
    text = cli("list", "tree").stdout
    assert "cycle" in text


def test_delivery_modes_across_memberships(app: App, cli: Cli) -> None:
    """The most immediate mode any membership gives; disabled and nomail do not reach."""
    make_list(app, "top@example.org", members=["dig@x.org", "nomail@x.org", "off@x.org",
                                                "reg@x.org"])
    make_list(app, "sub@example.org", members=["dig@x.org", "nomail@x.org", "off@x.org",
                                                "onlydig@x.org", "sub@x.org"])
    cli("member", "set", "top@example.org", "dig@x.org", "--delivery", "mime-digest")
    cli("member", "set", "top@example.org", "nomail@x.org", "--delivery", "nomail")
    cli("member", "set", "sub@example.org", "nomail@x.org", "--delivery", "nomail")
    cli("member", "set", "sub@example.org", "onlydig@x.org", "--delivery", "plain-digest")
    cli("member", "set", "top@example.org", "off@x.org", "--disable")
    cli("member", "set", "sub@example.org", "off@x.org", "--disable")
    cli("list", "include", "top@example.org", "sub@example.org")
    # dig@ is a digest member of top but regular on sub: regular wins
    assert sorted(post_to(app, "top@example.org")) == ["dig@x.org", "reg@x.org", "sub@x.org"]
    assert DeliveryMode.regular  # modes compared by the database, not here


def test_delete_included_list_names_parents(cli: Cli, app: App) -> None:
    network(app)
    cli("list", "include", "national@example.org", "north@example.org")
    cli("list", "include", "south@example.org", "north@example.org")
    err = cli.error("list", "delete", "north@example.org")
    assert "without --yes" in err
    assert "included in national@example.org, south@example.org" in err
    out = cli("list", "delete", "north@example.org", "--yes").stdout
    assert "deleted list north@example.org (it was included in national@example.org" in out
    assert cli.json("list", "show", "national@example.org")["includes"] == []


def test_remote_child_gets_one_copy(cli: Cli, app: App) -> None:
    network(app)
    out = cli("list", "include", "north@example.org", "Regional@Other.Example").stdout
    assert "now includes regional@other.example" in out
    cli("list", "include", "national@example.org", "north@example.org")
    assert "regional@other.example" in post_to(app, "national@example.org")
    [tree] = cli.json("list", "tree", "north@example.org")
    assert tree["includes"] == [{"address": "regional@other.example", "remote": True,
                                 "members": None, "includes": []}]
    cli("list", "uninclude", "north@example.org", "regional@other.example")
    assert "regional@other.example" not in post_to(app, "national@example.org")
