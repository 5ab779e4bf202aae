"""Unit tests of the message transforms (prepare steps, subject prefix, DMARC, footer)."""

from __future__ import annotations

import copy
import re
from email import policy

import pytest

from listserv.message import dmarc, transforms
from listserv.message.decorate import decorate
from listserv.core.models import ArchivePolicy, DmarcMitigation, FooterPlacement, ReplyTo
from tests.unit.transforms_cases import (
    DATA, FOOTER, FOOTER_UTF8, FakeDNS, load, lst, parse, serialise,
)

PREFIX = "[Dev] "


@pytest.mark.parametrize("subject, expected", [
    ("Hello", "[Dev] Hello"),
    ("[Dev] Hello", "[Dev] Hello"),
    ("Re: Hello", "[Dev] Re: Hello"),
    ("Re: [Dev] Hello", "[Dev] Re: Hello"),
    ("RE: re: Re: [Dev] Hello", "[Dev] Re: Hello"),
    ("AW: [Dev] Re: Hallo", "[Dev] Re: Hallo"),
    ("Sv: [dev] Hej", "[Dev] Re: Hej"),
    ("Re[3]: [Dev] x", "[Dev] Re: x"),
    ("Re^2: x", "[Dev] Re: x"),
    ("Fwd: [Dev] News", "[Dev] Fwd: News"),
    ("Re: Fwd: [Dev] Re: News", "[Dev] Re: Fwd: Re: News"),
    ("[Dev] Re: [Dev] Re: loop", "[Dev] Re: loop"),
    ("Talk about [Dev] later", "[Dev] Talk about [Dev] later"),
    ("Renovation: plans", "[Dev] Renovation: plans"),
    ("Trial: run", "[Dev] Trial: run"),
    ("", "[Dev] (no subject)"),
    ("Re:", "[Dev] Re:"),
    ("  spaced \t out  ", "[Dev] spaced out"),
])
def test_prefixed_subject(subject: str, expected: str) -> None:
    assert transforms.prefixed_subject(subject, PREFIX) == expected


def test_prefix_is_idempotent_over_many_replies() -> None:
    s = "Topic"
    for _ in range(5):
        s = transforms.prefixed_subject("Re: " + s, PREFIX)
    assert s == "[Dev] Re: Topic"


def test_prefix_expands_list_and_empty_prefix_leaves_subject() -> None:
    msg = load("plain.eml")
    out = transforms.add_subject_prefix(copy.deepcopy(msg), lst(subject_prefix="({list}) "),
                                        transforms.Context(FakeDNS()))
    assert out["Subject"] == "(dev) Build is green again"   # the list name, not display name
    same = transforms.add_subject_prefix(copy.deepcopy(msg), lst(subject_prefix=""),
                                         transforms.Context(FakeDNS()))
    assert serialise(same) == serialise(msg)


def test_encoded_subject_with_prefix_is_decoded_and_not_doubled() -> None:
    out = transforms.prepare(load("qp-latin1.eml"), lst(), resolve_txt=FakeDNS())
    assert out["Subject"] == "[Dev] Re: Reunião amanhã"
    wire = out.as_bytes(policy=policy.SMTP)
    assert b"=?" in wire.split(b"Subject:", 1)[1].split(b"\r\n", 1)[0]
    assert parse(wire)["Subject"] == "[Dev] Re: Reunião amanhã"


def test_unchanged_subject_keeps_its_original_encoding() -> None:
    raw = (DATA / "in" / "subject-2047-prefixed.eml").read_bytes()
    msg = parse(re.sub(rb"Subject: [^\n]*", b"Subject: =?iso-8859-1?q?=5BDev=5D_caf=E9?=", raw))
    assert msg["Subject"] == "[Dev] café"
    out = transforms.prepare(msg, lst(), resolve_txt=FakeDNS())
    assert "iso-8859-1" in [v for k, v in out.raw_items() if k == "Subject"][0]


