"""A seeded stream of hostile messages through the real intake of a running `listserv serve`.

Random MIME trees (up to 300 levels), random bytes in headers, random and bogus charsets and
transfer encodings, hostile dates, empty and large parts, spoofy From headers. The promise
checked for every message the intake answered 250: it ends delivered, held for a person
(a moderator, or the owners when processing failed), or refused with a notice; and the
daemon is still running at the end. Deterministic (one seed) and about a minute at most.
"""

from __future__ import annotations

import collections
import os
import random
import time
import smtplib
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import select

from listserv.core.db import Database
from listserv.core.models import HeldMessage, InboundMessage, InboundState
from tests.acceptance.conftest import Site, make_site
from tests.sink import SmtpSink
from tests.waiting import wait_until

SEED = int(os.environ.get("FUZZ_SEED", "9"))
COUNT = int(os.environ.get("FUZZ_COUNT", "1000"))
LIST = "fuzz@example.org"
MEMBERS = ["m1@a.example", "m2@b.example", "m3@c.example"]
CHARSETS = ["utf-8", "us-ascii", "iso-8859-1", "utf-7", "utf-16", "utf-16-le", "koi8-r",
            "shift_jis", "gb2312", "unknown-8bit", "x-bogus", "", "utf-8\x00", "\xff"]
ENCODINGS = ["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "bogus",
             ""]
DATES = ["Mon, 02 Nov 2026 09:00:00 +0000", "Mon, 02 Nov 2026 09:00:00 +99999999999999999999",
         "Fri, 31 Dec 9999 23:59:59 -1200", "Mon, 1 Jan 0001 00:00:00 +1200", "yesterday",
         "", "Thu, 32 Feb 2026 25:61:61 +2400"]


