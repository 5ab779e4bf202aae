"""Mail people can read (issue: readable mail), through the real SMTP intake to the sink:
HTML-only posts read as structured text in the moderators' notice and the plain digest."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from listserv import lists, members
from listserv.cli import cli
from listserv.models import DeliveryMode
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured

LIST = "dev@example.org"
HTML = Path(__file__).parent.parent / "data" / "html"


def only(h: Harness, rcpt: str) -> list[Captured]:
    return [m for m in h.sink.messages if rcpt in m.rcpt_tos]


def html_post(sender: str, name: str, subject: str = "Meeting") -> EmailMessage:
    msg = make_message(sender, LIST, subject, "x\n")
    msg.set_content((HTML / f"{name}.html").read_text(encoding="utf-8"), subtype="html")
    return msg


def text(c: Captured) -> str:
    return str(c.message.get_body(preferencelist=("plain",)).get_content()).replace("\r\n", "\n")


def test_moderators_preview_of_html_only_post_keeps_structure(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    h.send(html_post("stranger@s.example", "outlook"))
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "mod@m.example")) >= 1)
    body = text(only(h, "mod@m.example")[0])
    assert "&nbsp;" not in body and "MsoNormal" not in body and "font-family" not in body
    assert "Thursday at 19:00 in Room 4" in body
    assert " 1. Minutes of the last meeting\n" in body


def test_plain_digest_of_html_only_post_keeps_structure(harness: Harness,
                                                        cli_env: dict[str, str],
                                                        clock: Any) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example", "plain@c.example"])
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        m = members.find_membership(s, ml, "plain@c.example")
        assert m is not None
        m.delivery_mode = DeliveryMode.plain_digest
    h.send(html_post("ann@a.example", "gmail", "Garden"))
    h.run_until_idle()
    out = CliRunner().invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.exit_code == 0, out.output
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "plain@c.example")) >= 1)
    body = text(only(h, "plain@c.example")[0])
    assert "  * Seeds arrived today\n  * Watering rota is in the shared sheet" in body
    assert "We plant on Saturday.\nGloves are provided.\n" in body
    assert "&nbsp;" not in body
