"""What a person typed into a reply, without what their mail client added (pure, no DB).

    typed_blocks(text) -> list[list[str]]   the typed lines of a plain-text reply, in blocks
    command_word(line) -> (word, rest)      the word a typed line starts with
    html_reply_text(html) -> str            an HTML reply as text, quotes cut before rendering
    unflow(text, delsp) -> str              RFC 3676 format=flowed text as its paragraphs
    clean_line(line) -> str                 a line without zero-width marks, BOMs and odd spaces

Every reader of replies goes through these: moderation replies (modreply), confirmations and
``-request@`` commands (replies.command_lines). What a client adds and we leave out:

- quotes: ``>`` lines; in HTML the quote containers of Gmail (``gmail_quote``), Apple Mail and
  Thunderbird (``<blockquote type="cite">``, ``moz-cite-prefix``), Yahoo (``yahoo_quoted``),
  ProtonMail (``protonmail_quote``), Zoho (``zmail_extra``) and any ``<blockquote>``. Text typed
  below a quote is still read (bottom-posting).
- attribution lines above a quote, in the languages clients write them: "On ... wrote:",
  "Le ... a écrit :", "Am ... schrieb NAME <ADDR>:", "El ... escribió:", "Il ... ha scritto:",
  "Op ... schreef NAME:", "W dniu ... pisze:", "Em ... escreveu:", "DATE, NAME <ADDR>:" ...
- the original that Outlook-style clients carry unquoted below the reply: from its separator
  ("-----Original Message-----", "-----Ursprüngliche Nachricht-----", "___...___", "Begin
  forwarded message:") or its localised header block ("From:/Sent:/To:/Subject:",
  "De : / Envoyé : / À : / Objet :", "Von:/Gesendet:/An:/Betreff:", "De:/Enviado:/Para:/
  Asunto:" ...) on, nothing more is read; in HTML, from Outlook's ``divRplyFwdMsg``,
  ``appendonsend``, ``<hr>`` or ``border-top`` header block on.
- signatures: from a ``-- `` separator or a phone's "Sent from my iPhone" / "Get Outlook for
  iOS" / "Von meinem iPhone gesendet" line up to the next quote; in HTML Gmail's, Thunderbird's
  and Outlook mobile's signature containers.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from listserv.message import htmlmail

if TYPE_CHECKING:
    from lxml.html import HtmlElement

# Invisible characters that editors and phones put before words (BOM, zero-width space and
# joiners, direction marks, word joiner, soft hyphen): gone from every line we read.
_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u200c\u200d\u200e\u200f\u2060\u00ad"
                                    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))
_ODD_SPACE = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")


def clean_line(line: str) -> str:
    return _ODD_SPACE.sub(" ", line.translate(_INVISIBLE)).strip()


# What people or clients put before a command word: *bold*, _underline_, quotes, bullets.
_DECORATION = "*_\"'`“”‘’«»•·-–— \t"
_WORD = re.compile(r"([^\W\d_]+)(.*)$", re.DOTALL)


def strip_decoration(line: str) -> str:
    return clean_line(line).lstrip(_DECORATION)


def command_word(line: str) -> tuple[str, str]:
    """(the word a line starts with in lower case, the rest of the line); ('', '') when the
    line starts with no word, or with an address ("ok@example.org" is no "ok")."""
    m = _WORD.match(strip_decoration(line))
    if not m or m.group(2).startswith("@"):
        return "", ""
    return m.group(1).lower(), m.group(2)


# ---------------------------------------------------------------------------- plain text

# A phone's or webmail's signature line, in the languages clients use (short lines only: a
# longer line that starts so is prose).
_PHONE_SIGNATURE = re.compile(
    r"^(sent (from|with|via|using) |get outlook for |von meinem |gesendet (von|mit|vom) "
    r"|envoy[ée] (de|depuis|à partir de) |enviado (desde|do|de|a partir do) |inviato da "
    r"|verzonden (met|vanaf|van) |verstuurd (met|vanaf|van) |wysłane (z|ze) |skickat från "
    r"|sendt fra |lähetetty |отправлено (с|из) |从我的|寄件者|iphoneから送信)", re.IGNORECASE)
# Where an unquoted original starts: "-----Original Message-----" and its translations (any
# short text between runs of dashes), Outlook's underscore rule, forwarded-message lines.
_SEPARATOR = re.compile(
    r"^[*>\s]*(-{3,}|={3,})\s*[^-=\s][^-=]{0,120}?\s*(-{3,}|={3,})[*\s]*$"
    r"|^_{10,}$"
    r"|^(begin forwarded message|début du message (réexpédié|transféré)"
    r"|anfang der weitergeleiteten (nachricht|e-mail)|inicio del mensaje reenviado"
    r"|inizio messaggio inoltrato|begin doorgestuurd bericht|início da mensagem reencaminhada)"
    r"\s*:$", re.IGNORECASE)
_PGP_BEGIN = "-----BEGIN PGP SIGNED MESSAGE-----"
_PGP_SIGNATURE = "-----BEGIN PGP SIGNATURE-----"

# The header block of an original that Outlook-style clients copy below the reply.
_HEADER_FROM = re.compile(
    r"^[*\s]*(from|von|de|da|van|fra|från|od|от|lähettäjä|expéditeur|remitente|feladó|kimden"
    r"|发件人|寄件者|差出人|보낸 사람)[*\s]*[:：]", re.IGNORECASE)
_HEADER_DATE = re.compile(
    r"^[*\s]*(sent|date|gesendet|datum|envoyé|enviado( el| em)?|enviada em|fecha|inviato|data"
    r"|verzonden|sendt|skickat|wysłano|wysłane|odesláno|lähetetty|отправлено|дата|tarih"
    r"|发送时间|寄件日期|送信日時|보낸 날짜)[*\s]*[:：]", re.IGNORECASE)
_HEADER_OTHER = re.compile(
    r"^[*\s]*(to|an|à|a|para|aan|til|till|do|komu|vastaanottaja|кому|kime|cc|kopie|copie"
    r"|subject|betreff|objet|asunto|assunto|oggetto|onderwerp|emne|ämne|temat|předmět|aihe"
    r"|тема|konu|收件人|主题|主旨|件名|宛先|받는 사람|제목)[*\s]*[:：]", re.IGNORECASE)

# Attribution lines. The words clients use for "wrote" ...
_WROTE = (r"(?:\b(?:wrote|writes|said|schrieb|geschrieben|schrieben sie|a\s+écrit|nous a dit"
          r"|escribió|escreveu|schreef|het volgende geschreven|ha scritto|skrev|kirjoitti"
          r"|napisał(?:\(a\))?|napisała|pisze|napsal(?:\(a\))?|написал(?:\(а\))?|написала"
          r"|пише|yazdı|έγραψε|írta)(?!\w)|写道|寫道|がこう書きました|님이 작성)")
# ... and the words they start with ("On", "Le", "Am", "W dniu", "Il giorno", ...).
_LEAD = (r"(?:on|at|in message|am|le|el|il( giorno)?|op|den|em|w dniu|dnia|dne|dňa|på|pe"
         r"|в|у)\b")
# "On <date>, <someone> wrote:" (the strong form: read as an attribution wherever it is).
_ATTRIBUTION = re.compile(rf"^{_LEAD}.{{0,300}}?{_WROTE}[^:：]{{0,160}}[:：]\s*-*\s*$",
                          re.IGNORECASE)
# "<someone> wrote:", "<date> <someone> <addr>:" (weaker: only when a quote follows).
_WROTE_END = re.compile(rf"^.{{0,300}}{_WROTE}[^:：]{{0,160}}[:：]\s*$", re.IGNORECASE)
_DOMAIN = re.compile(r"[^\s<>@]+\.[^\s<>@]+")


def _date_address(text: str) -> bool:
    """Is ``text`` a date and an address ending in a colon ("2026-12-01 10:00 GMT, Jane
    <jane@x.example>:"): a digit within its first 121 characters, at most 200 more up to the
    address, then the address (optionally in <>, then a ")"), blanks and ":"? Worked out from
    the end in one pass: the regular expression this replaces (``^.{0,120}\\d.{0,200}<?ADDRESS
    >?\\)?\\s*:\\s*$``) tried every split of a long line, 27 ms for 400 digits, and a reply's
    every line is read for an attribution."""
    body = text.rstrip()
    if not body or body[-1] not in ":：":
        return False
    body = body[:-1].rstrip()
    return any(body.endswith(after) and _address_after(body[:len(body) - len(after)])
               for after in (">)", ")", ">", ""))    # ">?\)?" after the address


def _address_after(body: str) -> bool:
    """Does ``body`` end with an address whose start leaves a prefix that has a digit at
    index d <= 120 and is at most d + 201 characters long (no line break in it)?"""
    at = body.rfind("@")
    if at < 1 or not _DOMAIN.fullmatch(body, at + 1):
        return False
    start = at                                  # the local part: a run before the @
    while start > 0 and not (body[start - 1].isspace() or body[start - 1] in "<>@"):
        start -= 1
    if start == at:
        return False
    # the prefix is body[:j] for any j in [start, at - 1] (it may take the start of the
    # local part, or an "<" before it)
    newline = body.find("\n", 0, at)
    for d in range(min(121, at - 1)):
        if not body[d].isdecimal():
            continue
        low, high = max(start - (body[start - 1:start] == "<"), d + 1), min(d + 201, at - 1)
        if low <= high and (newline < 0 or newline >= low):
            return True
    return False

_ENDS_WITH_ADDRESS = re.compile(r"^[^:]*\S@[^\s@]+\.[^\s@]+$")
# Where a wrapped attribution may start: its lead word, a date, a weekday before a date.
_ATTRIBUTION_START = re.compile(rf"^({_LEAD}|\W*\d|[^\W\d_]{{1,5}}\.?,?\s+\d)", re.IGNORECASE)


def _is_quoted(line: str) -> bool:
    return clean_line(line).startswith(">")


def _next_text(lines: list[str], i: int) -> int:
    while i < len(lines) and not clean_line(lines[i]):
        i += 1
    return i


def _quote_follows(lines: list[str], i: int) -> bool:
    after = _next_text(lines, i)
    return after >= len(lines) or _is_quoted(lines[after])


def attribution(lines: list[str], i: int) -> int:
    """How many lines (1 to 3: clients wrap long ones) an attribution at ``i`` takes; 0."""
    first = clean_line(lines[i])
    for n in (1, 2, 3):
        if n > 1:
            last = clean_line(lines[i + n - 1]) if i + n - 1 < len(lines) else ""
            if not last or last.startswith(">") or not _continues(first, last):
                return 0
        text = " ".join(clean_line(x) for x in lines[i:i + n])
        if len(text) > 400:
            return 0
        if _ATTRIBUTION.match(text):
            return n
        if (_WROTE_END.match(text) or _date_address(text)) \
                and _quote_follows(lines, i + n):
            return n
    return 0


def _continues(first: str, last: str) -> bool:
    """``last`` goes on with the attribution that ``first`` starts (clients wrap long ones:
    the address after "<", the "wrote:" or "<address> wrote:" on a line of its own)."""
    return first.endswith("<") or bool(_ATTRIBUTION_START.match(first)) \
        or bool(_ENDS_WITH_ADDRESS.match(first)) or bool(re.match(r"^\(?<[^<>\s]+@", last))


def header_block(lines: list[str], i: int) -> bool:
    """An original's header block starts at ``i``: a From line, then a date line within four
    lines or two more header lines within six."""
    if not _HEADER_FROM.match(clean_line(lines[i])):
        return False
    following = [clean_line(x) for x in lines[i + 1:i + 7]]
    if any(_HEADER_DATE.match(x) for x in following[:4]):
        return True
    return sum(1 for x in following if _HEADER_DATE.match(x) or _HEADER_OTHER.match(x)) >= 2


def _signature_start(raw: str, line: str) -> bool:
    return raw.rstrip() == "--" or raw.startswith("-- ") or line in ("--", "—", "-- ") \
        or (len(line) <= 80 and bool(_PHONE_SIGNATURE.match(line)))


def typed_blocks(text: str) -> list[list[str]]:
    """What a person typed into a reply, top- or bottom-posted: blocks of lines (cleaned,
    blank lines kept inside a block) separated by the quoted text between them. Left out:
    ``>`` quotes, attribution lines, signatures (up to the next quote), and everything from
    the start of an unquoted original on (a separator, a header block, or an attribution
    that no ``>`` quote follows)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[list[str]] = []
    current: list[str] = []
    in_signature = False

    def close() -> None:
        while current and not current[-1]:
            current.pop()
        if current:
            blocks.append(current.copy())
        current.clear()

    i = 0
    while i < len(lines):
        raw = lines[i].translate(_INVISIBLE)
        line = clean_line(raw)
        if line == _PGP_BEGIN:          # an inline-signed reply: its text follows the hash line
            i = _next_text(lines, i + 1)
            if i < len(lines) and clean_line(lines[i]).lower().startswith("hash:"):
                i += 1
            continue
        if line.startswith(">"):
            close()
            in_signature = False
            i += 1
            continue
        if line == _PGP_SIGNATURE or _SEPARATOR.match(line) or header_block(lines, i):
            break
        n = attribution(lines, i) if line else 0
        if n:
            close()
            if not _quote_follows(lines, i + n):
                break
            i += n
            continue
        if not in_signature and line and _signature_start(raw, line):
            close()
            in_signature = True
        if not in_signature and (line or current):
            current.append(line)
        i += 1
    close()
    return blocks


