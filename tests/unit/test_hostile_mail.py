"""Any message, however broken, comes out of a post's transforms as mail every relay and
receiver takes, and every reader of a stranger's message takes it: property tests over
generated hostile mail (broken MIME, 8-bit and encoded junk in headers, duplicate fields,
lines far over 998 octets, bare CR and LF), and the classes of input they found, as examples.

The path is the one of listserv.pipeline.posting: parse -> prepare -> decorate -> serialise
(notices.finalise) -> DKIM. The promises: no exception; CRLF line ends only; no line over
998 octets (RFC 5322 2.1.1: Postfix's SMTP client cuts longer lines after we sign); every
header line a field or its continuation; each RFC 5322 3.6 single field at most once (Gmail
refuses the message otherwise); one subject prefix; the DKIM signature verifies.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
import quopri
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, example, given, settings, strategies as st

from listserv.archive import html as archive_html, index as archive_index
from listserv.archive import read as archive_read
from listserv.bounces import parse as bounce_parse
from listserv.core.models import DmarcMitigation, ReplyTo
from listserv.delivery import notices
from listserv.delivery.unsubscribe import CopyMaker
from listserv.digests import build as digest_build
from listserv.message import lines, replies, transforms
from listserv.message.parse import parse, to_bytes
from listserv.pipeline import modreply, rules
from listserv.web import archive as web_archive, moderate as web_moderate
from tests.unit.transforms_cases import FOOTER_UTF8, LIST, FakeDNS

_KEY = rsa.generate_private_key(65537, 2048)
PEM = _KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                         serialization.NoEncryption()).decode()
PUB = base64.b64encode(_KEY.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
SIGNED = dataclasses.replace(LIST, dkim_selector="s1", dkim_key=PEM, domain="example.org")
LISTS = [SIGNED, dataclasses.replace(SIGNED, dmarc_mitigation=DmarcMitigation.wrap,
                                     reply_to=ReplyTo.list)]
SINGLE = [n.lower().encode() for n in transforms.SINGLE_FIELDS]


def dns(name: bytes, timeout: float = 5) -> bytes:
    if name.rstrip(b".") == b"s1._domainkey.example.org":
        return f"v=DKIM1; k=rsa; p={PUB}".encode()
    return b""


def post(raw: bytes, lst=SIGNED) -> bytes:  # type: ignore[no-untyped-def]
    """What posting.py makes of ``raw``: the signed bytes every member's copy starts from."""
    prepared = transforms.prepare(parse(raw), lst, resolve_txt=FakeDNS())
    to_bytes(prepared)                      # the archive's bytes: must not raise either
    return notices.finalise(transforms.decorate(prepared, lst, FOOTER_UTF8), lst)


def check_wire(data: bytes) -> None:
    assert b"\r" not in data.replace(b"\r\n", b"") and b"\n" not in data.replace(b"\r\n", b"")
    assert all(len(line) <= lines.MAX_LINE for line in data.split(b"\r\n")), \
        max(data.split(b"\r\n"), key=len)[:80]
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    for line in head:
        assert line[:1] in (b" ", b"\t") or re.match(rb"[!-9;-~]+:", line), line[:80]
    names = [line.split(b":", 1)[0].lower() for line in head if line[:1] not in (b" ", b"\t")]
    assert all(names.count(n) <= 1 for n in SINGLE), names
    assert dkim.verify(data, dnsfunc=dns)
    out = parse(data)
    assert str(out["Subject"]).startswith("[Dev]")


# -- generated mail ---------------------------------------------------------------------------

TOKEN = st.sampled_from([
    b"a", b"hello", b" ", b"\t", b"\xe9", b"\xff", b"\x00", b"\r", b"\n ", b"=?utf-8?b?w6k=?=",
    b"=?utf-8?q?caf=C3=A9?=", b"=?", b"?=", b"=?bogus?x?y?=", b"<", b">", b"@", b",", b";",
    b'"', b"\\", b"(", b")", b":", b"=", b"x" * 300, b"\xc3\xa9", b"\xe2\x80\x94",
    b"\xf0\x9f\x98\x80", b"charset=", b"boundary="])
VALUE = st.lists(TOKEN, max_size=12).map(b"".join)
NAME = st.sampled_from([
    b"From", b"To", b"Cc", b"Subject", b"Reply-To", b"Sender", b"Date", b"Message-ID",
    b"In-Reply-To", b"References", b"Content-Type", b"Content-Transfer-Encoding",
    b"MIME-Version", b"DKIM-Signature", b"List-Id", b"X-Foo", b"Content-Disposition",
    b"Received"])
