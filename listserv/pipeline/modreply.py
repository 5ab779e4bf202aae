"""The forgiving grammar of replies to moderation notices (pure, no DB).

    parse(text, words=MODERATOR_WORDS, subject="") -> Reply

The first typed line of a reply (quoting.typed_blocks: not blank, not a ``>`` quote, not an
attribution, not a signature, not the original an Outlook-style reply carries) must start with
a command word, case-insensitive, followed by nothing, punctuation or a reason: "approved",
"OK", "Approve.", "approve: looks fine" (approve takes no reason), "Rejected: please use the
vendors list", "Reject - off topic, sorry", "*discard*". For reject, the rest of that line and
the lines typed after it (up to the quote or signature) are the reason, a leading ``:``/``-``
trimmed.

A reply whose body has nothing typed at all is read from its Subject instead ("Re: reject:
spam"), so a client that sends the command as the Subject alone works; a Subject that is not a
command (our notices' own, "Re: confirm TOKEN") leaves it a reply without a command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from listserv.core.models import Decision
from listserv.message.quoting import command_word, typed_blocks
from listserv.message.replies import strip_reply_prefix

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
_TRIM = ":-–—,.;!=>*_ \t"
# Our notices' Subjects end with "(confirm TOKEN)"; replies keep it. A match starts only where
# blanks start, and no run is given back once taken (possessive): otherwise every position of
# a Subject of blanks tried every split of them between the two runs (5,000 spaces: minutes).
_CONFIRM_TAIL = re.compile(r"(?<!\s)\s*+\(?\s*+confirm\s++[A-Za-z0-9]{16,}+\s*+\)?\s*+$",
                           re.IGNORECASE)


@dataclass(frozen=True)
class Reply:
    decision: Decision | None     # None: the first typed line has no command word
    reason: str                   # reject's reason ('' when none was given)
    line: str                     # the first typed line as read ('' when nothing was typed)
    text: str = ""                # everything typed, blocks joined (for a poster's note)


def subject_line(subject: str) -> str:
    """The Subject as a typed line: reply prefixes and the "(confirm TOKEN)" tail gone."""
    return _CONFIRM_TAIL.sub("", strip_reply_prefix(subject)).strip()


def parse(text: str, words: Mapping[str, Decision] = MODERATOR_WORDS,
          subject: str = "") -> Reply:
    blocks = typed_blocks(text)
    typed = "\n\n".join("\n".join(b) for b in blocks)
    if not blocks:
        line = subject_line(subject)
        if not line or command_word(line)[0] not in words:
            return Reply(None, "", "", typed)
        blocks = [[line]]
    first, rest_lines = blocks[0][0], blocks[0][1:]
    word, rest = command_word(first)
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
