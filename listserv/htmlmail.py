"""HTML mail as people will read it (pure, no DB).

    to_text(html) -> str        plain text of an HTML body (html2text, links kept inline)
    sanitise(html) -> str       HTML safe to show on our pages (nh3: no script, style, forms,
                                event handlers or remote images; links get rel=nofollow)
"""

from __future__ import annotations

import re

import html2text
import nh3

_BLANK_RUN = re.compile(r"\n{3,}")
_HIDDEN = re.compile(r"<(head|style|script|title)\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)

_TAGS = {"a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "div", "dl",
         "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins", "kbd", "li",
         "ol", "p", "pre", "q", "s", "small", "span", "strong", "sub", "sup", "table",
         "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul"}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"alt", "title"}, "td": {"colspan", "rowspan"},
               "th": {"colspan", "rowspan"}}


def to_text(html: str) -> str:
    """Plain text of an HTML body. Never raises."""
    if not (html or "").strip():
        return ""
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.ignore_emphasis = True
    try:
        text = converter.handle(html)
    except Exception:  # noqa: BLE001 - broken markup: tags out is still searchable text
        text = re.sub(r"<[^>]*>", " ", _HIDDEN.sub("", html))
    return _BLANK_RUN.sub("\n\n", text).strip("\n") + "\n"


def sanitise(html: str) -> str:
    """HTML that is safe to embed in a page: a whitelist of structural tags."""
    return nh3.clean(_HIDDEN.sub("", html or ""), tags=_TAGS, attributes=_ATTRIBUTES,
                     link_rel="nofollow noopener noreferrer",
                     url_schemes={"http", "https", "mailto"})
