"""The digest service against a real database: collecting, when a digest is due, numbering,
crash safety and concurrency, and what is queued for whom; a digest to many members queued in
chunks by its fan-out job (driven one job at a time)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

import dkim
import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select, update

from listserv import digests, jobs, workers
from listserv.core import config, lists, members
from listserv.delivery import fanout
from listserv.digests import chunks
from listserv.message import signing
from listserv.core.app import App
from listserv.cli import cli
from listserv.core.models import (
    utcnow,
    Address,
    Delivery,
    DeliveryMode,
    Digest,
    DigestEntry,
    Job,
    DigestFrequency,
    MailingList,
    Membership,
    OutboundMessage,
)
from tests import spooled
from tests.conftest import Clock

LIST = "dev@example.org"


@dataclass
class Queued:
    kind: str
    recipients: list[str]
    data: bytes
    envelope_from: str

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]


def queued(app: App, kind: str = "digest") -> list[Queued]:
    with app.db.unit_of_work() as s:
        outs = s.scalars(select(OutboundMessage).where(OutboundMessage.kind == kind)
                         .order_by(OutboundMessage.id)).all()
        res = []
        for o in outs:
            rcpts = [r for d in s.scalars(select(Delivery).where(Delivery.outbound_id == o.id))
                     for r in d.recipients.split("\n")]
            res.append(Queued(o.kind, sorted(rcpts), app.spool.get(o.spool_sha),
                              o.envelope_from))
        return res


def make_list(app: App, **settings: object) -> None:
    with app.db.unit_of_work() as s:
        ml = lists.create_list(s, LIST, display_name="Dev")
        for k, v in settings.items():
            setattr(ml, k, v)
        for email, mode in (("reg@example.net", DeliveryMode.regular),
                            ("mime@example.net", DeliveryMode.mime_digest),
                            ("plain@example.net", DeliveryMode.plain_digest),
                            ("none@example.net", DeliveryMode.nomail)):
            members.add_member(s, ml, email, delivery_mode=mode)


def post(app: App, n: int, body: str | None = None) -> None:
    """What the posting pipeline does for an accepted post: bump post_id, store the prepared
    message, add it to the digest, in one transaction."""
    msg = EmailMessage()
    msg["From"] = f"Poster {n} <p{n}@example.com>"
    msg["To"] = LIST
    msg["Subject"] = f"[Dev] Topic {n}"
    msg["Date"] = "Mon, 02 Nov 2026 08:00:00 +0000"
    msg["Message-ID"] = f"<post{n}@example.com>"
    msg.set_content(body or f"Body of post {n}.\n")
    data = msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))
    with app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        ml.post_id += 1
        sha = app.spool.put(data)
        digests.add_post(s, app, ml, ml.post_id, sha, msg)


def set_mode(app: App, email: str, mode: DeliveryMode) -> None:
    with app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        m = members.find_membership(s, ml, email)
        assert m is not None
        members.change_delivery_mode(s, m, mode, utcnow())


def list_row(app: App) -> MailingList:
    with app.db.unit_of_work() as s:
        return lists.get_list(s, LIST)


def pending_count(app: App) -> int:
    with app.db.unit_of_work() as s:
        return s.scalar(select(func.count(DigestEntry.id))
                        .where(DigestEntry.digest_id.is_(None))) or 0


def message_ids(q: Queued) -> list[str]:
    msg = q.message
    if msg.get_content_type() == "multipart/mixed":
        digest = list(msg.iter_parts())[1]
        return [str(p.get_content()["Message-ID"]) for p in digest.iter_parts()]
    body = str(msg.get_content())
    return [line.split(": ", 1)[1] for line in body.splitlines()
            if line.startswith("Message-ID: ")]


def test_daily_digest_goes_to_digest_members_only(app: App, clock: Clock) -> None:
    make_list(app)
    for n in (1, 2, 3):
        post(app, n)
        clock.advance(hours=1)
    assert digests.tick(app) == []            # the day is not over
    assert queued(app) == []
    clock.advance(hours=21, minutes=1)        # one day after the first pending post
    [res] = digests.tick(app)
    assert (res.volume, res.number, res.posts, res.reason) == (1, 1, 3, "schedule")
    mime, plain = queued(app)
    assert mime.recipients == ["mime@example.net"]
    assert plain.recipients == ["plain@example.net"]
    assert mime.envelope_from == plain.envelope_from == "dev-bounces@example.org"
    assert mime.data.count(b"\r\n") > 10 and b"\n" not in mime.data.replace(b"\r\n", b"")
    assert mime.message.get_content_type() == "multipart/mixed"
    assert plain.message.get_content_type() == "text/plain"
    want = ["<post1@example.com>", "<post2@example.com>", "<post3@example.com>"]
    assert message_ids(mime) == message_ids(plain) == want
    for q in (mime, plain):
        assert q.message["Subject"] == "Dev Digest, Vol 1, Issue 1"
        assert q.message["Precedence"] == "list"
        assert q.message["List-Id"] == "Dev <dev.example.org>"
    ml = list_row(app)
    assert (ml.digest_volume, ml.digest_number, ml.digest_last_sent_at) == (1, 1, clock())
    assert pending_count(app) == 0
    assert digests.tick(app) == []            # nothing doubled


def test_missed_periods_are_caught_up_once(app: App, clock: Clock) -> None:
    make_list(app)
    post(app, 1)
    clock.advance(days=1)
    assert len(digests.tick(app)) == 1
    post(app, 2)
    clock.advance(days=9)                     # the daemon was down for many periods
    assert [r.number for r in digests.tick(app)] == [2]
    assert digests.tick(app) == []
    post(app, 3)
    clock.advance(hours=23)
    assert digests.tick(app) == []            # measured from the catch-up digest
    clock.advance(hours=1)
    assert [r.number for r in digests.tick(app)] == [3]
    assert len(queued(app)) == 6


def test_weekly_monthly_never(app: App, clock: Clock) -> None:
    make_list(app, digest_frequency=DigestFrequency.monthly)
    clock.t = dt.datetime(2026, 1, 31, 12, tzinfo=dt.timezone.utc)
    post(app, 1)
    clock.t = dt.datetime(2026, 2, 28, 11, tzinfo=dt.timezone.utc)
    assert digests.tick(app) == []
    clock.advance(hours=1)                    # Jan 31 + one month = Feb 28
    assert len(digests.tick(app)) == 1
    with app.db.unit_of_work() as s:
        s.execute(update(MailingList).values(digest_frequency=DigestFrequency.weekly))
    post(app, 2)
    clock.advance(days=6)
    assert digests.tick(app) == []
    clock.advance(days=1)
    assert len(digests.tick(app)) == 1
    with app.db.unit_of_work() as s:
        s.execute(update(MailingList).values(digest_frequency=DigestFrequency.never))
    post(app, 3)
    clock.advance(days=400)
    assert digests.tick(app) == []
    assert pending_count(app) == 1


def test_size_threshold_sends_early(app: App, clock: Clock) -> None:
    make_list(app, digest_size_threshold_kb=2)

    def due_passes() -> list[str]:
        with app.db.unit_of_work() as s:
            return list(s.scalars(select(Job.kind).where(Job.run_after <= app.now())))

    post(app, 1)
    assert digests.tick(app) == [] and due_passes() == []
    post(app, 2, "x" * 2500 + "\n")           # the pending posts now exceed 2 KB
    assert due_passes() == ["digests"]        # the digests pass is due at once
    [res] = digests.tick(app)
    assert (res.reason, res.posts) == ("size", 2)


def test_volume_bumps_with_the_new_year(app: App, clock: Clock) -> None:
    make_list(app)
    clock.t = dt.datetime(2026, 12, 29, 9, tzinfo=dt.timezone.utc)
    for n in (1, 2):
        post(app, n)
        clock.advance(days=1)
        digests.tick(app)
    ml = list_row(app)
    assert (ml.digest_volume, ml.digest_number) == (1, 2)
    post(app, 3)
    clock.advance(days=1)                     # 2027-01-01
    [res] = digests.tick(app)
    assert (res.volume, res.number) == (2, 1)
    assert queued(app)[-1].message["Subject"] == "Dev Digest, Vol 2, Issue 1"
    with app.db.unit_of_work() as s:
        rows = s.execute(select(Digest.volume, Digest.number).order_by(Digest.id)).all()
    assert [tuple(r) for r in rows] == [(1, 1), (1, 2), (2, 1)]


def test_no_digest_members_consumes_entries(app: App, clock: Clock) -> None:
    make_list(app)
    set_mode(app, "mime@example.net", DeliveryMode.regular)
    set_mode(app, "plain@example.net", DeliveryMode.nomail)
    post(app, 1)
    clock.advance(days=1)
    [res] = digests.tick(app)
    assert res.number == 0 and "consumed" in res.describe()
    assert queued(app) == [] and pending_count(app) == 0
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count(Digest.id))) == 0
    assert list_row(app).digest_last_sent_at == clock()
    # the entries are pending again for whoever is a digest member when the next one is due
    post(app, 2)
    clock.advance(hours=2)
    set_mode(app, "mime@example.net", DeliveryMode.mime_digest)
    post(app, 3)
    clock.advance(hours=22)
    [res] = digests.tick(app)
    [mime] = queued(app)
    assert mime.recipients == ["mime@example.net"] and res.number == 1
    # post 2 reached mime@ as a regular copy: the digest holds only what came after the switch
    assert message_ids(mime) == ["<post3@example.com>"]


def test_mode_changes_and_disabled_members(app: App, clock: Clock) -> None:
    make_list(app)
    post(app, 1)
    set_mode(app, "plain@example.net", DeliveryMode.mime_digest)
    set_mode(app, "reg@example.net", DeliveryMode.plain_digest)
    set_mode(app, "mime@example.net", DeliveryMode.nomail)
    with app.db.unit_of_work() as s:
        members.add_member(s, lists.get_list(s, LIST), "off@example.net",
                           delivery_mode=DeliveryMode.mime_digest).enabled = False
    post(app, 2)
    clock.advance(days=1)
    [res] = digests.tick(app)
    assert (res.mime_recipients, res.plain_recipients, res.messages) == (1, 1, 2)
    mime, plain = queued(app)
    # plain -> mime: the whole pending digest, now as MIME
    assert mime.message.get_content_type() == "multipart/mixed"
    assert mime.recipients == ["plain@example.net"]
    assert message_ids(mime) == ["<post1@example.com>", "<post2@example.com>"]
    # regular -> plain after post 1 (which reached reg@ as a regular copy): only post 2
    assert plain.recipients == ["reg@example.net"]
    assert message_ids(plain) == ["<post2@example.com>"]


def test_leaving_digest_mode_gets_one_last_digest(app: App, clock: Clock) -> None:
    make_list(app)
    post(app, 1)
    post(app, 2)
    set_mode(app, "mime@example.net", DeliveryMode.regular)   # from post 3 on: regular copies
    set_mode(app, "plain@example.net", DeliveryMode.nomail)   # asked for no mail: nothing
    post(app, 3)
    clock.advance(days=1)
    [res] = digests.tick(app)
    assert (res.number, res.posts, res.mime_recipients, res.plain_recipients) == (1, 3, 1, 0)
    [final] = queued(app)
    assert final.recipients == ["mime@example.net"]
    assert message_ids(final) == ["<post1@example.com>", "<post2@example.com>"]
    assert final.message["Subject"] == "Dev Digest, Vol 1, Issue 1"
    # the debt is paid once
    post(app, 4)
    clock.advance(days=1)
    assert [r.number for r in digests.tick(app)] == [0]      # no digest members left
    assert len(queued(app)) == 1


def test_back_and_forth_within_one_period(app: App, clock: Clock) -> None:
    make_list(app)
    post(app, 1)                                              # mime@ digest
    set_mode(app, "mime@example.net", DeliveryMode.regular)
    post(app, 2)                                              # mime@ regular copy
    set_mode(app, "mime@example.net", DeliveryMode.mime_digest)
    post(app, 3)                                              # mime@ digest again
    clock.advance(days=1)
    digests.tick(app)
    got = [mid for q in queued(app) if "mime@example.net" in q.recipients
           for mid in message_ids(q)]
    assert sorted(got) == ["<post1@example.com>", "<post3@example.com>"]


def test_failure_while_sending_leaves_everything_pending(app: App, clock: Clock) -> None:
    make_list(app)
    post(app, 1)
    post(app, 2)
    with app.db.unit_of_work() as s:
        sha = s.scalars(select(DigestEntry.spool_sha).order_by(DigestEntry.seq)).all()[1]
    saved = spooled.lose(app, sha)            # a crash in the middle of building
    clock.advance(days=1)
    assert digests.tick(app) == []            # logged, not raised
    assert queued(app) == [] and pending_count(app) == 2
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count(Digest.id))) == 0
    ml = list_row(app)
    assert (ml.digest_number, ml.digest_last_sent_at) == (0, None)
    app.spool.put(saved)
    [res] = digests.tick(app)
    assert (res.number, res.posts) == (1, 2)


def test_concurrent_ticks_build_one_digest(app: App, clock: Clock) -> None:
    make_list(app)
    for n in range(1, 6):
        post(app, n)
    clock.advance(days=1)
    barrier = threading.Barrier(4)
    results: list[object] = []

    def run() -> None:
        barrier.wait()
        results.extend(digests.tick(app))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 1
    assert len(queued(app)) == 2
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count(Digest.id))) == 1
        assert s.scalar(select(func.count(DigestEntry.id))
                        .where(DigestEntry.digest_id.is_not(None))) == 5


def test_digest_is_dkim_signed(app: App, clock: Clock) -> None:
    key = signing.generate_key()
    make_list(app)
    with app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        ml.domain.dkim_selector, ml.domain.dkim_private_key = "s1", key
    post(app, 1)
    clock.advance(days=1)
    digests.tick(app)
    record = signing.dns_record(key).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.example.org."
        return record

    for q in queued(app):
        assert q.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(q.data, dnsfunc=dnsfunc)
        sig = q.message["DKIM-Signature"]
        signed = sig.split("h=")[1].split(";")[0].replace(" ", "").lower().split(":")
        assert {"from", "subject", "list-id", "list-unsubscribe"} <= set(signed)


def test_cli_digest_send(app: App, clock: Clock, cli_env: dict[str, str]) -> None:
    make_list(app, digest_frequency=DigestFrequency.never)
    runner = CliRunner()
    out = runner.invoke(cli, ["digest", "send"], env=cli_env)
    assert out.exit_code == 0 and out.output.strip() == "no pending digests"
    post(app, 1)
    post(app, 2)
    out = runner.invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.exit_code == 0, out.output
    assert out.output.strip() == ("dev@example.org: Vol 1, Issue 1: 2 post(s) to 2 digest "
                                  "member(s) (1 MIME, 1 plain)")
    assert len(queued(app)) == 2
    out = runner.invoke(cli, ["digest", "send", LIST], env=cli_env)
    assert out.exit_code == 0 and out.output.strip() == "dev@example.org: no pending posts"
    post(app, 3)
    out = runner.invoke(cli, ["digest", "send"], env=cli_env)
    assert "Vol 1, Issue 2: 1 post(s)" in out.output
    out = runner.invoke(cli, ["digest", "send", "nope@example.org"], env=cli_env)
    assert out.exit_code == 1
    assert out.stderr.strip() == "listserv: error: no such list: nope@example.org"
    assert "Traceback" not in out.output


def test_recipients_are_streamed_in_batches(app: App, clock: Clock) -> None:
    make_list(app)
    with app.db.unit_of_work() as s:   # a bulk import (Core inserts, as the importer does)
        ml = lists.get_list(s, LIST)
        s.execute(insert(Address), [{"email": f"m{i:04d}@example.com", "display_name": "",
                                     "created_at": clock()} for i in range(1203)])
        ids = s.scalars(select(Address.id).where(Address.email.like("m%@example.com")))
        s.execute(insert(Membership), [
            {"list_id": ml.id, "address_id": a, "delivery_mode": DeliveryMode.plain_digest}
            for a in ids])
    post(app, 1)
    [res] = digests.send_now(app)
    assert res.plain_recipients == 1204
    with app.db.unit_of_work() as s:
        counts = s.scalars(select(Delivery.count).join(OutboundMessage)
                           .where(OutboundMessage.kind == "digest")
                           .order_by(Delivery.id)).all()
        assert sum(counts) == 1205 and max(counts) <= 500
        n = s.scalar(select(func.count(Membership.id)).join(Address)
                     .where(Address.email.like("m%@example.com")))
        assert n == 1203


KILL_AFTER_FIRST_QUEUE = """
import os, signal, sys
from listserv.digests import service
real = service.queue_message
def queue_then_die(*args, **kwargs):
    real(*args, **kwargs)               # spooled, Delivery rows inserted, not committed
    os.kill(os.getpid(), signal.SIGKILL)
