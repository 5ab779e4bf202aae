"""Nothing the list sends can be multiplied by a stranger: rejection notices are rate-limited
and echo a flat Subject, archive answers are capped in bytes per day, and a forged 'set
delivery' changes nothing without the member's confirmation. Real SMTP in and out."""

from __future__ import annotations

import dataclasses
from email.message import EmailMessage
from typing import Iterator

import dkim
import pytest

from listserv.archive import index as archive_index
from listserv.pipeline import archive_commands as archive_access
from listserv.core import config, lists, members
from listserv.message import signing
from listserv.core.app import App
from listserv.archive.read import mbox_entry
from listserv.core.models import Action, ArchivePolicy, DeliveryMode, SubscriptionPolicy
from tests.conftest import Clock
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured, SmtpSink

LIST = "dev@example.org"


def to(msgs: list[Captured], rcpt: str) -> list[EmailMessage]:
    return [m.message for m in msgs if rcpt in m.rcpt_tos]


def test_reject_notices_to_a_forged_sender_are_limited_and_flat(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["ann@a.example"], nonmember_action=Action.reject)
    subject = "=?utf-8?q?hello=0D=0AX-Evil:_injected=0D=0A=0D=0Abody?="
    for n in range(6):
        raw = (f"From: victim@v.example\r\nTo: {LIST}\r\nSubject: {subject}\r\n"
               f"Message-ID: <f{n}@evil>\r\n\r\nforged\r\n").encode()
        harness.send(raw, mail_from="attacker@evil.example", rcpts=[LIST])
    harness.run_until_idle()
    got = to(harness.sink.wait_for(lambda ms: len(to(ms, "victim@v.example")) >= 3),
             "victim@v.example")
    harness.run_until_idle()
    assert len(to(list(harness.sink.messages), "victim@v.example")) == 3
    for notice in got:
        assert "X-Evil" not in notice
        text = notice.get_body(preferencelist=("plain",)).get_content()
        [line] = [ln for ln in text.splitlines() if "X-Evil" in ln]
        assert "hello" in line and "body" in line        # one line, as sent
        assert not any(ln.startswith("X-Evil") for ln in text.splitlines())


def test_archive_get_is_capped_in_bytes_per_day(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["ann@a.example"], archive=ArchivePolicy.public)
    path = harness.app.settings.archive_path / LIST / "2026-10.mbox"
    path.parent.mkdir(parents=True)
    big = "x" * 76 + "\n"
    chunks = []
    for n in range(4):                                   # 4 messages of about 1.5 MB
        m = make_message("ann@a.example", LIST, f"big {n}", big * 20000,
                         message_id=f"<big{n}@a.example>")
        chunks.append(mbox_entry(m.as_bytes(), 1_790_000_000.0 + n))
    path.write_bytes(b"".join(chunks))
    ingest(harness.app)
    size = path.stat().st_size
    assert 5_000_000 < size < archive_access.GET_DAILY_BYTES
    for n in range(4):
        harness.send(make_message("stranger@s.example", "dev-request@example.org", "get",
                                  "get 2026-10\n", message_id=f"<g{n}@s.example>"))
        harness.run_until_idle()
    sent = 0
    for msg in to(list(harness.sink.messages), "stranger@s.example"):
        for part in msg.iter_attachments():
            sent += len(part.get_content())
    assert size <= sent <= archive_access.GET_DAILY_BYTES


def write_month(h: Harness, month: str, count: int, lines: int) -> int:
    """An archived month of ``count`` posts of ``lines`` 77-byte lines; its size."""
    path = h.app.settings.archive_path / LIST / f"{month}.mbox"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ("x" * 76 + "\n") * lines
    chunks = [mbox_entry(make_message("ann@a.example", LIST, f"{month} {n}", body,
                                      message_id=f"<{month}.{n}@a.example>").as_bytes(),
                         1_790_000_000.0 + n) for n in range(count)]
    path.write_bytes(b"".join(chunks))
    ingest(h.app)
    return path.stat().st_size


def ingest(app: App) -> None:
    """The month files into the archive in the database (reindex --from-mbox)."""
    with app.db.unit_of_work() as session:
        archive_index.ingest_mbox(app, session, lists.get_list(session, LIST))


def ask(h: Harness, month: str, n: int) -> tuple[list[bytes], str]:
    """Send 'get MONTH' (or 'index') from the stranger; the mbox attachments and the
    answer's text."""
    before = len(to(list(h.sink.messages), "stranger@s.example"))
    command = "index" if month == "index" else f"get {month}"
    h.send(make_message("stranger@s.example", "dev-request@example.org", "archive please",
                        f"{command}\n", message_id=f"<get{n}@s.example>"))
    h.run_until_idle()
    got = to(h.sink.wait_for(lambda ms: len(to(ms, "stranger@s.example")) > before),
             "stranger@s.example")[before:]
    [answer] = got
    data = [p.get_content() for p in answer.iter_attachments()]
    text = answer.get_body(preferencelist=("plain",)).get_content()
    return data, text


