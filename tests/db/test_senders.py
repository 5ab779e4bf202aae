"""Per-address non-member actions and bans: CLI, list show, the posting rules, subscriptions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from listserv.pipeline import rules
from sqlalchemy import select

from listserv.core.models import Action, MailingList
from tests.clirun import Cli
from tests.db.modsupport import Outbox, _inbound, command, message, parse
from tests.db.test_commands import is_member

ADDR = "dev@example.org"


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Cli:
    c = Cli(cli_env)
    c("list", "create", ADDR, "--owner", "owner@example.org")
    c("member", "add", ADDR, "member@example.org")
    return c


def _verdict(app: Any, sender: str, mail_from: str | None = None) -> rules.Verdict:
    data = message(sender, ADDR)
    with app.db.unit_of_work() as s:
        ml = s.scalars(select(MailingList).order_by(MailingList.id)).first()
        assert ml is not None and ml.name == "dev"
        ib = _inbound(s, app, ml.id, "post", data, mail_from or sender, None)
        return rules.evaluate(rules.build_context(s, ml, ib, parse(data)))


def test_cli_add_ls_remove_and_list_show(cli: Cli) -> None:
    out = cli("list", "sender", "add", ADDR, "Friend@Partner.example", "^.*@trusted\\.example$",
              "--action", "accept").stdout
    assert "friend@partner.example -> accept" in out
    cli("list", "sender", "add", ADDR, "^.*@spam\\.example$", "--action", "discard")
    again = cli("list", "sender", "add", ADDR, "friend@partner.example", "--action", "accept")
    assert "(unchanged)" in again.stdout
    cli("list", "sender", "add", ADDR, "friend@partner.example", "--action", "hold")
    assert cli.json("list", "sender", "ls", ADDR) == [
        {"pattern": "friend@partner.example", "action": "hold"},
        {"pattern": "^.*@trusted\\.example$", "action": "accept"},
        {"pattern": "^.*@spam\\.example$", "action": "discard"}]
    cli("list", "ban", "add", ADDR, "^troll", "Pest@X.example")
    shown = cli.json("list", "show", ADDR)
    assert shown["bans"] == ["^troll", "pest@x.example"]
    assert len(shown["sender_rules"]) == 3
    text = cli("list", "show", ADDR).stdout
    assert "^.*@spam\\.example$ -> discard" in text and "pest@x.example" in text
    cli("list", "sender", "remove", ADDR, "FRIEND@partner.example")
    cli("list", "ban", "remove", ADDR, "^troll")
    assert len(cli.json("list", "sender", "ls", ADDR)) == 2
    assert cli.json("list", "ban", "ls", ADDR) == [{"pattern": "pest@x.example"}]


def test_cli_errors(cli: Cli) -> None:
    assert "regular expression" in cli.error("list", "sender", "add", ADDR, "^(x",
                                             "--action", "accept")
    assert "invalid email address" in cli.error("list", "ban", "add", ADDR, "not an address")
    assert "no sender rule" in cli.error("list", "sender", "remove", ADDR, "a@b.example")
    assert "no ban" in cli.error("list", "ban", "remove", ADDR, "a@b.example")
    assert "no such list" in cli.error("list", "ban", "ls", "nope@example.org")
    cli("list", "sender", "add", ADDR, "a@b.example", code=2)        # --action is required


def test_rules_use_sender_patterns_before_nonmember_action(cli: Cli, app: Any) -> None:
    cli("list", "set", ADDR, "nonmember_action", "reject")
    cli("list", "sender", "add", ADDR, "^.*@trusted\\.example$", "--action", "accept")
    cli("list", "sender", "add", ADDR, "^.*@spam\\.example$", "--action", "discard")
    cli("list", "sender", "add", ADDR, "newbie@else.example", "--action", "hold")
    cli("list", "sender", "add", ADDR, "^member@", "--action", "discard")
    assert _verdict(app, "Ann <ann@Trusted.example>").action is Action.accept
    assert _verdict(app, "x@spam.example").action is Action.discard
    held = _verdict(app, "newbie@else.example")
    assert held.action is Action.hold and "newbie@else.example" in held.reasons[0]
    assert _verdict(app, "other@else.example").action is Action.reject
    assert _verdict(app, "member@example.org").action is Action.accept   # members unaffected


def test_banned_sender_is_discarded_even_when_a_member(cli: Cli, app: Any) -> None:
    cli("list", "ban", "add", ADDR, "member@example.org", "^.*@evil\\.example$")
    v = _verdict(app, "member@example.org")
    assert v.action is Action.discard and "banned" in v.reasons[0]
    assert _verdict(app, "a@good.example", mail_from="bounce@EVIL.example").action \
        is Action.discard
    assert _verdict(app, "owner@example.org").action is Action.accept


def test_banned_address_cannot_subscribe(cli: Cli, app: Any, tmp_path: Path) -> None:
    cli("list", "set", ADDR, "subscription_policy", "open")
    cli("list", "ban", "add", ADDR, "^.*@evil\\.example$")
    err = cli.error("member", "add", ADDR, "Eve <eve@evil.example>")
    assert "banned" in err and "eve@evil.example" in err
    f = tmp_path / "m.txt"
    f.write_text("ok@good.example\nmallory@evil.example\n")
    result = cli("member", "add", ADDR, "--file", str(f), code=1)
    assert "line 2: mallory@evil.example is banned" in result.stderr
    outbox = Outbox(app)
    with app.db.unit_of_work() as s:
        list_id = s.scalars(select(MailingList)).one().id
    command(app, list_id, "join", message("eve@evil.example", "dev-join@example.org", "", ""))
    assert not is_member(app, list_id, "eve@evil.example")
    assert "may not subscribe" in outbox.new()[0].msg.get_content()
    command(app, list_id, "join", message("fine@good.example", "dev-join@example.org", "", ""))
    assert is_member(app, list_id, "fine@good.example")


def test_members_of_another_list_as_a_sender_rule(cli: Cli, app: Any) -> None:
    """'@LIST' (Mailman 2.1's @listname): the members of that other list of this server."""
    cli("list", "set", ADDR, "nonmember_action", "reject")
    assert "no such list: staff@example.org" in cli.error(
        "list", "sender", "add", ADDR, "@staff@example.org", "--action", "accept")
    assert "not non-members" in cli.error("list", "sender", "add", ADDR, "@dev@example.org",
                                          "--action", "accept")
    assert "@LIST is for sender rules" in cli.error("list", "ban", "add", ADDR,
                                                    "@dev@example.org")
    cli("list", "create", "staff@example.org")
    cli("member", "add", "staff@example.org", "Sam <sam@corp.example>", "nomail@corp.example")
    cli("member", "set", "staff@example.org", "nomail@corp.example", "--delivery", "nomail")
    cli("list", "create", "other@example.org", "--owner", "olga@corp.example")
    out = cli("list", "sender", "add", ADDR, "@Staff@Example.org", "--action", "accept").stdout
    assert "@staff@example.org -> accept" in out
    cli("list", "sender", "add", ADDR, "@other@example.org", "--action", "discard")
    assert {"pattern": "@staff@example.org", "action": "accept"} in cli.json(
        "list", "show", ADDR)["sender_rules"]
    v = _verdict(app, "Sam <SAM@corp.example>")
    assert v.action is Action.accept
    assert _verdict(app, "nomail@corp.example").action is Action.accept   # member, any delivery
    assert _verdict(app, "stranger@corp.example").action is Action.reject
    assert _verdict(app, "olga@corp.example").action is Action.reject     # an owner only
    cli("member", "add", "other@example.org", "sam@corp.example")
    assert _verdict(app, "sam@corp.example").action is Action.accept      # accept wins
    cli("list", "sender", "remove", ADDR, "@staff@example.org")
    assert _verdict(app, "sam@corp.example").action is Action.discard
    cli("list", "delete", "other@example.org", "--yes")
    assert _verdict(app, "sam@corp.example").action is Action.reject      # list gone: no match
