"""Subject folding: decoding what we write yields exactly what we meant, for any Unicode."""

from __future__ import annotations

import copy
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from listserv.message import headers
from listserv.message.transforms import prefixed_subject


def roundtrip(text: str, name: str = "Subject") -> tuple[bytes, str]:
    msg = EmailMessage()
    msg[name] = headers.unstructured(name, text)
    msg.set_content("x\n")
    data = msg.as_bytes(policy=policy.SMTP)
    parsed = BytesParser(policy=policy.default).parsebytes(data)
    return data, str(parsed[name])


def header_lines(data: bytes, name: str = "Subject") -> list[bytes]:
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    start = next(i for i, line in enumerate(head) if line.startswith(name.encode() + b":"))
    out = [head[start]]
    for line in head[start + 1:]:
        if not line[:1] in (b" ", b"\t"):
            break
        out.append(line)
    return out


# Words of any script, symbols and punctuation, ASCII or not, some of them looking like
# encoded words; joined by single spaces as prefixed_subject leaves them.
WORD = st.one_of(
    st.text(st.characters(codec="ascii", categories=["L", "N", "P", "S"]), min_size=1,
             max_size=15),
    st.text(st.characters(categories=["L", "M", "N", "P", "S"], exclude_characters="\x85"),
            min_size=1, max_size=15),
    st.sampled_from(["—", "Übersicht", "=?utf-8?q?x?=", "日本語", "🎉", "e\u0301", "?=", "_"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(WORD, min_size=0, max_size=25),
       st.sampled_from(["[dev] ", "[Entwickler·Übersicht] ", "(dev) ", "[{list}] "]))
@example(["00000000000", "000000000000", "000000000000", "000000000000", "¡"], "[dev] ")
@example(["Treffen", "—", "Übersicht"], "[dev] ")
def test_prefixed_subject_decodes_exactly(words: list[str], prefix: str) -> None:
    original = " ".join(words)
    wanted = prefixed_subject(original, prefix)
    data, got = roundtrip(wanted)
    assert got == wanted, data
    unfolded = b"".join(header_lines(data)).decode()[len("Subject:"):].lstrip(" ")
    assert str(make_header(decode_header(unfolded))) == wanted
    assert all(len(line) <= 78 for line in header_lines(data)), data


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
               max_size=120))
def test_any_text_with_any_spacing_decodes_exactly(text: str) -> None:
    data, got = roundtrip(text)
    if text.strip(" \t"):
        assert got == text, data


@pytest.mark.parametrize("text, lines", [
    ("[dev] Treffen — Übersicht", [b"Subject: [dev] Treffen =?utf-8?q?=E2=80=94_=C3=9Cbersicht?="]),
    ("[dev] plain ascii", [b"Subject: [dev] plain ascii"]),
    ("[dev] 00000000000 000000000000 000000000000 000000000000 ¡",
     [b"Subject: [dev] 00000000000 000000000000 000000000000 000000000000",
      b" =?utf-8?q?=C2=A1?="]),
    ("[dev] Grüße aus Köln", [b"Subject: [dev] =?utf-8?q?Gr=C3=BC=C3=9Fe?= aus =?utf-8?q?K=C3=B6ln?="]),
])
def test_golden(text: str, lines: list[bytes]) -> None:
    data, got = roundtrip(text)
    assert got == text
    assert header_lines(data) == lines


def test_folded_value_survives_copy_and_reserialising() -> None:
    msg = EmailMessage()
    msg["Subject"] = headers.unstructured("Subject", "[dev] Treffen — Übersicht")
    twin = copy.deepcopy(msg)
    assert str(twin["Subject"]) == "[dev] Treffen — Übersicht"
    again = BytesParser(policy=policy.default).parsebytes(twin.as_bytes(policy=policy.SMTP))
    for _ in range(3):
        again = BytesParser(policy=policy.default).parsebytes(again.as_bytes(policy=policy.SMTP))
    assert str(again["Subject"]) == "[dev] Treffen — Übersicht"