class Gen:
    def __init__(self, seed: int) -> None:
        self.r = random.Random(seed)
        self.n = 0

    def junk(self, size: int, *, line: bool = False) -> bytes:
        data = self.r.randbytes(size)
        if line:       # no bare line breaks inside one header line
            data = data.replace(b"\r", b" ").replace(b"\n", b" ")
        return data

    def word(self) -> bytes:
        charset = self.r.choice(CHARSETS).encode("latin-1", "replace")
        return b"=?" + charset + b"?" + self.r.choice([b"q", b"b", b"x"]) + b"?" \
            + self.junk(self.r.randint(0, 12), line=True).replace(b"?", b"=") + b"?="

    def text(self, size: int) -> bytes:
        kind = self.r.random()
        if kind < 0.5:
            data = (b"Hello list, some text. " * (size // 23 + 1))[:size]
        elif kind < 0.8:
            data = self.junk(size)
        else:
            data = b"+2AA- \xff\xfe =C3=28 \x00 " * (size // 16 + 1)
        if self.r.random() < 0.005:
            return data                  # one long line: the intake refuses it (500)
        return b"\r\n".join(data[i:i + 76] for i in range(0, len(data), 76))

    def leaf(self, small: bool = False) -> tuple[bytes, bytes]:
        r = self.r
        ctype = r.choice([b"text/plain", b"text/html", b"application/octet-stream",
                          b"image/png", b"text/plain", b"message/delivery-status"])
        head = b"Content-Type: " + ctype
        if r.random() < 0.7:
            head += b"; charset=" + r.choice(CHARSETS).encode("latin-1", "replace")
        head += b"\r\n"
        if r.random() < 0.6:
            head += b"Content-Transfer-Encoding: " + r.choice(ENCODINGS).encode() + b"\r\n"
        if small:
            size = r.choice([0, 10, 80])
        elif r.random() < 0.99:
            size = r.choice([0, 0, 10, 80, 400, 2000, 20000])
        else:
            size = 300_000

        return head, self.text(size) + b"\r\n"

    def tree(self, depth: int) -> tuple[bytes, bytes]:
        """(Content-Type header lines, body) of a tree ``depth`` levels deep."""
        if depth <= 1:
            return self.leaf()
        r = self.r
        if r.random() < 0.15:
            head, body = self.tree(depth - 1)
            return b"Content-Type: message/rfc822\r\n", (
                b"From: inner@x.example\r\nSubject: " + self.word() + b"\r\n" + head
                + b"\r\n" + body)
        self.n += 1
        boundary = b"b%d-%d" % (depth, self.n) if r.random() < 0.95 else b"same"
        kids = [self.tree(depth - 1)]
        kids += [self.leaf(small=depth > 8) for _ in range(r.randint(0, 2 if depth < 8 else 1))]
        r.shuffle(kids)
        body = b"preamble " + self.junk(r.randint(0, 20), line=True) + b"\r\n"
        for head, part in kids:
            body += b"--" + boundary + b"\r\n" + head + b"\r\n" + part
        if r.random() < 0.9:
            body += b"--" + boundary + b"--\r\n"
        subtype = r.choice([b"mixed", b"alternative", b"digest", b"related", b"signed"])
        head = b"Content-Type: multipart/" + subtype
        if r.random() < 0.97:
            head += b'; boundary="' + boundary + b'"'
        return head + b"\r\n", body

    def depth(self) -> int:
        x = self.r.random()
        if x < 0.8:
            return self.r.randint(1, 5)
        if x < 0.9:
            return self.r.randint(6, 50)
        return self.r.randint(51, 300)

    def sender(self, i: int) -> tuple[str, bytes]:
        """(envelope sender, From header lines)."""
        r = self.r
        member = r.choice(MEMBERS)
        x = r.random()
        if x < 0.45:
            return member, b"From: " + member.encode() + b"\r\n"
        if x < 0.7:
            who = f"stranger{i % 37}@s.example"
            return who, b"From: " + self.word() + b" <" + who.encode() + b">\r\n"
        if x < 0.8:
            return "", b"From: =?utf-8?q?" + member.replace("@", "=40").encode() + b"?=\r\n"
        if x < 0.9:
            return member, (b"From: " + member.encode() + b" <eve@evil.example>\r\n")
        return "eve@evil.example", (b"From: " + member.encode() + b"\r\nFrom: "
                                    + self.junk(r.randint(1, 30), line=True) + b"@x\r\n")

    def message(self, i: int) -> tuple[str, bytes]:
        r = self.r
        env, from_lines = self.sender(i)
        head = from_lines + b"To: " + LIST.encode() + b"\r\n"
        subject = r.choice([b"hello", self.word(), self.junk(r.randint(0, 200), line=True),
                            b"=?utf-8?q?a=0D=0ABcc:_victim@v.example?=", b""])
        head += b"Subject: " + subject + b"\r\n"
        head += b"Message-ID: <fuzz%d@f.example>\r\n" % i
        head += b"Date: " + r.choice(DATES).encode() + b"\r\n"
        for _ in range(r.randint(0, 3)):
            name = r.choice([b"X-Junk", b"Auto-Submitted", b"Precedence", b"Sender",
                             b"Content-Disposition", b"Received", b"Reply-To"])
            head += name + b": " + self.junk(r.randint(0, 60), line=True) + b"\r\n"
        ctype, body = self.tree(self.depth())
        return env, head + b"MIME-Version: 1.0\r\n" + ctype + b"\r\n" + body


@pytest.fixture
def fuzz_site(tmp_path: Path) -> Iterator[Site]:
    with SmtpSink() as sink:
        for site in make_site(tmp_path, sink):
            yield site


@pytest.mark.long
@pytest.mark.timeout(900)
def test_hostile_stream_every_accepted_message_is_delivered_held_or_refused(
        fuzz_site: Site) -> None:
    site = fuzz_site
    site.run("list", "create", LIST, "--owner", "owner@example.org",
             "--moderator", "mod@example.org")
    site.run("member", "add", LIST, *MEMBERS)
    site.run("list", "set", LIST, "sender_post_limit", "0")   # exercise delivery too
    site.serve()
    gen = Gen(SEED)
    accepted, refused = 0, 0
    why: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    client = smtplib.SMTP("127.0.0.1", site.port, timeout=120)
    for i in range(COUNT):
        env, data = gen.message(i)
        try:
            client.sendmail(env, [LIST], data)
            accepted += 1
        except smtplib.SMTPResponseException as exc:
            assert 500 <= exc.smtp_code < 600, (i, exc.smtp_code, exc.smtp_error)
            refused += 1
            why[f"{exc.smtp_code} {exc.smtp_error[:40]!r}"] += 1
            client.rset()
        except smtplib.SMTPServerDisconnected:
            client = smtplib.SMTP("127.0.0.1", site.port, timeout=120)
            refused += 1
            why["disconnected"] += 1
    client.quit()
    print(f"fuzz: refused at SMTP: {dict(why)}")
    assert accepted > COUNT // 2 and refused > 0

    db = Database(site.json("queue", "status") and _url(site))
    try:
        def settled() -> bool:
            with db.unit_of_work() as s:
                return not s.scalars(select(InboundMessage.id).where(InboundMessage.state.in_(
                    [InboundState.new, InboundState.processing])).limit(1)).first()
        sent = time.monotonic()
        wait_until(settled, 600, "every accepted message to be processed")
        print(f"fuzz: sent in {sent - started:.1f}s, processed after "
              f"{time.monotonic() - started:.1f}s")
        with db.unit_of_work() as s:
            rows = list(s.scalars(select(InboundMessage)))
            held = set(s.scalars(select(HeldMessage.inbound_id)))
        assert len(rows) == accepted
        states: dict[str, int] = {}
        for row in rows:
            states[row.state.value] = states.get(row.state.value, 0) + 1
            if row.state is InboundState.held:
                assert row.id in held, row.outcome
            elif row.state is InboundState.discarded:
                assert (row.outcome or "").startswith(("loop", "duplicate")), row.outcome
            else:
                assert row.state in (InboundState.accepted, InboundState.rejected,
                                     InboundState.failed), (row.state, row.outcome)
        assert site.proc is not None and site.proc.poll() is None, site.log.read_text()[-3000:]
        failed = site.json("queue", "failed")
        assert len([f for f in failed if f["kind"] == "incoming"]) == states.get("failed", 0)
        print(f"fuzz: {accepted} accepted, {refused} refused at SMTP; states {states}")
        for f in failed:
            print(f"fuzz: failed: {f.get('message_id')} {f.get('error', '')[:300]}")
        # a failure is held for the owners (the promise holds), but each one found so far was
        # a bug listserv could avoid: the stream of this seed now runs without any
        assert states.get("failed", 0) == 0, [f.get("error", "")[:300] for f in failed]
    finally:
        db.dispose()
    assert site.stop() == 0


def _url(site: Site) -> str:
    text = site.config.read_text()
    return text.split('url = "', 1)[1].split('"', 1)[0]