CONTENT_TYPE = st.sampled_from([
    b"text/plain", b"text/html", b"text/plain; charset=utf-8", b"text/plain; charset=iso-8859-1",
    b"text/plain; charset=bogus", b'text/plain; charset="utf-8"; format=flowed',
    b"text/html; charset=windows-1252", b"application/octet-stream", b"message/rfc822",
    b"text/plain; charset=unknown-8bit", b"text/plain; charset=utf-7", b"image/png"])
ENCODING = st.sampled_from([None, b"7bit", b"8bit", b"base64", b"quoted-printable", b"binary",
                            b"x-uuencode", b"bogus"])
BODY = st.lists(st.sampled_from([
    b"hello world", b"\n", b"\r\n", b"\r", b"\xe9t\xe9", b"\xc3\xa9", b"=3D", b"=\n", b"=",
    b"aGVsbG8=", b".", b"\n.\n", b"From x", b"--", b"--b1", b"--b1--", b"<html><body>",
    b"</body></html>", b"x" * 1200, b"\x00", b"\t", b" "]), max_size=20).map(b"".join)
FROM = st.sampled_from([
    b"Ann <ann@example.com>", b"ann@yahoo.example", b"=?utf-8?q?J=C3=B6rg?= <j@example.net>",
    b"\xc3\xa9 <e@example.com>", b"", b"<>", b"a@b@c",
    b"Ann <ann@example.com>, Bob <b@example.com>"])


@st.composite
def part(draw: st.DrawFn, depth: int = 0) -> bytes:
    if depth < 3 and draw(st.integers(0, 3)) == 0:
        boundary = draw(st.sampled_from([b"b1", b"b2", b"==x", b"", b"b1 b"]))
        sub = draw(st.sampled_from([b"mixed", b"alternative", b"related", b"signed"]))
        quoted = b'"' + boundary + b'"' if draw(st.booleans()) else boundary
        body = draw(BODY) + b"\n"
        for child in draw(st.lists(part(depth + 1), max_size=3)):
            body += b"--" + boundary + b"\n" + child + b"\n"
        if draw(st.booleans()):
            body += b"--" + boundary + b"--\n"
        return (b"Content-Type: multipart/" + sub + b"; boundary=" + quoted + b"\n\n" + body
                + draw(BODY))
    fields = [b"Content-Type: " + draw(CONTENT_TYPE)]
    encoding = draw(ENCODING)
    if encoding:
        fields.append(b"Content-Transfer-Encoding: " + encoding)
    if draw(st.booleans()):
        fields.append(b"Content-Disposition: " + draw(st.sampled_from([
            b"inline", b"attachment; filename=a.txt",
            b"attachment; filename*=utf-8''%C3%A9.txt"])))
    return b"\n".join(fields) + b"\n\n" + draw(BODY)


@st.composite
def message(draw: st.DrawFn) -> bytes:
    fields = [b"From: " + draw(FROM) + draw(VALUE)]
    fields += [draw(NAME) + b": " + draw(VALUE) for _ in range(draw(st.integers(0, 6)))]
    fields += [b"Subject: " + draw(VALUE), b"Message-ID: <x@example.com>"]
    if draw(st.booleans()):
        fields.append(b"MIME-Version: 1.0")
    raw = b"\n".join(fields) + b"\n" + draw(part())
    return raw.replace(b"\n", b"\r\n") if draw(st.booleans()) else raw


# the classes of input the property found, each once
TWO_SUBJECTS = b"From: ann@yahoo.example\nSubject: a\nSubject: b\nMessage-ID: <x@e>\n\nhi\n"
TWO_FROMS = b"From: ann@example.com\nFrom: eve@example.com\nSubject: a\nMessage-ID: <x@e>\n\nhi\n"
LONG_8BIT = (b"From: ann@example.com\nSubject: a\nMessage-ID: <x@e>\nContent-Type: text/plain; "
             b"charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n" + "é".encode() * 800 + b"\n")
LONG_BASE64 = (b"From: ann@example.com\nSubject: a\nMessage-ID: <x@e>\nContent-Type: "
               b"application/pdf\nContent-Transfer-Encoding: base64\n\n" + b"QUFB" * 400 + b"\n")
EIGHT_BIT_DISPOSITION = (b'From: a@b@c )\r\nContent-Disposition: "charset=\xe9"=?<?=;\r\n a\r\n'
                         b"Subject: \xe9x\r\nMessage-ID: <x@e>\r\nMIME-Version: 1.0\r\n"
                         b"Content-Type: text/plain; charset=bogus\r\n"
                         b"Content-Transfer-Encoding: quoted-printable\r\n\r\nhi\r\n")
