"""Issues #5 and #6 from outside: one member per delivery mode and `listserv digest send`;
DSNs and VERP'd bounces to the intake, `bounces ls --json`, disabling at the threshold."""

from __future__ import annotations

import re
from email import message_from_bytes, policy

from tests.acceptance.conftest import Site, message

SEPARATOR_70 = "-" * 70
SEPARATOR_30 = "-" * 30


def test_each_delivery_mode(site: Site) -> None:
    lst = "news@digest.example"
    site.run("list", "create", lst, "--owner", "newsboss@own.example")
    site.run("member", "add", lst, "reg@r.example")
    site.run("member", "add", lst, "mime@m.example", "--delivery", "mime-digest")
    site.run("member", "add", lst, "plain@p.example", "--delivery", "plain-digest")
    site.run("member", "add", lst, "none@n.example", "--delivery", "nomail")
    bodies = ["First post.\n", "Second post.\n" + SEPARATOR_30 + "\nnot a separator\n",
              "Third post.\n"]
    for i, body in enumerate(bodies):
        site.send(lst, message("Reg <reg@r.example>", lst, f"post {i}", body))
    site.mail_to("reg@r.example", 3)
    site.quiet()
    for quiet in ("mime@m.example", "plain@p.example", "none@n.example"):
        assert site.count_to(quiet) == 0, quiet

    out = site.cli("digest", "send", lst).stdout
    assert "Issue 1" in out, out
    (mime,) = site.mail_to("mime@m.example")
    (plain,) = site.mail_to("plain@p.example")
    site.quiet()
    assert site.count_to("mime@m.example") == site.count_to("plain@p.example") == 1
    assert site.count_to("none@n.example") == 0 and site.count_to("reg@r.example") == 3
    site.run("digest", "send", lst)                                  # nothing pending now
    site.quiet()
    assert site.count_to("mime@m.example") == site.count_to("plain@p.example") == 1

    # MIME digest (RFC 1153 in MIME form, as Mailman): mixed[ toc, digest[rfc822 x3], footer ]
    m = mime.message
    assert m["Subject"] == "news Digest, Vol 1, Issue 1" and m["List-Id"]
    assert m.get_content_type() == "multipart/mixed"
    toc, digest, *rest = m.iter_parts()
    assert toc.get_content_type() == "text/plain"
    assert all(f"post {i}" in toc.get_content() for i in range(3))
    assert digest.get_content_type() == "multipart/digest"
    posts = list(digest.iter_parts())
    assert [p.get_content_type() for p in posts] == ["message/rfc822"] * 3
    inner = [p.get_payload(0) for p in posts]
    assert [str(x["Subject"]) for x in inner] == ["[news] post 0", "[news] post 1",
                                                  "[news] post 2"]
    assert inner[1].get_content() .startswith("Second post.")
    assert rest and "news@digest.example" in rest[-1].get_content()

    # plain digest, checked against RFC 1153
    p = plain.message
    assert p.get_content_type() == "text/plain" and not p.is_multipart()
    text = p.get_content().replace("\r\n", "\n")
    assert re.match(r"news Digest\s+.+\s+Volume 1 : Issue 1\n", text), text[:200]
    head, _, body = text.partition("\n" + SEPARATOR_70 + "\n")
    assert "Today's Topics" in head and all(f"post {i}" in head for i in range(3))
    messages = body.split("\n" + SEPARATOR_30 + "\n")
    # three posts, then the footer, then the trailer
    assert len(messages) == 5, messages
    for i, chunk in enumerate(messages[:3]):
        headers, _, content = chunk.strip("\n").partition("\n\n")
        fields = dict(line.split(": ", 1) for line in headers.splitlines())
        assert {"From", "Subject", "Date"} <= set(fields), fields
        assert fields["Subject"] == f"[news] post {i}"
    assert "not a separator" in messages[1]           # the body's dashes did not split it
    end = messages[-1].strip("\n").splitlines()
    assert end[0] == "End of news Digest, Vol 1, Issue 1" and set(end[1]) == {"*"}
    assert len(end[1]) == len(end[0])


def dsn(rcpt: str, to: str, status: str = "5.1.1", action: str = "failed") -> bytes:
    return f"""From: MAILER-DAEMON@mx.example.com
To: {to}
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BB"

--BB
Content-Type: text/plain

Your message could not be delivered.

--BB
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Diagnostic-Code: smtp; 550 {status} user unknown

--BB
Content-Type: text/rfc822-headers

From: someone@example.com
Subject: [b] a post

--BB--
""".replace("\n", "\r\n").encode()


def test_bounces_disable_at_the_threshold(site: Site) -> None:
    lst = "b@bounce.example"
    site.run("list", "create", lst, "--owner", "bboss@own.example")
    site.run("list", "set", lst, "bounce_score_threshold", "1")
    site.run("list", "set", lst, "nonmember_action", "accept")
    site.run("member", "add", lst, "good@g.example", "dsn@d.example", "verp@v.example",
             "late@l.example")
    # a DSN to the plain -bounces address, a non-DSN bounce to the VERP address, a delay
    site.send("b-bounces@bounce.example", dsn("dsn@d.example", "b-bounces@bounce.example"),
              mail_from="")
    verp = "b-bounces+verp=v.example@bounce.example"
    bounce = message_from_bytes(message("postmaster@v.example", verp, "failure notice",
                                        "Sorry, I could not deliver it.\n"),
                                policy=policy.SMTP)
    site.send(verp, bounce.as_bytes(), mail_from="")
    site.send("b-bounces@bounce.example",
              dsn("late@l.example", "b-bounces@bounce.example", "4.2.2", "delayed"),
              mail_from="")
    site.mail_to("dsn@d.example")                  # each disabled member is told (re-enable)
    site.mail_to("verp@v.example")
    site.quiet()
    rows = {r["email"]: r for r in site.json("bounces", "ls", lst)}
    assert set(rows) == {"dsn@d.example", "verp@v.example"}, rows
    for r in rows.values():
        assert r["score"] >= 1 and r["last_bounce"]
        assert r["enabled"] is False and r["disabled_reason"] == "bounce"
    people = {m["email"]: m for m in site.json("member", "ls", lst)}
    assert people["late@l.example"]["enabled"] and people["good@g.example"]["enabled"]
    assert not people["dsn@d.example"]["enabled"]

    before = {a: site.count_to(a) for a in ("dsn@d.example", "verp@v.example")}
    site.send(lst, message("good@g.example", lst, "after the bounces"))
    site.mail_to("late@l.example")
    site.mail_to("good@g.example")
    site.quiet()
    assert {a: site.count_to(a) for a in before} == before      # disabled: no post
