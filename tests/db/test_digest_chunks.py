"""A digest of a list that includes another, with a cross-posted entry, queued by its fan-out
job in small chunks (listserv.digests.chunks), driven one job at a time: a chunk that fails
leaves nothing behind, the job resumes from the cursor on another worker, and every reader
gets exactly the one digest they would get had it been queued whole."""

from __future__ import annotations

import dataclasses
from collections import Counter
from email.message import EmailMessage
from typing import Any

import pytest
from sqlalchemy import func, select

from listserv import digests, jobs, workers
from listserv.core import config, lists, members, network
from listserv.core.app import App
from listserv.core.models import (
    DeliveryMode,
    Delivery,
    Fanout,
    Job,
    OutboundMessage,
    utcnow,
)
from listserv.delivery import fanout, outbound, recipients
from listserv.digests import chunks
from tests.conftest import Clock
from tests.db.test_digests import message_ids, queued

PARENT, CHILD, OTHER = "dev@example.org", "kids@example.org", "other@example.org"
MIME, PLAIN, REGULAR = DeliveryMode.mime_digest, DeliveryMode.plain_digest, DeliveryMode.regular
FANOUT = {fanout.KIND: workers.REGISTRY[fanout.KIND]}
P1, X, P3 = "<post1@example.com>", "<post2@example.com>", "<post3@example.com>"


def people(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:02d}@example.net" for i in range(n)]


def join(app: App, address: str, emails: list[str], mode: DeliveryMode) -> None:
    with app.db.unit_of_work() as s:
        ml = lists.get_list(s, address)
        for email in emails:
            members.add_member(s, ml, email, delivery_mode=mode)


def set_mode(app: App, address: str, email: str, mode: DeliveryMode) -> None:
    with app.db.unit_of_work() as s:
        m = members.find_membership(s, lists.get_list(s, address), email)
        assert m is not None
        members.change_delivery_mode(s, m, mode, utcnow())


def post(app: App, n: int, to: list[str]) -> None:
    """What accepting a post does for the digests, on each list of ``to`` in turn: the list's
    Fanout row for the Message-ID (the first list distributes it first) and its digest entry."""
    msg = EmailMessage()
    msg["From"] = f"Poster {n} <p{n}@example.com>"
    msg["To"] = ", ".join(to)
    msg["Subject"] = f"Topic {n}"
    msg["Message-ID"] = f"<post{n}@example.com>"
    msg.set_content(f"Body of post {n}.\n")
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    digest_hash = recipients.message_hash(str(msg["Message-ID"]))
    for address in to:
        with app.db.unit_of_work() as s:
            ml = lists.get_list(s, address)
            ml.post_id += 1
            s.add(Fanout(message_id_hash=digest_hash, list_id=ml.id, at=app.now(),
                         outbound_id=None, members_upto=0, expanded_at=app.now()))
            digests.add_post(s, app, ml, ml.post_id, app.spool.put(data), msg,
                             message_hash=digest_hash)