REFOLD_RAISES = (b"From: \xc3\xa9 <e@example.com>\r\n ((" + b"x" * 300 + b"?=(\r\n"
                 b"Subject: hi\r\nMessage-ID: <x@e>\r\n\r\nbody\r\n")
NO_BOUNDARY = (b"From: ann@example.com\nSubject: a\nMessage-ID: <x@e>\nMIME-Version: 1.0\n"
               b'Content-Type: multipart/mixed; boundary="b1"\n\nhello\n' + b"x" * 3000 + b"\n")
ADDRESS_FOLD = (b"From: =?utf-8?q?J=C3=B6rg?= <j@example.net>\t,\xc3\xa9:=?utf-8?q?caf=C3=A9?="
                + b"x" * 300 + b"\nSubject: a\nMessage-ID: <x@e>\n\nhi\n")
BARE_CR_FIELD = (b"From: Ann <ann@example.com>;=?utf-8?q?caf=C3=A9?=\n ;\r(\"?=?=\n"
                 b"Subject: a\nMessage-ID: <x@e>\n\nhi\n")


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(message(), st.sampled_from(LISTS))
@example(TWO_SUBJECTS, LISTS[1])
@example(TWO_FROMS, LISTS[0])
@example(LONG_8BIT, LISTS[0])
@example(LONG_BASE64, LISTS[0])
@example(EIGHT_BIT_DISPOSITION, LISTS[0])
@example(REFOLD_RAISES, LISTS[0])
@example(NO_BOUNDARY, LISTS[0])
@example(ADDRESS_FOLD, LISTS[0])
@example(BARE_CR_FIELD, LISTS[0])
def test_any_post_comes_out_as_mail_every_relay_takes(raw: bytes, lst) -> None:  # type: ignore[no-untyped-def]
    check_wire(post(raw, lst))
    # a VERP'd member's own copy (delivery adds the member's unsubscribe fields and signs)
    prepared = transforms.prepare(parse(raw), lst, resolve_txt=FakeDNS())
    wire = notices.serialise(transforms.decorate(prepared, lst, FOOTER_UTF8))
    copy = CopyMaker.of(wire, lst, "https://lists.example.org").copy("secret", 42, "nonce")
    check_wire(copy)


# a multipart inside another with the same boundary and no parts: get_body() raised
NESTED_EMPTY = (b"From: Ann <ann@example.com>\nSubject: x\nMessage-ID: <x@e>\n"
                b"Content-Type: multipart/mixed; boundary=b1\n\n\n--b1\n"
                b"Content-Type: multipart/related; boundary=b1\n\n\n\n")
