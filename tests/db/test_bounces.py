"""Bounce services against a real database: events, scores, disabling, warnings, removal."""

from __future__ import annotations

import email
from email import policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from sqlalchemy import select, text

from listserv.bounces import process as bounces
from listserv.core.app import App
from listserv.core.lists import create_list, get_list
from listserv.core.members import add_member, find_membership
from listserv.core.models import (
    BounceEvent,
    BounceKind,
    Delivery,
    InboundMessage,
    InboundState,
    OutboundMessage,
    PendingToken,
    Role,
    TokenKind,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "bounces"
LIST = "dev@lists.example.org"
MEMBERS = ["alice.smith@example.com", "bob@example.net", "gina@slow.example", "quinn@example.com",
           "kim@gmail.example", "lee@gmail.example", "oscar@bigmail.example",
           "pia@bigmail.example", "hank@mailhost.example", "cwhite@example.edu"]


@pytest.fixture
def ml(app: App) -> str:
    with app.db.unit_of_work() as s:
        m = create_list(s, LIST)
        for e in MEMBERS:
            add_member(s, m, e)
        add_member(s, m, "owner@example.org", role=Role.owner)
    return LIST


def feed(app: App, data: bytes | str, extra: str | None = None, mail_from: str = "") -> str:
    raw = (DATA / data).read_bytes() if isinstance(data, str) else data
    msg = email.message_from_bytes(raw, policy=policy.default)
    with app.db.unit_of_work() as s:
        m = get_list(s, LIST)
        rcpt = f"dev-bounces+{extra.replace('@', '=')}@lists.example.org" if extra else \
            "dev-bounces@lists.example.org"
        inbound = InboundMessage(list_id=m.id, subaddress="bounces", extra=extra, rcpt=rcpt,
                                 mail_from=mail_from, spool_sha=app.spool.put(raw),
                                 subject=str(msg.get("subject", "")), received_at=app.now())
        s.add(inbound)
        s.flush()
        bounces.handle_mail(s, app, inbound, msg)  # type: ignore[arg-type]
        assert inbound.state is InboundState.handled
        return inbound.outcome or ""


def member(app: App, email_: str):  # noqa: ANN201
    with app.db.unit_of_work() as s:
        return find_membership(s, get_list(s, LIST), email_)


def events(app: App) -> list[tuple[str, BounceKind, str]]:
    with app.db.unit_of_work() as s:
        return [(e.email, e.kind, e.source) for e in
                s.scalars(select(BounceEvent).order_by(BounceEvent.id))]


def sent(app: App) -> list[tuple[list[str], EmailMessage]]:
    """Every queued message: (recipients, parsed message)."""
    out = []
    with app.db.unit_of_work() as s:
        for o in s.scalars(select(OutboundMessage).order_by(OutboundMessage.id)):
            rcpts = [r for d in s.scalars(select(Delivery).where(Delivery.outbound_id == o.id))
                     for r in d.recipients.split("\n")]
            msg = email.message_from_bytes(app.spool.get(o.spool_sha), policy=policy.default)
            out.append((rcpts, msg))
    return out


def dsn_for(addr: str, status: str = "5.1.1", action: str = "failed",
            diag: str = "550 5.1.1 user unknown") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example\nTo: dev-bounces@lists.example.org\n"
        "Subject: Undelivered Mail Returned to Sender\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nfailed\n--b\nContent-Type: message/delivery-status\n\n"
        f"Reporting-MTA: dns; mx.example\n\nFinal-Recipient: rfc822; {addr}\n"
        f"Action: {action}\nStatus: {status}\nDiagnostic-Code: smtp; {diag}\n\n--b--\n"
    ).encode()


def test_dsn_scores_member_once_per_day(app: App, ml: str, clock) -> None:  # noqa: ANN001
    out = feed(app, "postfix_user_unknown.eml")
    assert "hard alice.smith@example.com (5.1.1)" in out
    m = member(app, "alice.smith@example.com")
    assert m.bounce_score == 1 and m.last_bounce_at == clock() and m.enabled
    feed(app, "postfix_user_unknown.eml")              # same day: recorded, not scored
    assert member(app, "alice.smith@example.com").bounce_score == 1
    assert [k for _, k, _ in events(app)] == [BounceKind.hard, BounceKind.hard]
    clock.advance(days=1)
    feed(app, "postfix_user_unknown.eml")
    assert member(app, "alice.smith@example.com").bounce_score == 2