def unflow(text: str, delsp: bool = False) -> str:
    """RFC 3676: join the soft line breaks (a line ending in a space) of format=flowed text,
    within lines of the same quote depth; the ``-- `` signature separator stays a line."""
    out: list[str] = []
    depth_of_last = -1
    open_line = False
    for line in text.replace("\r\n", "\n").split("\n"):
        depth = len(line) - len(line.lstrip(">"))
        body = line[depth:]
        if body.startswith(" "):
            body = body[1:]                 # space-stuffing
        flowed = body.endswith(" ") and body != "-- "
        if delsp and flowed:
            body = body[:-1]
        if open_line and depth == depth_of_last and out:
            out[-1] += body
        else:
            out.append(">" * depth + (" " if depth else "") + body)
        open_line, depth_of_last = flowed, depth
    return "\n".join(out)


# ---------------------------------------------------------------------------- HTML


def _class(name: str) -> str:
    return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


# Wrappers around a quoted original (Gmail, Yahoo, ProtonMail, Zoho): their attribution or
# separator and the quote become one ">" line; what is typed inside after the quote (Gmail
# puts bottom-posted text there) is kept.
_WRAPPERS = " | ".join((
    f"//*[{_class('gmail_quote')}][not(self::blockquote)]", f"//*[{_class('gmail_extra')}]",
    "//*[contains(@class, 'yahoo_quoted')]", "//*[contains(@id, 'yahoo_quoted')]",
    f"//*[{_class('protonmail_quote')}][not(self::blockquote)]",
    f"//*[{_class('zmail_extra')}]",
))
# Quotes and attribution lines, each replaced by one ">" line (so the text typed above and
# below stays apart and an attribution left in the text is read as one).
_QUOTES = " | ".join((
    "//blockquote", f"//*[{_class('gmail_attr')}]", f"//*[{_class('moz-cite-prefix')}]",
))
# Signature containers (dropped).
_SIGNATURES = " | ".join((
    f"//*[{_class('gmail_signature')}]", f"//*[{_class('gmail_signature_prefix')}]",
    f"//*[{_class('moz-signature')}]", "//*[@id='ms-outlook-mobile-signature']",
    "//*[@id='ms-outlook-android-signature']", f"//*[{_class('protonmail_signature_block')}]",
))
# Where Outlook's unquoted original starts: it and everything after it is cut.
_ID = "translate(@id, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')"
_CUTS = " | ".join((
    f"//*[{_ID}='appendonsend']", f"//*[{_ID}='divrplyfwdmsg']",
    f"//*[{_ID}='mail-editor-reference-message-container']",
    f"//*[{_ID}='olk_src_body_section']", f"//*[{_class('OutlookMessageHeader')}]",
    f"//*[{_class('ms-outlook-cite')}]",
))