# an address field the default policy's parser turns into a Group without local_part:
# a digest (built with the default policy) could not be written
GROUP_FROM = (b"From: :\xc3\xa9 ;a" + b"x" * 80 + b"\nSubject: x\nMessage-ID: <x@e>\n\nhi\n")


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=message())
@example(raw=NESTED_EMPTY)
@example(raw=GROUP_FROM)
@example(raw=NO_BOUNDARY)
def test_every_reader_of_a_strangers_message_takes_any_message(raw: bytes,
                                                               tmp_path_factory) -> None:  # type: ignore[no-untyped-def]
    logging.disable(logging.CRITICAL)      # flufl.bounce logs its detectors' failures
    try:
        msg = parse(raw)
        bounce_parse.parse(msg)
        text = replies.body_text(msg)
        replies.body_text(msg, reply=True)
        replies.command_lines(msg)
        replies.sender_address(msg)
        modreply.parse(text)
        rules.body_digest(msg)
        rules._body_head(msg)
        web_moderate.render_post(raw)            # a held post's moderation page
        web_archive.body_of(parse(raw))          # its web archive page
        archive_index.body_text(parse(raw))      # the search index
        entry = archive_read.Entry(1, raw.replace(b"\r\n", b"\n"),
                                   dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        archive_html._message_context(entry, archive_html.summarise(entry))   # static page
    finally:
        logging.disable(logging.NOTSET)
    prepared = transforms.prepare(msg, SIGNED, resolve_txt=FakeDNS())
    items = [digest_build.DigestItem(1, prepared), digest_build.DigestItem(2, prepared)]
    when = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    data_dir = str(tmp_path_factory.mktemp("data"))
    for build in (digest_build.build_mime_digest, digest_build.build_plain_digest):
        digest = build(items, SIGNED, 1, 1, date=when, data_dir=data_dir)
        data = notices.finalise(digest, SIGNED)
        assert all(len(line) <= lines.MAX_LINE for line in data.split(b"\r\n"))
        assert dkim.verify(data, dnsfunc=dns)


# -- what the re-encoding keeps -------------------------------------------------------------

def test_duplicate_single_fields_keep_the_first_in_place() -> None:
    raw = (b"From: ann@example.com\nTo: a@x.example\nSubject: first\nTo: b@x.example\n"
           b"X-Other: 1\nSubject: second\nFrom: eve@example.com\nMessage-ID: <x@e>\n\nhi\n")
    out = transforms.cleanse(parse(raw), LIST, transforms.Context(FakeDNS()))
    assert [(k, str(v)) for k, v in out.items()] == [
        ("From", "ann@example.com"), ("To", "a@x.example"), ("Subject", "first"),
        ("X-Other", "1"), ("Message-ID", "<x@e>")]


@pytest.mark.parametrize("cte, content_type, data", [
    ("8bit", "text/plain; charset=utf-8", "Grüße ".encode() * 300 + b"\nend\n"),
    ("binary", "application/octet-stream", bytes(range(14, 256)) * 8),
    ("7bit", "text/plain", b"a" * 2000 + b"\n"),
    (None, "text/html", b"<p>" + b"x" * 5000 + b"</p>"),
], ids=["8bit-text", "binary", "7bit-text", "no-encoding-html"])
def test_a_long_line_is_reencoded_and_decodes_to_the_same_bytes(
        cte: str | None, content_type: str, data: bytes) -> None:
    head = f"From: a@example.com\nContent-Type: {content_type}\n"
    if cte:
        head += f"Content-Transfer-Encoding: {cte}\n"
    msg = parse(head.encode() + b"\n" + data)
    before = msg.get_payload(decode=True)
    lines.fit(msg)
    assert msg.get_payload(decode=True).replace(b"\r\n", b"\n") == \
        before.replace(b"\r\n", b"\n")
    assert msg["Content-Transfer-Encoding"] in ("quoted-printable", "base64")
    assert msg["MIME-Version"] == "1.0"
    assert all(len(x) <= 998 for x in to_bytes(msg).split(b"\r\n"))


def test_long_base64_and_quoted_printable_lines_are_wrapped_not_changed() -> None:
    payload = base64.b64encode(bytes(range(256)) * 20)      # one line of 6,828 characters
    msg = parse(b"From: a@example.com\nContent-Type: image/png\nContent-Transfer-Encoding: "
                b"base64\n\n" + payload + b"\n")
    lines.fit(msg)
    assert msg.get_payload(decode=True) == bytes(range(256)) * 20
    assert max(map(len, str(msg.get_payload()).splitlines())) == 76
    text = ("ä" * 900).encode("latin-1")
    qp = quopri.encodestring(text).replace(b"=\n", b"")     # QP without its soft breaks
    msg = parse(b"From: a@example.com\nContent-Type: text/plain; charset=latin-1\n"
                b"Content-Transfer-Encoding: quoted-printable\n\n" + qp + b"\n")
    lines.fit(msg)
    assert msg.get_payload(decode=True).rstrip(b"\n") == text
    assert max(map(len, str(msg.get_payload()).splitlines())) <= 76


def test_a_signed_part_is_left_byte_for_byte_until_the_wire() -> None:
    inner = b"Content-Type: text/plain\n\n" + b"y" * 1500 + b"\n"
    raw = (b"From: a@example.com\nMIME-Version: 1.0\nContent-Type: multipart/signed; "
           b'protocol="application/pgp-signature"; boundary="s"\n\n--s\n' + inner
           + b"--s\nContent-Type: application/pgp-signature\n\nSIG\n--s--\n")
    msg = parse(raw)
    lines.fit(msg)
    assert msg.get_payload(0).get_payload() == "y" * 1500
    # the last resort on the bytes still keeps the line within what relays take
    wire = lines.on_the_wire(to_bytes(msg))
    assert all(len(x) <= 998 for x in wire.split(b"\r\n"))


def test_on_the_wire_leaves_fine_mail_alone_and_mends_the_rest() -> None:
    fine = b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\n"
    assert lines.on_the_wire(fine) is fine
    broken = (b"From: a@example.com\r\nSubject: x\ry\r\n=?utf-8?q?z?=\r\n\r\n"
              b"one\ntwo\r" + b"z" * 2000 + b"\r\n")
    # a header block ended by bare line ends is still a header block
    assert lines.on_the_wire(b"From: a@example.com\nSubject: x\n\nbody\nmore\r\n") == \
        b"From: a@example.com\r\nSubject: x\r\n\r\nbody\r\nmore\r\n"
    mended = lines.on_the_wire(broken)
    assert mended == (b"From: a@example.com\r\nSubject: x\r\n y\r\n =?utf-8?q?z?=\r\n\r\n"
                      b"one\r\ntwo\r\n" + b"z" * 998 + b"\r\n" + b"z" * 998 + b"\r\n"
                      + b"z" * 4 + b"\r\n")
