"""Unstructured header values (Subject) that decode to exactly the text we meant (pure).

    unstructured(name, text) -> Folded       set with msg[name] = ... or set_header()

CPython's folder (email.policy) can lose or double the space next to an RFC 2047 encoded
word when it folds a long line ("Treffen — Übersicht" read back as "Treffen —Übersicht").
We fold ourselves: ASCII words stay plain; each run of words that needs encoding becomes
UTF-8 encoded words (Q or B, whichever is shorter), the spaces inside the run encoded with it;
lines break only before a plain space or between two encoded words, where decoders drop the
folding whitespace (RFC 2047 section 6.2), so decoding yields the text exactly.

The result is a ``str`` with a ``name`` and a ``fold(policy=)`` method: email.policy stores
such header objects as they are and serialises them with their own fold().
"""

from __future__ import annotations

import base64
import re
from email.policy import Policy
from typing import Any

MAX_LINE = 78                      # RFC 5322's recommended line length
MAX_WORD = 75                      # RFC 2047: an encoded word is at most 75 characters
_PLAIN_WORD = re.compile(r"[\x21-\x7e]+")
_Q_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
_PREFIX = {"q": "=?utf-8?q?", "b": "=?utf-8?b?"}
_OVERHEAD = len("=?utf-8?q?") + len("?=")


def _is_plain(word: str) -> bool:
    """A word that can go unencoded: printable ASCII, not mistakable for an encoded word."""
    return bool(_PLAIN_WORD.fullmatch(word)) and "=?" not in word and len(word) <= 60


def _q(data: bytes) -> str:
    return "".join(chr(c) if c in _Q_SAFE else "_" if c == 0x20 else f"={c:02X}" for c in data)


def _b_len(n: int) -> int:
    return (n + 2) // 3 * 4


def _encoded_words(text: str, limit: int) -> list[str]:
    """``text`` as UTF-8 encoded words, split between characters, each at most ``limit``
    long."""
    room = limit - _OVERHEAD
    data = text.encode("utf-8", "surrogatepass")
    # Q keeps ASCII letters readable in the raw header; B when Q would be much longer.
    kind = "q" if len(_q(data)) <= _b_len(len(data)) * 3 // 2 else "b"
    words: list[str] = []
    chunk = b""
    for ch in text:
        piece = ch.encode("utf-8", "surrogatepass")
        size = len(_q(chunk + piece)) if kind == "q" else _b_len(len(chunk + piece))
        if chunk and size > room:
            words.append(_word(kind, chunk))
            chunk = b""
        chunk += piece
    if chunk:
        words.append(_word(kind, chunk))
    return words


def _word(kind: str, data: bytes) -> str:
    body = _q(data) if kind == "q" else base64.b64encode(data).decode("ascii")
    return f"{_PREFIX[kind]}{body}?="


def _tokens(text: str, limit: int) -> list[tuple[str, bool]]:
    """(piece, breakable-before) pairs: plain words with the spaces before them, and encoded
    words. A line may break before a piece whose flag is True (it starts with a space)."""
    parts = re.split(r"( +)", text)
    words, spaces = parts[0::2], parts[1::2] + [""]
    n = len(words) - 1
    unsafe = [not _is_plain(w) for w in words]
    # Leading or trailing spaces would be eaten by a reader: encode them with their word.
    if n >= 1 and words[0] == "":
        unsafe[1] = True
    if n >= 1 and words[n] == "":
        unsafe[n - 1] = True
    out: list[tuple[str, bool]] = []
    i = 0
    while i <= n:
        sep = spaces[i - 1] if i else ""
        if not unsafe[i]:
            out.append((sep + words[i], bool(sep)))
            i += 1
            continue
        j = i
        while j < n and unsafe[j + 1]:
            j += 1
        run = sep[1:] + "".join(words[k] + (spaces[k] if k < j else "") for k in range(i, j + 1))
        for k, word in enumerate(_encoded_words(run, limit)):
            out.append(((sep[:1] if k == 0 else " ") + word, bool(sep) if k == 0 else True))
        i = j + 1
    return out


def fold_lines(name: str, text: str) -> list[str]:
    """The header as lines (no line ends): ``Name: value`` folded at 76 where possible."""
    text = text.replace("\r", " ").replace("\n", " ")
    lines = [f"{name}:"]
    first = True
    # An encoded word fits on a line of its own, and on the first line after the name.
    limit = min(MAX_WORD, MAX_LINE - len(name) - 2)
    for piece, breakable in _tokens(text, limit):
        if first:
            lines[-1] += " " + piece
            first = False
        elif breakable and len(lines[-1]) + len(piece) > MAX_LINE:
            lines.append(piece)     # starts with the space that unfolding leaves in place
        else:
            lines[-1] += piece
    return lines


class Folded(str):
    """A header value that serialises as fold_lines() made it."""

    name: str

    def __new__(cls, name: str, text: str) -> "Folded":
        obj = super().__new__(cls, text)
        obj.name = name
        return obj

    def __getnewargs__(self) -> tuple[str, str]:  # type: ignore[override]
        return (self.name, str(self))

    @property
    def defects(self) -> tuple[Any, ...]:
        return ()

    def fold(self, *, policy: Policy) -> str:
        linesep = getattr(policy, "linesep", "\n")
        return linesep.join(fold_lines(self.name, str(self))) + linesep


def unstructured(name: str, text: str) -> Folded:
    return Folded(name, text)
