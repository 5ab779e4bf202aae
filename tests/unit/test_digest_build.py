"""The pure digest builders: MIME (RFC 2046) and plain text (RFC 1153), part by part."""

from __future__ import annotations

import datetime as dt
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from listserv.digests.build import (
    DigestItem,
    body_blocks,
    build_mime_digest,
    build_plain_digest,
    html_to_text,
    plain_message_text,
)
from listserv.core.models import ArchivePolicy, DigestFrequency, DmarcMitigation, ReplyTo
from listserv.core.views import ListView

DATE = dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.timezone.utc)
LST = ListView(id=1, name="dev", domain="example.org", display_name="Dev",
               subject_prefix="[Dev] ", reply_to=ReplyTo.poster,
               dmarc_mitigation=DmarcMitigation.none, archive=ArchivePolicy.private,
               digest_frequency=DigestFrequency.daily, post_id=3, dkim_selector=None,
               dkim_key=None)


def post(n: int, body: str = "", *, sender: str = "Alice <alice@example.com>",
         extra: dict[str, str] | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "dev@example.org"
    msg["Subject"] = f"[Dev] Topic {n}"
    msg["Date"] = "Mon, 02 Nov 2026 08:00:00 +0000"
    msg["Message-ID"] = f"<post{n}@example.com>"
    msg["Received"] = "from somewhere by somewhere"
    msg["List-Id"] = "<dev.example.org>"
    for k, v in (extra or {}).items():
        msg[k] = v
    msg.set_content(body or f"Body of post {n}.\n")
    return msg


def text(part: object) -> str:
    """Decoded text content, line ends normalised (7bit parts keep the wire's CRLF)."""
    return str(part.get_content()).replace("\r\n", "\n")  # type: ignore[attr-defined]


def roundtrip(msg: EmailMessage) -> EmailMessage:
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    return message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


@pytest.fixture
def items() -> list[DigestItem]:
    return [DigestItem(i, post(i)) for i in (1, 2, 3)]


def test_mime_digest_structure(items: list[DigestItem], tmp_path: Path) -> None:
    msg = roundtrip(build_mime_digest(items, LST, 1, 7, date=DATE, data_dir=str(tmp_path)))
    assert msg["Subject"] == "Dev Digest, Vol 1, Issue 7"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Precedence"] == "list"
    assert msg["List-Id"] == "Dev <dev.example.org>"
    for h in ("List-Post", "List-Help", "List-Subscribe", "List-Unsubscribe", "List-Owner"):
        assert msg[h].startswith("<mailto:") and "example.org" in msg[h], h
    assert msg["From"] == "Dev <dev-request@example.org>"
    assert msg.get_content_type() == "multipart/mixed"
    toc, digest, footer = msg.iter_parts()
    assert toc.get_content_type() == "text/plain"
    toc_text = text(toc)
    assert "Today's Topics (3 messages)" in toc_text
    assert "  1. Topic 1 (Alice)" in toc_text and "  3. Topic 3 (Alice)" in toc_text
    assert "[Dev]" not in toc_text.split("Today's Topics")[1]
    assert digest.get_content_type() == "multipart/digest"
    parts = list(digest.iter_parts())
    assert [p.get_content_type() for p in parts] == ["message/rfc822"] * 3
    inner = [p.get_content() for p in parts]
    assert [m["Message-ID"] for m in inner] == ["<post1@example.com>", "<post2@example.com>",
                                               "<post3@example.com>"]
    assert text(inner[1]) == "Body of post 2.\n"
    assert footer.get_content_type() == "text/plain"
    assert footer["Content-Description"] == "Digest Footer"
    assert "dev-leave@example.org" in text(footer)


def test_plain_digest_rfc1153_layout(items: list[DigestItem], tmp_path: Path) -> None:
    msg = roundtrip(build_plain_digest(items, LST, 2, 1, date=DATE, data_dir=str(tmp_path)))
    assert msg["Subject"] == "Dev Digest, Vol 2, Issue 1"
    assert msg.get_content_type() == "text/plain" and not msg.is_multipart()
    assert msg["List-Unsubscribe"] == "<mailto:dev-leave@example.org>"
    body = text(msg)
    preamble, sep, rest = body.partition("\n" + "-" * 70 + "\n\n")
    assert sep, "preamble must end with 70 hyphens and a blank line"
    assert preamble.splitlines()[0].startswith("Dev Digest")
    assert "Volume 2 : Issue 1" in preamble.splitlines()[0]
    assert "Today's Topics:" in preamble and "  2. Topic 2 (Alice)" in preamble
    chunks = rest.split("\n\n" + "-" * 30 + "\n\n")
    # three messages, the footer pseudo-message, then the trailer
    assert len(chunks) == 5
    first = chunks[0].splitlines()
    assert first[:5] == ["Date: Mon, 02 Nov 2026 08:00:00 +0000",
                         "From: Alice <alice@example.com>", "To: dev@example.org",
                         "Subject: [Dev] Topic 1", "Message-ID: <post1@example.com>"]
    assert first[5] == "" and first[6] == "Body of post 1."
    assert "Received" not in rest and "List-Id" not in rest
    assert chunks[3].startswith("Subject: Digest Footer\n\n")
    trailer = chunks[4].rstrip("\n").splitlines()
    assert trailer == ["End of Dev Digest, Vol 2, Issue 1", "*" * len(trailer[0])]


def test_plain_headers_in_rfc1153_order(tmp_path: Path) -> None:
    m = post(1, extra={"Keywords": "k1", "Cc": "bob@example.com", "Summary": "short",
                       "X-Other": "dropped"})
    head = plain_message_text(m).split("\n\n")[0].splitlines()
    assert [h.split(":")[0] for h in head] == ["Date", "From", "To", "Cc", "Subject",
                                              "Message-ID", "Keywords", "Summary"]


def test_plain_summarises_attachments_and_keeps_text() -> None:
    m = post(1, "See the attached picture.\n")
    m.add_attachment(b"\x89PNG" + b"\0" * 2044, maintype="image", subtype="png",
                     filename="cat.png")
    m.add_attachment(b"%PDF" * 700, maintype="application", subtype="pdf", filename="a.pdf")
    out = plain_message_text(roundtrip(m))
    assert "See the attached picture." in out
    assert "[attachment: cat.png, image/png, 2.0 KB]" in out
    assert "[attachment: a.pdf, application/pdf, 2.7 KB]" in out
    assert "PNG" not in out.replace("image/png", "")


def test_plain_alternative_prefers_text_and_html_only_is_converted() -> None:
    m = post(1, "plain version\n")
    m.add_alternative("<p>html <b>version</b></p>", subtype="html")
    assert [b.replace("\r\n", "\n") for b in body_blocks(roundtrip(m))] == ["plain version\n"]
    h = EmailMessage()
    h["Subject"] = "x"
    h.set_content("<html><head><style>p{}</style></head><body><p>Hello &amp; bye</p>"
                  "<script>x()</script></body></html>", subtype="html")
    assert body_blocks(roundtrip(h)) == ["Hello & bye"]
    assert html_to_text("<ul><li>a</li><li>b</li></ul>") == "  * a\n  * b"


def test_plain_escapes_separator_lines_in_bodies(tmp_path: Path) -> None:
    body = "before\n" + "-" * 30 + "\nafter\n"
    msg = build_plain_digest([DigestItem(1, post(1, body))], LST, 1, 1, date=DATE,
                             data_dir=str(tmp_path))
    out = text(roundtrip(msg))
    assert "\n " + "-" * 29 + "\n" in out
    # exactly two real separators: after the message and after the footer
    assert out.count("\n" + "-" * 30 + "\n") == 2


def test_non_ascii_content_survives(tmp_path: Path) -> None:
    items = [DigestItem(1, post(1, "Grüße aus Köln — ☃\n", sender="Zoë <zoe@example.com>"))]
    plain = roundtrip(build_plain_digest(items, LST, 1, 1, date=DATE, data_dir=str(tmp_path)))
    assert "Grüße aus Köln — ☃" in text(plain)
    assert "(Zoë)" in text(plain)
    mime = roundtrip(build_mime_digest(items, LST, 1, 1, date=DATE, data_dir=str(tmp_path)))
    inner = list(list(mime.iter_parts())[1].iter_parts())[0].get_content()
    assert text(inner) == "Grüße aus Köln — ☃\n"


def test_site_override_of_digest_footer(items: list[DigestItem], tmp_path: Path) -> None:
    site = tmp_path / "templates" / "lists" / "dev@example.org" / "digest"
    site.mkdir(parents=True)
    (site / "footer.txt.j2").write_text(
        "Custom footer {{ list.address }}\n")
    msg = roundtrip(build_mime_digest(items, LST, 1, 1, date=DATE, data_dir=str(tmp_path)))
    assert text(list(msg.iter_parts())[2]) == "Custom footer dev@example.org\n"


@pytest.mark.parametrize("build", [build_mime_digest, build_plain_digest])
def test_digests_carry_list_archive_when_archived(build, items: list[DigestItem],  # type: ignore[no-untyped-def]
                                                  tmp_path: Path) -> None:
    msg = roundtrip(build(items, LST, 1, 1, date=DATE, data_dir=str(tmp_path)))
    assert msg["List-Archive"] == "<mailto:dev-request@example.org?subject=index>"
    unarchived = ListView(**{**LST.__dict__, "archive": ArchivePolicy.none})
    msg = roundtrip(build(items, unarchived, 1, 1, date=DATE, data_dir=str(tmp_path)))
    assert "List-Archive" not in msg
