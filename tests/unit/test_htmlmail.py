"""HTML mail as text (golden files of real client shapes) and sanitised for our pages."""

from __future__ import annotations

from pathlib import Path

import pytest

from listserv.message import htmlmail, quoting

HTML = Path(__file__).parent.parent / "data" / "html"
CASES = sorted(p.stem for p in HTML.glob("*.html"))


@pytest.mark.parametrize("name", CASES)
def test_to_text_golden(name: str) -> None:
    html = (HTML / f"{name}.html").read_text(encoding="utf-8")
    expected = (HTML / f"{name}.txt").read_text(encoding="utf-8")
    assert htmlmail.to_text(html) == expected


def test_golden_cases_cover_the_common_clients() -> None:
    assert {"outlook", "gmail", "apple", "phone"} <= set(CASES)


def test_outlook_keeps_structure_and_decodes_entities() -> None:
    text = htmlmail.to_text((HTML / "outlook.html").read_text(encoding="utf-8"))
    assert "&nbsp;" not in text and "&amp;" not in text
    assert "Thursday at 19:00 in Room 4 – please" in text
    assert " 1. Minutes of the last meeting\n 2. Budget & fundraising\n" in text
    assert "Who    Brings\nAnna   Coffee\nBjörn  Cake <homemade>\n" in text
    assert "Kind regards,\nOlivia\n" in text
    assert "font-family" not in text and "shapedefaults" not in text


def test_gmail_lists_headings_links_and_signature() -> None:
    text = htmlmail.to_text((HTML / "gmail.html").read_text(encoding="utf-8"))
    assert "  * Seeds arrived today\n" in text
    assert "shared sheet <https://docs.example.com/rota>" in text
    assert "\n\nNext steps\n\n" in text
    assert "\n-- \nSam Green\n" in text


@pytest.mark.parametrize("html, text", [
    ("", ""),
    ("   \n", ""),
    ("<p></p>", ""),
    ('<?xml version="1.0" encoding="utf-8"?><p>x&nbsp;y</p>', "x y\n"),
    ("<p>one</p><p>two</p>", "one\n\ntwo\n"),
    ("a<br>b<br/>c", "a\nb\nc\n"),
    ("<a href='https://x.example/'>https://x.example/</a>", "https://x.example/\n"),
    ("<b>R&eacute;sum&eacute;</b> &#x2014; &lt;ok&gt;", "Résumé — <ok>\n"),
])
def test_to_text_small(html: str, text: str) -> None:
    assert htmlmail.to_text(html) == text


def test_to_text_never_raises_on_garbage() -> None:
    for junk in ["\x00\x01<p>a", "<<<>>>", "<html><body><table><tr><td>", "</p>" * 50,
                 "<p>" * 2000, "\ud800 lone surrogate"]:
        assert isinstance(htmlmail.to_text(junk), str)
        assert isinstance(htmlmail.sanitise(junk), str)
        assert isinstance(quoting.html_reply_text(junk), str)


def test_html_reply_text_drops_quoted_originals() -> None:
    gmail = ('<div dir="ltr">Approved, thanks<br></div><br><div class="gmail_quote">'
             '<div dir="ltr" class="gmail_attr">On Tue, Dec 1, 2026 at 10:00 AM Dev list '
             '&lt;dev-owner@example.org&gt; wrote:<br></div><blockquote class="gmail_quote">'
             'reject<br>Held post</blockquote></div>')
    assert quoting.html_reply_text(gmail) == "Approved, thanks\n\n>\n"   # the quote: one line
    bottom = '<div><blockquote type="cite">the notice text</blockquote>discard</div>'
    assert quoting.typed_blocks(quoting.html_reply_text(bottom)) == [["discard"]]


def test_sanitise_removes_scripts_handlers_remote_images() -> None:
    out = htmlmail.sanitise(
        '<html><head><title>T</title><style>b{color:red}</style></head><body>'
        '<p onclick="steal()" style="position:fixed">Hi <a href="https://x.org" '
        'rel="opener">link</a> <a href="javascript:alert(1)">js</a>'
        '<img src="https://tracker.example/p.gif" alt="pixel"><img src="cid:logo" alt="logo">'
        '<script>alert(1)</script><iframe src="https://evil.example/"></iframe>'
        '<form action="https://evil.example/"><input name="pw"></form></p></body></html>')
    assert "script" not in out and "alert" not in out and "onclick" not in out
    assert "style" not in out and "<title" not in out and "color:red" not in out
    assert "iframe" not in out and "<form" not in out and "<input" not in out
    assert "tracker.example" not in out and 'alt="pixel"' in out
    assert 'src="cid:logo"' in out
    assert '<a href="https://x.org" rel="nofollow noopener">link</a>' in out
    assert "javascript" not in out
    assert "<p>Hi " in out