def test_raw_8bit_subject_is_recovered() -> None:
    out = transforms.prepare(load("subject-8bit.eml"), lst(), resolve_txt=FakeDNS())
    assert out["Subject"] == "[Dev] Café résumé 8bit subject"


def test_replacement_character_in_an_encoded_subject_stays_decoded() -> None:
    raw = (DATA / "in" / "plain.eml").read_bytes()
    msg = parse(raw.replace(b"Subject: Build is green again",
                            b"Subject: =?utf-8?q?broken_=EF=BF=BD_char?="))
    out = transforms.prepare(msg, lst(), resolve_txt=FakeDNS())
    assert out["Subject"] == "[Dev] broken \ufffd char"


def test_prepare_does_not_modify_its_input_and_is_stable() -> None:
    msg = load("inbound-headers.eml")
    before = serialise(msg)
    once = transforms.prepare(msg, lst(), resolve_txt=FakeDNS())
    assert serialise(msg) == before
    twice = transforms.prepare(once, lst(), resolve_txt=FakeDNS())
    assert serialise(twice) == serialise(once)


def test_list_headers_replace_upstream_ones() -> None:
    """...except the upstream List-Id, kept after ours (the chain that detects loops)."""
    out = transforms.prepare(load("inbound-headers.eml"), lst(), resolve_txt=FakeDNS())
    assert out.get_all("List-Id") == ["Dev <dev.example.org>",
                                      "Upstream <upstream.lists.example.com>"]
    assert out.get_all("List-Post") == ["<mailto:dev@example.org>"]
    assert out.get_all("List-Unsubscribe") == ["<mailto:dev-leave@example.org>"]
    assert out.get_all("List-Subscribe") == ["<mailto:dev-join@example.org>"]
    assert out.get_all("List-Help") == ["<mailto:dev-request@example.org?subject=help>"]
    assert out.get_all("List-Owner") == ["<mailto:dev-owner@example.org>"]
    assert out.get_all("Precedence") == ["list"]
    assert "List-Unsubscribe-Post" not in out
    assert out.get_all("List-Archive") == ["<mailto:dev-request@example.org?subject=index>"]


@pytest.mark.parametrize("display, expected", [
    ("Dev", "Dev <dev.example.org>"),
    ("Dev Team (core)", '"Dev Team (core)" <dev.example.org>'),
    ('Say "hi"', '"Say \\"hi\\"" <dev.example.org>'),
    ("", "<dev.example.org>"),
])
def test_list_id_value(display: str, expected: str) -> None:
    assert transforms.list_id_value(lst(display_name=display)) == expected


def test_non_ascii_list_id_is_encoded_and_keeps_the_id() -> None:
    out = transforms.prepare(load("plain.eml"), lst(display_name="Développeurs"),
                             resolve_txt=FakeDNS())
    wire = out.as_bytes(policy=policy.SMTP)
    line = [x for x in wire.split(b"\r\n") if x.startswith(b"List-Id:")][0]
    assert line.isascii() and line.endswith(b"<dev.example.org>") and b"=?utf-8?" in line
    assert parse(wire)["List-Id"] == "Développeurs <dev.example.org>"


INDEX_LINK = "<mailto:dev-request@example.org?subject=index>"


@pytest.mark.parametrize("archive, url, expected", [
    (ArchivePolicy.private, "https://l.example.org/dev/", "<https://l.example.org/dev/>"),
    (ArchivePolicy.public, "https://l.example.org/dev/", "<https://l.example.org/dev/>"),
    (ArchivePolicy.none, "https://l.example.org/dev/", None),
    (ArchivePolicy.public, None, INDEX_LINK),
    (ArchivePolicy.private, None, INDEX_LINK),
    (ArchivePolicy.none, None, None),
])
def test_list_archive_when_archived(archive, url, expected) -> None:  # type: ignore[no-untyped-def]
    out = transforms.prepare(load("plain.eml"), lst(archive=archive, archive_url=url),
                             resolve_txt=FakeDNS())
    assert out.get("List-Archive") == expected


