"""Issue #4 from outside: moderation by reply and join/leave by mail, read from a real sink;
tokens attacked (guessed, replayed, expired, used on another list, used by someone else)."""

from __future__ import annotations

import re
import time
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

from tests.acceptance.conftest import Site, make_site, message
from tests.sink import Captured, SmtpSink
from tests.waiting import wait_until


def reply(frm: str, to: str, body: str, subject: str = "Re: your notice",
          **headers: str) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, subject
    m["Message-ID"] = make_msgid(domain="client.example")
    for name, value in headers.items():
        m[name.replace("_", "-")] = value
    m.set_content(body)
    return m.as_bytes()


def reply_to(notice: Captured) -> tuple[str, str]:
    """(the notice's Reply-To address, its token), checking the token is in the Subject."""
    address = str(notice.message["Reply-To"])
    m = re.fullmatch(r"[\w.-]+-confirm\+(\w+)@[\w.-]+", address)
    assert m, address
    assert m.group(1) in str(notice.message["Subject"])
    return address, m.group(1)


def new_mail(site: Site, start: int, rcpt: str) -> list[Captured]:
    return [m for m in site.sink.messages[start:] if rcpt in m.rcpt_tos]


def test_moderation_by_reply(site: Site) -> None:
    site.run("list", "create", "mod@lists.example", "--owner", "modboss@own.example",
             "--moderator", "mary@mods.example")
    site.run("list", "create", "other@lists.example", "--moderator", "mary@mods.example")
    site.run("member", "add", "mod@lists.example", "ann@members.example", "ben@members.example")
    site.send("mod@lists.example", message("Stranger <stranger@else.example>",
                                           "mod@lists.example", "Please post me",
                                           "First line of the post.\nSecond line.\n"))
    (notice,) = site.mail_to("mary@mods.example")
    text = notice.message.get_body(("plain",)).get_content()
    for needle in ("stranger@else.example", "Please post me", "First line of the post.",
                   "mailto:", "approve", "reject", "discard"):
        assert needle in text, needle
    address, token = reply_to(notice)
    (held,) = site.json("held", "ls", "mod@lists.example")

    # attacks: none of these acts on the post
    start = len(site.sink.messages)
    site.send(address, reply("ann@members.example", address, "approve\n"))        # not a mod
    site.send(f"other-confirm+{token}@lists.example",                             # other list
              reply("mary@mods.example", f"other-confirm+{token}@lists.example", "approve\n"))
    guess = "mod-confirm+" + "a" * len(token) + "@lists.example"                  # guessed
    site.send(guess, reply("mary@mods.example", guess, "approve\n"))
    site.send(address, reply("mary@mods.example", address, "approve\n",          # auto-reply
                             Auto_Submitted="auto-replied"))
    site.send(address, reply("mary@mods.example", address, "approve\n"), mail_from="")
    site.send(address, reply("mary@mods.example", address, "thanks!\n"))          # no command
    site.quiet()
    assert [h["id"] for h in site.json("held", "ls", "mod@lists.example")] == [held["id"]]
    assert not [m for m in site.sink.messages[start:] if "[mod]" in str(m.message["Subject"])]
    assert [m.message["Subject"] for m in new_mail(site, start, "ann@members.example")] == [
        "Re: your notice"]                                     # help text, not the post
    # auto-replies are never answered: mary got answers to the other list, the guess and the
    # command-less reply only
    assert len(new_mail(site, start, "mary@mods.example")) == 3

    # the moderator approves: delivered once, and she is told
    start = len(site.sink.messages)
    site.send(address, reply("Mary <MARY@mods.example>", address, "> quoted\n\nApprove\n"))
    site.mail_to("ben@members.example")
    site.quiet()
    posts = [m for m in site.sink.messages[start:] if m.message["Subject"] == "[mod] Please post me"]
    assert sorted(r for m in posts for r in m.rcpt_tos) == ["ann@members.example",
                                                            "ben@members.example"]
    (done,) = new_mail(site, start, "mary@mods.example")
    assert "approved" in done.message.get_body(("plain",)).get_content()
    assert site.json("held", "ls", "mod@lists.example") == []

    # the same reply again: nothing delivered, told it was handled (and by whom)
    start = len(site.sink.messages)
    site.send(address, reply("mary@mods.example", address, "discard\n"))
    site.quiet()
    (again,) = new_mail(site, start, "mary@mods.example")
    assert "already" in again.message.get_body(("plain",)).get_content().lower()
    assert "mary@mods.example" in again.message.get_body(("plain",)).get_content()
    assert not new_mail(site, start, "ann@members.example")

    # a reject: the poster is told, with the reason; members get nothing
    site.send("mod@lists.example", message("spammer@else.example", "mod@lists.example", "Buy"))
    notices = site.mail_to("modboss@own.example", 2)     # stranger's post, then this one
    (notice,) = [n for n in notices if "spammer@else.example" in n.message.get_body(("plain",)).get_content()]
    address, _ = reply_to(notice)
    start = len(site.sink.messages)
    site.send(address, reply("modboss@own.example", address, "reject off topic here\n"))
    told = site.mail_to("spammer@else.example", 2)          # held notice, then the rejection
    assert "off topic here" in told[-1].message.get_body(("plain",)).get_content()
    site.quiet()
    assert not new_mail(site, start, "ann@members.example")
    assert site.json("held", "ls", "mod@lists.example") == []


