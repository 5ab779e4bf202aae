"""`list delete` removes everything that belongs to the list, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select

from listserv.core import models as m
from listserv.core.app import App
from listserv.core.lists import get_list
from listserv.core.members import add_member
from tests.clirun import Cli


def test_delete_cascades_to_queue_moderation_digest_and_bounce_rows(
        cli_env: dict[str, str], app: App) -> None:
    cli = Cli(cli_env)
    cli("list", "create", "dev@example.org", "--owner", "o@x.org")
    cli("list", "create", "keep@example.org")
    now = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
    with app.db.unit_of_work() as s:
        ml = get_list(s, "dev@example.org")
        keep = get_list(s, "keep@example.org")
        add_member(s, keep, "o@x.org")
        inbound = m.InboundMessage(list_id=ml.id, subaddress="post", rcpt="dev@example.org",
                                   mail_from="a@x.org", spool_sha="0" * 64)
        s.add(inbound)
        s.flush()
        held = m.HeldMessage(inbound_id=inbound.id, list_id=ml.id, sender="a@x.org")
        s.add(held)
        s.flush()
        s.add_all([
            m.PendingToken(token_hash="1" * 64, kind=m.TokenKind.moderate, list_id=ml.id,
                           email="o@x.org", held_id=held.id, expires_at=now),
            m.ModerationLog(list_id=ml.id, held_id=held.id, actor="o@x.org", action="hold",
                            via="cli"),
            m.AutoResponse(list_id=ml.id, email="a@x.org", kind="hold", day=now.date()),
            m.DigestEntry(list_id=ml.id, seq=1, spool_sha="2" * 64),
            m.ArchiveEntry(list_id=ml.id, seq=1, spool_sha="2" * 64),
            m.Fanout(message_id_hash="3" * 64, list_id=ml.id),
            m.BounceEvent(list_id=ml.id, email="a@x.org", kind=m.BounceKind.hard,
                          source="verp"),
            m.OutboundMessage(list_id=ml.id, kind="post", spool_sha="4" * 64,
                              envelope_from="dev-bounces@example.org"),
        ])
    cli("list", "delete", "dev@example.org", "--yes")
    with app.db.unit_of_work() as s:
        for model in (m.InboundMessage, m.HeldMessage, m.PendingToken, m.ModerationLog,
                      m.AutoResponse, m.DigestEntry, m.ArchiveEntry, m.Fanout,
                      m.BounceEvent):
            assert s.scalar(select(func.count()).select_from(model)) == 0, model.__name__
        out = s.scalars(select(m.OutboundMessage)).one()
        assert out.list_id is None  # already-prepared mail may still be delivered
        assert s.scalar(select(func.count()).select_from(m.Membership)) == 1
    assert [r["address"] for r in cli.json("list", "ls")] == ["keep@example.org"]