def test_cleanse_and_strip_dkim_keep_arc() -> None:
    out = transforms.prepare(load("inbound-headers.eml"), lst(), resolve_txt=FakeDNS())
    for gone in ("DKIM-Signature", "Approved", "Disposition-Notification-To",
                 "Return-Receipt-To", "X-Confirm-Reading-To", "Bcc", "Return-Path"):
        assert gone not in out, gone
    for kept in ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results",
                 "Authentication-Results", "Cc", "To", "Message-ID", "Date"):
        assert kept in out, kept


def test_reply_to() -> None:
    poster = transforms.prepare(load("inbound-headers.eml"), lst(), resolve_txt=FakeDNS())
    assert poster["Reply-To"] == "Hana Work <hana.work@example.net>"
    listed = transforms.prepare(load("inbound-headers.eml"), lst(reply_to=ReplyTo.list),
                                resolve_txt=FakeDNS())
    assert listed.get_all("Reply-To") == ["Dev <dev@example.org>"]
    none = transforms.prepare(load("plain.eml"), lst(), resolve_txt=FakeDNS())
    assert "Reply-To" not in none


def test_prepare_steps_registry() -> None:
    names = [s.__name__ for s in transforms.PREPARE_STEPS]
    assert names == ["cleanse", "fit_lines", "mitigate_dmarc", "strip_dkim",
                     "add_subject_prefix", "set_reply_to", "add_list_headers"]


# ---------------------------------------------------------------------------- DMARC

@pytest.mark.parametrize("domain, org", [
    ("example.org", "example.org"),
    ("mail.example.org", "example.org"),
    ("a.b.example.org", "example.org"),
    ("mail.example.co.uk", "example.co.uk"),
    ("example.co.uk", "example.co.uk"),
    ("x.example.com.au", "example.com.au"),
    ("Mail.Example.ORG.", "example.org"),
    ("localhost", "localhost"),
])
def test_organisational_domain(domain: str, org: str) -> None:
    assert dmarc.organisational_domain(domain) == org


@pytest.mark.parametrize("domain, expected, asked", [
    ("yahoo.example", "reject", ["_dmarc.yahoo.example"]),
    ("mail.yahoo.example", "reject", ["_dmarc.mail.yahoo.example", "_dmarc.yahoo.example"]),
    ("example.net", "none", ["_dmarc.example.net"]),
    ("quarantine.example", "quarantine", ["_dmarc.quarantine.example"]),
    ("sub.example", "reject", ["_dmarc.sub.example"]),
    ("a.sub.example", "none", ["_dmarc.a.sub.example", "_dmarc.sub.example"]),  # sp=none
    ("www.example.co.uk", "reject", ["_dmarc.www.example.co.uk", "_dmarc.example.co.uk"]),
    ("twice.example", None, ["_dmarc.twice.example"]),     # two records: none applies
    ("nothing.example", None, ["_dmarc.nothing.example"]),
])
def test_policy_lookup(domain: str, expected: str | None, asked: list[str]) -> None:
    dns = FakeDNS()
    assert dmarc.policy(domain, dns) == expected
    assert dns.asked == asked


def test_resolver_failure_means_mitigate() -> None:
    def broken(name: str) -> list[str]:
        raise OSError("SERVFAIL")
    assert dmarc.needs_mitigation("example.net", broken) is True


def test_munge_only_for_strict_policies() -> None:
    dns = FakeDNS()
    kept = transforms.prepare(load("plain.eml"), lst(), resolve_txt=dns)
    assert kept["From"] == "Bob Example <bob@example.net>"
    assert dns.asked == ["_dmarc.example.net"]
    munged = transforms.prepare(load("dmarc-reject.eml"), lst(), resolve_txt=FakeDNS())
    assert munged["From"] == "Ida Poster via Dev <dev@example.org>"
    assert munged["Reply-To"] == "Ida Poster <ida@mail.yahoo.example>"
    assert "Cc" not in munged


