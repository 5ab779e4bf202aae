"""untrusted.shape(): MIME depth, the largest header field of any part and the size of the
message's own header section, read from raw bytes in one pass (refused at intake above
MAX_MIME_DEPTH, MAX_HEADER_FIELD and MAX_HEADER_SECTION). Sizes count a line end as one octet,
as Postfix's header_size_limit does."""

from __future__ import annotations

from hypothesis import given, strategies as st

from listserv.message import untrusted
from listserv.message.parse import parse


def test_a_field_counts_with_its_continuation_lines_and_line_ends() -> None:
    raw = (b"From: a@x.example\r\nTo: b@x.example,\r\n c@x.example,\r\n\td@x.example\r\n"
           b"Subject: hi\r\n\r\nbody\r\n")
    shape = untrusted.shape(raw)
    assert shape.depth == 1
    assert shape.field == len(b"To: b@x.example,\n c@x.example,\n\td@x.example\n")
    assert shape.head == len(raw.split(b"\r\n\r\n")[0].replace(b"\r\n", b"\n")) + 1


def test_the_fields_of_parts_and_enclosed_messages_count_but_not_their_bodies() -> None:
    big = b"X-Part: " + b"p" * 500 + b"\r\n"
    inner = b"Subject: " + b"i" * 700 + b"\r\n\r\nenclosed body " + b"b" * 5000 + b"\r\n"
    raw = (b"From: a@x.example\r\nContent-Type: multipart/mixed; boundary=z\r\n\r\n"
           b"--z\r\n" + big + b"\r\ntext " + b"t" * 9000 + b"\r\n"
           b"--z\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--z--\r\n")
    shape = untrusted.shape(raw)
    assert shape.depth == 3
    assert shape.parts == 4       # the message, its two parts, the enclosed message
    assert shape.field == len(b"Subject: ") + 700 + 1
    assert shape.head == len(b"From: a@x.example\nContent-Type: multipart/mixed; "
                             b"boundary=z\n")


def test_a_message_that_is_all_header_and_bare_line_ends() -> None:
    raw = b"From: a@x.example\nX-Long: " + b"l" * 3000   # no body, no final line end
    shape = untrusted.shape(raw)
    assert shape.field == len(b"X-Long: ") + 3000 + 1
    assert shape.head == len(b"From: a@x.example") + 1 + shape.field
    assert untrusted.shape(b"").field == 0


@given(st.lists(st.tuples(st.sampled_from(["X-A", "Subject", "To", "Comments"]),
                          st.lists(st.from_regex(r"[abc<>@,][abc <>@,]{0,38}[abc<>@,]",
                                                 fullmatch=True),
                                   min_size=1, max_size=4)),
                min_size=1, max_size=12))
def test_the_largest_field_is_the_largest_the_parser_reads(
        fields: list[tuple[str, list[str]]]) -> None:
    head = b"".join(f"{name}: {lines[0]}".encode() + b"".join(
        b"\r\n " + x.encode() for x in lines[1:]) + b"\r\n" for name, lines in fields)
    raw = head + b"\r\nbody\r\n"
    msg = parse(raw)
    # each field as the parser keeps it (its raw value, folds included) plus "Name: " and
    # its line end, line ends counted as one octet
    sizes = [len(name) + 2 + len(value.replace("\r\n", "\n").encode()) + 1
             for name, value in msg.raw_items()]
    shape = untrusted.shape(raw)
    assert shape.field == max(sizes)
    assert shape.head == len(head.replace(b"\r\n", b"\n"))


def test_parts_are_counted_in_every_container() -> None:
    def mixed(n: int, inner: bytes = b"") -> bytes:
        return (b"Content-Type: multipart/mixed; boundary=q\r\n\r\n"
                + b"".join(b"--q\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(n))
                + inner + b"--q--\r\n")
    assert untrusted.shape(b"From: a@x.example\r\n" + mixed(9)).parts == 10
    assert untrusted.shape(b"From: a@x.example\r\n\r\nno parts\r\n").parts == 1
    nested = (b"--q\r\nContent-Type: multipart/alternative; boundary=r\r\n\r\n"
              b"--r\r\n\r\na\r\n--r\r\n\r\nb\r\n--r--\r\n")
    assert untrusted.shape(b"From: a@x.example\r\n" + mixed(2, nested)).parts == 6
