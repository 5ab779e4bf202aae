"""Mail people can read (issue: readable mail), through the real SMTP intake to the sink:
HTML-only posts read as structured text in the moderators' notice and the plain digest."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from listserv.core import lists, members
from listserv.cli import cli
from listserv.core.models import DeliveryMode, utcnow
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured

LIST = "dev@example.org"
HTML = Path(__file__).parent.parent / "data" / "html"


def only(h: Harness, rcpt: str) -> list[Captured]:
    return [m for m in h.sink.messages if rcpt in m.rcpt_tos]


def html_post(sender: str, name: str, subject: str = "Meeting") -> EmailMessage:
    msg = make_message(sender, LIST, subject, "x\n")
    msg.set_content((HTML / f"{name}.html").read_text(encoding="utf-8"), subtype="html")
    return msg


def text(c: Captured) -> str:
    return str(c.message.get_body(preferencelist=("plain",)).get_content()).replace("\r\n", "\n")


def test_moderators_preview_of_html_only_post_keeps_structure(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    h.send(html_post("stranger@s.example", "outlook"))
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "mod@m.example")) >= 1)
    body = text(only(h, "mod@m.example")[0])
    assert "&nbsp;" not in body and "MsoNormal" not in body and "font-family" not in body
    assert "Thursday at 19:00 in Room 4" in body
    assert " 1. Minutes of the last meeting\n" in body


def test_plain_digest_of_html_only_post_keeps_structure(harness: Harness,
                                                        cli_env: dict[str, str],
                                                        clock: Any) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example", "plain@c.example"])
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        m = members.find_membership(s, ml, "plain@c.example")
        assert m is not None
        members.change_delivery_mode(s, m, DeliveryMode.plain_digest, utcnow())
    h.send(html_post("ann@a.example", "gmail", "Garden"))
    h.run_until_idle()
    out = CliRunner().invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.exit_code == 0, out.output
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "plain@c.example")) >= 1)
    body = text(only(h, "plain@c.example")[0])
    assert "  * Seeds arrived today\n  * Watering rota is in the shared sheet" in body
    assert "We plant on Saturday.\nGloves are provided.\n" in body
    assert "&nbsp;" not in body


# ---------------------------------------------------------------------------- moderation replies

REPLIES = Path(__file__).parent.parent / "data" / "replies"


def token_of(c: Captured) -> str:
    return str(c.message["Reply-To"]).split("+", 1)[1].split("@")[0]


def hold_one(h: Harness, subject: str = "Let me in") -> Captured:
    h.send(make_message("stranger@s.example", LIST, subject, "Hello list\nsecond line\n"))
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "mod@m.example")) >= 1)
    return only(h, "mod@m.example")[-1]


def held_state(h: Harness) -> tuple[str | None, str | None]:
    from sqlalchemy import select

    from listserv.core.models import HeldMessage
    with h.app.db.unit_of_work() as s:
        held = s.scalars(select(HeldMessage)).one()
        return (held.decision.value if held.decision else None), held.reason


def send_reply_file(h: Harness, name: str, token: str, sender: str = "mod@m.example") -> None:
    raw = (REPLIES / name).read_bytes().replace(b"TOKEN", token.encode())
    from email import policy
    from email.parser import BytesParser
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    del msg["From"]
    msg["From"] = sender
    h.send(msg.as_bytes(policy=policy.SMTP), mail_from=sender,
           rcpts=[f"dev-confirm+{token}@example.org"])
    h.run_until_idle()


@pytest.mark.parametrize("name, decision, reason", [
    ("outlook-top.eml", "reject", "please use the vendors list\n\nKind regards\nMaria"),
    ("outlook-original-message.eml", "reject", "off topic, sorry"),
    ("gmail-top.eml", "approve", None),
    ("gmail-html-only.eml", "reject", "duplicate of yesterday's post\n\nSam"),
    ("apple-bottom.eml", "discard", None),
    ("iphone.eml", "approve", None),
    ("android-attribution.eml", "discard", None),
    # HTML only, the original below Outlook's divRplyFwdMsg / border-top header block
    ("outlook-owa-html-only.eml", "reject", "not for this list, please use vendors@example.org"),
    ("outlook-desktop-fr-related.eml", "reject",
     "hors sujet, désolée – c’est une annonce commerciale\n\nCordialement,"),
    ("gmail-fr-bottom.eml", "discard", None),
    ("subject-only.eml", "reject", "please post from your member address"),
])
def test_real_client_replies_act_on_the_held_post(harness: Harness, name: str, decision: str,
                                                  reason: str | None) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    notice = hold_one(h)
    send_reply_file(h, name, token_of(notice))
    assert held_state(h) == (decision, reason)
    if decision == "reject":
        h.sink.wait_for(lambda msgs: len(only(h, "stranger@s.example")) >= 2)
        told = text(only(h, "stranger@s.example")[-1])
        assert reason is not None and reason.splitlines()[0] in told
        assert "- off topic" not in told
        for quoted in ("deliver the post", "From:", "De :", "Sent:", "wrote", "confirm+"):
            assert quoted not in told


def test_reply_without_command_gets_a_short_answer_that_can_be_answered(
        harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    notice = hold_one(h)
    token = token_of(notice)
    send_reply_file(h, "no-command.eml", token)
    assert held_state(h) == (None, None)
    h.sink.wait_for(lambda msgs: len(only(h, "mod@m.example")) >= 2)
    answer = only(h, "mod@m.example")[-1]
    body = text(answer)
    assert str(answer.message["Reply-To"]) == f"dev-confirm+{token}@example.org"
    assert "Hi, who is this person? Do we know them?" in body
    assert "approve, reject or discard" in body
    assert "subscribe" not in body and "help" not in body.lower()
    # answering the answer works
    again = make_message("mod@m.example", str(answer.message["Reply-To"]),
                         "Re: " + str(answer.message["Subject"]),
                         "approve\n\n> " + body.replace("\n", "\n> "))
    h.send(again)
    h.run_until_idle()
    assert held_state(h) == ("approve", None)


def test_poster_note_goes_to_the_moderators(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"],
              owners=["own@o.example"])
    hold_one(h, "Garden day")
    h.sink.wait_for(lambda msgs: len(only(h, "stranger@s.example")) >= 1)
    held_notice = only(h, "stranger@s.example")[0]
    assert "dropped without further notice" in text(held_notice)
    token = token_of(held_notice)
    h.send(make_message("stranger@s.example", f"dev-confirm+{token}@example.org",
                        "Re: " + str(held_notice.message["Subject"]),
                        "could you let it through? Olivia asked me to post\n\n"
                        "On Tue, 1 Dec 2026, Dev list wrote:\n> Your message to dev\n"))
    h.run_until_idle()
    assert held_state(h) == (None, None)
    h.sink.wait_for(lambda msgs: len(only(h, "own@o.example")) >= 2
                    and len(only(h, "stranger@s.example")) >= 2)
    note = only(h, "mod@m.example")[-1]
    assert sorted(note.rcpt_tos) == ["mod@m.example", "own@o.example"]
    assert "Olivia asked me to post" in text(note) and "Garden day" in text(note)
    assert str(note.message["Reply-To"]) == "stranger@s.example"
    told = only(h, "stranger@s.example")[-1]
    assert "passed to the moderators" in text(told)
    assert "The commands are" not in text(told) and "subscribe" not in text(told)
    assert str(told.message["Reply-To"]) == f"dev-confirm+{token}@example.org"
    # and 'cancel' still withdraws it
    h.send(make_message("stranger@s.example", f"dev-confirm+{token}@example.org", "Re: x",
                        "Cancel\n"))
    h.run_until_idle()
    assert held_state(h)[0] == "cancel"


def test_moderators_notice_attaches_the_held_post(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    notice = hold_one(h, "Grüße aus Köln")
    msg = notice.message
    assert msg.get_content_type() == "multipart/mixed"
    parts = list(msg.iter_attachments())
    assert [p.get_content_type() for p in parts] == ["message/rfc822"]
    held = parts[0].get_content()
    assert str(held["Subject"]) == "Grüße aus Köln"
    assert str(held["From"]) == "stranger@s.example"
    assert "second line" in held.get_content()
    body = text(notice)
    assert "From a shell" not in body and "listserv held" not in body
    assert "attached" in body


# ---------------------------------------------------------------------------- subjects

SUBJECTS = [
    "Treffen — Übersicht",
    "Einladung zum Treffen am Donnerstag im Gemeindehaus — Übersicht der Termine",
    "Protokoll der Sitzung vom 3. März — Beschlüsse, offene Punkte und nächste Schritte",
    "Treffen xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx — Übersicht",
    "日本語 の 件名 — テスト",
]


def encoded_post(subject: str, n: int) -> bytes:
    """A post whose Subject is encoded as a sending client would (all encoded words)."""
    from email import policy
    from email.header import Header

    msg = make_message("ann@a.example", LIST, "PLACEHOLDER", f"Body {n}.\n",
                       message_id=f"<s{n}@a.example>")
    value = Header(subject, "utf-8").encode(linesep="\r\n").encode("ascii")
    return msg.as_bytes(policy=policy.SMTP).replace(b"PLACEHOLDER", value, 1)


def test_non_ascii_subjects_keep_their_spaces_in_copies_archive_and_index(
        harness: Harness, cli_env: dict[str, str], clock: Any) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example", "plain@c.example", "mime@d.example"])
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        for email, mode in (("plain@c.example", DeliveryMode.plain_digest),
                            ("mime@d.example", DeliveryMode.mime_digest)):
            m = members.find_membership(s, ml, email)
            assert m is not None
            members.change_delivery_mode(s, m, mode, utcnow())
    for n, subject in enumerate(SUBJECTS):
        h.send(encoded_post(subject, n), mail_from="ann@a.example", rcpts=[LIST])
        h.run_until_idle()
    copies = h.sink.wait_for(lambda msgs: len(only(h, "ann@a.example")) >= len(SUBJECTS))
    got = sorted(str(c.message["Subject"]) for c in copies if "ann@a.example" in c.rcpt_tos)
    assert got == sorted(f"[dev] {s}" for s in SUBJECTS)
    # the index by mail
    h.send(make_message("ann@a.example", "dev-request@example.org", "index", ""))
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: any("Archive index" in str(m.message["Subject"])
                                     for m in only(h, "ann@a.example")))
    index = [m for m in only(h, "ann@a.example") if "Archive index" in str(m.message["Subject"])]
    for s in SUBJECTS:
        assert f"    {s}\n" in text(index[0])
    # the archive's mbox (read back by the archive reader)
    from listserv.archive import read as archive_read
    months = archive_read.months(h.app.settings.archive_path, LIST)
    entries = [e for m in months for e in archive_read.read_month(
        h.app.settings.archive_path, LIST, m)]
    assert sorted(archive_read.text_header(e.message(), "Subject") for e in entries) == \
        sorted(f"[dev] {s}" for s in SUBJECTS)
    # digests: the MIME digest's enclosed posts and the plain digest's text
    out = CliRunner().invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.exit_code == 0, out.output
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: only(h, "plain@c.example") and only(h, "mime@d.example"))
    plain = text(only(h, "plain@c.example")[0])
    for s in SUBJECTS:
        assert f"Subject: [dev] {s}" in plain
    mime = only(h, "mime@d.example")[0].message
    digest = [p for p in mime.walk() if p.get_content_type() == "multipart/digest"][0]
    inner = sorted(str(p.get_content()["Subject"]) for p in digest.iter_parts())
    assert inner == sorted(f"[dev] {s}" for s in SUBJECTS)


# ---------------------------------------------------------------------------- -request@

REQUEST = "dev-request@example.org"


def answers(h: Harness, rcpt: str, n: int) -> list[Captured]:
    h.sink.wait_for(lambda msgs: len(only(h, rcpt)) >= n)
    return only(h, rcpt)


def test_unknown_commands_are_answered_by_name_with_the_nearest(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"])
    h.send(make_message("ann@a.example", REQUEST, "", "who\nset digest on\n"))
    h.run_until_idle()
    body = text(answers(h, "ann@a.example", 1)[0])
    assert "unknown command: who\n" in body
    assert "unknown command: set digest on (the nearest command here is: " \
        "set delivery mime-digest)" in body
    # mixed with a command we have: that one runs, the unknown one is named, no help text
    h.send(make_message("ann@a.example", REQUEST, "", "set delivery plain-digest\nsignoff\n"))
    h.run_until_idle()
    got = answers(h, "ann@a.example", 3)[1:]        # the answer, and a confirmation request
    body = next(text(m) for m in got if "unknown command: signoff" in text(m))
    assert "confirmation request has been sent" in body
    assert "unknown command: signoff (the nearest command here is: unsubscribe)" in body
    assert "The list understands these commands" not in body


def test_confirm_token_in_a_reply_subject_to_request(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST)
    h.send(make_message("cat@c.example", "dev-join@example.org", "", ""))
    h.run_until_idle()
    (confirmation,) = answers(h, "cat@c.example", 1)
    # the client replied to the From (or the person wrote to -request@), token in the Subject
    h.send(make_message("cat@c.example", REQUEST,
                        "Re: " + str(confirmation.message["Subject"]), "Yes please\n"))
    h.run_until_idle()
    with h.app.db.unit_of_work() as s:
        assert members.find_membership(s, lists.get_list(s, LIST), "cat@c.example") is not None


def test_second_join_within_the_hour_says_when_and_check_spam(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST)
    h.send(make_message("dan@d.example", "dev-join@example.org", "", ""))
    h.run_until_idle()
    h.send(make_message("dan@d.example", "dev-join@example.org", "", ""))
    h.run_until_idle()
    first, second = answers(h, "dan@d.example", 2)
    assert "confirm" in str(first.message["Subject"])
    body = text(second)
    assert "already sent to dan@d.example at 20" in body and "spam" in body
    assert second.message["Reply-To"] is None


def test_held_command_post_names_the_leave_address(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    h.send(make_message("ann@a.example", LIST, "unsubscribe", "unsubscribe\n"))
    h.run_until_idle()
    (notice,) = answers(h, "ann@a.example", 1)
    body = text(notice)
    assert "send any message to dev-leave@example.org" in body


# ---------------------------------------------------------------------------- footers

def alternative_post(n: int = 1) -> EmailMessage:
    # a different text each time: the list holds a sender's repeated text
    msg = make_message("ann@a.example", LIST, "Plans", f"Plain plans.\n\nVersion {n}.\n")
    msg.add_alternative("<html><body><p>HTML plans.</p></body></html>", subtype="html")
    return msg


def test_footer_goes_into_both_alternatives(harness: Harness, cli_env: dict[str, str]) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example", "bob@b.example"])
    h.send(alternative_post())
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: len(only(h, "bob@b.example")) >= 1)
    msg = only(h, "bob@b.example")[0].message
    assert msg.get_content_type() == "multipart/alternative"
    plain = str(msg.get_body(("plain",)).get_content())
    html = str(msg.get_body(("html",)).get_content())
    assert "Plain plans." in plain and "dev-leave@example.org" in plain
    assert '<div class="list-footer">' in html and "dev-leave@example.org" in html
    assert html.index("list-footer") < html.lower().index("</body>")
    assert list(msg.iter_attachments()) == []        # no ATT00001.txt
    # footer_placement part: the former wrapping
    out = CliRunner().invoke(cli, ["list", "set", LIST, "footer_placement", "part"], env=cli_env)
    assert out.exit_code == 0, out.output
    h.send(alternative_post(2))
    h.run_until_idle()
    second = h.sink.wait_for(lambda msgs: len(only(h, "bob@b.example")) >= 2)
    msg = [c for c in second if "bob@b.example" in c.rcpt_tos][-1].message
    assert msg.get_content_type() == "multipart/mixed"
    assert [p.get_content_type() for p in msg.iter_parts()] == \
        ["multipart/alternative", "text/plain"]


# ---------------------------------------------------------------------------- archive pages

def test_archive_page_shows_sanitised_html_and_saves_attachments(harness: Harness) -> None:
    from tests.waiting import wait_until

    h = harness
    make_list(h.app, LIST, members=["ann@a.example"])
    msg = make_message("ann@a.example", LIST, "Flyer", "Plain flyer text.\n")
    msg.add_alternative('<html><body><p onclick="x()">See the <b>flyer</b>'
                        '<script>alert(1)</script><img src="https://tracker.example/p.gif" '
                        'alt="pixel"><a href="https://example.org/">site</a></p></body></html>',
                        subtype="html")
    msg.make_mixed()
    msg.add_attachment(b"%PDF-1.4 flyer", maintype="application", subtype="pdf",
                       filename="Flyer (final).pdf")
    msg.add_attachment("<script>alert(2)</script>", subtype="html", filename="../../evil.html")
    h.send(msg)
    h.run_until_idle()
    html_dir = h.app.settings.archive_path / LIST / "html"
    pages = lambda: sorted(html_dir.glob("*/1.html"))  # noqa: E731
    # a new message page is written in place (archive/html.py): wait for all of it
    wait_until(lambda: bool(pages()) and "</html>" in pages()[0].read_text(), 10,
               "the message page")
    page = pages()[0].read_text()
    month_dir = pages()[0].parent
    assert '<div class="body html">' in page and "<b>flyer</b>" in page
    assert "alert(1)" not in page and "onclick" not in page
    assert "tracker.example" not in page and 'alt="pixel"' in page
    assert 'rel="nofollow noopener"' in page
    files = sorted(p.name for p in (month_dir / "1").iterdir())
    assert files == ["1-Flyer_final_.pdf", "2-evil.html.txt"]
    assert (month_dir / "1" / "1-Flyer_final_.pdf").read_bytes() == b"%PDF-1.4 flyer"
    assert 'href="1/1-Flyer_final_.pdf" download="1-Flyer_final_.pdf"' in page
    assert "alert(2)" not in page


# ---------------------------------------------------------------------------- digests, welcome

def test_digest_send_reports_what_each_digest_holds_and_keeps_the_signature_space(
        harness: Harness, cli_env: dict[str, str], clock: Any) -> None:
    h = harness
    make_list(h.app, LIST, members=["ann@a.example", "plain@c.example", "late@d.example"])
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        m = members.find_membership(s, ml, "plain@c.example")
        assert m is not None
        members.change_delivery_mode(s, m, DeliveryMode.plain_digest, utcnow())
    for n in (1, 2):
        h.send(make_message("ann@a.example", LIST, f"Post {n}", f"Text {n}.\n\n-- \nAnn\n",
                            message_id=f"<d{n}@a.example>"))
        h.run_until_idle()
    h.send(make_message("late@d.example", "dev-request@example.org", "",
                        "set delivery plain-digest\n"))
    h.run_until_idle()                  # a change by mail waits for the member's confirmation
    got = h.sink.wait_for(lambda ms: any("confirm the delivery change" in str(m.message["Subject"])
                                         for m in ms))
    [req] = [m.message for m in got if "confirm the delivery" in str(m.message["Subject"])]
    h.send(make_message("late@d.example", str(req["Reply-To"]), "Re: confirm", "ok\n"))
    h.run_until_idle()
    h.send(make_message("ann@a.example", LIST, "Post 3", "Text 3.\n",
                        message_id="<d3@a.example>"))
    h.run_until_idle()
    out = CliRunner().invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.exit_code == 0, out.output
    assert "Vol 1, Issue 1: 3 post(s) to 1 member(s), 1 post(s) to 1 member(s) " \
        "(0 MIME, 2 plain)" in out.output
    clock.t = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    h.run_until_idle()
    h.sink.wait_for(lambda msgs: only(h, "plain@c.example"))
    plain = only(h, "plain@c.example")[0]
    assert b"\r\n-- \r\nAnn\r\n" in plain.data
    assert "\n-- \nAnn\n" in text(plain)


def test_welcome_has_description_and_digest_switch(harness: Harness) -> None:
    from listserv.core.models import SubscriptionPolicy

    h = harness
    make_list(h.app, LIST, subscription_policy=SubscriptionPolicy.open,
              description="Planning the garden group's work days.")
    h.send(make_message("eve@e.example", "dev-join@example.org", "", ""))
    h.run_until_idle()
    (welcome,) = answers(h, "eve@e.example", 1)
    body = text(welcome)
    assert "Planning the garden group's work days." in body
    assert '"set delivery mime-digest"' in body and "dev-request@example.org" in body
