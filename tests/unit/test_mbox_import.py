"""Reading foreign mbox files: From_ line quirks, quoting, Pipermail's obfuscation (pure)."""

from __future__ import annotations

import datetime as dt
import io

from listserv.importers import mbox

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)

PIPERMAIL = (
    b"From ann at example.org  Mon Jan  5 10:00:00 2004\n"
    b"From: ann at example.org (Ann Smith)\n"
    b"Subject: one\n"
    b"Date: Mon, 05 Jan 2004 10:00:00 +0100\n"
    b"Message-ID: <one@example.org>\n"
    b"\n"
    b"Hello\n"
    b">From the archive writer's quoting\n"
    b"From here on a line that is not a separator (no blank line before it)\n"
    b"\n"
    b"From someone who wrote a paragraph starting with From\n"
    b"\n"
    b"From bob@example.org Tue Feb  3 11:00:00 2004\r\n"
    b"From: Bob <bob@example.org>\r\n"
    b"Subject: two\r\n"
    b"\r\n"
    b"Body two\r\n"
)


def test_split_pipermail_quirks() -> None:
    got = list(mbox.split(io.BytesIO(PIPERMAIL)))
    assert [g[0] for g in got] == [b"From ann at example.org  Mon Jan  5 10:00:00 2004",
                                   b"From bob@example.org Tue Feb  3 11:00:00 2004"]
    first = got[0][1]
    assert b"\nFrom the archive writer's quoting\n" in first          # one level undone
    assert b"From here on a line" in first and b"paragraph starting with From\n" in first
    assert got[1][1] == b"From: Bob <bob@example.org>\nSubject: two\n\nBody two\n"
    assert sum(g[2] for g in got) == len(PIPERMAIL)


def test_prepare_repairs_from_adds_message_id_and_dates() -> None:
    (line1, raw1, _), (line2, raw2, _) = mbox.split(io.BytesIO(PIPERMAIL))
    data, msgid, when, sender = mbox.prepare(raw1, line1, "lists.example.org", NOW)
    assert data.startswith(b"From: Ann Smith <ann@example.org>\n")
    assert msgid == "one@example.org" and sender == "ann@example.org"
    assert when == dt.datetime(2004, 1, 5, 9, 0, tzinfo=dt.timezone.utc)
    data2, msgid2, when2, sender2 = mbox.prepare(raw2, line2, "lists.example.org", NOW)
    assert msgid2.startswith("imported.") and msgid2.endswith("@lists.example.org")
    assert data2.startswith(f"Message-ID: <{msgid2}>\n".encode())
    assert mbox.prepare(raw2, line2, "lists.example.org", NOW)[1] == msgid2   # stable
    assert when2 == dt.datetime(2004, 2, 3, 11, 0, tzinfo=dt.timezone.utc)   # From_ line
    assert sender2 == "bob@example.org"


def test_deobfuscate_from() -> None:
    assert mbox.deobfuscate_from("ann at example.org (Ann Smith)") == \
        "Ann Smith <ann@example.org>"
    assert mbox.deobfuscate_from("ann at example.org") == "ann@example.org"
    assert mbox.deobfuscate_from("Ann <ann@example.org>") is None
    assert mbox.deobfuscate_from("meet me at noon") is None
