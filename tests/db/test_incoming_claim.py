"""Claiming incoming mail keeps each list's messages in arrival order across workers."""

from __future__ import annotations

from listserv.pipeline import incoming
from listserv.core.app import App
from listserv.core.lists import create_list
from listserv.core.models import InboundMessage, InboundState


def _queue(app: App, list_address: str, n: int) -> list[int]:
    ids = []
    with app.db.unit_of_work() as s:
        ml = create_list(s, list_address)
        for i in range(n):
            row = InboundMessage(list_id=ml.id, subaddress="post", rcpt=list_address,
                                 mail_from="a@x.example", spool_sha=f"{i:064x}",
                                 received_at=app.now())
            s.add(row)
            s.flush()
            ids.append(row.id)
    return ids


def test_one_list_is_claimed_by_one_worker_at_a_time(app: App) -> None:
    dev = _queue(app, "dev@example.org", 3)
    ops = _queue(app, "ops@example.org", 2)
    first = incoming.claim(app, "w1", limit=20)
    assert first == dev                       # the oldest list, all of it, in order
    second = incoming.claim(app, "w2", limit=20)
    assert second == ops                      # dev is busy: w2 takes another list
    assert incoming.claim(app, "w3", limit=20) == []
    more = _queue_more(app, "dev@example.org")
    assert incoming.claim(app, "w3", limit=20) == []   # dev still has w1's messages in flight
    incoming.release(app, first, "w1")
    assert incoming.claim(app, "w3", limit=20) == dev + [more]


def _queue_more(app: App, list_address: str) -> int:
    from listserv.core.lists import get_list

    with app.db.unit_of_work() as s:
        ml = get_list(s, list_address)
        row = InboundMessage(list_id=ml.id, subaddress="post", rcpt=list_address,
                             mail_from="a@x.example", spool_sha="f" * 64, received_at=app.now())
        s.add(row)
        s.flush()
        return row.id


def test_claim_limit_takes_the_oldest(app: App) -> None:
    dev = _queue(app, "dev@example.org", 5)
    assert incoming.claim(app, "w1", limit=2) == dev[:2]
    with app.db.unit_of_work() as s:
        states = [s.get(InboundMessage, i).state for i in dev]  # type: ignore[union-attr]
    assert states == [InboundState.processing] * 2 + [InboundState.new] * 3
