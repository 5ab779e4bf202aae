"""DKIM signing through OpenSSL, checked against dkimpy itself."""

from __future__ import annotations

import subprocess
import time
from email import policy

import dkim
import pytest

from listserv.message import signing, transforms
from tests.unit.transforms_cases import FOOTER, FakeDNS, load, lst

DOMAIN, SELECTOR = "example.org", "s2026"
T = 1_793_610_000


@pytest.fixture(scope="module")
def key() -> str:
    return signing.generate_key()


@pytest.fixture(scope="module")
def other_key() -> str:
    return signing.generate_key()


_records: dict[str, str] = {}


def record(key: str) -> str:
    if key not in _records:
        _records[key] = signing.dns_record(key)
    return _records[key]


def dns_for(*pairs: tuple[str, str]):  # type: ignore[no-untyped-def]
    records = {f"{sel}._domainkey.{dom}": rec for (sel, dom), rec in
               ((p[0].split("|"), p[1]) for p in pairs)}
    asked: list[str] = []

    def lookup(name: str) -> str | None:
        asked.append(name)
        return records.get(name)
    lookup.asked = asked  # type: ignore[attr-defined]
    return lookup


MESSAGES = [
    b"From: a@example.org\r\nTo: dev@example.org\r\nSubject: hi\r\n\r\nbody\r\n",
    b"From: a@example.org\nSubject: LF only\nList-Id: Dev <dev.example.org>\n\nline 1\n\n\n",
    b"From: a@example.org\r\nSubject: folded\r\n  over   lines\r\nTo: x@y.z,\r\n\t w@v.u\r\n"
    b"\r\n  trailing  space \r\n\r\n",
    b"From: a@example.org\r\nSubject: empty body\r\n\r\n",
    b"From: a@example.org\r\nFrom: b@example.org\r\nReceived: x\r\nSubject: two froms\r\n\r\nb\r\n",
]


@pytest.mark.parametrize("data", MESSAGES)
def test_byte_identical_to_dkimpy(data: bytes, key: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(time, "time", lambda: T)
    reference = signing.sign_dkimpy(data, DOMAIN, SELECTOR, key)
    ours = signing.Signer(DOMAIN, SELECTOR, key).sign(data)
    assert ours == reference


def test_signature_verifies_with_dkimpy(key: str) -> None:
    dns = dns_for((f"{SELECTOR}|{DOMAIN}", record(key)))
    signed = signing.sign(MESSAGES[0], DOMAIN, SELECTOR, key)
    assert signed.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;")
    assert signing.verify(signed, dns)
    assert dns.asked == [f"{SELECTOR}._domainkey.{DOMAIN}"]
    # dkimpy's own verify agrees (its dnsfunc convention: bytes name, timeout keyword)
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record(key).encode())


def test_tampering_and_wrong_keys_fail(key: str, other_key: str) -> None:
    good = dns_for((f"{SELECTOR}|{DOMAIN}", record(key)))
    signed = signing.sign(MESSAGES[0], DOMAIN, SELECTOR, key)
    assert not signing.verify(signed.replace(b"body", b"b0dy"), good)
    assert not signing.verify(signed.replace(b"Subject: hi", b"Subject: ho"), good)
    assert not signing.verify(signed, dns_for((f"{SELECTOR}|{DOMAIN}",
                                               record(other_key))))
    assert not signing.verify(signed, lambda name: None)
    assert not signing.verify(MESSAGES[0], good)   # no signature at all


def test_dnsfunc_may_answer_bytes_or_a_list(key: str) -> None:
    signed = signing.sign(MESSAGES[0], DOMAIN, SELECTOR, key)
    rec = record(key)
    assert signing.verify(signed, lambda name: rec.encode())
    assert signing.verify(signed, lambda name: [rec])


def test_verified_domains(key: str, other_key: str) -> None:
    dns = dns_for((f"{SELECTOR}|{DOMAIN}", record(key)),
                  (f"k|poster.example", record(other_key)))
    once = signing.Signer("poster.example", "k", other_key).sign(MESSAGES[0])
    twice = signing.sign(once, DOMAIN, SELECTOR, key)
    assert signing.verified_domains(twice, dns) == ["example.org", "poster.example"]
    forged = signing.Signer("poster.example", "k", key).sign(MESSAGES[0])  # wrong key
    assert signing.verified_domains(forged, dns) == []
    assert signing.verified_domains(MESSAGES[0], dns) == []


def test_identical_content_is_signed_once(key: str) -> None:
    s = signing.Signer(DOMAIN, SELECTOR, key)
    a = s.sign(MESSAGES[0])
    b = s.sign(MESSAGES[0])
    assert a == b and s.signatures == 1
    s.sign(MESSAGES[3])
    assert s.signatures == 2


def test_per_recipient_variants_share_the_body_hash(key: str) -> None:
    s = signing.Signer(DOMAIN, SELECTOR, key)
    body = b"\r\n" + b"same body line\r\n" * 50
    for i in range(5):
        s.sign(b"From: a@example.org\r\nTo: r%d@example.com\r\n" % i + body)
    assert s.signatures == 5 and len(s._bodies) == 1


def test_cache_is_bounded(key: str) -> None:
    s = signing.Signer(DOMAIN, SELECTOR, key)
    s.cache_size = 3
    for i in range(10):
        s.sign(b"From: a@example.org\r\nSubject: %d\r\n\r\nx\r\n" % i)
    assert len(s._cache) == 3


