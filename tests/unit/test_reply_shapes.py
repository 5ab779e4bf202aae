"""What real mail clients put around a typed reply (tests/data/replies/*.eml, hand-written in
the shapes those clients produce): the first typed line is read, and a reject's reason never
holds the quoted notice, the attribution line or a signature. Pure: through
replies.body_text, quoting and modreply, as the command addresses read them."""

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
TOKEN = "abcdefghijklmnopqrstuvwxyz234567"
# Words of the notice that a reply quotes: none may reach a decision's reason.
NOTICE_WORDS = ("held for moderation", "deliver the post", "refuse it", "dev-owner@", "wrote",
                "schrieb", "écrit", "geschreven", "pisze", "Sent with", "Outlook for",
                "Piotr Nowak", "Jo Smith", "From:", "De :", "Von:", "Original Message")


def load(name: str) -> EmailMessage:
    raw = (REPLIES / name).read_bytes().replace(b"TOKEN", TOKEN.encode())
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def read(msg: EmailMessage) -> modreply.Reply:
    return modreply.parse(replies.body_text(msg, reply=True), subject=str(msg["Subject"]))


SHAPES = [
    # HTML only (Outlook on the web, Outlook for iOS, Outlook desktop with an inline image)
    ("outlook-owa-html-only.eml", Decision.reject,
     "not for this list, please use vendors@example.org"),
    ("outlook-ios-html-only.eml", Decision.reject,
     "the list is for members only — please join first"),
    ("outlook-desktop-fr-related.eml", Decision.reject,
     "hors sujet, désolée – c’est une annonce commerciale\n\nCordialement,"),
    # Outlook plain text: localised separators and header blocks, Latin-1 and cp1252
    ("outlook-fr-plain.eml", Decision.reject,
     "ce n’est pas le bon endroit, merci d’utiliser la liste annonces"),
    ("outlook-de-original.eml", Decision.reject,
     "falsche Liste – bitte an vendors@example.org schicken"),
    ("outlook-es-header.eml", Decision.reject, "no es para esta lista, gracias"),
    # Gmail: a wrapped German attribution; French, bottom-posted
    ("gmail-de-wrapped.eml", Decision.reject, "bitte nur Beiträge zum Thema"),
    ("gmail-fr-bottom.eml", Decision.discard, ""),
    # Apple Mail (Dutch attribution inside the quote), iPhone bottom-posted under its signature
    ("apple-mail-nl.eml", Decision.reject, "Dit is reclame."),
    ("iphone-bottom-de.eml", Decision.discard, ""),
    # Thunderbird: Polish attribution, format=flowed reason, signature; approve takes no reason
    ("thunderbird-pl-flowed.eml", Decision.reject,
     "this post is an advertisement and the list rules do not allow advertisements of any kind"),
    ("thunderbird-html.eml", Decision.approve, ""),
    # Yahoo (unquoted original after an indented attribution), ProtonMail (signature line)
    ("yahoo.eml", Decision.reject, "wrong list, this belongs on jobs@example.org"),
    ("protonmail.eml", Decision.reject, "spam, the link goes to a phishing site"),
    # The notice forwarded back as an attachment; a BOM and zero-width marks before the word
    ("mixed-forward.eml", Decision.approve, ""),
    ("bom-zero-width.eml", Decision.approve, ""),
    # Nothing typed in the body: the Subject is read
    ("subject-only.eml", Decision.reject, "please post from your member address"),
]


@pytest.mark.parametrize("name, decision, reason", SHAPES)
def test_client_shapes(name: str, decision: Decision, reason: str) -> None:
    got = read(load(name))
    assert (got.decision, got.reason) == (decision, reason)
    for word in NOTICE_WORDS:
        assert word not in got.reason


def _alternatives(msg: EmailMessage) -> list[str]:
    out = []
    for part in msg.walk():
        if part.get_content_type() not in ("text/plain", "text/html"):
            continue
        single = EmailMessage()
        for key in ("Content-Type", "Content-Transfer-Encoding"):
            if part[key]:
                single[key] = part[key]
        single.set_payload(part.get_payload())
        out.append(replies.body_text(single, reply=True))
    return out


@pytest.mark.parametrize("name", [s[0] for s in SHAPES if load(s[0]).get_content_type()
                                  == "multipart/alternative"])
def test_plain_and_html_alternatives_read_alike(name: str) -> None:
    """Each alternative alone (a client that sent only it) reads as the pair does."""
    msg = load(name)
    want = read(msg)
    texts = _alternatives(msg)
    assert len(texts) == 2
    for text in texts:
        got = modreply.parse(text)
        assert (got.decision, got.reason) == (want.decision, want.reason), text


