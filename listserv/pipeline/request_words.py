"""Commands people send to NAME-request@ that we do not have, and the nearest we do (pure).

    nearest(line) -> str | None

Mailman 2's ``set digest on`` becomes ``set delivery mime-digest``, LISTSERV's ``signoff``
becomes ``unsubscribe``, a typo ("unsubscibe") the command it is closest to. Commands with
no counterpart (``who``, ``password``) get None: the answer then only names them.
"""

from __future__ import annotations

import difflib

KNOWN = ("help", "subscribe", "unsubscribe", "join", "leave", "confirm", "index", "get", "log",
         "set delivery regular", "set delivery mime-digest", "set delivery plain-digest",
         "set delivery nomail")
# Other list managers' words for what we have.
ALIASES = {
    "sub": "subscribe", "signon": "subscribe", "sign-on": "subscribe", "add": "subscribe",
    "unsub": "unsubscribe", "signoff": "unsubscribe", "sign-off": "unsubscribe",
    "remove": "unsubscribe", "quit": "unsubscribe", "info": "help", "lists": "help",
    "commands": "help", "archive": "index", "archives": "index",
}
# Commands of Mailman 2, LISTSERV, Majordomo and Sympa with no counterpart here: answered by
# name ("unknown command: who") rather than taken for the start of prose.
FOREIGN = frozenset({"who", "review", "which", "password", "passwd", "options", "query",
                     "stats", "recipients", "dir", "lindex", "intro", "digest", "nomail",
                     "mode", "reminders", "remind", "register", "lists", "info"})
# Mailman 2 "set OPTION on|off" (and a few spellings of it) -> our delivery modes.
_SET = {
    ("digest", "on"): "set delivery mime-digest", ("digest", "mime"): "set delivery mime-digest",
    ("digest", "plain"): "set delivery plain-digest", ("digest", "off"): "set delivery regular",
    ("delivery", "on"): "set delivery regular", ("delivery", "off"): "set delivery nomail",
    ("nomail", "on"): "set delivery nomail", ("nomail", "off"): "set delivery regular",
    ("nomail", ""): "set delivery nomail", ("digest", ""): "set delivery mime-digest",
    ("mail", "on"): "set delivery regular", ("mail", "off"): "set delivery nomail",
}


def looks_like_command(line: str) -> bool:
    """A line we do not know that someone meant as a command (a foreign command word, or one
    close to ours), not a line of prose such as "Hi all"."""
    words = line.split()
    if not words or len(words) > 3:
        return False
    return words[0].strip(".,:;!").lower() in FOREIGN or nearest(line) is not None


def nearest(line: str) -> str | None:
    words = [w.strip(".,:;!").lower() for w in line.split()]
    if not words:
        return None
    first = words[0]
    if first == "set" and len(words) >= 2:
        found = _SET.get((words[1], words[2] if len(words) > 2 else ""))
        if found:
            return found
        close = difflib.get_close_matches(" ".join(words[:3]), KNOWN[-4:], n=1, cutoff=0.8)
        return close[0] if close else None
    if first in ALIASES:
        return ALIASES[first]
    close = difflib.get_close_matches(first, KNOWN[:9], n=1, cutoff=0.75)
    return close[0] if close else None
