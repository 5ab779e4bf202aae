"""The forgiving grammar of moderation replies: real client shapes and the word forms."""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest

from listserv.message import quoting, replies
from listserv.pipeline import modreply
from listserv.core.models import Decision

REPLIES = Path(__file__).parent.parent / "data" / "replies"


def load(name: str) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes((REPLIES / name).read_bytes())
    assert isinstance(msg, EmailMessage)
    return msg


def parse_msg(name: str) -> modreply.Reply:
    return modreply.parse(replies.body_text(load(name), reply=True))


@pytest.mark.parametrize("name, decision, reason, line", [
    ("outlook-top.eml", Decision.reject, "please use the vendors list\n\nKind regards\nMaria",
     "Rejected: please use the vendors list"),
    ("outlook-original-message.eml", Decision.reject, "off topic, sorry",
     "Reject - off topic, sorry"),
    ("gmail-top.eml", Decision.approve, "", "approved"),
    ("gmail-html-only.eml", Decision.reject, "duplicate of yesterday's post\n\nSam",
     "Reject: duplicate of yesterday's post"),
    ("apple-bottom.eml", Decision.discard, "", "discard"),
    ("iphone.eml", Decision.approve, "", "OK"),
    ("android-attribution.eml", Decision.discard, "", "Delete."),
    ("no-command.eml", None, "", "Hi, who is this person? Do we know them?"),
])
def test_real_client_replies(name: str, decision: Decision | None, reason: str,
                             line: str) -> None:
    got = parse_msg(name)
    assert (got.decision, got.reason, got.line) == (decision, reason, line)


@pytest.mark.parametrize("text, decision, reason", [
    ("approve", Decision.approve, ""),
    ("Approved!", Decision.approve, ""),
    ("APPROVE.", Decision.approve, ""),
    ("ok", Decision.approve, ""),
    ("OK, thanks", Decision.approve, ""),
    ("Yes", Decision.approve, ""),
    ("accept", Decision.approve, ""),
    ("*approve*", Decision.approve, ""),
    ("  \n\n   approve  \n", Decision.approve, ""),
    ("reject", Decision.reject, ""),
    ("reject:", Decision.reject, ""),
    ("Rejected: please use the vendors list", Decision.reject, "please use the vendors list"),
    ("Reject - off topic, sorry", Decision.reject, "off topic, sorry"),
    ("reject no ads please", Decision.reject, "no ads please"),
    ("Decline — wrong list", Decision.reject, "wrong list"),
    ("reject\nThis is for members only.\nPlease join first.\n\n-- \nMod",
     Decision.reject, "This is for members only.\nPlease join first."),
    ("reject: spam\n\nOn Tue, 1 Dec 2026 Dev wrote:\n> approve", Decision.reject, "spam"),
    ("discard", Decision.discard, ""),
    ("Discarded.", Decision.discard, ""),
    ("delete", Decision.discard, ""),
    ("> approve\n\ndiscard", Decision.discard, ""),
    ("approvedd", None, ""),
    ("okay-ish", Decision.approve, ""),
    ("oktober", None, ""),
    ("no", None, ""),
    ("cancel", None, ""),
    ("Hi,\napprove", None, ""),
    ("", None, ""),
    ("> approve\n> reject", None, ""),
    ("-- \napprove", None, ""),
    ("On Mon, 2 Nov 2026, dev wrote:\nreject\n", None, ""),
    ("___________________________\nFrom: x\napprove", None, ""),
])
def test_word_forms(text: str, decision: Decision | None, reason: str) -> None:
    got = modreply.parse(text)
    assert (got.decision, got.reason) == (decision, reason)


def test_poster_words() -> None:
    assert modreply.parse("Cancel", modreply.POSTER_WORDS).decision is Decision.cancel
    note = modreply.parse("could you let it through? Olivia asked me to post\n\n> held",
                          modreply.POSTER_WORDS)
    assert note.decision is None
    assert note.text == "could you let it through? Olivia asked me to post"


def test_reason_is_capped() -> None:
    got = modreply.parse("reject " + "x" * 5000)
    assert got.decision is Decision.reject and len(got.reason) == modreply.MAX_REASON


@pytest.mark.timeout(10)     # a hang guard: both patterns once tried every split of a long run
def test_long_runs_in_a_reply_do_not_stall_its_reading() -> None:
    token = "ABCDEF0123456789ABCD"
    assert modreply.subject_line("Re: " + " " * 50000 + f"(confirm {token})") == ""
    assert modreply.subject_line(" " * 50000 + "x") == "x"
    assert modreply.subject_line("approve " + "( " * 20000) == "approve " + "( " * 19999 + "("
    # every line is looked at as a possible attribution ("<date> <address>:" before a quote)
    digits = "\n".join("1" * 399 + ":" for _ in range(2000))
    blocks = quoting.typed_blocks("approve\n\n" + digits + "\n> quoted\n")
    assert blocks[0][0] == "approve" and len(blocks[0]) == 2002   # none is an attribution
    attributed = quoting.typed_blocks(
        "reject: spam\n\n2026-12-01 10:00 GMT, Jane <jane@x.example>:\n> the post\n")
    assert attributed == [["reject: spam"]]
