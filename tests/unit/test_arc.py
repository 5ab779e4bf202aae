"""arc.seal: the ARC set is dkimpy's, byte for byte, with the RSA done by OpenSSL."""

import dkim

from listserv.message import arc, signing
from listserv.core.models import ArchivePolicy, DigestFrequency, DmarcMitigation, ReplyTo
from listserv.core.views import ListView

KEY = signing.generate_key()
LV = ListView(id=1, name="dev", domain="lists.example.org", display_name="Dev",
              subject_prefix="", reply_to=ReplyTo.poster, dmarc_mitigation=DmarcMitigation.none,
              archive=ArchivePolicy.none, digest_frequency=DigestFrequency.never, post_id=1,
              dkim_selector="s1", dkim_key=KEY)
DATA = (b"From: a@b.example\r\nTo: dev@lists.example.org\r\nSubject: hi\r\n"
        b"Message-ID: <x@y>\r\nList-Id: <dev.lists.example.org>\r\n"
        b"List-Unsubscribe: <mailto:dev-leave+t1@lists.example.org>\r\n\r\nHello.\r\n")


def dns(name: bytes, timeout: int = 5) -> bytes:
    return signing.dns_record(KEY).encode() if name.startswith(b"s1._domainkey.") else b""


def test_seal_equals_dkimpy_and_verifies() -> None:
    sealed = arc.seal(DATA, LV, ["dkim=none"], timestamp=1700000000)
    ar = b"Authentication-Results: lists.example.org;\r\n dkim=none\r\n"
    include = [b"From", b"To", b"Subject", b"Message-ID", b"List-Id"]
    reference = b"".join(dkim.arc_sign(ar + DATA, b"s1", b"lists.example.org", KEY.encode(),
                                       b"lists.example.org", include_headers=include,
                                       timestamp=1700000000))
    assert sealed == reference + DATA
    assert dkim.arc_verify(sealed, dnsfunc=dns)[0] == dkim.CV_Pass
    # a per-member header is outside the seal: another copy's value keeps it valid
    other = sealed.replace(b"dev-leave+t1@", b"dev-leave+t2@")
    assert dkim.arc_verify(other, dnsfunc=dns)[0] == dkim.CV_Pass
    assert dkim.arc_verify(sealed.replace(b"Hello.", b"Hullo."), dnsfunc=dns)[0] == dkim.CV_Fail


def test_no_key_no_seal() -> None:
    import dataclasses
    assert arc.seal(DATA, dataclasses.replace(LV, dkim_key=None), ["dkim=none"]) == DATA
