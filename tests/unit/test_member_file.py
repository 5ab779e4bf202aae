"""Parsing member import files (no database)."""

from __future__ import annotations

from pathlib import Path

from listserv.admin.member_import import ImportLine, count_lines, read_member_file


def _read(tmp_path: Path, data: bytes) -> list[ImportLine]:
    f = tmp_path / "m"
    f.write_bytes(data)
    return list(read_member_file(f))


def test_plain_lines(tmp_path: Path) -> None:
    lines = _read(tmp_path, b"a@X.org\r\n\n# comment\n  Bob <B@y.org>  \nnope\n")
    assert [(x.lineno, x.email, x.name) for x in lines] == [
        (1, "a@x.org", ""), (4, "b@y.org", "Bob"), (5, None, "")]
    assert lines[2].error and "nope" in lines[2].error


def test_csv_with_header(tmp_path: Path) -> None:
    lines = _read(tmp_path, b"\n\"E-Mail\",\"Full Name\"\nA@x.org,\"Doe, Jane\"\n"
                            b"b@x.org\n\"unterminated,x\n")
    assert [(x.lineno, x.email, x.name) for x in lines[:2]] == [
        (3, "a@x.org", "Doe, Jane"), (4, "b@x.org", "")]
    assert lines[2].lineno == 5


def test_tab_csv_and_lone_email_header(tmp_path: Path) -> None:
    lines = _read(tmp_path, b"name\temail\nA\ta@x.org\n")
    assert [(x.email, x.name) for x in lines] == [("a@x.org", "A")]
    lines = _read(tmp_path, b"email\na@x.org\n")
    assert [x.email for x in lines] == ["a@x.org"]


def test_plain_address_named_like_a_column_is_not_a_header(tmp_path: Path) -> None:
    lines = _read(tmp_path, b"email@x.org\nb@x.org\n")
    assert [x.email for x in lines] == ["email@x.org", "b@x.org"]


def test_bad_utf8_is_a_bad_line(tmp_path: Path) -> None:
    lines = _read(tmp_path, b"a@x.org\n\xff@x.org\n")
    assert lines[1].email is None and lines[1].error == "not valid UTF-8"


def test_empty_file(tmp_path: Path) -> None:
    assert _read(tmp_path, b"") == []
    assert _read(tmp_path, b"\n\n") == []
    f = tmp_path / "m"
    assert count_lines(f) == 2