@pytest.mark.parametrize("attribution", [
    "On Tue, Dec 1, 2026 at 10:00 AM Dev list <dev-owner@example.org> wrote:",
    "On 1 Dec 2026, at 10:00, Dev list <dev-owner@example.org> wrote:",
    "Le mar. 1 déc. 2026 à 10:00, Dev list <dev-owner@example.org> a écrit :",
    "Am Di., 1. Dez. 2026 um 10:00 Uhr schrieb Dev list <dev-owner@example.org>:",
    "Am 01.12.2026 um 10:00 schrieb Dev list:",
    "El mar, 1 dic 2026 a las 10:00, Dev list (<dev-owner@example.org>) escribió:",
    "Il giorno mar 1 dic 2026 alle ore 10:00 Dev list <dev-owner@example.org> ha scritto:",
    "Op di 1 dec. 2026 om 10:00 schreef Dev list <dev-owner@example.org>:",
    "Op 1 dec 2026, om 10:00 heeft Dev list <dev-owner@example.org> het volgende geschreven:",
    "W dniu 1.12.2026 o 10:00, Dev list pisze:",
    "wt., 1 gru 2026 o 10:00 Dev list <dev-owner@example.org> napisał(a):",
    "Em ter., 1 de dez. de 2026 às 10:00, Dev list <dev-owner@example.org> escreveu:",
    "Den tis 1 dec. 2026 kl 10:00 skrev Dev list <dev-owner@example.org>:",
    "вт, 1 дек. 2026 г. в 10:00, Dev list <dev-owner@example.org>:",
    "Dev list <dev-owner@example.org> 于2026年12月1日周二 10:00写道：",
    "Dev list <dev-owner@example.org> wrote:",
])
@pytest.mark.parametrize("layout", ["top", "bottom", "wrapped", "wrapped-late"])
def test_localised_attributions(attribution: str, layout: str) -> None:
    quote = "> A post to dev@example.org is held for moderation.\n> approve\n"
    if layout == "wrapped" and " <" in attribution:       # the address wrapped after "<"
        head, _, tail = attribution.partition(" <")
        attribution = head + " <\n" + tail
    if layout == "wrapped-late":                          # the last words on a line of their own
        words = attribution.split(" ")
        cut = -3 if words[-1] == ":" else -2
        attribution = " ".join(words[:cut]) + "\n" + " ".join(words[cut:])
    if layout == "bottom":
        text = f"\n{attribution}\n{quote}\nReject: off topic\n"
    else:
        text = f"Reject: off topic\n\n{attribution}\n{quote}"
    got = modreply.parse(text)
    assert (got.decision, got.reason) == (Decision.reject, "off topic")


@pytest.mark.parametrize("original", [
    "-----Original Message-----\nFrom: Dev list\nSent: Tuesday\nTo: mod\nSubject: held",
    "-----Ursprüngliche Nachricht-----\nVon: Dev list\nGesendet: Dienstag",
    "-----Message d'origine-----\nDe : Dev list\nEnvoyé : mardi",
    "-----Mensaje original-----\nDe: Dev list\nEnviado: martes",
    "________________________________\nFrom: Dev list <dev-owner@example.org>",
    "From: Dev list <dev-owner@example.org>\nSent: Tuesday, December 1, 2026 10:00 AM\n"
    "To: Moderator\nSubject: held",
    "De : Dev list <dev-owner@example.org>\nEnvoyé : mardi 1 décembre 2026 10:00\n"
    "À : Modérateur\nObjet : held",
    "Von: Dev list <dev-owner@example.org>\nGesendet: Dienstag, 1. Dezember 2026 10:00\n"
    "An: Moderator\nBetreff: held",
    "De: Dev list <dev-owner@example.org>\nEnviado: martes, 1 de diciembre de 2026 10:00\n"
    "Para: Moderador\nAsunto: held",
    "*From:* Dev list <dev-owner@example.org>\n*Date:* Tuesday, 1 December 2026 at 10:00\n"
    "*To:* Moderator\n*Subject:* held",
    "From: Dev list <dev-owner@example.org>\nDate: Tuesday, 1 December 2026 at 10:00\n"
    "To: Moderator\nSubject: held",
    "---------- Forwarded message ---------\nFrom: Dev list",
    "Begin forwarded message:\n\nFrom: Dev list",
    "------- Original Message -------\nOn Tuesday, December 1st, 2026 at 10:00, Dev list wrote:",
])
def test_unquoted_originals_end_the_reply(original: str) -> None:
    text = f"reject: wrong list\n\n{original}\n\nA post is held.\napprove\n\ndiscard\n"
    got = modreply.parse(text)
    assert (got.decision, got.reason) == (Decision.reject, "wrong list")


