"""Nothing the list sends can be multiplied by a stranger: rejection notices are rate-limited
and echo a flat Subject, archive answers are capped in bytes per day, and a forged 'set
delivery' changes nothing without the member's confirmation. Real SMTP in and out."""

from __future__ import annotations

from email.message import EmailMessage

from listserv import archive_access, lists, members
from listserv.archive import mbox_entry
from listserv.models import Action, ArchivePolicy, DeliveryMode
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured

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
