"""Reading a GNU Mailman 2.1 ``config.pck`` safely.

A pickle can run any code while it is loaded. This unpickler resolves no global at all except
the few a Mailman 2.1 list file legitimately holds, and those only as plain data:

- ``__builtin__.set`` / ``frozenset`` (Python 2 pickles sets as a call to the type);
- ``Mailman.Bouncer._BounceInfo``, the per-member bounce record, read as a :class:`Record`
  (its attribute dict) — no Mailman code is imported or run.

Anything else (another class, a function, ``os.system``...) is refused with
:class:`UnsafePickle`, naming what the file asked for. Python 2 byte strings come back as
``bytes``; :func:`decode` turns them into text with the list's charset.
"""

from __future__ import annotations

import io
import pickle
from typing import Any, Callable

# Mailman 2.1's language -> charset table (Defaults.py LC_DESCRIPTIONS), for the list's
# preferred_language; languages not listed here are tried as UTF-8, then Latin-1.
LANGUAGE_CHARSETS = {
    "ar": "utf-8", "ast": "iso-8859-1", "ca": "utf-8", "cs": "iso-8859-2", "da": "iso-8859-1",
    "de": "iso-8859-1", "el": "iso-8859-7", "eo": "iso-8859-3", "es": "iso-8859-1",
    "et": "iso-8859-15", "eu": "iso-8859-15", "fa": "utf-8", "fi": "iso-8859-1",
    "fr": "iso-8859-1", "gl": "utf-8", "he": "utf-8", "hr": "iso-8859-2", "hu": "iso-8859-2",
    "ia": "iso-8859-15", "it": "iso-8859-1", "ja": "euc-jp", "ko": "euc-kr", "lt": "iso-8859-13",
    "nl": "iso-8859-1", "no": "iso-8859-1", "pl": "iso-8859-2", "pt": "iso-8859-1",
    "pt_BR": "iso-8859-1", "ro": "utf-8", "ru": "koi8-r", "sk": "utf-8", "sl": "iso-8859-2",
    "sr": "utf-8", "sv": "iso-8859-1", "tr": "iso-8859-9", "uk": "utf-8", "vi": "utf-8",
    "zh_CN": "utf-8", "zh_TW": "utf-8",
}


class UnsafePickle(Exception):
    """The file is not a plain-data Mailman list pickle."""


class Record:
    """A Mailman object kept as data only: its class name and attribute dict."""

    def __init__(self, *args: Any) -> None:
        self.state: dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise UnsafePickle("a Mailman bounce record with a non-dict state")
        self.state = state

    def get(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, self.state.get(name.encode("ascii"), default))


class BounceInfo(Record):
    """Mailman.Bouncer._BounceInfo: member, score, date, noticesleft, lastnotice, cookie."""


def _plain_set(items: Any = ()) -> set[Any]:
    return set(_hashable(i) for i in items)


def _plain_frozenset(items: Any = ()) -> frozenset[Any]:
    return frozenset(_hashable(i) for i in items)


def _hashable(item: Any) -> Any:
    if isinstance(item, (str, bytes, int, float, bool, type(None), tuple, frozenset)):
        return item
    raise UnsafePickle(f"a set holding a {type(item).__name__}")


ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("__builtin__", "set"): _plain_set,
    ("builtins", "set"): _plain_set,
    ("__builtin__", "frozenset"): _plain_frozenset,
    ("builtins", "frozenset"): _plain_frozenset,
    ("Mailman.Bouncer", "_BounceInfo"): BounceInfo,
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise UnsafePickle(f"the file refers to {module}.{name}, which is not plain data; "
                               "refusing to load it (a pickle can run code)")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle("the file uses persistent ids; refusing to load it")


def loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing plain data only (Python 2 str -> bytes)."""
    try:
        return _Unpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickle:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, OverflowError, MemoryError, UnicodeDecodeError) as exc:
        raise UnsafePickle(f"not a readable pickle: {exc}") from None


def charset_for(language: str) -> str:
    return LANGUAGE_CHARSETS.get(language, "utf-8")


def text(value: Any, charset: str = "utf-8") -> str:
    """A Python 2 ``str`` (bytes) or ``unicode`` (str) as text: the list's charset, else
    UTF-8, else Latin-1 (which never fails)."""
    if isinstance(value, str):
        return value
    if not isinstance(value, bytes):
        return "" if value is None else str(value)
    for cs in dict.fromkeys((charset, "utf-8")):
        try:
            return value.decode(cs)
        except (UnicodeDecodeError, LookupError):
            continue
    return value.decode("latin-1")


def decode(value: Any, charset: str) -> Any:
    """``value`` with every bytes string (dict keys too) turned into text."""
    if isinstance(value, (bytes, str)):
        return text(value, charset)
    if isinstance(value, dict):
        return {decode(k, charset): decode(v, charset) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v, charset) for v in value]
    if isinstance(value, tuple):
        return tuple(decode(v, charset) for v in value)
    if isinstance(value, (set, frozenset)):
        return {decode(v, charset) for v in value}
    if isinstance(value, Record):
        value.state = decode(value.state, charset)
        return value
    return value


def load_config(data: bytes) -> dict[str, Any]:
    """A config.pck's attribute dict, every string decoded as text."""
    raw = loads(data)
    if not isinstance(raw, dict):
        raise UnsafePickle(f"a Mailman list file holds a dict, this one a {type(raw).__name__}")
    keys = {text(k, "latin-1"): v for k, v in raw.items()}
    language = text(keys.get("preferred_language") or "en", "latin-1")
    return {k: decode(v, charset_for(language)) for k, v in keys.items()}