_BREAKS = frozenset({"br", "p", "div", "tr", "li", "table", "font"})


def _starts_with_headers(node: HtmlElement) -> bool:
    """The element's first lines are an original's header block (From:, Sent:, To: ...)."""
    parts: list[str] = []
    for el in node.iter():
        if el.tag in _BREAKS:
            parts.append("\n")
        parts.append(el.text or "")
        if el is not node:
            parts.append(el.tail or "")
        if sum(len(p) for p in parts) > 800:
            break
    lines = [x for x in (clean_line(t) for t in "".join(parts).splitlines()) if x]
    return bool(lines) and header_block(lines, 0)


def _cut_candidates(root: HtmlElement) -> set[HtmlElement]:
    found = set(root.xpath(_CUTS))
    for div in root.xpath("//div[contains(translate(@style, 'BORDETP', 'bordetp'),"
                          " 'border-top')]"):
        if _starts_with_headers(div):
            found.add(div)
    for hr in root.xpath("//hr"):
        nxt = hr.getnext()
        if nxt is not None and (nxt in found or _starts_with_headers(nxt)):
            found.add(hr)
    return found


def _cut_from(node: HtmlElement) -> None:
    """Remove ``node`` and everything after it in document order."""
    el = node
    while True:
        parent = el.getparent()
        if parent is None:
            return
        for sibling in list(el.itersiblings()):
            parent.remove(sibling)
        el.tail = None
        if el is node:
            parent.remove(node)
        el = parent


