"""ARC: each post is sealed once with the list domain's key; the seal carries the incoming
post's DKIM result and the trusted front MTA's results; an incoming chain is extended.
Posts go through the real intake and delivery to an SMTP sink; DNS is an injected resolver."""

from __future__ import annotations

import dataclasses
import re
from typing import Iterator

import dkim
import pytest

from listserv.admin import domains
from listserv.core import config
from listserv.message import signing
from listserv.core.app import App
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured, SmtpSink

LIST = "dev@lists.example.org"
MEMBERS = ["ann@a.example", "bob@b.example", "cy@c.example"]
POSTER_KEY = signing.generate_key()
FORWARDER_KEY = signing.generate_key()


class Dns:
    """TXT records of the test: the list's, the poster's and a forwarder's DKIM keys."""

    def __init__(self) -> None:
        self.txt = {
            "p1._domainkey.poster.example": signing.dns_record(POSTER_KEY),
            "f1._domainkey.forwarder.example": signing.dns_record(FORWARDER_KEY),
        }

    def __call__(self, name: str) -> list[str]:
        value = self.txt.get(name.rstrip(".").lower())
        return [value] if value else []

    def dkimpy(self, name: bytes, timeout: int = 5) -> bytes:
        got = self(name.decode())
        return got[0].encode() if got else b""


@pytest.fixture
def dns() -> Dns:
    return Dns()


@pytest.fixture
def h(app: App, sink: SmtpSink, dns: Dns) -> Iterator[Harness]:
    a = dataclasses.replace(app, resolve_txt=dns, settings=config.replace(
        app.settings, moderation__trusted_authserv_id="mx.lists.example.org"))
    make_list(a, LIST, members=MEMBERS, nonmember_action="accept")
    with a.db.unit_of_work() as session:
        d = domains.generate_dkim_key(session, "lists.example.org", "s1")
        dns.txt["s1._domainkey.lists.example.org"] = domains.txt_record(d)[1]
    harness = Harness(a, sink).start()
    yield harness
    harness.stop()


def signed_post(subject: str, **headers: str) -> bytes:
    msg = make_message("Poster <p@poster.example>", LIST, subject, "Hello list.\n", **headers)
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    return dkim.sign(data, b"p1", b"poster.example", POSTER_KEY.encode(),
                     include_headers=[b"From", b"To", b"Subject", b"Date", b"Message-ID"]) + data


def copies(h: Harness, subject: str) -> list[Captured]:
    h.run_until_idle()
    got = h.sink.wait_for(lambda ms: len([m for m in ms if subject in
                                          str(m.message["Subject"])]) >= len(MEMBERS))
    return [m for m in got if subject in str(m.message["Subject"])]


def arc_sets(data: bytes) -> dict[str, list[str]]:
    msg = Captured("", [], data).message
    return {n: [str(v) for v in msg.get_all(n, [])]
            for n in ("ARC-Seal", "ARC-Message-Signature", "ARC-Authentication-Results")}


def test_each_post_is_sealed_once_with_the_incoming_dkim_result(h: Harness, dns: Dns) -> None:
    h.send(signed_post("Sealed post"), mail_from="p@poster.example", rcpts=[LIST])
    got = copies(h, "Sealed post")
    seals = set()
    for m in got:
        cv, results, reason = dkim.arc_verify(m.data, dnsfunc=dns.dkimpy)
        assert cv == dkim.CV_Pass, (reason, results)
        sets = arc_sets(m.data)
        assert len(sets["ARC-Seal"]) == 1 and "i=1" in sets["ARC-Seal"][0]
        aar = sets["ARC-Authentication-Results"][0]
        assert re.search(r"i=1;\s*lists\.example\.org;\s*dkim=pass header\.d=poster\.example",
                         aar), aar
        assert "cv=none" in sets["ARC-Seal"][0].replace(" ", "")
        assert dkim.verify(m.data, dnsfunc=dns.dkimpy)       # the list's own DKIM too
        seals.add(sets["ARC-Seal"][0])
    assert len(seals) == 1            # one seal, shared by every copy


def test_an_incoming_chain_is_extended_and_trusted_results_carried(h: Harness,
                                                                   dns: Dns) -> None:
    post = signed_post("Forwarded post")
    # a forwarder before us sealed it (i=1), after its own front MTA's results
    ar = (b"Authentication-Results: forwarder.example; dkim=pass header.d=poster.example\r\n")
    arc_set = dkim.arc_sign(ar + post, b"f1", b"forwarder.example", FORWARDER_KEY.encode(),
                            b"forwarder.example")
    assert arc_set
    incoming = b"".join(arc_set) + post
    # our front MTA's verdict (trusted) and a forged one naming another host (ignored)
    incoming = (b"Authentication-Results: mx.lists.example.org; spf=pass "
                b"smtp.mailfrom=p@poster.example; dmarc=pass header.from=poster.example\r\n"
                b"Authentication-Results: evil.example; spf=pass smtp.mailfrom=x@evil.example\r\n"
                + incoming)
    h.send(incoming, mail_from="p@poster.example", rcpts=[LIST])
    for m in copies(h, "Forwarded post"):
        cv, results, reason = dkim.arc_verify(m.data, dnsfunc=dns.dkimpy)
        assert cv == dkim.CV_Pass, (reason, results)
        assert [r["instance"] for r in results] == [2, 1]
        sets = arc_sets(m.data)
        ours = next(v for v in sets["ARC-Authentication-Results"] if "i=2" in v)
        assert "arc=pass" in ours and "dkim=pass header.d=poster.example" in ours
        assert "spf=pass" in ours and "dmarc=pass" in ours and "evil.example" not in ours
        seal = next(v for v in sets["ARC-Seal"] if "i=2" in v)
        assert "cv=pass" in seal.replace(" ", "")
        assert any("i=1" in v and "d=forwarder.example" in v.replace(" ", "")
                   for v in sets["ARC-Seal"])


def test_arc_off_and_unsigned_posts(h: Harness, dns: Dns) -> None:
    h.send(make_message("p@poster.example", LIST, "Unsigned post"))
    for m in copies(h, "Unsigned post"):
        aar = arc_sets(m.data)["ARC-Authentication-Results"]
        assert len(aar) == 1 and "dkim=none" in aar[0]
        assert dkim.arc_verify(m.data, dnsfunc=dns.dkimpy)[0] == dkim.CV_Pass
    with h.app.db.unit_of_work() as session:
        from listserv.core.lists import get_list
        get_list(session, LIST).arc = False
    h.send(signed_post("Not sealed"), mail_from="p@poster.example", rcpts=[LIST])
    for m in copies(h, "Not sealed"):
        assert arc_sets(m.data)["ARC-Seal"] == []
        assert dkim.verify(m.data, dnsfunc=dns.dkimpy)