@pytest.mark.parametrize("signature", [
    "-- \nMaria", "--\nMaria", "Sent from my iPhone", "Get Outlook for iOS<https://aka.ms/o0ukef>",
    "Von meinem iPhone gesendet", "Envoyé de mon iPhone", "Enviado desde mi iPhone",
    "Inviato da iPhone", "Verzonden vanaf mijn iPhone", "Wysłane z iPhone'a",
    "Sent with Proton Mail secure email.", "Sent from my Galaxy",
    "Sent from Yahoo Mail on Android",
])
def test_signatures_are_neither_commands_nor_reasons(signature: str) -> None:
    got = modreply.parse(f"reject: spam\n\n{signature}\n\n> approve\n")
    assert (got.decision, got.reason) == (Decision.reject, "spam")
    assert modreply.parse(f"{signature}\n\n> A post is held\n\ndiscard\n").decision \
        is Decision.discard          # typed below the quote, the signature above it
    assert modreply.parse(f"{signature}\n").decision is None


@pytest.mark.parametrize("text, decision", [
    ("\ufeffapprove", Decision.approve),
    ("\u200b\u200bApprove.", Decision.approve),
    ("\u00a0\u00a0reject", Decision.reject),
    ("\u2060\u200ediscard!", Decision.discard),
    ("APPROVE!", Decision.approve),
    ("Approve.", Decision.approve),
    ("approve: looks fine", Decision.approve),
    ("Approved - thanks!", Decision.approve),
    ("ok@example.org", None),
    ("-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\napprove\n"
     "-----BEGIN PGP SIGNATURE-----\nreject\n", Decision.approve),
])
def test_invisible_marks_case_and_punctuation(text: str, decision: Decision | None) -> None:
    got = modreply.parse(text)
    assert got.decision is decision
    assert got.reason == ""


@pytest.mark.parametrize("subject, decision, reason", [
    ("Re: approve", Decision.approve, ""),
    ("reject: please post from your member address", Decision.reject,
     "please post from your member address"),
    (f"RE : Reject - spam (confirm {TOKEN})", Decision.reject, "spam"),
    (f"Re: confirm {TOKEN}", None, ""),
    (f"AW: dev@example.org: post from x@y.example held for approval (confirm {TOKEN})",
     None, ""),
    ("ok@example.org: post from x@y.example held", None, ""),
])
def test_subject_is_read_only_when_nothing_was_typed(subject: str, decision: Decision | None,
                                                     reason: str) -> None:
    got = modreply.parse("> quoted notice\n", subject=subject)
    assert (got.decision, got.reason) == (decision, reason)
    # a typed body wins over the Subject
    assert modreply.parse("discard\n", subject=subject).decision is Decision.discard
    assert modreply.parse("why?\n", subject=subject).decision is None


def test_format_flowed_unflows_within_one_quote_depth() -> None:
    text = "Reject: a long \nreason here\n> quoted \n> on\nlast\n-- \nsig\n"
    assert quoting.unflow(text) == "Reject: a long reason here\n> quoted on\nlast\n-- \nsig\n"
    assert quoting.unflow("a \nb", delsp=True) == "ab"


