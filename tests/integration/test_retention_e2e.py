"""Retention end to end: post over SMTP, deliver, digest, archive; a month later prune leaves
the spool with only the held post, the mbox archive intact, and the held post still approvable."""

from __future__ import annotations

import os

from sqlalchemy import func, select

from listserv import digests
from listserv.admin import retention
from listserv.archive import store as archive_store
from listserv.core import lists, members
from listserv.pipeline import moderation
from listserv.core.models import (
    utcnow,
    ArchiveMessage,
    Decision,
    Delivery,
    DeliveryMode,
    DigestEntry,
    HeldMessage,
    InboundMessage,
    OutboundMessage,
)
from tests import spooled
from tests.conftest import Clock
from tests.integration.harness import Harness, make_list, make_message

LIST = "dev@example.org"


def spool_files(h: Harness) -> set[str]:
    return spooled.stored(h.app)


def age_spool(h: Harness, days: float) -> None:
    spooled.age(h.app, days)


def test_a_month_later_only_the_held_post_is_left(harness: Harness, clock: Clock) -> None:
    make_list(harness.app, LIST, members=["reg@a.example", "dig@b.example"],
              owners=["owner@example.org"])
    with harness.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        m = members.find_membership(s, ml, "dig@b.example")
        assert m is not None
        members.change_delivery_mode(s, m, DeliveryMode.mime_digest, utcnow())
    harness.send(make_message("reg@a.example", LIST, "Kept in the archive", "Archived body.\n",
                              message_id="<kept@a.example>"))
    harness.run_until_idle()
    assert digests.send_now(harness.app, LIST)[0].posts == 1
    harness.run_until_idle()
    harness.sink.wait_for(lambda msgs: any("dig@b.example" in m.rcpt_tos for m in msgs))
    with harness.app.db.unit_of_work() as s:
        post_shas = {s.scalar(select(InboundMessage.spool_sha)),
                     s.scalar(select(DigestEntry.spool_sha))}
        post_shas |= set(s.scalars(select(OutboundMessage.spool_sha)))   # copy and digest
    assert len(post_shas) == 4

    harness.send(make_message("stranger@c.example", LIST, "Needs a moderator", "Held body.\n",
                              message_id="<held@c.example>"))
    harness.run_until_idle()
    with harness.app.db.unit_of_work() as s:
        held = s.scalars(select(HeldMessage)).one()
        held_id = held.id
        held_sha = s.get_one(InboundMessage, held.inbound_id).spool_sha
        newest_out = s.scalar(select(OutboundMessage.spool_sha)
                              .order_by(OutboundMessage.id.desc()).limit(1))
    before = spool_files(harness)
    assert post_shas | {held_sha, newest_out} <= before

    assert retention.prune(harness.app).spool_messages == 0    # nothing is old yet
    assert spool_files(harness) == before

    clock.advance(days=31)
    age_spool(harness, 31)
    stats = retention.prune(harness.app)
    # Left: the held post, and the newest outbound message (a hold notice; the newest row is
    # kept so that SQLite never re-uses its id).
    assert spool_files(harness) == {held_sha, newest_out}
    assert not post_shas & spool_files(harness)
    assert stats.spool_messages == len(before) - 2
    assert stats.rows["inbound_message"] == 1 and stats.rows["digest_entry"] == 1
    with harness.app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(OutboundMessage)) == 1
        kept = s.scalars(select(ArchiveMessage)).one()       # the archive is kept for ever
        assert b"Archived body." in archive_store.raw(s, kept.id)
        assert s.get(HeldMessage, held_id) is not None

    archive = [os.path.join(d, n) for d, _, names in os.walk(harness.app.settings.archive_path)
               for n in names if n.endswith(".mbox")]
    assert len(archive) == 1
    with open(archive[0], "rb") as fh:
        mbox = fh.read()
    assert b"Message-ID: <kept@a.example>" in mbox and b"Archived body." in mbox

    # The held post is intact: a moderator can still approve it, and it goes out.
    with harness.app.db.unit_of_work() as s:
        moderation.decide(s, harness.app, held_id, Decision.approve, actor="owner@example.org",
                          via="cli")
    harness.run_until_idle()
    harness.sink.wait_for(lambda msgs: any(
        "reg@a.example" in m.rcpt_tos and b"Held body." in m.data for m in msgs))
