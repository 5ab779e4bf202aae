"""Issue #3 from outside: a served list fans out signed, decorated copies; strangers are held;
unknown addresses are refused at RCPT; 4xx is retried; kill -9 mid fan-out loses nobody."""

from __future__ import annotations

import base64
import collections
import os
import re
import smtplib
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner

from listserv.cli import cli as click_cli

from tests.acceptance.conftest import (
    Site, clean_env, make_site, message, wait_until,
)
from tests.sink import SmtpSink
from tests.waiting import start_daemon

LIST_HEADERS = ("List-Id", "List-Post", "List-Help", "List-Subscribe", "List-Unsubscribe",
                "List-Owner")


def test_post_is_fanned_out_decorated_and_signed(site: Site) -> None:
    site.run("domain", "add", "sign.example")
    out = site.cli("domain", "dkim-keygen", "sign.example", "--selector", "sel1").stdout
    record = re.search(r"^value:\s*(.+)$", out, re.M)
    assert record and "name:  sel1._domainkey.sign.example" in out, out
    txt = record.group(1).strip().encode()
    assert txt.startswith(b"v=DKIM1;") and b"p=" in txt
    site.run("list", "create", "dev@sign.example", "--owner", "boss@own.example")
    members = [f"m{i}@members.example" for i in range(4)] + ["slow@busy.example"]
    site.run("member", "add", "dev@sign.example", *members)
    site.sink.fail_rcpt["slow@busy.example"] = "451 4.3.0 mailbox busy, try later"
    site.sink.fail_times["slow@busy.example"] = 2

    site.send("dev@sign.example", message("M Zero <m0@members.example>", "dev@sign.example",
                                          "Re: [dev] first post"))
    for rcpt in members:                    # the slow one only after two 451s and retries
        site.mail_to(rcpt, timeout=30)
    site.quiet()

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        name = name.decode() if isinstance(name, bytes) else name
        assert name.rstrip(".") == "sel1._domainkey.sign.example", name
        return txt

    copies = [m for m in site.sink.messages if set(m.rcpt_tos) & set(members)]
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(members)   # each once
    for c in copies:
        (rcpt,) = c.rcpt_tos
        local, domain = rcpt.split("@")
        assert c.mail_from == f"dev-bounces+{local}={domain}@sign.example"     # VERP
        msg = c.message
        for name in LIST_HEADERS:
            assert msg[name], f"{name} missing for {rcpt}"
        assert msg["List-Id"].endswith("<dev.sign.example>")
        assert msg["List-Post"] == "<mailto:dev@sign.example>"
        assert msg["Precedence"] == "list"
        assert msg["Subject"] == "[dev] Re: first post"                      # not doubled
        assert dkim.verify(c.data, dnsfunc=dnsfunc), f"DKIM fails for {rcpt}"
        sig = dict(t.strip().split("=", 1) for t in
                   re.sub(r"\s+", "", str(msg["DKIM-Signature"])).split(";") if t)
        assert sig["d"] == "sign.example" and sig["s"] == "sel1"
        assert {"from", "subject", "list-id", "list-post"} <= set(sig["h"].lower().split(":"))


def test_a_post_too_long_of_line_and_twice_subjected_reaches_members_intact(site: Site) -> None:
    """A post with an 8-bit text line of 4,000 octets, a base64 attachment in one line and
    two Subject fields: each member's copy has no line over 998 octets (Postfix cuts longer
    lines after our signature), one Subject (Gmail refuses two), the same text and
    attachment, and a DKIM signature that verifies."""
    site.run("domain", "add", "wide.example")
    out = site.cli("domain", "dkim-keygen", "wide.example", "--selector", "w1").stdout
    record = re.search(r"^value:\s*(.+)$", out, re.M)
    assert record, out
    txt = record.group(1).strip().encode()
    site.run("list", "create", "wide@wide.example")
    members = ["ann@wide-members.example", "bob@wide-members.example"]
    site.run("member", "add", "wide@wide.example", *members)
    text = "Grüße aus der Provinz. " * 174                   # one line, 4,002 octets
    blob = bytes(range(14, 256)) * 40
    raw = (f"From: ann@wide-members.example\r\nTo: wide@wide.example\r\nSubject: first\r\n"
           f"Subject: second\r\nMessage-ID: <wide-1@members.example>\r\nMIME-Version: 1.0\r\n"
           f'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
           f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           f"{text}\r\n--b\r\nContent-Type: application/octet-stream\r\n"
           f"Content-Transfer-Encoding: base64\r\n\r\n").encode() \
        + base64.b64encode(blob) + b"\r\n--b--\r\n"
    site.send("wide@wide.example", raw, mail_from="ann@wide-members.example")
    for rcpt in members:
        site.mail_to(rcpt, timeout=30)
    site.quiet()

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes:
        return txt

    copies = [m for m in site.sink.messages if set(m.rcpt_tos) & set(members)]
    assert sorted(r for m in copies for r in m.rcpt_tos) == sorted(members)
    for c in copies:
        assert max(len(line) for line in c.data.split(b"\r\n")) <= 998
        msg = c.message
        assert msg.get_all("Subject") == ["[wide] first"]
        parts = [p for p in msg.walk() if not p.is_multipart()]
        assert parts[0].get_content().startswith(text)          # the footer follows it
        assert parts[1].get_payload(decode=True) == blob
        assert dkim.verify(c.data, dnsfunc=dnsfunc), f"DKIM fails for {c.rcpt_tos}"


