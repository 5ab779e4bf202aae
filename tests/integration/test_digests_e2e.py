"""Digests end to end: posts over SMTP, regular copies at once, digests on `listserv digest send`
and by the scheduler, delivered over real SMTP to the sink, checked part by part."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage


import dkim
from click.testing import CliRunner
from sqlalchemy import func, select

from listserv import digests
from listserv.core import lists, members
from listserv.message import signing
from listserv.cli import cli
from listserv.core.app import App
from listserv import workers
from listserv.daemon import Daemon
from listserv.core.models import DeliveryMode, Digest, utcnow
from tests.conftest import Clock
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured, SmtpSink
from tests.waiting import wait_until

LIST = "dev@example.org"
MODES = {"reg@a.example": DeliveryMode.regular, "mime@b.example": DeliveryMode.mime_digest,
         "plain@c.example": DeliveryMode.plain_digest, "none@d.example": DeliveryMode.nomail}


def setup_list(h: Harness, key: str | None = None) -> None:
    make_list(h.app, LIST, members=list(MODES))
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        ml.display_name = "Dev"
        if key:
            ml.domain.dkim_selector, ml.domain.dkim_private_key = "sel", key
        for email, mode in MODES.items():
            m = members.find_membership(s, ml, email)
            assert m is not None
            members.change_delivery_mode(s, m, mode, utcnow())


def to(msgs: list[Captured], rcpt: str) -> list[Captured]:
    return [m for m in msgs if rcpt in m.rcpt_tos]


def text(part: EmailMessage) -> str:
    return str(part.get_content()).replace("\r\n", "\n")


def post_three(h: Harness) -> None:
    for n in (1, 2, 3):   # one at a time: the list numbers posts in the order it accepts them
        h.send(make_message("reg@a.example", LIST, f"Topic {n}", f"Body {n}.\n",
                            message_id=f"<p{n}@a.example>"))
        h.run_until_idle()


def test_each_mode_gets_what_it_asked_for(harness: Harness, cli_env: dict[str, str],
                                          clock: Clock) -> None:
    key = signing.generate_key()
    setup_list(harness, key)
    post_three(harness)
    got = harness.sink.wait_for(lambda m: len(to(m, "reg@a.example")) >= 3)
    assert len(to(got, "reg@a.example")) == 3
    assert sorted({r for m in got for r in m.rcpt_tos}) == ["reg@a.example"]

    out = CliRunner().invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.exit_code == 0, out.output
    assert "Vol 1, Issue 1: 3 post(s) to 2 digest member(s) (1 MIME, 1 plain)" in out.output
    # the CLI ran on the system clock: bring the harness's fake clock up to it
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda m: len(m) >= 5)
    assert len(to(got, "reg@a.example")) == 3
    assert to(got, "none@d.example") == []
    [mime_copy] = to(got, "mime@b.example")
    [plain_copy] = to(got, "plain@c.example")
    record = signing.dns_record(key).encode()
    for c in (mime_copy, plain_copy):
        assert c.mail_from.startswith("dev-bounces")
        assert dkim.verify(c.data, dnsfunc=lambda name, timeout=5: record)
        msg = c.message
        assert msg["Subject"] == "Dev Digest, Vol 1, Issue 1"
        assert msg["Precedence"] == "list"
        assert "<dev.example.org>" in msg["List-Id"]
        for h in ("List-Post", "List-Help", "List-Subscribe", "List-Unsubscribe", "List-Owner"):
            assert msg[h], h

    mime = mime_copy.message
    assert mime.get_content_type() == "multipart/mixed"
    toc, digest, footer = mime.iter_parts()
    assert toc.get_content_type() == "text/plain"
    assert "Today's Topics (3 messages)" in text(toc)
    assert digest.get_content_type() == "multipart/digest"
    inner = [p.get_content() for p in digest.iter_parts()]
    assert [p.get_content_type() for p in digest.iter_parts()] == ["message/rfc822"] * 3
    assert [m["Message-ID"] for m in inner] == ["<p1@a.example>", "<p2@a.example>",
                                               "<p3@a.example>"]
    assert all(m["Subject"].startswith("[dev]") or "Topic" in m["Subject"] for m in inner)
    assert text(inner[0]).startswith("Body 1.")
    assert footer.get_content_type() == "text/plain" and LIST in text(footer)

    plain = plain_copy.message
    assert plain.get_content_type() == "text/plain"
    body = text(plain)
    preamble, _, rest = body.partition("\n" + "-" * 70 + "\n\n")
    assert "Volume 1 : Issue 1" in preamble and "Today's Topics:" in preamble
    chunks = rest.split("\n\n" + "-" * 30 + "\n\n")
    assert len(chunks) == 5       # 3 messages, the footer, the trailer
    for n, chunk in enumerate(chunks[:3], start=1):
        head, _, msg_body = chunk.partition("\n\n")
        names = [line.split(":")[0] for line in head.splitlines()]
        assert names == ["Date", "From", "To", "Subject", "Message-ID"]
        assert f"Message-ID: <p{n}@a.example>" in head
        assert msg_body.strip() == f"Body {n}."
    assert chunks[4].rstrip("\n").splitlines() == ["End of Dev Digest, Vol 1, Issue 1",
                                                   "*" * 33]

    # nothing left: a second send sends nothing, nobody gets a second digest
    out = CliRunner().invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.output.strip() == f"{LIST}: no pending posts"
    harness.run_until_idle()
    assert len(harness.sink.messages) == 5


def test_mode_change_mid_period_loses_and_doubles_nothing(harness: Harness,
                                                          clock: Clock) -> None:
    setup_list(harness)
    harness.send(make_message("reg@a.example", LIST, "Topic 1", message_id="<p1@a.example>"))
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:   # swap: reg -> plain digest, mime -> regular
        ml = lists.get_list(s, LIST)
        for email, mode in (("reg@a.example", DeliveryMode.plain_digest),
                            ("mime@b.example", DeliveryMode.regular)):
            m = members.find_membership(s, ml, email)
            assert m is not None
            members.change_delivery_mode(s, m, mode, utcnow())
    harness.send(make_message("reg@a.example", LIST, "Topic 2", message_id="<p2@a.example>"))
    harness.run_until_idle()
    clock.advance(days=1, minutes=1)
    assert len(digests.tick(harness.app)) == 1       # the scheduler's daily digest
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda m: len(m) >= 5)

    def ids(rcpt: str) -> list[str]:
        out = []
        for c in to(got, rcpt):
            msg = c.message
            if msg.get_content_type() == "multipart/mixed":
                out += [str(p.get_content()["Message-ID"])
                        for p in list(msg.iter_parts())[1].iter_parts()]
            elif "Digest" in str(msg["Subject"]):
                out += [line.split(": ", 1)[1] for line in text(msg).splitlines()
                        if line.startswith("Message-ID: ")]
            else:
                out.append(str(msg["Message-ID"]))
        return sorted(out)

    both = ["<p1@a.example>", "<p2@a.example>"]
    assert ids("reg@a.example") == both      # p1 regular, p2 in the plain digest
    assert ids("mime@b.example") == both     # p1 in one last MIME digest, p2 regular
    assert ids("plain@c.example") == both    # both in the plain digest
    assert ids("none@d.example") == []
    assert len(harness.sink.messages) == 5   # 2 regular copies + 3 digests


def test_size_threshold_wakes_the_scheduler(app: App, sink: SmtpSink) -> None:
    """A post over the size threshold gets its digest sent at once, not at the next 30 s tick."""
    h = Harness(app, sink)
    h.daemon = Daemon(h.app, host="127.0.0.1", port=0, scheduler=True,
                      delivery=h.real_delivery)
    h.start()
    try:
        setup_list(h)
        with h.app.db.unit_of_work() as s:
            lists.get_list(s, LIST).digest_size_threshold_kb = 1
        h.send(make_message("reg@a.example", LIST, "Big", "x" * 1500 + "\n"))
        def digest_made() -> bool:
            h.run_until_idle()
            with h.app.db.unit_of_work() as s:
                return bool(s.scalar(select(func.count(Digest.id))))

        # 10 s is well under the digests pass's interval: only the size wake-up can make it
        # in time (the fake clock does not move either)
        wait_until(digest_made, 10, "a digest after the size threshold was passed", 0.05)
        assert workers.REGISTRY["digests"].every == workers.TICK >= dt.timedelta(seconds=30)
    finally:
        h.stop()


def test_mode_changes_by_email_command_and_cli(harness: Harness, cli_env: dict[str, str],
                                              clock: Clock) -> None:
    """`set delivery` to -request@ and `listserv member set` take effect for digests, with no
    post lost or doubled around the change."""
    setup_list(harness)
    posts = {"<p1@a.example>", "<p2@a.example>"}
    harness.send(make_message("reg@a.example", LIST, "Topic 1", message_id="<p1@a.example>"))
    harness.run_until_idle()
    harness.send(make_message("reg@a.example", "dev-request@example.org", "commands",
                              "set delivery plain-digest\n"))
    harness.run_until_idle()            # the change waits for the member's confirmation
    request = harness.sink.wait_for(lambda ms: any(
        "confirm the delivery change" in str(m.message["Subject"]) for m in ms))
    [req] = [m.message for m in request if "confirm the delivery" in str(m.message["Subject"])]
    harness.send(make_message("reg@a.example", str(req["Reply-To"]), "Re: confirm", "ok\n"))
    out = CliRunner().invoke(cli, ["member", "set", LIST, "mime@b.example",
                                   "--delivery", "regular"], env=cli_env)
    assert out.exit_code == 0, out.output
    harness.run_until_idle()
    harness.send(make_message("reg@a.example", LIST, "Topic 2", message_id="<p2@a.example>"))
    harness.run_until_idle()
    out = CliRunner().invoke(cli, ["digest", "send"], env=cli_env)
    assert "Vol 1, Issue 1: 2 post(s)" in out.output, out.output
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda m: len(to(m, "plain@c.example")) >= 1)

    def ids(rcpt: str) -> list[str]:
        out: list[str] = []
        for c in to(got, rcpt):
            msg = c.message
            if msg.get_content_type() == "multipart/mixed":
                out += [str(p.get_content()["Message-ID"])
                        for p in list(msg.iter_parts())[1].iter_parts()]
            elif "Digest" in str(msg["Subject"]):
                out += [line.split(": ", 1)[1] for line in text(msg).splitlines()
                        if line.startswith("Message-ID: ")]
            else:
                out.append(str(msg["Message-ID"]))
        return sorted(i for i in out if i in posts)

    assert ids("reg@a.example") == sorted(posts)     # p1 regular, p2 in the plain digest
    assert ids("mime@b.example") == sorted(posts)    # p1 in one last MIME digest, p2 regular
    assert ids("plain@c.example") == sorted(posts)
    assert ids("none@d.example") == []
    [reg_digest] = [c for c in to(got, "reg@a.example") if "Digest" in str(c.message["Subject"])]
    assert reg_digest.message.get_content_type() == "text/plain"