service.queue_message = queue_then_die
from listserv.cli import main
sys.argv = ["listserv", "digest", "send"]
main()
"""


def test_kill_9_while_sending_loses_and_doubles_nothing(app: App, clock: Clock,
                                                        cli_env: dict[str, str]) -> None:
    import os
    import signal
    import subprocess
    import sys

    make_list(app)
    post(app, 1)
    post(app, 2)
    env = {**os.environ, **cli_env}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_QUEUE], env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert queued(app) == [] and pending_count(app) == 2
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count(Digest.id))) == 0
        assert s.scalar(select(func.count(Delivery.id))) == 0
    assert list_row(app).digest_number == 0
    proc = subprocess.run([sys.executable, "-m", "listserv", "digest", "send"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Vol 1, Issue 1: 2 post(s) to 2 digest member(s)" in proc.stdout
    mime, plain = queued(app)
    assert (mime.recipients, plain.recipients) == (["mime@example.net"], ["plain@example.net"])
    assert message_ids(mime) == message_ids(plain) == ["<post1@example.com>",
                                                       "<post2@example.com>"]


FANOUT = {fanout.KIND: workers.REGISTRY[fanout.KIND]}


@pytest.fixture
def chunked(app: App) -> App:
    """10 recipients per transaction; the tests send digests with in_one_transaction=0 (a
    fan-out job even for a few members) and expand them in chunks of 30."""
    return dataclasses.replace(app, settings=config.replace(
        app.settings, delivery__max_recipients_per_transaction=10))


def add_members(app: App, prefix: str, n: int, mode: DeliveryMode) -> list[str]:
    emails = [f"{prefix}{i:03d}@example.com" for i in range(n)]
    with app.db.unit_of_work() as s:   # a bulk import (Core inserts, as the importer does)
        ml = lists.get_list(s, LIST)
        s.execute(insert(Address), [{"email": e, "display_name": "", "created_at": utcnow()}
                                    for e in emails])
        ids = s.scalars(select(Address.id).where(Address.email.in_(emails)))
        s.execute(insert(Membership), [{"list_id": ml.id, "address_id": a,
                                        "delivery_mode": mode} for a in ids])
    return emails


def deliveries(app: App) -> int:
    with app.db.unit_of_work() as s:
        return s.scalar(select(func.coalesce(func.sum(Delivery.count), 0))) or 0


def test_many_digest_members_are_queued_in_chunks_and_a_crash_resumes(
        chunked: App, clock: Clock) -> None:
    app = chunked
    make_list(app)
    mime = ["mime@example.net", *add_members(app, "m", 50, DeliveryMode.mime_digest)]
    plain = ["plain@example.net", *add_members(app, "p", 100, DeliveryMode.plain_digest)]
    post(app, 1)
    post(app, 2)
    [res] = digests.send_now(app, in_one_transaction=0)
    assert (res.mime_recipients, res.plain_recipients) == (51, 101)
    # the digest's transaction stored its two messages and queued nobody: a job will
    assert deliveries(app) == 0 and len(queued(app)) == 2
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count(Job.id)).where(Job.kind == fanout.KIND)) == 1
    job = jobs.claim(app, "w-first", kinds=[fanout.KIND])
    assert job is not None
    assert not chunks.expand(app, job.payload, chunk=30, max_chunks=2)   # then the worker dies
    first = deliveries(app)
    assert 0 < first < 152
    assert not jobs.run_next_job(app, FANOUT)         # its lease is still the dead worker's
    clock.advance(seconds=jobs.LEASE.total_seconds() + 1)
    assert jobs.run_next_job(app, FANOUT, owner="w-second")    # on from the cursor
    assert not jobs.run_next_job(app, FANOUT)
    got_mime, got_plain = queued(app)
    assert got_mime.recipients == sorted(mime) and got_plain.recipients == sorted(plain)
    assert message_ids(got_mime) == message_ids(got_plain) == ["<post1@example.com>",
                                                               "<post2@example.com>"]
    assert pending_count(app) == 0 and list_row(app).digest_number == 1


def test_a_member_who_switches_format_mid_fan_out_gets_one_digest(chunked: App) -> None:
    app = chunked
    make_list(app)
    mime = add_members(app, "m", 80, DeliveryMode.mime_digest)
    post(app, 1)
    digests.send_now(app, in_one_transaction=0)
    job = jobs.claim(app, "w-a", kinds=[fanout.KIND])
    assert job is not None
    assert not chunks.expand(app, job.payload, chunk=30, max_chunks=1)
    early = queued(app)[0]                             # the MIME digest: its first members
    assert early.message.get_content_type() == "multipart/mixed"
    done, later = next(r for r in early.recipients if r in mime), mime[-1]
    assert later not in early.recipients
    set_mode(app, done, DeliveryMode.plain_digest)     # already queued: no second digest
    set_mode(app, later, DeliveryMode.plain_digest)    # not yet: the plain one
    assert chunks.expand(app, job.payload, chunk=30)
    got_mime, got_plain = queued(app)
    assert got_plain.recipients == sorted(["plain@example.net", later])
    assert done in got_mime.recipients and later not in got_mime.recipients
    assert sorted(got_mime.recipients + got_plain.recipients) == sorted(
        ["mime@example.net", "plain@example.net", *mime])
