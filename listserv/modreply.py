"""The forgiving grammar of replies to moderation notices (pure, no DB).

    parse(text, words=MODERATOR_WORDS) -> Reply

The first typed line of a reply (replies.typed_blocks: not blank, not a ``>`` quote, not an
attribution, not a signature) must start with a command word, case-insensitive, followed by
nothing, punctuation or a reason: "approved", "OK", "Rejected: please use the vendors list",
"Reject - off topic, sorry", "*discard*". For reject, the rest of that line and the lines
typed after it (up to the quote or signature) are the reason, a leading ``:``/``-`` trimmed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from listserv.models import Decision
from listserv.replies import typed_blocks

MODERATOR_WORDS: Mapping[str, Decision] = {
    "approve": Decision.approve, "approved": Decision.approve, "accept": Decision.approve,
    "accepted": Decision.approve, "ok": Decision.approve, "okay": Decision.approve,
    "yes": Decision.approve,
    "reject": Decision.reject, "rejected": Decision.reject, "decline": Decision.reject,
    "declined": Decision.reject,
    "discard": Decision.discard, "discarded": Decision.discard, "delete": Decision.discard,
    "deleted": Decision.discard,
}
POSTER_WORDS: Mapping[str, Decision] = {
    "cancel": Decision.cancel, "withdraw": Decision.cancel, "cancelled": Decision.cancel,
    "canceled": Decision.cancel,
}
MAX_REASON = 2000
# Leading decoration some clients or people add: *bold*, _underline_, quotes, a bullet.
_LEAD = "*_\"'`“”‘’«»•·- \t"
_WORD = re.compile(r"([^\W\d_]+)(.*)$", re.DOTALL)
_TRIM = ":-–—,.;!=>*_ \t"


@dataclass(frozen=True)
class Reply:
    decision: Decision | None     # None: the first typed line has no command word
    reason: str                   # reject's reason ('' when none was given)
    line: str                     # the first typed line as read ('' when nothing was typed)
    text: str = ""                # everything typed, blocks joined (for a poster's note)


def _word(line: str) -> tuple[str, str]:
    m = _WORD.match(line.lstrip(_LEAD))
    if not m:
        return "", ""
    return m.group(1).lower(), m.group(2)


def parse(text: str, words: Mapping[str, Decision] = MODERATOR_WORDS) -> Reply:
    blocks = typed_blocks(text)
    typed = "\n\n".join("\n".join(b) for b in blocks)
    if not blocks:
        return Reply(None, "", "", typed)
    first, rest_lines = blocks[0][0], blocks[0][1:]
    word, rest = _word(first)
    decision = words.get(word)
    if decision is None:
        return Reply(None, "", first, typed)
    reason = ""
    if decision is Decision.reject:
        lines = [rest.strip().lstrip(_TRIM).rstrip()] + rest_lines
        reason = "\n".join(lines).strip()
        if not reason.strip(_TRIM):
            reason = ""
        reason = reason[:MAX_REASON]
    return Reply(decision, reason, first, typed)
