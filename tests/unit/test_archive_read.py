"""The mbox export format: mboxrd round trip, duplicates dropped, headers read cheaply."""

from __future__ import annotations

from pathlib import Path

from listserv.archive import read as archive_read
from listserv.archive.read import mbox_entry

ADDR = "dev@example.org"


def msg(n: int, body: str = "text\n", mid: str | None = None) -> bytes:
    return (f"From: a{n}@x.example\r\nSubject: s{n}\r\nMessage-ID: <{mid or n}@x>\r\n\r\n"
            f"{body}").encode()


def write(root: Path, month: str, *messages: bytes) -> Path:
    path = archive_read.month_path(root, ADDR, month)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(mbox_entry(m, 1_790_000_000.0) for m in messages))
    return path


def test_round_trip_undoes_mboxrd_quoting(tmp_path: Path) -> None:
    tricky = "From here\n>From there\n\nFrom\n"
    write(tmp_path, "2026-11", msg(1, tricky), msg(2))
    entries = archive_read.read_month(tmp_path, ADDR, "2026-11")
    assert [e.number for e in entries] == [1, 2]
    assert entries[0].raw.endswith(tricky.encode())
    assert entries[1].raw.endswith(b"\n\ntext\n")
    assert entries[0].archived_at is not None and entries[0].archived_at.year == 2026
    assert archive_read.text_header(entries[1].headers(), "Subject") == "s2"


def test_an_entry_appended_twice_is_read_once(tmp_path: Path) -> None:
    write(tmp_path, "2026-11", msg(1), msg(2), msg(2))
    assert len(archive_read.read_month(tmp_path, ADDR, "2026-11")) == 2


def test_months_ignores_other_files(tmp_path: Path) -> None:
    write(tmp_path, "2026-11", msg(1))
    write(tmp_path, "2025-01", msg(1))
    (tmp_path / ADDR / "notes.mbox").write_text("x")
    (tmp_path / ADDR / "html").mkdir()
    assert archive_read.months(tmp_path, ADDR) == ["2025-01", "2026-11"]
    assert archive_read.months(tmp_path, "other@example.org") == []


def test_from_line_names_the_from_address() -> None:
    entry = mbox_entry(b"Subject: x\nFrom: \"Ann\" <ann@a.example>\n\nbody\n", 0)
    assert entry.startswith(b"From ann@a.example Thu Jan  1 00:00:00 1970\n")
    assert mbox_entry(b"Subject: no sender\n\nbody", 0).startswith(b"From MAILER-DAEMON ")
    assert mbox_entry(b"From: x\r\n\r\nbody", 0).endswith(b"\n\nbody\n\n")


def test_parse_compat32_gives_what_the_full_parser_gives() -> None:
    """The cheap parse (headers through the feed parser, a single-part body set whole) is
    the same Message as BytesParser(policy=compat32), for every shape of message."""
    from email import policy
    from email.parser import BytesParser

    samples = [
        b"From: a@x\nSubject: Caf\xc3\xa9 =?utf-8?q?x?=\nMessage-ID: <1@x>\n\nline\n\nmore\n",
        b"From: a@x\nContent-Type: text/plain; charset=iso-8859-1\n"
        b"Content-Transfer-Encoding: quoted-printable\n\nCaf=E9\n",
        b"From: a@x\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n",
        b"From: a@x\nContent-Type: message/rfc822\n\nSubject: inner\n\nbody\n",
        b"From: a@x\nnot a header line\nSubject: s\n\nbody\n",
        b"From: a@x\nSubject: no body",
        b"\n\nonly a body\n",
        b"From: a@x\r\nSubject: crlf\r\n\r\nbody\r\n",
        b"From: a@x\n  folded\nSubject: s\n\n\n\nbody after blank lines\n",
    ]
    for raw in samples:
        full = BytesParser(policy=policy.compat32).parsebytes(raw)
        cheap = archive_read.parse_compat32(raw)
        assert cheap.items() == full.items(), raw
        assert cheap.is_multipart() == full.is_multipart(), raw
        assert cheap.get_payload(decode=True) == full.get_payload(decode=True), raw
        assert cheap.as_bytes() == full.as_bytes(), raw


def test_text_headers_and_from_line_time_agree_with_the_slow_way() -> None:
    import datetime as dt

    raw = (b"From: =?utf-8?q?Zo=C3=AB?= <z@x>\nSubject: Men\xc3\xbc\n  folded\n"
           b"subject: second\nTo: a@x\nDate: Mon, 02 Nov 2026 09:00:00 +0000\n\nbody\n")
    msg = archive_read.parse_compat32(raw)
    names = ("From", "Subject", "To", "Cc", "Date", "References")
    got = archive_read.text_headers(msg, names)
    assert got == {n: archive_read.text_header(msg, n) for n in names}
    assert got["Subject"] == "Menü folded" and got["From"] == "Zoë <z@x>" and got["Cc"] == ""
    assert archive_read.from_line_time(b"From a@b Mon Jan  5 10:00:00 2004") == dt.datetime(
        2004, 1, 5, 10, 0, tzinfo=dt.timezone.utc)
    for odd in (b"From a@b Thu Feb 30 10:00:00 2023", b"From a@b Thu Feb 28 24:00:00 2023",
                b"From a@b", b"From a@b Xyz Feb 28 10:00:00 2023"):
        assert archive_read.from_line_time(odd) is None, odd
    assert archive_read.from_line_time(b"From a@b thu FEB 28 1:02:03 2023") == dt.datetime(
        2023, 2, 28, 1, 2, 3, tzinfo=dt.timezone.utc)               # strptime's leniency kept