# The quoted notice as each client wraps it in HTML; {typed} marks where a bottom-poster types.
HTML_QUOTES = {
    "gmail": '<div class="gmail_quote gmail_quote_container"><div dir="ltr" class="gmail_attr">'
             'On Tue, Dec 1, 2026 at 10:00\u202fAM Dev list &lt;<a href="mailto:dev-owner@'
             'example.org">dev-owner@example.org</a>&gt; wrote:<br></div><blockquote class='
             '"gmail_quote" style="margin:0px 0px 0px 0.8ex">approve<br>held for moderation'
             '</blockquote>{typed}</div>',
    "apple": '<div><br><blockquote type="cite"><div>On 1 Dec 2026, at 10:00, Dev list &lt;'
             'dev-owner@example.org&gt; wrote:</div><br class="Apple-interchange-newline">'
             '<div><div>approve<br>held for moderation</div></div></blockquote></div>{typed}',
    "apple-old": '<div><div>On 1 Dec 2026, at 10:00, Dev list &lt;dev-owner@example.org&gt; '
                 'wrote:</div><br class="Apple-interchange-newline"><blockquote type="cite">'
                 '<div>approve<br>held for moderation</div></blockquote></div>{typed}',
    "thunderbird": '<div class="moz-cite-prefix">On 01/12/2026 10:00, Dev list wrote:<br></div>'
                   '<blockquote type="cite" cite="mid:n@example.org">approve<br>held for '
                   'moderation</blockquote>{typed}',
    "yahoo": '<div id="ydp1yahoo_quoted_42" class="ydp1yahoo_quoted"><div style="font-family:'
             'Helvetica"><div>On Tuesday, December 1, 2026 at 10:00:00 AM GMT, Dev list &lt;'
             'dev-owner@example.org&gt; wrote:</div><div><br></div><div><div dir="ltr">approve'
             '<br>held for moderation</div></div></div></div>{typed}',
    "proton": '<div class="protonmail_quote">------- Original Message -------<br>On Tuesday, '
              'December 1st, 2026 at 10:00, Dev list &lt;dev-owner@example.org&gt; wrote:<br>'
              '<br><blockquote class="protonmail_quote" type="cite">approve<br>held for '
              'moderation</blockquote><br></div>{typed}',
    "zoho": '<div class="zmail_extra"><div>---- On Tue, 01 Dec 2026 10:00:00 +0000 <b>Dev list'
            ' &lt;dev-owner@example.org&gt;</b> wrote ---</div><blockquote style="border-left:'
            '1px solid #ccc">approve<br>held for moderation</blockquote></div>{typed}',
    "outlook-owa": '<div id="appendonsend"></div><hr style="display:inline-block;width:98%" '
                   'tabindex="-1"><div id="divRplyFwdMsg" dir="ltr"><font><b>From:</b> Dev list'
                   '<br><b>Sent:</b> Tuesday<br><b>To:</b> Mod<br><b>Subject:</b> held</font>'
                   '</div><div>approve<br>held for moderation</div>',
    "outlook-desktop": '<div><div style="border:none;border-top:solid #B5C4DF 1.0pt;padding:3.0'
                       'pt 0cm 0cm 0cm"><p class="MsoNormal"><b>Von:</b> Dev list<br><b>Gesendet:'
                       '</b> Dienstag<br><b>An:</b> Mod<br><b>Betreff:</b> held</p></div></div>'
                       '<p class="MsoNormal">approve</p><p class="MsoNormal">held for moderation'
                       '</p>',
    "outlook-hr": '<hr><p><b>De&nbsp;:</b> Dev list<br><b>Envoyé&nbsp;:</b> mardi<br><b>À&nbsp;:'
                  '</b> Mod<br><b>Objet&nbsp;:</b> held</p><p>approve</p>',
}
BOTTOM_POSTABLE = {"gmail", "apple", "apple-old", "thunderbird", "yahoo", "proton", "zoho"}


@pytest.mark.parametrize("client", sorted(HTML_QUOTES))
def test_html_quotes_are_cut_before_reading(client: str) -> None:
    quote = HTML_QUOTES[client]
    top = ('<html><body><div dir="ltr">Reject: wrong list<br></div><div><br></div>'
           + quote.replace("{typed}", "") + "</body></html>")
    got = modreply.parse(quoting.html_reply_text(top))
    assert (got.decision, got.reason) == (Decision.reject, "wrong list")
    if client in BOTTOM_POSTABLE:
        bottom = ('<html><body><div dir="ltr"><br></div>'
                  + quote.replace("{typed}", "<div><br></div><div>Discard.</div>")
                  + "</body></html>")
        got = modreply.parse(quoting.html_reply_text(bottom))
        assert got.decision is Decision.discard
    nothing = "<html><body>" + quote.replace("{typed}", "") + "</body></html>"
    assert modreply.parse(quoting.html_reply_text(nothing)).decision is None


def test_long_and_hostile_replies_are_read_quickly() -> None:
    import time

    lines = ["-" * 50_000, "=" * 3 + "x" * 50_000, "On " + "x" * 50_000 + " wrote:",
             "From: " + "a " * 20_000, "> " * 20_000, "\u200b" * 50_000, "a@" * 20_000 + ":"]
    text = "\n".join(lines * 20) + "\napprove\n"
    start = time.monotonic()
    modreply.parse(text)
    quoting.html_reply_text("<div>" + "<blockquote>" * 500 + "x" + "</div>" * 5000)
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("text, reason", [
    ("reject: use jobs@example.org\nKim wrote:\n> approve\n", "use jobs@example.org"),
    ("Reject: 2 posts already today\nOn Tue, 1 Dec 2026, Kim wrote:\n> approve\n",
     "2 posts already today"),
    ("reject\nthe reason\nOn Tue, 1 Dec 2026, Kim <kim@k.example> wrote:\n> approve\n",
     "the reason"),
])
def test_a_typed_line_right_above_an_attribution_stays_typed(text: str, reason: str) -> None:
    got = modreply.parse(text)
    assert (got.decision, got.reason) == (Decision.reject, reason)