def test_module_sign_reuses_one_signer_per_key(key: str) -> None:
    assert signing.signer(DOMAIN, SELECTOR, key) is signing.signer(DOMAIN, SELECTOR, key)


def test_from_must_be_signed_and_key_must_be_rsa(key: str) -> None:
    from listserv.core.errors import UsageError
    with pytest.raises(UsageError):
        signing.Signer(DOMAIN, SELECTOR, key, include_headers=[b"Subject"])


def test_a_multi_prime_key_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # A 3-prime RSA-2048 key makes ordinary PKCS#1 v1.5 signatures, but `cryptography` does
    # not load multi-prime keys, and OpenSSL 3.0 signs with them more slowly than with two
    # primes (no fast path): listserv neither makes nor takes them (README).
    from listserv.core.errors import UsageError
    pem = tmp_path / "k3.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-pkeyopt", "rsa_keygen_primes:3", "-out", str(pem)],
                   check=True, capture_output=True)
    with pytest.raises(UsageError):
        signing.load_key(pem.read_text())


@pytest.mark.parametrize("name", ["plain.eml", "alternative.eml", "signed.eml",
                                  "koi8r-8bit.eml", "dmarc-reject.eml", "base64-utf8.eml"])
def test_prepared_and_decorated_posts_verify(name: str, key: str) -> None:
    view = lst(dkim_selector=SELECTOR, dkim_key=key)
    out = transforms.decorate(transforms.prepare(load(name), view, resolve_txt=FakeDNS()),
                              view, FOOTER)
    wire = signing.sign(out.as_bytes(policy=policy.SMTP), DOMAIN, SELECTOR, key)
    dns = dns_for((f"{SELECTOR}|{DOMAIN}", record(key)))
    assert signing.verify(wire, dns)
    checker = dkim.DKIM(wire)
    assert checker.verify(dnsfunc=lambda n, timeout=5: record(key).encode())
    assert {b"from", b"subject", b"list-id", b"list-unsubscribe"} <= set(checker.include_headers)


COPY_NAMES = (b"List-Unsubscribe", b"List-Unsubscribe-Post")


@pytest.mark.parametrize("data", MESSAGES[:4])   # dkimpy fails any message with two From
@pytest.mark.parametrize("include", [signing.SIGNED_HEADERS,
                                     # oversigned: the second From/List-Unsubscribe
                                     # pick earlier instances (or none)
                                     [b"From", b"List-Unsubscribe", b"Subject", b"From",
                                      b"List-Unsubscribe", b"List-Unsubscribe-Post"]])
def test_copies_differing_in_own_fields_verify_with_dkimpy(  # type: ignore[no-untyped-def]
        data: bytes, include, key: str) -> None:
    s = signing.Signer(DOMAIN, SELECTOR, key, include)
    crlf = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    end = crlf.index(b"\r\n\r\n") + 2
    head, rest = crlf[:end], crlf[end:]
    copies = s.for_copies(s.parse_header_block(head), s.body_hash(rest[2:]), COPY_NAMES)
    dns = dns_for((f"{SELECTOR}|{DOMAIN}", record(key)))
    made = set()
    for i, stamp in enumerate((T, T, T + 1, None)):
        values = [b" <https://lists.example.org/u/tok%d>,\r\n  <mailto:dev-leave+tok%d@"
                  b"example.org>\r\n" % (i, i), b"  List-Unsubscribe=One-Click \r\n"]
        own = head + b"List-Unsubscribe:" + values[0] + b"List-Unsubscribe-Post:" + values[1]
        sig = copies.signature(values, stamp)
        copy = sig + own + rest
        assert dkim.verify(copy, dnsfunc=signing._dkimpy_dnsfunc(dns)), (i, copy)
        made.add(sig)
        # each copy's own fields are covered: another member's link breaks it
        other = copy.replace(b"tok%d" % i, b"tokX")
        assert not dkim.verify(other, dnsfunc=signing._dkimpy_dnsfunc(dns))
        # and the headers it shares with the others, and the body
        assert not dkim.verify(copy.replace(b"a@example.org", b"z@example.org", 1),
                               dnsfunc=signing._dkimpy_dnsfunc(dns))
        assert not dkim.verify(copy + b"more\r\n", dnsfunc=signing._dkimpy_dnsfunc(dns))
    assert len(made) == 4 and s.signatures == 4


def test_copy_signature_names_its_fields_in_h(key: str) -> None:
    s = signing.Signer(DOMAIN, SELECTOR, key)
    copies = s.for_copies(s.parse_header_block(b"From: a@example.org\r\n"),
                          s.body_hash(b"x\r\n"), COPY_NAMES)
    sig = copies.signature([b" <https://x.example/u/t>\r\n", b" List-Unsubscribe=One-Click\r\n"],
                           T)
    tags = dkim.util.parse_tag_value(sig.split(b":", 1)[1])
    h = {x.strip().lower() for x in tags[b"h"].split(b":")}
    assert {b"list-unsubscribe", b"list-unsubscribe-post", b"from"} <= h
    assert tags[b"t"] == str(T).encode() and all(len(x) <= 78 for x in sig.split(b"\r\n"))
