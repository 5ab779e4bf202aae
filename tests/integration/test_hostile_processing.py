"""Hostile mail that used to make processing raise: every 250'd message now ends delivered,
held, or refused with a notice, through the real SMTP intake (and the CLI a moderator uses)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import smtplib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import literal, select

from listserv.core import spool
from listserv.core.models import (
    ArchivePolicy,
    DeliveryMode,
    HeldMessage,
    InboundMessage,
    InboundState,
    ReplyTo,
)
from listserv.intake import smtp as intake
from listserv.message import untrusted
from tests.clirun import Cli
from tests.conftest import Clock
from tests.integration.harness import Harness, make_list
from tests.waiting import wait_until

LIST = "dev@example.org"


def raw_post(sender: str, subject: str, body: bytes, *, headers: bytes = b"",
             message_id: str = "<p@x.example>", date: bytes = b"Mon, 02 Nov 2026 09:00:00 +0000",
             ctype: bytes = b"Content-Type: text/plain; charset=utf-8\r\n") -> bytes:
    return (f"From: {sender}\r\nTo: {LIST}\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\n".encode() + b"Date: " + date + b"\r\n"
            + headers + b"MIME-Version: 1.0\r\n" + ctype + b"\r\n" + body)


def nested(depth: int, leaf: bytes = b"deep text\r\n") -> tuple[bytes, bytes]:
    """(Content-Type header line, body) of a multipart tree ``depth`` levels deep."""
    ctype, body = b"Content-Type: text/plain\r\n", leaf
    for i in range(depth - 1):
        b = b"b%d" % i
        body = b"--" + b + b"\r\n" + ctype + b"\r\n" + body + b"\r\n--" + b + b"--\r\n"
        ctype = b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n'
    return ctype, body


def states(h: Harness) -> list[tuple[InboundState, str]]:
    with h.app.db.unit_of_work() as s:
        return [(r.state, r.outcome or "") for r in s.scalars(
            select(InboundMessage).order_by(InboundMessage.id))]


def test_held_post_with_undecodable_text_notifies_moderators(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["a@x.example"], moderators=["mod@x.example"])
    # UTF-7 decodes '+2AA-' to a lone surrogate; the Subject has raw bytes and CR/LF words.
    body = b"+2AA- hello from a stranger\r\n"
    raw = raw_post("stranger@y.example", "=?utf-8?q?hi=0D=0ABcc:_victim@z.example?= \xff", body,
                   ctype=b"Content-Type: text/plain; charset=utf-7\r\n")
    harness.send(raw, mail_from="stranger@y.example", rcpts=[LIST])
    harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.held]
    msgs = harness.sink.wait_for(lambda ms: any("mod@x.example" in m.rcpt_tos for m in ms))
    notice = next(m for m in msgs if "mod@x.example" in m.rcpt_tos).message
    text = notice.get_body(preferencelist=("plain",)).get_content()
    assert "\ufffd hello from a stranger" in text
    assert "Bcc" not in notice and "Bcc:" not in text.split("Subject:", 1)[0]
    subject_lines = [ln for ln in text.splitlines() if ln.strip().startswith("Subject:")]
    assert subject_lines and "victim@z.example" in subject_lines[0]   # same line, echoed flat


def test_mime_deeper_than_50_is_refused_at_data(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["a@x.example"])
    ctype, body = nested(untrusted.MAX_MIME_DEPTH + 1)
    with pytest.raises(smtplib.SMTPDataError) as err:
        harness.send(raw_post("a@x.example", "deep", body, ctype=ctype),
                     mail_from="a@x.example", rcpts=[LIST])
    assert err.value.smtp_code == 554 and b"5.6.0" in err.value.smtp_error
    ctype, body = nested(300)
    with pytest.raises(smtplib.SMTPDataError) as err:
        harness.send(raw_post("a@x.example", "deeper", body, ctype=ctype, message_id="<d@x>"),
                     mail_from="a@x.example", rcpts=[LIST])
    assert err.value.smtp_code == 554
    ctype, body = nested(untrusted.MAX_MIME_DEPTH)            # the limit itself is fine
    harness.send(raw_post("a@x.example", "ok", body, ctype=ctype, message_id="<ok@x>"),
                 mail_from="a@x.example", rcpts=[LIST])
    harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.accepted]
    harness.sink.wait_for(lambda ms: any("a@x.example" in m.rcpt_tos for m in ms))


def test_more_than_10000_mime_parts_are_refused_at_data(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["a@x.example"])

    def parts(n: int) -> bytes:       # a multipart/mixed of n parts: n + 1 parts in all
        return b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n"
                        for _ in range(n)) + b"--b--\r\n"
    ctype = b"Content-Type: multipart/mixed; boundary=b\r\n"
    with pytest.raises(smtplib.SMTPDataError) as err:
        harness.send(raw_post("a@x.example", "many", parts(untrusted.MAX_MIME_PARTS),
                              ctype=ctype), mail_from="a@x.example", rcpts=[LIST])
    assert err.value.smtp_code == 554 and b"5.6.0" in err.value.smtp_error
    assert b"MIME parts" in err.value.smtp_error
    harness.send(raw_post("a@x.example", "at the limit", parts(untrusted.MAX_MIME_PARTS - 1),
                          ctype=ctype, message_id="<ok@x>"),
                 mail_from="a@x.example", rcpts=[LIST])
    harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.accepted]
    harness.sink.wait_for(lambda ms: any("a@x.example" in m.rcpt_tos for m in ms))


def refs(size: int) -> bytes:
    """A References: field, folded, of exactly ``size`` octets as untrusted.shape() counts
    them (a line end as one octet, as Postfix does)."""
    field = b"References: <r0@x.example>"
    n = 1
    while len(field) < size - 60:
        field += b"\r\n <r%d@x.example>" % n
        n += 1
    size += field.count(b"\r\n") + 2           # each CRLF is two octets here, one there
    return field + b"\r\n <" + b"p" * (size - len(field) - 17) + b"@x.example>\r\n"


def test_header_fields_and_sections_too_large_to_parse_are_refused_at_data(
        harness: Harness) -> None:
    """The email package's header parsing and folding grow faster than the field: one huge
    field kept a worker (or, at intake, the SMTP answer) busy for minutes. Such mail gets a
    552 at DATA; a field up to the limit goes through to the members."""
    make_list(harness.app, LIST, members=["a@x.example"])
    limit = untrusted.MAX_HEADER_FIELD
    assert untrusted.shape(refs(limit)).field == limit
    too_large = [
        (b"To: " + b", ".join(b"u%d@y.example" % i for i in range(12000)) + b"\r\n", "field"),
        (b"X-Junk: " + b"word " * 30000 + b"\r\n", "field"),       # one line, 150 KB
        (refs(limit + 1), "field"),
        (b"".join(b"X-Relay-%d: via relay %d.y.example\r\n" % (i, i) for i in range(9000)),
         "message header"),                                         # 9,000 small fields
    ]
    for n, (fields, what) in enumerate(too_large):
        with pytest.raises(smtplib.SMTPDataError) as err:
            harness.send(raw_post("a@x.example", "big", b"text\r\n", headers=fields,
                                  message_id=f"<big{n}@x>"),
                         mail_from="a@x.example", rcpts=[LIST])
        assert err.value.smtp_code == 552 and b"5.3.4" in err.value.smtp_error
        assert what.encode() in err.value.smtp_error
    # a part's own header field counts too (a file name of 150 KB)
    body = (b"--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
            b"filename=\"" + b"f" * 150000 + b"\"\r\n\r\nAAAA\r\n--b--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as err:
        harness.send(raw_post("a@x.example", "part", body, message_id="<part@x>",
                              ctype=b"Content-Type: multipart/mixed; boundary=b\r\n"),
                     mail_from="a@x.example", rcpts=[LIST])
    assert err.value.smtp_code == 552
    assert states(harness) == []                   # nothing was taken in
    harness.send(raw_post("a@x.example", "long thread", b"text\r\n", headers=refs(limit),
                          message_id="<ok@x>"), mail_from="a@x.example", rcpts=[LIST])
    harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.accepted]
    got = harness.sink.wait_for(lambda ms: any("a@x.example" in m.rcpt_tos for m in ms))
    copy = next(m for m in got if "a@x.example" in m.rcpt_tos).message
    assert str(copy["References"]).split()[-1].endswith("@x.example>")


def test_hostile_dates_do_not_break_digests_or_archive(harness: Harness, clock: Clock,
                                                       cli_env: dict[str, str]) -> None:
    make_list(harness.app, LIST, members=["a@x.example", "d@x.example", "p@x.example"],
              archive=ArchivePolicy.public)
    cli = Cli(cli_env)
    cli("member", "set", LIST, "d@x.example", "--delivery", "mime-digest")
    cli("member", "set", LIST, "p@x.example", "--delivery", "plain-digest")
    dates = [b"Mon, 02 Nov 2026 09:00:00 +99999999999999999999",
             b"Fri, 31 Dec 9999 23:59:59 -1200", b"Mon, 02 Nov 2026 09:00:00 +0000"]
    for n, date in enumerate(dates):
        harness.send(raw_post("a@x.example", f"Topic {n}", b"text %d\r\n" % n, date=date,
                              message_id=f"<d{n}@x.example>"),
                     mail_from="a@x.example", rcpts=[LIST])
        harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.accepted] * 3
    assert "3 post(s) to 2 digest member(s)" in cli("digest", "send").stdout
    # the CLI ran on the system clock: bring the harness's fake clock up to it
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    harness.run_until_idle()
    harness.sink.wait_for(lambda ms: {"d@x.example", "p@x.example"} <= {
        r for m in ms for r in m.rcpt_tos})
    out = Path(cli_env["LISTSERV_DATA_DIR"]) / "html"
    cli("archive", "build", LIST, "--out", str(out))
    pages = "".join(p.read_text() for p in out.rglob("*.html"))
    for n in range(3):
        assert f"Topic {n}" in pages


def record_directly(h: Harness, raw: bytes, sender: str, *, lose_spool: bool = False) -> None:
    """Store mail as the intake does after its checks (as mail spooled before a limit existed
    would be): the worker must cope with it. ``lose_spool``: its bytes are not stored."""
    assert h.daemon.handler is not None
    routes = [h.daemon.handler.router.resolve(LIST)]
    info = intake.inspect_message(raw, "example.org")
    app = h.app
    if lose_spool:
        app = dataclasses.replace(app, spool=Unwritten(app.db))
    intake.record(app, intake.Spooled(sender, info, spool.sha_of(info.raw)), routes)
    h.daemon.wake()


NOTHING = select(literal(1))


class Unwritten(spool.Spool):
    """A spool that loses what it is given (a storage problem)."""

    def put(self, data: bytes, session: Any = None) -> str:
        return spool.sha_of(data)

    def part(self, data: bytes, sha: str) -> tuple[Any, dict[str, Any]]:
        return NOTHING, {}          # a part of the statement that writes nothing


def test_failed_processing_is_held_for_owners_listed_and_retried(
        harness: Harness, cli_env: dict[str, str], clock: Any) -> None:
    make_list(harness.app, LIST, members=["a@x.example"], owners=["owner@x.example"])
    cli = Cli(cli_env)
    raw = raw_post("a@x.example", "lost?", b"hello\r\n")
    record_directly(harness, raw, "a@x.example", lose_spool=True)   # a disk problem
    harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.failed]
    told = harness.sink.wait_for(lambda ms: any("owner@x.example" in m.rcpt_tos for m in ms))
    notice = next(m for m in told if "owner@x.example" in m.rcpt_tos).message
    assert "could not be processed" in str(notice["Subject"])
    assert "listserv queue retry" in notice.get_body(preferencelist=("plain",)).get_content()
    items = cli.json("queue", "failed")
    assert len(items) == 1 and items[0]["kind"] == "incoming"
    assert items[0]["subject"] == "lost?" and "SpoolMissing" in items[0]["error"]
    assert "lost?" in cli("queue", "failed").stdout
    harness.app.spool.put(raw)             # the operator fixed the disk
    assert "queued again" in cli("queue", "retry", str(items[0]["id"])).stdout
    # the CLI queued the job on the system clock: bring the harness's fake clock up to it
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    wait_until(lambda: [s for s, _ in states(harness)] == [InboundState.accepted],
               what="the retried message is processed by the daemon")
    harness.sink.wait_for(lambda ms: any("a@x.example" in m.rcpt_tos for m in ms))
    assert cli.json("queue", "failed") == []
    assert "no failed" in cli.error("queue", "retry", str(items[0]["id"]))
    assert "no failed" in cli.error("queue", "retry", "99999999999")


def test_post_that_cannot_be_processed_never_lost(harness: Harness,
                                                  cli_env: dict[str, str]) -> None:
    """Spooled before the depth limit: a tree 300 levels deep makes parsing recurse."""
    make_list(harness.app, LIST, members=["a@x.example"], owners=["owner@x.example"])
    ctype, body = nested(300)
    record_directly(harness, raw_post("a@x.example", "abyss", body, ctype=ctype), "a@x.example")
    harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.failed]
    harness.sink.wait_for(lambda ms: any("owner@x.example" in m.rcpt_tos for m in ms))
    assert "RecursionError" in Cli(cli_env).json("queue", "failed")[0]["error"]


def test_held_approve_that_fails_says_so_in_one_line(harness: Harness,
                                                    cli_env: dict[str, str]) -> None:
    make_list(harness.app, LIST, members=["a@x.example"], moderators=["mod@x.example"])
    ctype, body = nested(170)
    record_directly(harness, raw_post("stranger@y.example", "held deep", body, ctype=ctype),
                    "stranger@y.example")
    harness.run_until_idle()
    assert states(harness)[0][0] is InboundState.held   # parsed for the rules, held as a stranger's
    with harness.app.db.unit_of_work() as s:
        held_id = s.scalars(select(HeldMessage.id)).one()
    line = Cli(cli_env).error("held", "approve", str(held_id))
    assert f"cannot approve held message {held_id}" in line and "stays held" in line
    assert [s for s, _ in states(harness)] == [InboundState.held]


@pytest.mark.parametrize("reply_to", [ReplyTo.poster, ReplyTo.list])
def test_header_the_email_package_cannot_parse_is_read_as_text(harness: Harness,
                                                               reply_to: ReplyTo) -> None:
    """Raw bytes in an address header make the email package's address parser raise (an
    AttributeError deep inside it): the post is still delivered."""
    make_list(harness.app, LIST, members=["a@x.example", "b@x.example"], reply_to=reply_to)
    junk = (b"\xc7\xc8\xd6\x11\x19.:\x14\xaf6g\xae\xcb\xfe\xf9\x9e\x1d\x0c\xb2\xce\x901\xdc"
            b"\x19\x9aN_)\xc0\xc8\x15E\xcdq\x99\xa8\xd9\xd9\xc6x\xb4")
    harness.send(raw_post("a@x.example", "junk reply-to", b"hello\r\n",
                          headers=b"Reply-To: " + junk + b"\r\n"),
                 mail_from="a@x.example", rcpts=[LIST])
    harness.run_until_idle()
    assert [s for s, _ in states(harness)] == [InboundState.accepted]
    got = harness.sink.wait_for(lambda ms: any("b@x.example" in m.rcpt_tos for m in ms))
    copy = next(m for m in got if "b@x.example" in m.rcpt_tos).message
    assert "junk reply-to" in str(copy["Subject"])
    if reply_to is ReplyTo.list:
        assert str(copy["Reply-To"]).endswith("<dev@example.org>")
