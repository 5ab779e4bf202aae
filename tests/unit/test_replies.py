"""Pure reply reading: auto-reply detection, command lines, authentication of replies."""

from __future__ import annotations

import email.utils
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import dkim
import pytest

from listserv.core import tokens
from listserv.message import replies, signing


def msg(body: str = "approve\n", **headers: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Mod <Mod@Example.org>"
    m["To"] = "dev-confirm+x@example.org"
    m["Subject"] = headers.pop("subject", "Re: confirm x")
    m["Date"] = email.utils.format_datetime(email.utils.localtime())
    m["Message-ID"] = "<1@example.org>"
    for k, v in headers.items():
        m[k.replace("_", "-")] = v
    m.set_content(body)
    return m


@pytest.mark.parametrize("headers,mail_from,auto", [
    ({}, "mod@example.org", False),
    ({"Auto_Submitted": "no"}, "mod@example.org", False),
    ({"Auto_Submitted": "auto-replied"}, "mod@example.org", True),
    ({"Auto_Submitted": "auto-generated; owner-email=x@y"}, "mod@example.org", True),
    ({"Precedence": "Bulk"}, "mod@example.org", True),
    ({"Precedence": "list"}, "mod@example.org", True),
    ({"Precedence": "junk"}, "mod@example.org", True),
    ({"Precedence": "first-class"}, "mod@example.org", False),
    ({"X_Autoreply": "yes"}, "mod@example.org", True),
    ({}, "", True),
    ({}, "<>", True),
])
def test_is_auto_reply(headers: dict[str, str], mail_from: str, auto: bool) -> None:
    assert replies.is_auto_reply(msg(**headers), mail_from) is auto


def test_command_lines_skip_quotes_and_stop_at_signature() -> None:
    m = msg("\n\n> approve\n>> discard\n  Reject  too long\nmore\n-- \nMod\napprove\n")
    assert replies.command_lines(m) == ["Reject  too long", "more"]
    assert replies.first_word("Reject  too long") == "reject"
    m = msg("approve\nOn Mon, 2 Nov 2026, dev wrote:\nreject\n")
    assert replies.command_lines(m) == ["approve"]


def test_command_lines_html_only() -> None:
    m = EmailMessage()
    m["From"] = "a@b.example"
    m.set_content("<div>discard</div><blockquote>approve</blockquote>", subtype="html")
    assert replies.command_lines(m) == ["discard"]


def test_from_address_and_subject_prefix() -> None:
    assert replies.from_address(msg()) == "mod@example.org"
    assert replies.strip_reply_prefix("Re: AW: Fwd: confirm abc") == "confirm abc"


def test_token_shape() -> None:
    seen = {tokens.new_token() for _ in range(200)}
    assert len(seen) == 200
    for t in seen:
        assert tokens.TOKEN_RE.match(t)
    t = next(iter(seen))
    assert tokens.normalise(t.upper()) == t
    assert tokens.normalise("../etc") is None
    assert len(tokens.hash_token(t)) == 64


def test_trusted_authentication_results() -> None:
    ok = msg(Authentication_Results="mx.example.org; spf=pass smtp.mailfrom=example.org;"
             " dkim=pass (2048-bit key) header.d=example.org header.s=sel")
    assert replies.trusted_ar_pass(ok, "example.org", "mx.example.org")
    assert replies.trusted_ar_pass(ok, "lists.example.org", "MX.example.org")
    assert not replies.trusted_ar_pass(ok, "example.org", "")
    assert not replies.trusted_ar_pass(ok, "other.org", "mx.example.org")
    bad = msg(Authentication_Results="mx.example.org; dkim=fail header.d=example.org")
    assert not replies.trusted_ar_pass(bad, "example.org", "mx.example.org")
    # only the topmost header (added by our MTA) counts
    forged = msg(Authentication_Results="mx.example.org; dkim=none")
    forged["Authentication-Results"] = "mx.example.org; dkim=pass header.d=example.org"
    assert not replies.trusted_ar_pass(forged, "example.org", "mx.example.org")
    # a parent domain is aligned, a sibling is not
    assert not replies.trusted_ar_pass(ok, "badexample.org", "mx.example.org")


@pytest.fixture(scope="module")
def key() -> str:
    return signing.generate_key()


def test_dkim_aligned_pass(key: str) -> None:
    record = signing.dns_record(key)
    dns = {"sel._domainkey.example.org": [record]}
    data = msg().as_bytes(policy=policy.SMTP)
    signed = dkim.sign(data, b"sel", b"example.org", key.encode(),
                       include_headers=[b"From", b"Subject", b"To"]) + data
    resolve = lambda name: dns.get(name, [])  # noqa: E731
    assert replies.dkim_aligned_pass(signed, "example.org", resolve)
    assert replies.dkim_aligned_pass(signed, "sub.example.org", resolve)
    assert not replies.dkim_aligned_pass(signed, "example.net", resolve)
    assert not replies.dkim_aligned_pass(data, "example.org", resolve)
    assert not replies.dkim_aligned_pass(signed, "example.org", lambda name: [])
    tampered = signed.replace(b"approve", b"discard")
    assert not replies.dkim_aligned_pass(tampered, "example.org", resolve)
    parsed = BytesParser(policy=policy.default).parsebytes(signed)
    assert replies.authenticated(signed, parsed, "mod@example.org", authserv_id="",
                                 resolve_txt=resolve)


def html_msg(html: str, subject: str = "Re: your request") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Fay <fay@example.net>"
    m["Subject"] = subject
    m.set_content(html, subtype="html")
    return m


OUTLOOK_HTML = ('<html><body><div class="elementToProof">{typed}</div><div id="appendonsend">'
                '</div><hr style="display:inline-block;width:98%" tabindex="-1">'
                '<div id="divRplyFwdMsg" dir="ltr"><font><b>From:</b> dev-request@example.org'
                '<br><b>Sent:</b> Tuesday<br><b>To:</b> Fay<br><b>Subject:</b> help</font></div>'
                '<div>subscribe<br>unsubscribe<br>set delivery nomail</div></body></html>')


@pytest.mark.parametrize("message, want", [
    # the -request address reads typed lines the way moderation replies do
    (html_msg(OUTLOOK_HTML.format(typed="set delivery mime-digest")),
     ["set delivery mime-digest"]),
    (html_msg('<div dir="ltr">*unsubscribe*</div><div class="gmail_quote"><div class='
              '"gmail_attr">Le mar. 1 déc. 2026 à 10:00, Dev &lt;dev-request@example.org&gt; a '
              'écrit :</div><blockquote class="gmail_quote">help<br>subscribe</blockquote>'
              '</div>'), ["*unsubscribe*"]),
    (msg("\ufeff\u200bhelp\n\nVon meinem iPhone gesendet\n\n> Am 01.12.2026 um 10:00 schrieb "
         "Dev <dev-request@example.org>:\n> unsubscribe\n", subject="Re: question"), ["help"]),
    (msg("unsubscribe\n\n________________________________\nDe : Dev <dev-request@example.org>\n"
         "Envoyé : mardi 1 décembre 2026 10:00\nÀ : Fay\nObjet : help\n\nsubscribe\n",
         subject="RE : question"),
     ["unsubscribe"]),
    (msg("", subject="AW: subscribe"), ["subscribe"]),
    (msg("\n", subject="RE : confirm abcdefghijklmnopqrstuvwxyz234567"),
     ["confirm abcdefghijklmnopqrstuvwxyz234567"]),
])
def test_request_commands_read_like_replies(message: EmailMessage, want: list[str]) -> None:
    from listserv.pipeline.commands import parse_request

    assert parse_request(message) == want
    assert replies.first_word(want[0]) in ("set", "unsubscribe", "help", "subscribe", "confirm")


def test_reply_prefixes_of_localised_clients() -> None:
    for subject in ("RE : x", "AW: x", "SV: x", "Antw: x", "Odp: x", "R: x", "RIF: x", "Res: x",
                    "VS: x", "WG: x", "TR: x", "Re[2]: x", "Re: Fwd: x", "回复：x"):
        assert replies.strip_reply_prefix(subject) == "x", subject
    assert replies.strip_reply_prefix("Rejected: spam") == "Rejected: spam"


def test_latin1_label_with_windows_quotes_and_unknown_charsets() -> None:
    raw = (b"From: a@b.example\nContent-Type: text/plain; charset=iso-8859-1\n"
           b"Content-Transfer-Encoding: 8bit\n\nReject: it\x92s spam \x96 sorry caf\xe9\n")
    m = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(m, EmailMessage)
    assert replies.body_text(m, reply=True) == "Reject: it\u2019s spam \u2013 sorry café\n"
    raw = (b"From: a@b.example\nContent-Type: text/plain; charset=x-klingon\n\n"
           b"approve caf\xc3\xa9\n")
    m = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(m, EmailMessage)
    assert replies.body_text(m, reply=True) == "approve café\n"


def test_an_empty_plain_alternative_gives_way_to_the_html_one() -> None:
    m = msg("\n")
    m.add_alternative('<div>Reject: spam</div><blockquote type="cite">approve</blockquote>',
                      subtype="html")
    assert replies.command_lines(m) == ["Reject: spam"]
    m = msg("approve\n")
    m.add_alternative("<div>discard</div>", subtype="html")
    assert replies.command_lines(m) == ["approve"]