def test_munge_adds_to_an_existing_reply_to_and_cc_for_reply_to_list() -> None:
    msg = load("dmarc-reject.eml")
    msg["Reply-To"] = "Team <team@example.com>"
    msg["Cc"] = "other@example.com"
    out = transforms.prepare(msg, lst(), resolve_txt=FakeDNS())
    assert out["Reply-To"] == "Team <team@example.com>, Ida Poster <ida@mail.yahoo.example>"
    out = transforms.prepare(msg, lst(reply_to=ReplyTo.list), resolve_txt=FakeDNS())
    assert out["Reply-To"] == "Dev <dev@example.org>"
    assert out["Cc"] == "other@example.com, Ida Poster <ida@mail.yahoo.example>"


def test_munge_name_without_display_name() -> None:
    msg = load("dmarc-reject.eml")
    msg.replace_header("From", "ida@mail.yahoo.example")
    out = transforms.prepare(msg, lst(), resolve_txt=FakeDNS())
    assert out["From"] == '"ida at mail.yahoo.example via Dev" <dev@example.org>'


def test_no_dns_and_no_change_when_mitigation_is_none_or_same_domain() -> None:
    dns = FakeDNS()
    out = transforms.prepare(load("dmarc-reject.eml"),
                             lst(dmarc_mitigation=DmarcMitigation.none), resolve_txt=dns)
    assert out["From"] == "Ida Poster <ida@mail.yahoo.example>" and dns.asked == []
    msg = load("plain.eml")
    msg.replace_header("From", "Owner <owner@mail.example.org>")
    out = transforms.prepare(msg, lst(), resolve_txt=dns)
    assert out["From"] == "Owner <owner@mail.example.org>" and dns.asked == []


def test_wrap_keeps_the_original_intact() -> None:
    original = load("dmarc-reject.eml")
    out = transforms.prepare(original, lst(dmarc_mitigation=DmarcMitigation.wrap),
                             resolve_txt=FakeDNS())
    assert out.get_content_type() == "multipart/mixed"
    assert out["From"] == "Ida Poster via Dev <dev@example.org>"
    assert out["Subject"] == "[Dev] Question about the API"
    assert out["Message-ID"] == original["Message-ID"]
    assert out["List-Id"] == "Dev <dev.example.org>"
    (part,) = out.iter_parts()
    assert part.get_content_type() == "message/rfc822"
    inner = part.get_content()
    assert serialise(inner) == serialise(original)   # incl. its DKIM-Signature
    wire = out.as_bytes(policy=policy.SMTP)
    assert parse(wire).get_payload()[0].get_payload()[0]["DKIM-Signature"]


# ---------------------------------------------------------------------------- footer

def test_footer_appended_to_plain_text_in_its_charset() -> None:
    out = decorate(load("qp-latin1.eml"), lst(), FOOTER)
    assert out.get_content_charset() == "iso-8859-1"
    assert out["Content-Transfer-Encoding"] == "quoted-printable"
    assert out.get_param("format") == "flowed"
    text = out.get_content()
    assert text.startswith("Olá a todos, \n") and text.endswith(FOOTER)
    assert "\n\n-- \n" in text


def test_footer_that_does_not_fit_the_charset_switches_to_utf8() -> None:
    out = decorate(load("koi8r-8bit.eml"), lst(), FOOTER_UTF8)
    assert out.get_content_charset() == "utf-8"
    assert out.get_content() == "Привет всем!\nСборка снова работает.\n\n" + FOOTER_UTF8