@pytest.fixture
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    """One answer holds at most 300 kB, an address gets 500 kB a day."""
    monkeypatch.setattr(archive_access, "GET_MAX_BYTES", 300_000)
    monkeypatch.setattr(archive_access, "GET_DAILY_BYTES", 500_000)


def test_large_public_month_is_answered_with_its_web_page(harness: Harness,
                                                          small_caps: None) -> None:
    make_list(harness.app, LIST, members=["ann@a.example"], archive=ArchivePolicy.public)
    large = write_month(harness, "2026-09", 4, 1300)          # about 400 kB: over one answer
    small = write_month(harness, "2026-10", 3, 1200)          # about 280 kB: fits
    assert large > 300_000 >= small > 500_000 - small
    base = harness.app.settings.web.base_url.rstrip("/")

    data, text = ask(harness, "2026-09", 1)
    assert data == []                                         # nothing cut, nothing attached
    assert f"{base}/lists/dev@example.org/archive/2026-09/" in text.split()
    assert "larger than one answer" in text

    data, text = ask(harness, "2026-10", 2)                   # fits: sent whole
    assert [len(d) for d in data] == [small]

    data, text = ask(harness, "2026-10", 3)                   # over what is left today
    assert data == []
    assert "left of today's" in text
    assert f"{base}/lists/dev@example.org/archive/2026-10/" in text.split()

    data, text = ask(harness, "index", 4)                     # the index names the web archive
    assert f"{base}/lists/dev@example.org/archive/" in text.split()


@pytest.mark.parametrize("archive, web", [(ArchivePolicy.private, True),
                                          (ArchivePolicy.public, False)])
def test_large_month_without_a_public_web_archive_is_cut(
        app: App, sink: SmtpSink, small_caps: None, archive: ArchivePolicy, web: bool) -> None:
    h = Harness(app, sink, **({} if web else {"web__listen": ""})).start()
    try:
        make_list(h.app, LIST, members=["stranger@s.example"], archive=archive)
        large = write_month(h, "2026-09", 4, 1300)
        data, text = ask(h, "2026-09", 1)
        [mbox] = data
        assert 0 < len(mbox) <= 300_000 < large               # the first posts that fit
        assert "/archive/" not in text
        data, text = ask(h, "index", 2)
        assert "2026-09" in text and "/archive/" not in text
    finally:
        h.stop()


def test_forged_set_delivery_needs_the_members_confirmation(harness: Harness) -> None:
    make_list(harness.app, LIST, members=["bob@b.example"])
    harness.send(make_message("bob@b.example", "dev-request@example.org", "",
                              "set delivery nomail\n"), mail_from="eve@evil.example")
    harness.run_until_idle()

    def mode() -> DeliveryMode:
        with harness.app.db.unit_of_work() as s:
            m = members.find_membership(s, lists.get_list(s, LIST), "bob@b.example")
            assert m is not None
            return m.delivery_mode

    assert mode() is DeliveryMode.regular
    got = to(harness.sink.wait_for(lambda ms: any(
        "confirm the delivery change" in str(m.message["Subject"]) for m in ms)),
        "bob@b.example")
    [request] = [m for m in got if "confirm the delivery change" in str(m["Subject"])]
    harness.send(make_message("bob@b.example", str(request["Reply-To"]), "Re: confirm", "yes"))
    harness.run_until_idle()
    assert mode() is DeliveryMode.nomail


BOB_KEY = signing.generate_key()
EVE_KEY = signing.generate_key()
DNS = {"k1._domainkey.b.example": signing.dns_record(BOB_KEY),
       "k1._domainkey.evil.example": signing.dns_record(EVE_KEY)}


def resolve(name: str) -> list[str]:
    value = DNS.get(name.rstrip(".").lower())
    return [value] if value else []


@pytest.fixture
def authenticating(app: App, sink: SmtpSink) -> Iterator[Harness]:
    """require_authenticated_replies on, the MTA's Authentication-Results trusted, DNS
    answering the test's DKIM keys."""
    a = dataclasses.replace(app, resolve_txt=resolve, settings=config.replace(
        app.settings, moderation__require_authenticated_replies=True,
        moderation__trusted_authserv_id="mx.example.org"))
    h = Harness(a, sink).start()
    yield h
    h.stop()


