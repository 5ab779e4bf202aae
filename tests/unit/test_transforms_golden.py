"""Golden files: tests/data/in/*.eml through prepare()/decorate() -> tests/data/out/*.eml.

Regenerate after an intended change with LISTSERV_REGEN_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import copy
import os
from email import policy
from typing import Any, Callable

import pytest

from listserv.message import transforms
from listserv.core.models import ArchivePolicy, DmarcMitigation, FooterPlacement, ReplyTo
from tests.unit.transforms_cases import (
    DATA, FOOTER, FOOTER_UTF8, FakeDNS, load, lst, parse, serialise,
)

REGEN = os.environ.get("LISTSERV_REGEN_GOLDEN") == "1"


def prepare(**changes: Any) -> Callable:
    def run(msg):  # type: ignore[no-untyped-def]
        return transforms.prepare(msg, lst(**changes), resolve_txt=FakeDNS())
    return run


def prepare_and_decorate(footer: str = FOOTER, **changes: Any) -> Callable:
    def run(msg):  # type: ignore[no-untyped-def]
        view = lst(**changes)
        return transforms.decorate(transforms.prepare(msg, view, resolve_txt=FakeDNS()),
                                   view, footer)
    return run


def decorate_only(footer: str = FOOTER) -> Callable:
    return lambda msg: transforms.decorate(msg, lst(), footer)


def step(fn: Callable) -> Callable:
    return lambda msg: fn(copy.deepcopy(msg), lst(), transforms.Context(resolve_txt=FakeDNS()))


# case name (= output file) -> (input file, transform)
CASES: dict[str, tuple[str, Callable]] = {
    "plain.prepare": ("plain.eml", prepare()),
    "plain.decorate": ("plain.eml", decorate_only()),
    "plain.full": ("plain.eml", prepare_and_decorate()),
    "plain.archive-url": ("plain.eml", prepare(archive=ArchivePolicy.public,
                                               archive_url="https://lists.example.org/dev/")),
    "plain.reply-to-list": ("plain.eml", prepare(reply_to=ReplyTo.list)),
    "alternative.full": ("alternative.eml", prepare_and_decorate()),
    "alternative.part": ("alternative.eml",
                         prepare_and_decorate(footer_placement=FooterPlacement.part)),
    "alternative.utf8-footer": ("alternative.eml", prepare_and_decorate(FOOTER_UTF8)),
    "outlook-related.full": ("outlook-related.eml", prepare_and_decorate()),
    "mixed-alternative.full": ("mixed-alternative.eml", prepare_and_decorate()),
    "mixed-attachment.full": ("mixed-attachment.eml", prepare_and_decorate()),
    "signed.full": ("signed.eml", prepare_and_decorate()),
    "encrypted.full": ("encrypted.eml", prepare_and_decorate()),
    "base64-utf8.full": ("base64-utf8.eml", prepare_and_decorate(FOOTER_UTF8)),
    "qp-latin1.full": ("qp-latin1.eml", prepare_and_decorate()),
    "qp-latin1.utf8-footer": ("qp-latin1.eml", prepare_and_decorate(FOOTER_UTF8)),
    "koi8r-8bit.full": ("koi8r-8bit.eml", prepare_and_decorate()),
    "koi8r-8bit.utf8-footer": ("koi8r-8bit.eml", prepare_and_decorate(FOOTER_UTF8)),
    "plain.utf8-footer": ("plain.eml", prepare_and_decorate(FOOTER_UTF8)),
    "html-only.full": ("html-only.eml", prepare_and_decorate()),
    "html-only.part": ("html-only.eml",
                       prepare_and_decorate(footer_placement=FooterPlacement.part)),
    "subject-8bit.full": ("subject-8bit.eml", prepare_and_decorate()),
    "no-subject.full": ("no-subject.eml", prepare_and_decorate()),
    "subject-2047-plain.prefix": ("subject-2047-plain.eml", step(transforms.add_subject_prefix)),
    "subject-2047-prefixed.prefix": ("subject-2047-prefixed.eml",
                                     step(transforms.add_subject_prefix)),
    "re-chain.prefix": ("re-chain.eml", step(transforms.add_subject_prefix)),
    "subject-dash.full": ("subject-dash.eml", prepare_and_decorate()),
    "subject-long-unicode.full": ("subject-long-unicode.eml", prepare_and_decorate()),
    "inbound-headers.cleanse": ("inbound-headers.eml", step(transforms.cleanse)),
    "inbound-headers.strip-dkim": ("inbound-headers.eml", step(transforms.strip_dkim)),
    "inbound-headers.list-headers": ("inbound-headers.eml", step(transforms.add_list_headers)),
    "inbound-headers.prepare": ("inbound-headers.eml", prepare()),
    "inbound-headers.reply-to-list": ("inbound-headers.eml", prepare(reply_to=ReplyTo.list)),
    "dmarc-reject.munge": ("dmarc-reject.eml", prepare()),
    "dmarc-reject.munge-reply-to-list": ("dmarc-reject.eml", prepare(reply_to=ReplyTo.list)),
    "dmarc-reject.wrap": ("dmarc-reject.eml",
                          prepare_and_decorate(dmarc_mitigation=DmarcMitigation.wrap)),
    "dmarc-reject.none": ("dmarc-reject.eml", prepare(dmarc_mitigation=DmarcMitigation.none)),
    "plain.dmarc-p-none": ("plain.eml", prepare(dmarc_mitigation=DmarcMitigation.wrap)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    source, transform = CASES[case]
    original = (DATA / "in" / source).read_bytes()
    msg = load(source)
    out = serialise(transform(msg))
    assert (DATA / "in" / source).read_bytes() == original
    assert serialise(msg) == serialise(load(source)), "the input message was modified"
    golden = DATA / "out" / f"{case}.eml"
    if REGEN:
        golden.write_bytes(out)
    assert golden.exists(), f"missing {golden}; run with LISTSERV_REGEN_GOLDEN=1"
    assert out == golden.read_bytes()


@pytest.mark.parametrize("case", sorted(CASES))
def test_result_round_trips_through_smtp_bytes(case: str) -> None:
    """Every result serialises with policy.SMTP (CRLF) and re-parses to the same structure,
    headers and text."""
    source, transform = CASES[case]
    out = transform(load(source))
    wire = out.as_bytes(policy=policy.SMTP)
    assert b"\r\n" in wire and b"\n" not in wire.replace(b"\r\n", b"")
    again = parse(wire)
    assert not [d for d in again.defects if "Missing" in type(d).__name__]
    def headers(m):  # type: ignore[no-untyped-def]
        return [(k.lower(), " ".join(str(v).split())) for k, v in m.items()]
    for a, b in zip(again.walk(), out.walk()):
        assert headers(a) == headers(b)
    assert [p.get_content_type() for p in again.walk()] == \
        [p.get_content_type() for p in out.walk()]
    for a, b in zip(again.walk(), out.walk()):
        if a.get_content_maintype() == "text" and not a.is_multipart():
            assert a.get_content() .replace("\r\n", "\n") == b.get_content().replace("\r\n", "\n")
    for name in ("From", "Subject", "List-Id", "Reply-To", "Cc"):
        assert again.get(name) == out.get(name)


@pytest.mark.parametrize("case", sorted(CASES))
def test_crlf_input_gives_the_same_result(case: str) -> None:
    """Intake stores mail as received over SMTP (CRLF); the golden inputs are LF."""
    source, transform = CASES[case]
    raw = (DATA / "in" / source).read_bytes()
    crlf = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert transform(parse(crlf)).as_bytes(policy=policy.SMTP) == \
        transform(parse(raw)).as_bytes(policy=policy.SMTP)


def test_every_input_has_a_case() -> None:
    used = {source for source, _ in CASES.values()}
    assert {p.name for p in (DATA / "in").glob("*.eml")} <= used


def test_no_stale_golden_files() -> None:
    assert {p.stem for p in (DATA / "out").glob("*.eml")} <= set(CASES)