def test_seven_bit_becomes_quoted_printable_for_non_ascii_footer() -> None:
    out = decorate(load("plain.eml"), lst(), FOOTER_UTF8)
    assert out["Content-Transfer-Encoding"] == "quoted-printable"
    assert out.get_content_charset() == "utf-8"
    assert out.as_bytes(policy=policy.SMTP).isascii()
    assert out.get_content().endswith(FOOTER_UTF8)


def test_base64_stays_base64() -> None:
    out = decorate(load("base64-utf8.eml"), lst(), FOOTER_UTF8)
    assert out["Content-Transfer-Encoding"] == "base64"
    assert out.get_content().endswith("Jürgen\n\n" + FOOTER_UTF8)
    body = out.as_bytes(policy=policy.SMTP).split(b"\r\n\r\n", 1)[1]
    assert all(len(line) <= 76 for line in body.split(b"\r\n"))


def test_empty_footer_changes_nothing() -> None:
    msg = load("alternative.eml")
    assert serialise(decorate(msg, lst(), "  \n")) == serialise(msg)


def test_decorate_does_not_modify_its_input() -> None:
    for name in ("plain.eml", "alternative.eml", "mixed-attachment.eml", "signed.eml"):
        msg = load(name)
        before = serialise(msg)
        decorate(msg, lst(), FOOTER)
        assert serialise(msg) == before, name


def test_mixed_gets_the_footer_in_its_text_and_keeps_the_attachment() -> None:
    out = decorate(load("mixed-attachment.eml"), lst(), FOOTER)
    parts = list(out.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "application/gzip"]
    assert parts[1].get_content() == load("mixed-attachment.eml").get_payload()[1].get_content()
    assert parts[0].get_content().endswith("\n" + FOOTER)


def test_mixed_gets_a_last_part_with_footer_placement_part() -> None:
    out = decorate(load("mixed-attachment.eml"), lst(footer_placement=FooterPlacement.part),
                   FOOTER)
    parts = list(out.iter_parts())
    assert [p.get_content_type() for p in parts] == \
        ["text/plain", "application/gzip", "text/plain"]
    assert parts[1].get_content() == load("mixed-attachment.eml").get_payload()[1].get_content()
    assert parts[2].get_content() == FOOTER


def test_alternative_gets_the_footer_in_both_bodies() -> None:
    out = decorate(load("alternative.eml"), lst(), FOOTER)
    assert out.get_content_type() == "multipart/alternative"
    plain, html = out.iter_parts()
    assert plain.get_content().endswith("\n" + FOOTER)
    body = html.get_content()
    assert '<div class="list-footer">-- <br>' in body
    assert body.index('class="list-footer"') < body.index("</body>")
    assert "dev-leave@example.org</div>" in body


def test_html_footer_is_escaped() -> None:
    from listserv.message.decorate import html_footer
    assert html_footer("<b>x</b> & y\n") == '\n<div class="list-footer">&lt;b&gt;x&lt;/b&gt; &amp; y</div>\n'


def test_alternative_is_wrapped_in_mixed_with_footer_placement_part() -> None:
    out = decorate(load("alternative.eml"), lst(footer_placement=FooterPlacement.part), FOOTER)
    assert out.get_content_type() == "multipart/mixed"
    first, second = out.iter_parts()
    assert first.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert second.get_content() == FOOTER
    assert out["Subject"] == "Release notes draft" and out["MIME-Version"] == "1.0"
    assert "Content-Type" not in [k for k, _ in first.items() if k != "Content-Type"]


def _signed_region(wire: bytes, boundary: bytes) -> bytes:
    """The bytes a multipart/signed signature covers: its first body part (RFC 1847)."""
    delim = b"\r\n--" + boundary
    start = wire.index(delim) + len(delim)
    start = wire.index(b"\r\n", start) + 2
    end = wire.index(delim, start)
    return wire[start:end]


@pytest.mark.parametrize("name, boundary", [("signed.eml", b"sig-b"),
                                            ("encrypted.eml", b"enc-b")])