def set_delivery_mail(message_id: str, *, signer: tuple[bytes, str] | None = None,
                      **headers: str) -> bytes:
    """'set delivery nomail' from bob@b.example, DKIM-signed by (domain, key) if given."""
    msg = make_message("Bob <bob@b.example>", "dev-request@example.org", "delivery",
                       "set delivery nomail\n", message_id=message_id, **headers)
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    if signer is None:
        return data
    domain, key = signer
    return dkim.sign(data, b"k1", domain, key.encode(),
                     include_headers=[b"From", b"To", b"Subject", b"Date",
                                      b"Message-ID"]) + data


def bob_mode(h: Harness) -> DeliveryMode:
    with h.app.db.unit_of_work() as s:
        m = members.find_membership(s, lists.get_list(s, LIST), "bob@b.example")
        assert m is not None
        return m.delivery_mode


def confirmations_to_bob(h: Harness) -> int:
    return sum(1 for m in to(list(h.sink.messages), "bob@b.example")
               if "confirm the delivery change" in str(m["Subject"]))


def test_dkim_verified_set_delivery_acts_at_once(authenticating: Harness) -> None:
    h = authenticating
    make_list(h.app, LIST, members=["bob@b.example"])
    h.send(set_delivery_mail("<s1@b.example>", signer=(b"b.example", BOB_KEY)),
           mail_from="bob@b.example", rcpts=["dev-request@example.org"])
    h.run_until_idle()
    assert bob_mode(h) is DeliveryMode.nomail
    answer = to(h.sink.wait_for(lambda ms: len(to(ms, "bob@b.example")) >= 1),
                "bob@b.example")
    text = answer[0].get_body(preferencelist=("plain",)).get_content()
    assert "now nomail" in text and confirmations_to_bob(h) == 0


@pytest.mark.parametrize("how", ["unsigned", "signed by another domain", "tampered",
                                 "untrusted Authentication-Results"])
def test_unverified_set_delivery_waits_for_confirmation(authenticating: Harness,
                                                        how: str) -> None:
    h = authenticating
    make_list(h.app, LIST, members=["bob@b.example"])
    if how == "unsigned":
        data = set_delivery_mail("<u1@evil.example>")
    elif how == "signed by another domain":
        data = set_delivery_mail("<u2@evil.example>", signer=(b"evil.example", EVE_KEY))
    elif how == "tampered":
        data = set_delivery_mail("<u3@evil.example>", signer=(b"b.example", BOB_KEY)).replace(
            b"set delivery nomail", b"set delivery nomail ")
    else:
        data = set_delivery_mail("<u4@evil.example>",
                                 Authentication_Results="evil.example; dkim=pass "
                                                        "header.d=b.example")
    h.send(data, mail_from="eve@evil.example", rcpts=["dev-request@example.org"])
    h.run_until_idle()
    h.sink.wait_for(lambda ms: confirmations_to_bob(h) >= 1)
    assert bob_mode(h) is DeliveryMode.regular


def test_trusted_authentication_results_act_at_once(authenticating: Harness) -> None:
    h = authenticating
    make_list(h.app, LIST, members=["bob@b.example"])
    h.send(set_delivery_mail("<t1@b.example>", Authentication_Results=(
        "mx.example.org; dkim=pass header.d=b.example")),
        mail_from="bob@b.example", rcpts=["dev-request@example.org"])
    h.run_until_idle()
    assert bob_mode(h) is DeliveryMode.nomail


def test_forged_joins_get_a_few_confirmation_requests_a_day(harness: Harness,
                                                            clock: Clock) -> None:
    """A join in a stranger's name costs them a confirmation request; forged joins an hour
    apart (past the re-send interval) cost them at most five a day, per list."""
    make_list(harness.app, LIST, members=["ann@a.example"],
              subscription_policy=SubscriptionPolicy.confirm)

    def forge(n: int) -> None:
        harness.send(make_message("victim@v.example", "dev-join@example.org", "join", "",
                                  message_id=f"<join{n}@evil.example>"),
                     mail_from="attacker@evil.example")
        harness.run_until_idle()
        clock.advance(minutes=61)

    def requests() -> list[EmailMessage]:
        return [m for m in to(list(harness.sink.messages), "victim@v.example")
                if "confirm your subscription" in str(m["Subject"])]

    for n in range(8):
        forge(n)
    harness.sink.wait_for(lambda ms: len(requests()) >= 5)
    harness.run_until_idle()
    assert len(requests()) == 5
    clock.advance(days=1)
    forge(8)
    harness.sink.wait_for(lambda ms: len(requests()) >= 6)
    # the latest request's token still works: the victim (or a person who really asked) joins
    harness.send(make_message("victim@v.example", str(requests()[-1]["Reply-To"]), "Re: confirm",
                              "yes"))
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:
        assert members.find_membership(s, lists.get_list(s, LIST), "victim@v.example")