def _nested_quote(quote: HtmlElement, wrapper: HtmlElement) -> bool:
    up = quote.getparent()
    while up is not None and up is not wrapper:
        if up.tag == "blockquote":
            return True
        up = up.getparent()
    return False


def _unwrap(wrapper: HtmlElement) -> None:
    """Replace a quote wrapper by a ">" line and what follows its last quote inside it."""
    quotes = [q for q in wrapper.iterdescendants("blockquote") if not _nested_quote(q, wrapper)]
    parent = wrapper.getparent()
    if parent is None:
        return
    kept: list[HtmlElement] = []
    if quotes:
        el = quotes[-1]
        while el is not wrapper:
            up = el.getparent()
            if up is None:
                break
            chunk = wrapper.makeelement("div", {})
            chunk.text = el.tail
            for sibling in list(el.itersiblings()):
                chunk.append(sibling)
            kept.append(chunk)
            el = up
    mark = wrapper.makeelement("div", {})
    mark.text = ">"
    at = parent.index(wrapper)
    tail = wrapper.tail
    parent.remove(wrapper)
    for n, node in enumerate([mark, *kept]):
        parent.insert(at + n, node)
    last = kept[-1] if kept else mark
    last.tail = tail


def _replace(node: HtmlElement, text: str | None) -> None:
    parent = node.getparent()
    if parent is None:
        return
    if text is None:
        htmlmail.remove(node)
        return
    new = node.makeelement("div", {})
    new.text = text
    new.tail = node.tail
    parent.replace(node, new)


def html_reply_text(html: str) -> str:
    """The text of an HTML reply: quote containers become one ``>`` line, signatures go, and
    Outlook's unquoted original is cut off, all before the HTML is rendered as text (so
    typed_blocks then sees the same shapes as in a plain-text reply). Never raises."""
    try:
        root = htmlmail.tree(html)
        if root is None:
            return ""
        for node in root.xpath(_SIGNATURES):
            _replace(node, None)
        for node in root.xpath(_WRAPPERS):
            _unwrap(node)
        for node in root.xpath(_QUOTES):
            _replace(node, ">")
        cuts = _cut_candidates(root)
        for node in root.iter():
            if node in cuts:
                _cut_from(node)
                break
        return htmlmail.render(root)
    except Exception:  # noqa: BLE001 - lxml raises several types on broken markup
        return htmlmail.to_text(html)