def test_signed_and_encrypted_parts_survive_byte_for_byte(name: str, boundary: bytes) -> None:
    original = load(name).as_bytes(policy=policy.SMTP)
    view = lst()
    out = decorate(transforms.prepare(load(name), view, resolve_txt=FakeDNS()), view, FOOTER)
    wire = out.as_bytes(policy=policy.SMTP)
    assert _signed_region(wire, boundary) == _signed_region(original, boundary)
    again = parse(wire)
    first, footer = again.iter_parts()
    assert first.get_content_type() == load(name).get_content_type()
    assert footer.get_content().replace("\r\n", "\n") == FOOTER


def test_boundary_is_deterministic_and_absent_from_content() -> None:
    part = lst(footer_placement=FooterPlacement.part)
    a = decorate(load("alternative.eml"), part, FOOTER)
    b = decorate(load("alternative.eml"), part, FOOTER)
    assert a.get_boundary() == b.get_boundary()
    body = a.get_payload()[0].as_bytes()
    assert a.get_boundary().encode() not in body
    assert re.fullmatch(r"=_[0-9a-f]{32}", a.get_boundary())


def test_undecodable_text_is_wrapped_not_corrupted() -> None:
    msg = load("plain.eml")
    msg.replace_header("Content-Type", "text/plain; charset=x-unknown-charset")
    out = decorate(msg, lst(), FOOTER)
    assert out.get_content_type() == "multipart/mixed"
    assert out.get_payload()[0].get_payload() == msg.get_payload()


@pytest.mark.parametrize("content_type", [None, "text/plain; charset=us-ascii",
                                          "text/plain; charset=utf-8", "text/html"])
def test_undecodable_8bit_body_is_wrapped_byte_for_byte(content_type: str | None) -> None:
    # Unlabelled or mislabelled Latin-1 from an old mailer: append_to_text gives up and the
    # body is wrapped; its bytes must survive (they used to become U+FFFD and crash).
    head = "From: a@example.com\r\nTo: dev@example.org\r\nSubject: caf\xe9\r\n"
    if content_type:
        head += f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n"
    raw = (head + "\r\nna\xefve body\r\n").encode("latin-1")
    out = decorate(parse(raw), lst(), FOOTER)
    wire = out.as_bytes(policy=policy.SMTP)
    assert out.get_content_type() == "multipart/mixed"
    first, footer = out.iter_parts()
    assert first.get_payload(decode=True) == b"na\xefve body\r\n"
    assert b"na\xefve body" in wire
    assert footer.get_content() == FOOTER


@pytest.mark.parametrize("archive, listen, expected", [
    (ArchivePolicy.public, "127.0.0.1:8080",
     "<https://lists.example.org/lists/dev@example.org/archive/>"),
    (ArchivePolicy.public, "", INDEX_LINK),               # no web side: archive by mail
    (ArchivePolicy.private, "127.0.0.1:8080", INDEX_LINK),  # private archives are not served
    (ArchivePolicy.none, "127.0.0.1:8080", None),
])
def test_list_archive_names_the_web_archive_when_served(  # type: ignore[no-untyped-def]
        archive, listen, expected) -> None:
    from listserv.delivery import unsubscribe
    from listserv.core.config import WebSettings
    from listserv.web.archive import Urls

    web = WebSettings(listen=listen, base_url="https://lists.example.org/")
    lv = unsubscribe.with_web(lst(archive=archive), web)
    out = transforms.prepare(load("plain.eml"), lv, resolve_txt=FakeDNS())
    assert out.get("List-Archive") == expected
    if archive is ArchivePolicy.public and listen:   # the URL the pages themselves use
        assert lv.archive_url == Urls("https://lists.example.org", lv.address).archive()
    assert out.get("List-Unsubscribe") == ("<https://lists.example.org/leave/dev@example.org>, "
                                           "<mailto:dev-leave@example.org>")