def test_threshold_disables_warns_and_tells_owner(app: App, ml: str, clock) -> None:  # noqa: ANN001
    for day in range(5):
        feed(app, "exim_failed.eml")
        m = member(app, "bob@example.net")
        assert m.enabled is (day < 4)
        clock.advance(days=1)
    assert m.bounce_score == 5 and m.disabled_reason == "bounce"
    assert m.bounce_warnings_sent == 1
    msgs = sent(app)
    owner = [msg for r, msg in msgs if r == ["owner@example.org"]]
    assert len(owner) == 1 and "bob@example.net" in owner[0]["Subject"]
    (warning,) = [msg for r, msg in msgs if r == ["bob@example.net"]]
    reply_to = str(warning["Reply-To"])
    assert reply_to.startswith("dev-confirm+") and reply_to.endswith("@lists.example.org")
    token = reply_to.split("+", 1)[1].split("@")[0]
    assert len(token) == 32 and token in str(warning["Subject"])
    assert warning["Auto-Submitted"] == "auto-generated"
    import hashlib
    with app.db.unit_of_work() as s:
        row = s.scalar(select(PendingToken))
        assert row.kind is TokenKind.reenable and row.email == "bob@example.net"
        assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
        # a disabled member is not scored further
    feed(app, "exim_failed.eml")
    assert member(app, "bob@example.net").bounce_score == 5


def test_stale_score_is_reset(app: App, ml: str, clock) -> None:  # noqa: ANN001
    feed(app, "exim_failed.eml")
    clock.advance(days=1)
    feed(app, "exim_failed.eml")
    assert member(app, "bob@example.net").bounce_score == 2
    clock.advance(days=7)                  # exactly 7 days later: still counts
    feed(app, "exim_failed.eml")
    assert member(app, "bob@example.net").bounce_score == 3
    clock.advance(days=8)                  # older than 7 days: forgotten first
    feed(app, "exim_failed.eml")
    assert member(app, "bob@example.net").bounce_score == 1


def test_tick_forgets_stale_scores(app: App, ml: str, clock) -> None:  # noqa: ANN001
    feed(app, "exim_failed.eml")
    clock.advance(days=7)
    bounces.tick(app)
    assert member(app, "bob@example.net").bounce_score == 1
    clock.advance(days=1)
    bounces.tick(app)
    assert member(app, "bob@example.net").bounce_score == 0


def _disable(app: App, email_: str) -> None:
    with app.db.unit_of_work() as s:
        m_list = get_list(s, LIST)
        m_list.bounce_score_threshold = 1
    feed(app, dsn_for(email_))
    assert member(app, email_).enabled is False


def test_warnings_then_removal(app: App, ml: str, clock) -> None:  # noqa: ANN001
    _disable(app, "hank@mailhost.example")
    bounces.tick(app)
    assert member(app, "hank@mailhost.example").bounce_warnings_sent == 1  # not yet due
    for n in (2, 3):
        clock.advance(days=7)
        bounces.tick(app)
        bounces.tick(app)
        assert member(app, "hank@mailhost.example").bounce_warnings_sent == n
    clock.advance(days=6)
    bounces.tick(app)
    assert member(app, "hank@mailhost.example") is not None
    clock.advance(days=1)
    bounces.tick(app)
    assert member(app, "hank@mailhost.example") is None
    msgs = sent(app)
    assert len([1 for r, _ in msgs if r == ["hank@mailhost.example"]]) == 4  # 3 warnings + bye
    owner_subjects = [str(m["Subject"]) for r, m in msgs if r == ["owner@example.org"]]
    assert any("disabled" in x for x in owner_subjects)
    assert any("removed" in x for x in owner_subjects)
    with app.db.unit_of_work() as s:
        assert all(t.used_at is not None for t in s.scalars(select(PendingToken)))


def test_two_processes_ticking_warn_once(app: App, ml: str, clock) -> None:  # noqa: ANN001
    """Two serve processes on PostgreSQL run the bounce tick at the same moment: the member
    gets one warning, not two (the second skips the rows the first has locked)."""
    if app.db.is_sqlite:
        pytest.skip("tests row locks skipped by a concurrent tick (SKIP LOCKED), which "
                    "SQLite does not have (runs in the PostgreSQL pass)")
    _disable(app, "hank@mailhost.example")
    clock.advance(days=7)
    with app.db.unit_of_work() as first:
        assert bounces.process_disabled(first, app) == 1     # locked, not yet committed
        with app.db.unit_of_work() as second:
            second.execute(text("SET LOCAL lock_timeout = '5s'"))   # fail, never hang
            assert bounces.process_disabled(second, app) == 0
    assert member(app, "hank@mailhost.example").bounce_warnings_sent == 2
    with app.db.unit_of_work() as third:                   # committed: not due again
        assert bounces.process_disabled(third, app) == 0