def members_of(site: Site, lst: str) -> list[tuple[str, str]]:
    return [(m["email"], m["role"]) for m in site.json("member", "ls", lst)]


def test_join_and_leave_by_mail(site: Site) -> None:
    site.run("list", "create", "club@lists.example", "--owner", "clubboss@own.example")
    site.send("club-join@lists.example", reply("Joe <joe@people.example>",
                                               "club-join@lists.example", "", subject="join"))
    (request,) = site.mail_to("joe@people.example")
    address, token = reply_to(request)
    assert address == f"club-confirm+{token}@lists.example"
    assert ("joe@people.example", "member") not in members_of(site, "club@lists.example")

    site.send(address, reply("eve@people.example", address, "yes\n"))     # someone else
    site.quiet()
    assert ("eve@people.example", "member") not in members_of(site, "club@lists.example")
    assert ("joe@people.example", "member") not in members_of(site, "club@lists.example")

    site.send(address, reply("joe@people.example", address, "> Someone asked...\n"))  # no word
    site.mail_to("joe@people.example", 2)                                  # the welcome
    (joe,) = [m for m in site.json("member", "ls", "club@lists.example")
              if m["email"] == "joe@people.example"]
    assert joe["role"] == "member" and joe["name"] == "Joe" and joe["enabled"]

    site.send(address, reply("joe@people.example", address, "yes\n"))     # replayed
    site.quiet()
    assert members_of(site, "club@lists.example").count(("joe@people.example", "member")) == 1

    start = len(site.sink.messages)
    site.send("club-leave@lists.example", reply("joe@people.example", "club-leave@lists.example",
                                                "", subject="leave"))
    site.sink.wait_for(lambda ms: len(new_mail(site, start, "joe@people.example")) >= 1, 20)
    address, _ = reply_to(new_mail(site, start, "joe@people.example")[0])
    site.send(address, reply("joe@people.example", address, "ok\n"))
    site.sink.wait_for(lambda ms: ("joe@people.example", "member")
                       not in members_of(site, "club@lists.example"), 20)


def test_expired_token_does_nothing(tmp_path: Path, sink: SmtpSink) -> None:
    lifetime = 3.0      # seconds
    for s in make_site(tmp_path, sink, f"[moderation]\ntoken_lifetime_days = "
                                       f"{lifetime / 86400:.8f}\n"):
        s.run("list", "create", "late@lists.example", "--moderator", "slow@mods.example")
        s.run("member", "add", "late@lists.example", "kim@members.example")
        s.serve()
        s.send("late@lists.example", message("x@else.example", "late@lists.example", "Late"))
        (notice,) = s.mail_to("slow@mods.example")
        sent = time.monotonic()
        address, _ = reply_to(notice)
        wait_until(lambda: time.monotonic() > sent + lifetime + 0.5, lifetime + 5,
                   "the token's lifetime to pass")
        s.send(address, reply("slow@mods.example", address, "approve\n"))
        answer = s.mail_to("slow@mods.example", 2)[-1]
        assert "expired" in answer.message.get_body(("plain",)).get_content()
        s.quiet()
        assert s.count_to("kim@members.example") == 0     # not approved
        # (the scheduler may meanwhile discard the expired hold: never deliver it)
        assert all(h["subject"] == "Late" for h in s.json("held", "ls", "late@lists.example"))
