"""HTML mail as people will read it (pure, no DB).

    to_text(html) -> str        faithful plain text of an HTML body
    sanitise(html) -> str       HTML safe to show on our pages
    tree(html) / render(root)   the same in two steps (quoting cuts quotes in between)

to_text uses inscriptis, which lays out HTML as a browser would in text: paragraphs and
``<br>`` become line breaks, list items get bullets or numbers, table rows stay rows with
their cells side by side, headings stand on lines of their own and entities decode. We chose
it over html2text because html2text writes Markdown (``**bold**``, escaped ``\\*``, link
references) that readers of a plain digest would see as noise, and it lays tables out as
pipes; inscriptis is a maintained text renderer (Apache-2.0, lxml underneath).

sanitise uses nh3 (the Rust ammonia sanitiser): no scripts, styles, forms or event handlers,
no remote images (an ``<img>`` keeps only its alt text unless it names a ``cid:`` part), and every
link gets ``rel="nofollow noopener"``.
"""

from __future__ import annotations

import functools
import html as htmllib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lxml.html import HtmlElement

# lxml, inscriptis and nh3 (≈11 MB together) are imported by the first call that needs them:
# a daemon that sees no HTML mail and serves no archive page never loads them.

_BLANK_RUN = re.compile(r"\n{3,}")
_SPACE = re.compile(r"[ \t\u00a0]+")
# Whole-document parts that are never shown (nh3 works on fragments).
_HIDDEN = re.compile(r"<(head|style|script|title|xml)\b[^>]*>.*?</\1\s*>",
                     re.IGNORECASE | re.DOTALL)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_XML_DECL = re.compile(r"^\s*<\?xml[^>]*\?>", re.IGNORECASE)


def _tidy(text: str) -> str:
    lines = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ") \
            .split("\n"):
        line = line.rstrip()
        lines.append("-- " if line == "--" else line)    # the signature separator keeps its space
    text = _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text.strip() else ""


def _fallback(html: str) -> str:
    """Tags out, entities decoded: for input lxml cannot read at all."""
    text = _HIDDEN.sub("", _COMMENT.sub("", html))
    text = re.sub(r"<br\s*/?>|</(p|div|li|tr|h[1-6]|table)\s*>", "\n", text,
                  flags=re.IGNORECASE)
    text = re.sub(r"<[^>]*>", "", text)
    return "\n".join(_SPACE.sub(" ", htmllib.unescape(line)).strip()
                     for line in text.split("\n"))


@functools.cache
def _config() -> Any:
    from inscriptis.css_profiles import CSS_PROFILES
    from inscriptis.model.config import ParserConfig

    return ParserConfig(css=CSS_PROFILES["strict"], display_links=False, display_images=False)


def _tree(html: str) -> HtmlElement | None:
    import lxml.etree
    import lxml.html

    source = _XML_DECL.sub("", html or "").strip()
    if not source:
        return None
    try:
        root = lxml.html.document_fromstring(source)
    except lxml.etree.ParserError:
        root = lxml.html.document_fromstring("<pre>" + htmllib.escape(source) + "</pre>")
    for node in root.xpath("//comment() | //processing-instruction()"):
        _remove(node)
    # Word puts a <p> (with its paragraph margins) into every table cell: render cells'
    # paragraphs as plain lines so a table row stays one text row.
    for node in root.xpath("//td//p | //th//p"):
        node.tag = "div"
    # A link keeps its target in the text unless the text already shows it.
    for node in root.xpath("//a[@href]"):
        href = node.get("href", "").strip()
        label = node.text_content().strip()
        if href.lower().startswith(("http:", "https:")) and label \
                and href.rstrip("/") not in label:
            node.tail = f" <{href}>" + (node.tail or "")
    return root


def _remove(node: HtmlElement) -> None:
    """Remove a node but keep the text that follows it."""
    parent = node.getparent()
    if parent is None:
        return
    tail = node.tail
    prev = node.getprevious()
    parent.remove(node)
    if tail:
        if prev is not None:
            prev.tail = (prev.tail or "") + tail
        else:
            parent.text = (parent.text or "") + tail


def _render(root: HtmlElement | None) -> str:
    from inscriptis import Inscriptis

    return _tidy(Inscriptis(root, _config()).get_text()) if root is not None else ""


def to_text(html: str) -> str:
    """Plain text of an HTML body that keeps its structure. Never raises."""
    try:
        return _render(_tree(html))
    except Exception:  # noqa: BLE001 - lxml raises several types on broken markup
        return _tidy(_fallback(html or ""))


def tree(html: str) -> HtmlElement | None:
    """The parsed document (comments gone, links spelled out), for callers that cut parts of
    it before render(); None when there is nothing to parse."""
    return _tree(html)


def render(root: HtmlElement | None) -> str:
    return _render(root)


def remove(node: HtmlElement) -> None:
    _remove(node)


def _attribute_filter(tag: str, attr: str, value: str) -> str | None:
    if tag == "img" and attr == "src":
        # Remote images tell the sender who read the page, and when: never load them.
        return value if value.lower().startswith("cid:") else None
    return value


def sanitise(html: str) -> str:
    """HTML safe to embed in our pages. Never raises."""
    import nh3

    source = _HIDDEN.sub("", _COMMENT.sub("", _XML_DECL.sub("", html or "")))
    attributes = {tag: set(attrs) for tag, attrs in nh3.ALLOWED_ATTRIBUTES.items()}
    attributes.setdefault("a", set()).discard("rel")
    try:
        return nh3.clean(source, attributes=attributes, link_rel="nofollow noopener",
                         attribute_filter=_attribute_filter,
                         url_schemes={"http", "https", "mailto", "cid"},
                         clean_content_tags={"script", "style", "title", "textarea",
                                             "select"})
    except Exception:  # noqa: BLE001 - nh3 raises on odd arguments, never expected here
        return htmllib.escape(to_text(html))