def test_reenable_by_token(app: App, ml: str, clock) -> None:  # noqa: ANN001
    _disable(app, "hank@mailhost.example")
    with app.db.unit_of_work() as s:
        token = s.scalar(select(PendingToken))
        assert "re-enabled" in bounces.reenable_token(s, app, token, "email")
    m = member(app, "hank@mailhost.example")
    assert m.enabled and m.disabled_reason is None and m.bounce_score == 0
    assert m.bounce_warnings_sent == 0
    clock.advance(days=30)
    bounces.tick(app)
    assert member(app, "hank@mailhost.example").enabled


def test_reenable_refuses_admin_disabled(app: App, ml: str) -> None:
    with app.db.unit_of_work() as s:
        m = find_membership(s, get_list(s, LIST), "bob@example.net")
        m.enabled, m.disabled_reason = False, "admin"
        assert bounces.reenable(s, app, m, "email") is False
        assert m.enabled is False


def test_verp_identifies_member_even_when_report_names_an_alias(app: App, ml: str) -> None:
    out = feed(app, dsn_for("forwarded-alias@elsewhere.example"), extra="quinn@example.com")
    assert "quinn@example.com" in out
    assert member(app, "quinn@example.com").bounce_score == 1
    assert ("quinn@example.com", BounceKind.hard, "verp") in events(app)


def test_verp_plain_bounce_without_report(app: App, ml: str) -> None:
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@mx.example>\n"
           b"Subject: Mail delivery failed\n\nSorry, 550 5.1.1 mailbox unavailable\n")
    feed(app, raw, extra="quinn@example.com")
    assert events(app) == [("quinn@example.com", BounceKind.hard, "verp")]
    assert member(app, "quinn@example.com").bounce_score == 1


def test_verp_with_policy_dsn_is_policy(app: App, ml: str) -> None:
    feed(app, dsn_for("quinn@example.com", "5.7.1", diag="550 5.7.1 rejected as spam"),
         extra="quinn@example.com")
    assert events(app) == [("quinn@example.com", BounceKind.policy, "dsn")]
    assert member(app, "quinn@example.com").bounce_score == 0


def test_autoreply_recorded_and_dropped(app: App, ml: str) -> None:
    out = feed(app, "vacation_autoreply.eml", extra="quinn@example.com")
    assert "auto-reply" in out
    assert events(app) == [("quinn@example.com", BounceKind.other, "verp")]
    assert member(app, "quinn@example.com").bounce_score == 0
    assert sent(app) == []           # never forwarded anywhere


def test_random_mail_to_bounces_is_dropped(app: App, ml: str) -> None:
    raw = b"From: Human <human@example.com>\nSubject: hello\n\nIs this the list?\n"
    out = feed(app, raw, mail_from="human@example.com")
    assert "not a recognisable bounce" in out
    assert events(app) == [("human@example.com", BounceKind.other, "dsn")]
    assert sent(app) == []


def test_delayed_counts_soft_without_score(app: App, ml: str) -> None:
    feed(app, "postfix_delayed.eml")
    assert events(app) == [("gina@slow.example", BounceKind.soft, "dsn")]
    assert member(app, "gina@slow.example").bounce_score == 0


def test_list_own_addresses_ignored(app: App, ml: str) -> None:
    feed(app, "mixed_partial.eml")
    assert [e for e, _, _ in events(app)] == ["sam@example.com"]


def test_sendmail_final_recipient_matches_member(app: App, ml: str) -> None:
    feed(app, "sendmail_dsn.eml")
    assert member(app, "cwhite@example.edu").bounce_score == 1


def test_policy_bulk_not_scored_and_owner_summary(app: App, ml: str, clock) -> None:  # noqa: ANN001
    with app.db.unit_of_work() as s:
        get_list(s, LIST).bounce_score_threshold = 1
    feed(app, "spamhaus_policy.eml")
    feed(app, "gmail_dmarc_policy.eml")
    for e in ("oscar@bigmail.example", "pia@bigmail.example", "kim@gmail.example"):
        m = member(app, e)
        assert m.enabled and m.bounce_score == 0
    assert {k for _, k, _ in events(app)} == {BounceKind.policy}
    bounces.tick(app)
    assert sent(app) == []                # the burst is still settling
    clock.advance(minutes=6)
    bounces.tick(app)
    (notice,) = [m for r, m in sent(app) if r == ["owner@example.org"]]
    body = notice.get_content()
    assert "bigmail.example: 2 refusal(s)" in body and "gmail.example: 2" in body
    # more policy bounces the same day: no second notice until tomorrow
    feed(app, "spamhaus_policy.eml")
    clock.advance(minutes=10)
    bounces.tick(app)
    assert len(sent(app)) == 1
    clock.advance(days=1)
    bounces.tick(app)
    assert len(sent(app)) == 2