def test_stranger_is_held_and_unknown_addresses_are_refused(site: Site) -> None:
    site.run("list", "create", "held@hold.example", "--moderator", "mod@hold.example")
    site.run("member", "add", "held@hold.example", "member@hold.example")
    site.send("held@hold.example", message("stranger@else.example", "held@hold.example",
                                           "buy now"))
    site.mail_to("mod@hold.example")                    # the moderator is told
    held = [h for h in site.json("held", "ls", "held@hold.example")]
    assert [(h["sender"], h["subject"]) for h in held] == [("stranger@else.example", "buy now")]
    assert held[0]["reasons"] and held[0]["list"] == "held@hold.example"
    assert {"id", "list", "sender", "subject", "reasons", "held_at"} <= set(held[0])
    site.quiet()
    assert site.count_to("member@hold.example") == 0

    for bad in ("nobody@hold.example", "held-nosuch@hold.example", "held@elsewhere.example",
                "held-bounces+nonsense@hold.example"):
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            site.send(bad, message("x@else.example", bad, "hi"))
        assert e.value.recipients[bad][0] == 550, (bad, e.value.recipients)
    # one bad recipient among good ones: refused alone, the rest accepted
    refused = site.send(["nobody@hold.example", "held-owner@hold.example"],
                        message("x@else.example", "held-owner@hold.example", "to owner"))
    assert list(refused) == ["nobody@hold.example"] and refused["nobody@hold.example"][0] == 550


def test_unlabelled_8bit_post_reaches_members_intact(site: Site) -> None:
    """An old mailer's Latin-1 post without MIME headers (used to be parked as failed)."""
    site.run("list", "create", "old@eight.example")
    site.run("member", "add", "old@eight.example", "one@eight.example", "two@eight.example")
    raw = ("From: one@eight.example\r\nTo: old@eight.example\r\nSubject: caf\xe9\r\n"
           "Message-ID: <latin1@old.example>\r\n\r\nna\xefve body\r\n").encode("latin-1")
    site.send("old@eight.example", raw)
    for rcpt in ("one@eight.example", "two@eight.example"):
        (copy,) = site.mail_to(rcpt)
        assert b"na\xefve body" in copy.data
        assert str(copy.message["Subject"]).startswith("[old] caf")
    assert site.json("queue", "status")["incoming"]["failed"] == 0


def test_kill_9_in_the_middle_of_a_fan_out(tmp_path: Path, sink: SmtpSink) -> None:
    n, batch, conns = 2500, 100, 4
    for s in make_site(tmp_path, sink, f"max_recipients_per_transaction = {batch}\n"
                                       f"connections = {conns}\n", lease_seconds=8):
        s.run("list", "create", "big@fan.example")
        people = tmp_path / "people.txt"
        people.write_text("".join(f"u{i}@d{i % 40}.fan.example\n" for i in range(n)))
        s.run("member", "add", "big@fan.example", "--file", str(people))
        want = {f"u{i}@d{i % 40}.fan.example" for i in range(n)}

        def got() -> collections.Counter[str]:
            return collections.Counter(r for m in list(sink.messages) for r in m.rcpt_tos
                                       if r in want)

        s.serve()
        s.send("big@fan.example", message("u1@d1.fan.example", "big@fan.example", "big one"))
        wait_until(lambda: sum(got().values()) >= n // 8, 30, "the fan-out to start")
        s.kill9()
        at_kill = sum(got().values())
        assert at_kill < n, "the kill came too late to test anything"
        s.serve()
        wait_until(lambda: set(got()) == want, 60, "every member to get the post")
        s.quiet()
        assert s.stop() == 0
        dups = sum(c - 1 for c in got().values())
        assert dups <= batch * conns, f"{dups} duplicates"


def test_defaults_deliver_to_the_maildir_outbox(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`listserv init && listserv serve` with no configuration at all (only a free port)."""
    env = clean_env(LISTSERV_WEB_LISTEN="127.0.0.1:0")
    p = subprocess.run([sys.executable, "-m", "listserv", "init"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    monkeypatch.chdir(tmp_path)
    runner = CliRunner(env={k: None for k in os.environ if k.startswith("LISTSERV_")})
    for args in (["list", "create", "dev@example.org"],
                 ["member", "add", "dev@example.org", "ann@example.com", "bob@example.net"],
                 ["list", "set", "dev@example.org", "nonmember_action", "accept"]):
        r = runner.invoke(click_cli, args)
        assert r.exit_code == 0, r.output
    log = tmp_path / "serve.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "listserv", "-v", "serve"],
                                    cwd=tmp_path, env={**env, "LISTSERV_INTAKE_PORT": str(port)},
                                    stdout=out, stderr=out)
    proc, port = start_daemon(start, log)
    new = tmp_path / "listserv-data" / "outbox" / "new"
    try:
        with smtplib.SMTP("127.0.0.1", port) as c:
            c.sendmail("ann@example.com", ["dev@example.org"],
                       message("ann@example.com", "dev@example.org", "defaults"))
        wait_until(lambda: new.is_dir() and len(list(new.iterdir())) >= 2, 20, "the outbox")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
    to = {}
    for f in new.iterdir():
        m = message_from_bytes(f.read_bytes(), policy=policy.default)
        to[str(m["X-Envelope-To"]).strip("<>")] = m
    assert set(to) == {"ann@example.com", "bob@example.net"}
    assert to["bob@example.net"]["Return-Path"] == "<dev-bounces+bob=example.net@example.org>"
    assert to["bob@example.net"]["Subject"] == "[dev] defaults"
