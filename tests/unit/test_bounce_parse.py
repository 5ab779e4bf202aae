"""The bounce parser against composed samples of real MTA formats (tests/data/bounces)."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from listserv.bounces.parse import classify, classify_text, find_status, is_policy, parse
from listserv.core.models import BounceKind

DATA = Path(__file__).resolve().parent.parent / "data" / "bounces"
H, S, P = BounceKind.hard, BounceKind.soft, BounceKind.policy


def load(name: str) -> EmailMessage:
    return email.message_from_bytes((DATA / name).read_bytes(), policy=policy.default)


# sample -> {address: (kind, status prefix, source)}
EXPECTED = {
    "postfix_user_unknown.eml": {"alice.smith@example.com": (H, "5.1.1", "dsn")},
    "postfix_delayed.eml": {"gina@slow.example": (S, "4.4.1", "dsn")},
    "exim_failed.eml": {"bob@example.net": (H, "5.1.1", "detector")},
    "exim_dsn_quota.eml": {"hank@mailhost.example": (H, "5.2.2", "dsn")},
    "sendmail_dsn.eml": {"cwhite@example.edu": (H, "5.1.1", "dsn")},
    "sendmail_plain.eml": {"ivan@old.example.com": (H, "", "detector")},
    "exchange_ndr.eml": {"dave.jones@contoso.example": (H, "5.1.10", "dsn")},
    "exchange2003_plain.eml": {"jake.m@corp.example": (H, "", "detector")},
    "gmail_nosuchuser.eml": {"erin.nobody@gmail.example": (H, "5.1.1", "dsn")},
    "gmail_dmarc_policy.eml": {"kim@gmail.example": (P, "5.7.26", "dsn"),
                               "lee@gmail.example": (P, "5.7.26", "dsn")},
    "qmail_failure.eml": {"frank@qhost.example": (H, "5.1.1", "detector"),
                          "nora@qhost.example": (H, "5.1.1", "detector")},
    "spamhaus_policy.eml": {"oscar@bigmail.example": (P, "5.0.0", "dsn"),
                            "pia@bigmail.example": (P, "5.0.0", "dsn")},
    "mixed_partial.eml": {"sam@example.com": (H, "5.1.1", "dsn"),
                          "dev@lists.example.org": (H, "5.1.1", "dsn")},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_samples_identify_addresses_and_kinds(name: str) -> None:
    report = parse(load(name))
    got = {f.email: (f.kind, f.status, f.source) for f in report.failures}
    want = EXPECTED[name]
    assert set(got) == set(want)
    for addr, (kind, status, source) in want.items():
        assert got[addr][0] is kind, addr
        assert got[addr][1].startswith(status), (addr, got[addr][1])
        assert got[addr][2] == source
    assert report.looks_like_bounce
    assert not report.auto_reply


def test_every_sample_is_covered() -> None:
    names = {p.name for p in DATA.glob("*.eml")}
    assert names == set(EXPECTED) | set(GUESSED) | {"vacation_autoreply.eml",
                                                    "arf_feedback.eml"}


# Formats no detector knows: addresses mentioned in the report (members only, later).
GUESSED = {
    "mail2000_plain.eml": ({"tama.neko@tokyo.example"}, "poster@example.net"),
    "opensmtpd_error.eml": ({"uma@bsd.example"}, "poster@example.net"),
    "sms_gateway.eml": ({"5550100@txt.carrier.example"}, "poster@example.net"),
}


@pytest.mark.parametrize("name", sorted(GUESSED))
def test_unknown_formats_guess_the_recipient_not_the_sender(name: str) -> None:
    report = parse(load(name))
    assert report.failures == () and report.looks_like_bounce
    want, sender = GUESSED[name]
    guessed = {g.email for g in report.guesses} - {"dev-bounces@lists.example.org"}
    assert guessed == want
    assert sender not in guessed
    assert all(g.kind is H for g in report.guesses)


def test_unknown_format_yields_guesses_only() -> None:
    report = parse(load("mail2000_plain.eml"))
    assert report.failures == () and report.looks_like_bounce
    guessed = {g.email for g in report.guesses}
    assert "tama.neko@tokyo.example" in guessed
    assert "poster@example.net" not in guessed          # the returned original is cut off
    assert "postmaster@gw.tokyo.example" not in guessed


def test_abuse_report_is_not_a_bounce() -> None:
    report = parse(load("arf_feedback.eml"))
    assert report.failures == () and report.guesses == ()


def test_sendmail_dsn_keeps_the_actual_recipient_as_alternate() -> None:
    (f,) = parse(load("sendmail_dsn.eml")).failures
    assert f.alternates == ("carol.w@example.edu",)
    assert "User unknown" in f.diagnostic


def test_vacation_reply_is_not_a_bounce() -> None:
    report = parse(load("vacation_autoreply.eml"))
    assert report.failures == ()
    assert report.auto_reply
    assert not report.looks_like_bounce


def test_subject_only_vacation_reply() -> None:
    msg = EmailMessage()
    msg["From"] = "someone@example.com"
    msg["Subject"] = "Automatic reply: [dev] hello"
    msg.set_content("I'm away.")
    report = parse(msg)
    assert report.auto_reply and not report.failures


def test_success_only_dsn() -> None:
    raw = (DATA / "mixed_partial.eml").read_text()
    raw = raw.replace("Action: failed", "Action: relayed")
    report = parse(email.message_from_string(raw, policy=policy.default))
    assert report.failures == ()
    assert report.success_dsn


def test_delivery_status_as_undecoded_text() -> None:
    """A delivery-status part sent base64-encoded is still read."""
    import base64

    body = ("Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; <Zed@Example.net>\n"
            "Action: failed\nStatus: 5.1.1\n")
    raw = ("From: MAILER-DAEMON@mx.example\nTo: dev-bounces@lists.example.org\n"
           "Subject: failure\nMIME-Version: 1.0\n"
           'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
           "--b\nContent-Type: text/plain\n\nfailed\n--b\n"
           "Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
           + base64.encodebytes(body.encode()).decode() + "--b--\n")
    (f,) = parse(email.message_from_string(raw, policy=policy.default)).failures
    assert (f.email, f.kind, f.status) == ("zed@example.net", H, "5.1.1")


@pytest.mark.parametrize("action,status,diag,kind", [
    ("failed", "5.1.1", "550 5.1.1 user unknown", H),
    ("failed", "5.7.1", "550 5.7.1 rejected", P),
    ("failed", "5.0.0", "554 rejected: listed at bl.spamcop.net", P),
    ("failed", "5.5.0", "550 message rejected due to DMARC", P),
    ("failed", "5.1.1", "550 5.1.1 unknown user (policy)", H),
    ("failed", "4.4.7", "delivery time expired", H),
    ("delayed", "4.2.2", "mailbox full", S),
    ("", "4.0.0", "", S),
    ("delivered", "2.0.0", "", None),
    ("relayed", "", "", None),
    ("failed (bad destination mailbox address)", "", "550 5.1.1 no such user", H),
])
def test_classify(action: str, status: str, diag: str, kind: BounceKind | None) -> None:
    assert classify(action, status, diag) is kind


def test_status_and_text_helpers() -> None:
    assert find_status("Remote host said: 550 5.1.1 <a@b>") == "5.1.1"
    assert find_status("(#5.1.1)") == "5.1.1"
    assert find_status("421 try later") == "4.0.0"
    assert find_status("v1.2.3.4 nothing") == ""
    assert is_policy("5.7.1", "")
    assert not is_policy("5.2.2", "mailbox full")
    assert classify_text("The message has been delayed; will retry") == (S, "")
    assert classify_text("550 5.1.1 no such user")[0] is H


@pytest.mark.parametrize("subject", ["Abwesenheitsnotiz: [dev] hello", "Réponse automatique",
                                     "Respuesta automática: [dev] hello", "Out of Office",
                                     "Automatic reply: [dev] hello"])
def test_localised_auto_replies(subject: str) -> None:
    msg = EmailMessage()
    msg["From"] = "someone@example.com"
    msg["Subject"] = subject
    msg.set_content("Back next week.")
    assert parse(msg).auto_reply


def test_exchange_x500_original_recipient_is_skipped() -> None:
    raw = (DATA / "exchange_ndr.eml").read_text().replace(
        "Final-Recipient: rfc822;dave.jones@contoso.example",
        "Original-Recipient: rfc822;IMCEAEX-_o=Contoso_ou=Exchange+20Administrative+20Group"
        "_cn=Recipients_cn=djones@contoso.example\nFinal-Recipient: rfc822;"
        "dave.jones@contoso.example")
    (f,) = parse(email.message_from_string(raw, policy=policy.default)).failures
    assert f.email == "dave.jones@contoso.example"


@pytest.mark.timeout(5)      # a hang guard: the marker pattern once tried every split of the
def test_long_blank_lines_do_not_stall_the_reading_of_a_bounce() -> None:   # blanks (18 s)
    from listserv.bounces.parse import ORIGINAL_MARKERS, notification_text

    for blank in (" " * 20000, "---" + " " * 20000, "original message" + " " * 20000):
        assert ORIGINAL_MARKERS.search(blank + "x") is None
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@relay.example"
    msg["To"] = "dev-bounces@example.org"
    msg["Subject"] = "Undelivered Mail Returned to Sender"
    msg.set_content("Could not deliver to <gone@example.net>: 550 5.1.1 no such user\n"
                    + " " * 15000 + "x\n\n----- Original message -----\n"
                    "From: member@example.org\n")
    text = notification_text(msg)
    assert "gone@example.net" in text and "member@example.org" not in text
    report = parse(msg)
    assert "member@example.org" not in {g.email for g in report.guesses}


@pytest.mark.timeout(5)      # each address's context was the whole line: 1,173 took 9.5 s
def test_a_report_of_one_long_line_of_addresses_is_read_in_bounded_time() -> None:
    msg = EmailMessage()
    msg["From"] = "MAILER-DAEMON@relay.example"
    msg["To"] = "dev-bounces@example.org"
    msg["Subject"] = "Undelivered Mail Returned to Sender"
    msg.set_content(" ".join(f"u{i}@example.net" for i in range(1000))
                    + " 550 5.1.1 no such user\n")
    report = parse(msg)
    guesses = {g.email: g for g in report.guesses}
    assert len(guesses) == 1000
    assert guesses["u999@example.net"].status == "5.1.1"     # the text near it is read,
    assert guesses["u0@example.net"].status == ""            # not the whole line