def test_record_failure_smtp(app: App, ml: str, clock) -> None:  # noqa: ANN001
    with app.db.unit_of_work() as s:
        lid = get_list(s, LIST).id
        bounces.record_failure(s, app, lid, ["Bob@Example.NET", "dev@lists.example.org"], 550,
                               "5.1.1 <bob@example.net>: Recipient address rejected", True)
        bounces.record_failure(s, app, lid, ["kim@gmail.example"], 554,
                               "5.7.1 Service unavailable; blocked using zen.spamhaus.org",
                               True)
        bounces.record_failure(s, app, lid, ["gina@slow.example"], 451, "try later", False)
        bounces.record_failure(s, app, lid, ["lee@gmail.example"], 421, "timeout", True)
        bounces.record_failure(s, app, None, ["x@example.com"], 550, "no list", True)
    assert events(app) == [("bob@example.net", BounceKind.hard, "smtp"),
                           ("kim@gmail.example", BounceKind.policy, "smtp"),
                           ("gina@slow.example", BounceKind.soft, "smtp"),
                           ("lee@gmail.example", BounceKind.hard, "smtp")]
    assert member(app, "bob@example.net").bounce_score == 1
    assert member(app, "lee@gmail.example").bounce_score == 1
    assert member(app, "kim@gmail.example").bounce_score == 0


def test_no_warnings_means_removal_at_next_tick(app: App, ml: str) -> None:
    with app.db.unit_of_work() as s:
        get_list(s, LIST).bounce_warnings = 0
    _disable(app, "bob@example.net")
    assert [r for r, _ in sent(app)] == [["owner@example.org"]]
    bounces.tick(app)
    assert member(app, "bob@example.net") is None


@pytest.mark.parametrize("name,rcpt", [("mail2000_plain.eml", "tama.neko@tokyo.example"),
                                       ("opensmtpd_error.eml", "uma@bsd.example"),
                                       ("sms_gateway.eml", "5550100@txt.carrier.example")])
def test_unknown_format_scores_only_mentioned_members(app: App, ml: str, name: str,
                                                      rcpt: str) -> None:
    with app.db.unit_of_work() as s:
        m = get_list(s, LIST)
        add_member(s, m, rcpt)
        add_member(s, m, "poster@example.net")
    feed(app, name)
    assert events(app) == [(rcpt, BounceKind.hard, "detector")]
    assert member(app, "poster@example.net").bounce_score == 0


def test_unknown_format_naming_no_member_is_other(app: App, ml: str) -> None:
    feed(app, "opensmtpd_error.eml")
    assert [k for _, k, _ in events(app)] == [BounceKind.other]


def test_abuse_report_recorded_as_other(app: App, ml: str) -> None:
    out = feed(app, "arf_feedback.eml")
    assert "not a recognisable bounce" in out
    assert [k for _, k, _ in events(app)] == [BounceKind.other]


def test_forward_target_in_report_resolved_by_text(app: App, ml: str) -> None:
    raw = dsn_for("alice@new.example").replace(
        b"failed\n--b", b"<alice@new.example> (expanded from <Alice.Smith@Example.com>): host\n"
        b"    mx.new.example said: 550 5.1.1 unknown user\n--b")
    feed(app, raw)
    assert member(app, "alice.smith@example.com").bounce_score == 1
    assert ("alice@new.example", BounceKind.hard, "dsn") in events(app)


def test_delivered_recipients_in_report_are_never_guessed(app: App, ml: str) -> None:
    with app.db.unit_of_work() as s:
        add_member(s, get_list(s, LIST), "rita@example.com")
    feed(app, "mixed_partial.eml")
    assert member(app, "rita@example.com").bounce_score == 0
    assert [e for e, _, _ in events(app)] == ["sam@example.com"]


def test_operator_reenable_clears_history_and_closes_warning_tokens(app: App, ml: str) -> None:
    """`member set --enable` forgets the bounce state: a bounce the same day scores again and
    the old warning's token no longer acts."""
    from listserv.core.members import set_member

    _disable(app, "hank@mailhost.example")
    with app.db.unit_of_work() as s:
        set_member(s, get_list(s, LIST), "hank@mailhost.example", enabled=True)
    m = member(app, "hank@mailhost.example")
    assert m.enabled and m.last_bounce_at is None and m.bounce_score == 0
    with app.db.unit_of_work() as s:
        tokens = list(s.scalars(select(PendingToken).where(
            PendingToken.kind == TokenKind.reenable)))
        assert tokens and all(t.used_at is not None for t in tokens)
    with app.db.unit_of_work() as s:
        bounces.record_failure(s, app, get_list(s, LIST).id, ["hank@mailhost.example"], 550,
                               "5.1.1 user unknown", True)
    assert member(app, "hank@mailhost.example").bounce_score == 1
