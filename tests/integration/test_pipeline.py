"""Posting pipeline end to end: SMTP in, rules, fan-out, archive, copies in the sink."""

from __future__ import annotations

import mailbox

from sqlalchemy import select

from listserv.models import ArchiveEntry, Fanout, InboundMessage, InboundState, MailingList
from tests.integration.harness import Harness, make_list, make_message, post_id_of


def states(h: Harness) -> list[tuple[str, str, str | None]]:
    with h.app.db.unit_of_work() as s:
        return [(m.subaddress, m.state.value, m.outcome)
                for m in s.scalars(select(InboundMessage).order_by(InboundMessage.id))]


def test_member_post_reaches_every_member(harness: Harness) -> None:
    make_list(harness.app, "dev@example.org",
              members=["ann@a.example", "bob@b.example", "cy@c.example"])
    harness.send(make_message("ann@a.example", "dev@example.org", "First post"))
    harness.run_until_idle()
    got = harness.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    assert sorted({r for m in got for r in m.rcpt_tos}) == [
        "ann@a.example", "bob@b.example", "cy@c.example"]
    copy = got[0].message
    assert "<dev.example.org>" in copy["List-Id"]
    assert got[0].mail_from.startswith("dev-bounces")
    assert states(harness) == [("post", "accepted", "accepted as post 1 to 3 recipients")]
    assert post_id_of(harness.app, "dev@example.org") == 1
