"""Moderation and membership by email, end to end: SMTP intake -> workers -> SMTP sink."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from click.testing import CliRunner

from listserv.core import tokens
from listserv.pipeline import moderation
from listserv.cli import cli
from listserv.core.models import SubscriptionPolicy
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured

LIST = "dev@example.org"


def to(rcpt: str) -> Any:
    return lambda msgs: [m for m in msgs if rcpt in m.rcpt_tos]


def only(h: Harness, rcpt: str) -> list[Captured]:
    return [m for m in h.sink.messages if rcpt in m.rcpt_tos]


def token_of(c: Captured) -> str:
    return str(c.message["Reply-To"]).split("+", 1)[1].split("@")[0]


def reply(h: Harness, sender: str, token: str, body: str, **headers: str) -> None:
    h.send(make_message(sender, f"dev-confirm+{token}@example.org", f"Re: confirm {token}",
                        body, **headers))
    h.run_until_idle()


def posts(h: Harness, rcpt: str) -> list[Captured]:
    return [m for m in only(h, rcpt) if m.message["List-Post"] is not None]


def test_held_post_moderated_by_reply(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"],
              owners=["own@o.example"])
    h.send(make_message("stranger@s.example", LIST, "Let me in", "Hello list\nsecond line\n"))
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(msgs) >= 3)
    (notice,) = only(h, "mod@m.example")
    body = notice.message.get_body(("plain",)).get_content()
    assert "stranger@s.example" in body and "Let me in" in body and "second line" in body
    token = token_of(notice)
    assert token in str(notice.message["Subject"])
    assert len(only(h, "stranger@s.example")) == 1      # "awaits moderation"
    assert posts(h, "ann@a.example") == []

    # non-moderator: nothing happens (help text to them)
    reply(h, "ann@a.example", token, "approve")
    assert posts(h, "ann@a.example") == []
    # auto-reply from the moderator: nothing at all
    n = len(h.sink.messages)
    reply(h, "mod@m.example", token, "approve", Auto_Submitted="auto-replied")
    h.send(make_message("mod@m.example", f"dev-confirm+{token}@example.org", "Re", "approve"),
           mail_from="")
    h.run_until_idle()
    assert len(h.sink.messages) == n
    # the moderator: delivered once, and told so
    reply(h, "mod@m.example", token, "approve")
    h.sink.wait_for(lambda msgs: len(posts(h, "ann@a.example")) == 1)
    assert "Let me in" in str(posts(h, "ann@a.example")[0].message["Subject"])
    assert any("approved" in m.message.get_body(("plain",)).get_content() for m in only(h, "mod@m.example")[1:])
    # the same reply again: nothing delivered
    reply(h, "mod@m.example", token, "approve")
    assert len(posts(h, "ann@a.example")) == 1
    assert "already handled" in only(h, "mod@m.example")[-1].message.get_body(("plain",)).get_content().lower()


def test_reject_by_reply_and_cli(harness: Harness, cli_env: dict[str, str], clock: Any) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    h.send(make_message("stranger@s.example", LIST, "Spam", "Buy\n"))
    h.send(make_message("other@s.example", LIST, "Second", "Hi\n"))
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "mod@m.example")) == 2)
    first = [m for m in only(h, "mod@m.example") if "Spam" in m.message.get_body(("plain",)).get_content()][0]
    reply(h, "mod@m.example", token_of(first), "reject no ads please")
    h.sink.wait_for(lambda msgs: len(only(h, "stranger@s.example")) == 2)
    assert "no ads please" in only(h, "stranger@s.example")[-1].message.get_body(("plain",)).get_content()

    runner = CliRunner()
    r = runner.invoke(cli, ["held", "ls", LIST, "--json"], env=cli_env)
    (item,) = json.loads(r.output)
    assert item["subject"] == "Second"
    r = runner.invoke(cli, ["held", "approve", str(item["id"])], env=cli_env)
    assert r.exit_code == 0, r.output + r.stderr
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)  # the CLI's real clock
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(posts(h, "ann@a.example")) == 1)
    r = runner.invoke(cli, ["held", "log", LIST, "--json"], env=cli_env)
    actions = [(e["action"], e["via"]) for e in json.loads(r.output)]
    assert actions == [("hold", "rules"), ("hold", "rules"), ("reject", "email"),
                       ("approve", "cli")]


def test_tokens_attacked(harness: Harness, clock: Any) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    make_list(h.app, "ops@example.org", moderators=["mod@m.example"])
    h.send(make_message("stranger@s.example", LIST, "Held", "x\n"))
    h.run_until_idle()
    h.sink.wait_for(to("mod@m.example"))
    token = token_of(only(h, "mod@m.example")[0])
    reply(h, "mod@m.example", tokens.new_token(), "approve")               # guessed
    h.send(make_message("mod@m.example", f"ops-confirm+{token}@example.org", "Re", "approve"))
    h.run_until_idle()                                                    # other list
    clock.advance(days=15)
    reply(h, "mod@m.example", token, "approve")                           # expired
    assert posts(h, "ann@a.example") == []
    moderation.tick(h.app)
    h.run_until_idle()
    assert "expired" in str(only(h, "mod@m.example")[-1].message["Subject"])


def member_ls(cli_env: dict[str, str]) -> list[str]:
    r = CliRunner().invoke(cli, ["member", "ls", LIST, "--json"], env=cli_env)
    assert r.exit_code == 0, r.output
    return [m["email"] for m in json.loads(r.output)]


def test_join_and_leave_by_mail(harness: Harness, cli_env: dict[str, str]) -> None:
    h = harness
    make_list(h.app, LIST, subscription_policy=SubscriptionPolicy.confirm)
    h.send(make_message("Zoe <zoe@z.example>", "dev-join@example.org", "join", ""))
    h.run_until_idle()
    (conf,) = h.sink.wait_for(to("zoe@z.example"))
    assert member_ls(cli_env) == []
    reply(h, "zoe@z.example", token_of(conf), "")
    h.sink.wait_for(lambda msgs: len(only(h, "zoe@z.example")) == 2)
    assert "Welcome" in str(only(h, "zoe@z.example")[-1].message["Subject"])
    assert member_ls(cli_env) == ["zoe@z.example"]

    h.send(make_message("zoe@z.example", "dev-request@example.org", "", "unsubscribe\n"))
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "zoe@z.example")) == 3)
    assert member_ls(cli_env) == ["zoe@z.example"]
    reply(h, "zoe@z.example", token_of(only(h, "zoe@z.example")[-1]), "yes please")
    h.sink.wait_for(lambda msgs: len(only(h, "zoe@z.example")) == 4)
    assert member_ls(cli_env) == []