def digests_of(app: App) -> dict[str, list[tuple[str, list[str]]]]:
    """Per person: (content type, Message-IDs held) of each digest queued for them."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for q in queued(app):
        for r in q.recipients:
            out.setdefault(r, []).append((q.message.get_content_type(), message_ids(q)))
    return out


def digest_messages(app: App) -> list[str]:
    with app.db.unit_of_work() as s:
        return list(s.scalars(select(OutboundMessage.message_id)
                              .where(OutboundMessage.kind == "digest")
                              .order_by(OutboundMessage.id)))


def queued_count(app: App) -> int:
    with app.db.unit_of_work() as s:
        return s.scalar(select(func.coalesce(func.sum(Delivery.count), 0))) or 0


@pytest.fixture
def small(app: App) -> App:
    return dataclasses.replace(app, settings=config.replace(
        app.settings, delivery__max_recipients_per_transaction=4))


def test_a_network_digest_with_a_cross_post_is_queued_in_chunks_and_a_crash_resumes(
        small: App, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    app = small
    with app.db.unit_of_work() as s:
        for address in (PARENT, CHILD, OTHER):
            lists.create_list(s, address)
        network.include(s, lists.get_list(s, PARENT), [CHILD])
    own_mime, own_plain = people("pm", 25), people("pp", 10)
    kids_mime, kids_plain = people("cm", 20), people("cp", 5)
    join(app, PARENT, own_mime, MIME)
    join(app, PARENT, own_plain, PLAIN)
    join(app, PARENT, ["late@example.net", "fin@example.net"], REGULAR)
    set_mode(app, PARENT, "fin@example.net", MIME)
    join(app, CHILD, own_mime[:5], REGULAR)      # regular copies through the network
    join(app, CHILD, kids_mime, MIME)            # read the parent's digest through the child
    join(app, CHILD, kids_plain, PLAIN)
    # the cross-post reaches these on the other list: a regular copy, or its digest (first)
    join(app, OTHER, [*own_mime[10:15], *own_plain[5:], "fin@example.net"], REGULAR)
    join(app, OTHER, kids_mime[:5], MIME)
    post(app, 1, [PARENT])
    set_mode(app, PARENT, "late@example.net", MIME)   # from post 2 on
    post(app, 2, [OTHER, PARENT])                     # cross-posted: the other list first
    post(app, 3, [PARENT])
    set_mode(app, PARENT, "fin@example.net", REGULAR)  # owed a last digest of posts 1-3

    [res] = digests.send_now(app, PARENT, in_one_transaction=0)
    # counted when the digest was made: the job leaves cross-posted entries out later
    assert (res.mime_recipients, res.plain_recipients) == (20 + 20 + 1 + 1, 10 + 5)
    # the digest's own transaction queued only the last digest owed; the job the members
    assert digests_of(app) == {"fin@example.net": [("multipart/mixed", [P1, P3])]}
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count(Job.id)).where(Job.kind == fanout.KIND)) == 1
    before = digest_messages(app)
    assert len(before) == 4        # MIME, plain, MIME from post 2, last digest without X

    job = jobs.claim(app, "w-first", kinds=[fanout.KIND])
    assert job is not None
    real = outbound.create_message

    def dies(*a: Any, **kw: Any) -> OutboundMessage:
        real(*a, **kw)
        raise RuntimeError("killed while queueing a chunk")
    monkeypatch.setattr(outbound, "create_message", dies)
    seen: list[int] = []
    with pytest.raises(RuntimeError):    # the first chunk that needs a digest of its own
        chunks.expand(app, job.payload, chunk=7, after_chunk=seen.append)
    monkeypatch.setattr(outbound, "create_message", real)
    assert seen                          # some chunks were queued before it
    assert digest_messages(app) == before     # nothing of the failed chunk stayed
    done = queued_count(app)
    assert 1 < done < 60
    assert not jobs.run_next_job(app, FANOUT)            # the lease is the dead worker's
    clock.advance(seconds=jobs.LEASE.total_seconds() + 1)
    assert jobs.run_next_job(app, FANOUT, owner="w-second")    # on from the cursor
    assert not jobs.run_next_job(app, FANOUT)

    got = digests_of(app)
    assert all(len(d) == 1 for d in got.values()), "nobody gets two digests"
    whole_mime, whole_plain = ("multipart/mixed", [P1, X, P3]), ("text/plain", [P1, X, P3])
    expected = {
        **{p: whole_mime for p in own_mime[5:10] + own_mime[15:] + kids_mime[5:]},
        **{p: ("multipart/mixed", [P1, P3]) for p in own_mime[10:15] + kids_mime[:5]},
        **{p: whole_plain for p in own_plain[:5] + kids_plain},
        **{p: ("text/plain", [P1, P3]) for p in own_plain[5:]},
        "late@example.net": ("multipart/mixed", [X, P3]),
        "fin@example.net": ("multipart/mixed", [P1, P3]),
    }
    assert {p: d[0] for p, d in got.items()} == expected
    # one more message: the plain digest without X, built once for every chunk; the MIME one
    # without X is the last digest's, found by its Message-ID
    after = digest_messages(app)
    assert after[:4] == before and len(after) == 5
    assert Counter(".without-" in m for m in after) == Counter({False: 3, True: 2})
    with app.db.unit_of_work() as s:
        fan = s.scalars(select(Fanout).where(Fanout.expanded_at.is_(None))).all()
        assert fan == []
