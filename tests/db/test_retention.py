"""Retention (listserv.admin.retention): which rows go, which stay, the spool sweep, dry run, CLI."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlalchemy import func, select, update

from listserv import jobs
from listserv.admin import retention
from listserv.archive import index as archive_index
from listserv.core import tokens
from listserv.pipeline import moderation
from listserv.core.app import App
from listserv.core.models import (
    ArchiveEntry,
    ArchiveMessage,
    ArchiveRaw,
    BounceEvent,
    BounceKind,
    Decision,
    Delivery,
    DeliveryState,
    Digest,
    DigestEntry,
    Fanout,
    HeldMessage,
    InboundMessage,
    InboundState,
    Job,
    MailingList,
    ModerationLog,
    OutboundMessage,
    PendingToken,
    SpoolBlob,
)
from listserv.delivery.outbound import queue_message
from tests.clirun import Cli
from tests.db.modsupport import make_list, message, post_held

DAY = 86400.0


def age_files(app: App, days: float, *shas: str) -> None:
    """Make the stored messages (``shas``, default all) look ``days`` old (the sweep compares
    stored_at with the wall clock)."""
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    with app.db.unit_of_work() as s:
        q = update(SpoolBlob).values(stored_at=when)
        s.execute(q.where(SpoolBlob.sha.in_(shas)) if shas else q)


def spool_shas(app: App) -> set[str]:
    with app.db.unit_of_work() as s:
        return set(s.scalars(select(SpoolBlob.sha)))


def count(app: App, model: Any) -> int:
    with app.db.unit_of_work() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def inbound(app: App, list_id: int, state: InboundState, body: str = "x") -> tuple[int, str]:
    data = message("p@out.example", "dev@example.org", body=body)
    sha = app.spool.put(data)
    with app.db.unit_of_work() as s:
        ib = InboundMessage(list_id=list_id, subaddress="post", rcpt="dev@example.org",
                            mail_from="p@out.example", spool_sha=sha, size=len(data),
                            received_at=app.now(), state=state)
        s.add(ib)
        s.flush()
        return ib.id, sha


def outbound(app: App, *states: DeliveryState, body: str = "o") -> tuple[int, str]:
    """An outbound message with one delivery row per state (finished now when final)."""
    with app.db.unit_of_work() as s:
        out = queue_message(s, app, f"Subject: x\r\n\r\n{body}\r\n".encode(), [],
                            kind="notice", envelope_from="dev-bounces@example.org")
        for i, state in enumerate(states):
            final = state in (DeliveryState.done, DeliveryState.failed)
            s.add(Delivery(outbound_id=out.id, recipients=f"u{i}@example.com", count=1,
                           state=state, next_attempt_at=app.now(),
                           finished_at=app.now() if final else None,
                           lease_owner="w-x" if state is DeliveryState.sending else None))
        return out.id, out.spool_sha


def exists(app: App, model: Any, row_id: int) -> bool:
    with app.db.unit_of_work() as s:
        return s.get(model, row_id) is not None


@pytest.fixture
def list_id(app: App) -> int:
    return make_list(app, owners=("boss@example.org",), moderators=("mod@example.org",),
                     people=("member@example.org",))


# ---------------------------------------------------------------------------- deliveries


def test_finished_deliveries_go_after_seven_days_with_their_message(app: App, clock: Any,
                                                                    list_id: int) -> None:
    done, done_sha = outbound(app, DeliveryState.done, DeliveryState.failed, body="done")
    mixed, mixed_sha = outbound(app, DeliveryState.done, DeliveryState.pending, body="mixed")
    claimed, _ = outbound(app, DeliveryState.sending, body="claimed")
    clock.advance(days=6, hours=23)
    recent, _ = outbound(app, DeliveryState.done, body="recent")
    assert retention.prune(app).rows["delivery"] == 0
    clock.advance(hours=2)
    age_files(app, 8)
    stats = retention.prune(app)
    assert stats.rows["delivery"] == 3          # done+failed of 'done', done of 'mixed'
    assert stats.rows["outbound_message"] == 1
    assert not exists(app, OutboundMessage, done)
    assert exists(app, OutboundMessage, mixed) and exists(app, OutboundMessage, claimed)
    assert exists(app, OutboundMessage, recent)
    with app.db.unit_of_work() as s:
        left = {(d.outbound_id, d.state) for d in s.scalars(select(Delivery))}
    assert left == {(mixed, DeliveryState.pending), (claimed, DeliveryState.sending),
                    (recent, DeliveryState.done)}
    shas = spool_shas(app)
    assert done_sha not in shas and mixed_sha in shas
    assert stats.spool_messages == 1


def test_ids_are_never_handed_out_again(app: App, clock: Any, list_id: int) -> None:
    """The delivery workers cache message bytes by outbound id: a re-used id (SQLite gives the
    highest one out again once deleted) would send old bytes. The newest row stays."""
    ids = [outbound(app, DeliveryState.done, body=f"m{i}")[0] for i in range(3)]
    clock.advance(days=8)
    age_files(app, 8)
    assert retention.prune(app).rows["outbound_message"] == 2
    assert exists(app, OutboundMessage, ids[-1])
    assert outbound(app, DeliveryState.pending, body="next")[0] > max(ids)


# ---------------------------------------------------------------------------- inbound


def test_inbound_rules(app: App, clock: Any, list_id: int) -> None:
    accepted, acc_sha = inbound(app, list_id, InboundState.accepted, "a")
    handled, _ = inbound(app, list_id, InboundState.handled, "h")
    failed, failed_sha = inbound(app, list_id, InboundState.failed, "f")
    new, _ = inbound(app, list_id, InboundState.new, "n")
    processing, _ = inbound(app, list_id, InboundState.processing, "p")
    with app.db.unit_of_work() as s:
        s.add(BounceEvent(list_id=list_id, email="x@y.org", at=app.now(), kind=BounceKind.hard,
                          source="dsn", inbound_id=handled, processed=True))
    clock.advance(days=29)
    young, _ = inbound(app, list_id, InboundState.rejected, "young")
    clock.advance(days=2)
    age_files(app, 31)
    stats = retention.prune(app)
    assert stats.rows["inbound_message"] == 2
    assert not exists(app, InboundMessage, accepted) and not exists(app, InboundMessage, handled)
    for kept in (failed, new, processing, young):
        assert exists(app, InboundMessage, kept)
    with app.db.unit_of_work() as s:
        ev = s.scalars(select(BounceEvent)).one()
        assert ev.inbound_id is None            # the event stays, its link is cleared
    shas = spool_shas(app)
    assert acc_sha not in shas and failed_sha in shas
    clock.advance(days=60)                      # the failed one is now 91 days old
    assert retention.prune(app).rows["inbound_message"] == 2   # failed + young
    assert exists(app, InboundMessage, new) and exists(app, InboundMessage, processing)


def test_held_post_stays_until_decided_and_its_tokens_are_gone(app: App, clock: Any,
                                                               list_id: int) -> None:
    data = message("Poster <poster@out.example>", "dev@example.org", "held one")
    held_id = post_held(app, list_id, data)
    with app.db.unit_of_work() as s:
        held = s.get_one(HeldMessage, held_id)
        inbound_id, raw_sha = held.inbound_id, s.get_one(InboundMessage, held.inbound_id).spool_sha
    clock.advance(days=100)
    age_files(app, 100)
    retention.prune(app)
    assert exists(app, HeldMessage, held_id) and exists(app, InboundMessage, inbound_id)
    assert raw_sha in spool_shas(app)           # the moderators still need the post

    with app.db.unit_of_work() as s:
        moderation.decide(s, app, held_id, Decision.discard, actor="mod@example.org",
                          via="cli")
    clock.advance(days=31)
    retention.prune(app)                        # its moderation tokens still exist
    assert exists(app, InboundMessage, inbound_id)
    with app.db.unit_of_work() as s:
        assert s.scalar(select(func.count()).select_from(PendingToken)
                        .where(PendingToken.held_id == held_id))
        tokens.purge(s, app)                    # moderation.tick: 30 days after expiry
        assert not s.scalar(select(func.count()).select_from(PendingToken)
                            .where(PendingToken.held_id == held_id))
    assert retention.prune(app).rows["inbound_message"] == 0   # the newest held id stays
    newer = post_held(app, list_id, message("x@out.example", "dev@example.org", "newer"))
    stats = retention.prune(app)
    assert stats.rows["inbound_message"] == 1
    assert not exists(app, InboundMessage, inbound_id) and not exists(app, HeldMessage, held_id)
    assert exists(app, HeldMessage, newer) and newer > held_id
    assert raw_sha not in spool_shas(app)
    with app.db.unit_of_work() as s:        # the moderation log is kept, unlinked
        entries = s.scalars(select(ModerationLog).order_by(ModerationLog.id)).all()
        assert [(e.action, e.held_id) for e in entries] == [
            ("hold", None), ("discard", None), ("hold", newer)]


# ---------------------------------------------------------------------------- digests, archive


def test_digest_entries_go_only_after_their_digest_was_sent(app: App, clock: Any,
                                                            list_id: int) -> None:
    sha = app.spool.put(b"Subject: p\r\n\r\nprepared\r\n")
    with app.db.unit_of_work() as s:
        d = Digest(list_id=list_id, volume=1, number=1, created_at=app.now(), sent_at=app.now())
        s.add(d)
        s.flush()
        s.add(DigestEntry(list_id=list_id, seq=1, spool_sha=sha, digest_id=d.id,
                          added_at=app.now()))
        s.add(DigestEntry(list_id=list_id, seq=2, spool_sha="ab" * 32, added_at=app.now()))
        s.add(ArchiveEntry(list_id=list_id, seq=2, spool_sha="ab" * 32, created_at=app.now()))
        archive_index.add_messages(s, list_id, [(b"Message-ID: <kept@x>\nSubject: kept\n\n"
                                                 b"Archived for ever.\n", "2026-11", app.now())])
    clock.advance(days=8)
    age_files(app, 8)
    stats = retention.prune(app)
    assert "archive_entry" not in stats.rows and stats.rows["digest_entry"] == 0
    assert sha in spool_shas(app)               # the sent digest entry still refers to it
    clock.advance(days=23)
    stats = retention.prune(app)
    assert stats.rows["digest_entry"] == 1
    assert sha not in spool_shas(app)
    with app.db.unit_of_work() as s:           # the pending ones stay, however old
        assert [e.seq for e in s.scalars(select(DigestEntry))] == [2]
        assert [e.seq for e in s.scalars(select(ArchiveEntry))] == [2]
        assert s.scalar(select(func.count()).select_from(Digest)) == 1
        # archived messages are kept for ever, with their bytes
        assert [m.subject for m in s.scalars(select(ArchiveMessage))] == ["kept"]
        assert s.scalar(select(func.count()).select_from(ArchiveRaw)) == 1


# ---------------------------------------------------------------------------- bounces, fanout


def test_bounce_events_keep_the_longer_of_90_days_and_four_stale_periods(
        app: App, clock: Any, list_id: int) -> None:
    slow = make_list(app, "slow@example.org", bounce_info_stale_after_days=30)

    def event(lid: int, days_ago: int, processed: bool = True,
              kind: BounceKind = BounceKind.hard) -> int:
        with app.db.unit_of_work() as s:
            e = BounceEvent(list_id=lid, email="x@y.org", kind=kind, source="dsn",
                            at=app.now() - dt.timedelta(days=days_ago), processed=processed)
            s.add(e)
            s.flush()
            return e.id

    old = event(list_id, 91)
    recent = event(list_id, 89)
    unreported = event(list_id, 200, processed=False, kind=BounceKind.policy)
    slow_kept = event(slow, 110)
    slow_gone = event(slow, 121)
    with app.db.unit_of_work() as s:
        long_ago = app.now() - dt.timedelta(days=91)
        s.add(Fanout(message_id_hash="f" * 64, list_id=list_id, at=long_ago,
                     expanded_at=long_ago))
        s.add(Fanout(message_id_hash="e" * 64, list_id=list_id, at=app.now(),
                     expanded_at=app.now()))
        # a fan-out whose job never finished (dead, waiting for `queue retry`) stays, and so
        # does its message
        out = OutboundMessage(list_id=list_id, kind="post", spool_sha="0" * 64,
                              envelope_from="", created_at=long_ago)
        s.add(out)
        s.flush()
        s.add(Fanout(message_id_hash="d" * 64, list_id=list_id, at=long_ago,
                     outbound_id=out.id))
        s.add(OutboundMessage(list_id=list_id, kind="notice", spool_sha="1" * 64,
                              envelope_from="", created_at=app.now()))   # the newest stays
        unfinished = out.id
    stats = retention.prune(app)
    assert stats.rows["bounce_event"] == 2 and stats.rows["fanout"] == 1
    assert exists(app, OutboundMessage, unfinished)
    assert not exists(app, BounceEvent, old) and not exists(app, BounceEvent, slow_gone)
    for kept in (recent, unreported, slow_kept):
        assert exists(app, BounceEvent, kept)


# ---------------------------------------------------------------------------- spool


def test_stored_messages_go_only_when_unreferenced_and_old(app: App, clock: Any,
                                                          list_id: int) -> None:
    _, referenced = inbound(app, list_id, InboundState.new)
    unused_old = app.spool.put(b"orphan, old")
    unused_new = app.spool.put(b"orphan, just written")
    age_files(app, 2, referenced, unused_old)   # the new one: intake may commit its row soon
    stats = retention.prune(app)
    assert spool_shas(app) == {referenced, unused_new}
    assert stats.spool_messages == 1
    assert stats.spool_bytes == len(b"orphan, old")
    assert stats.spool_kept == 2


def test_stored_again_is_used_again_and_survives(app: App, list_id: int) -> None:
    data = b"the same bytes again"
    sha = app.spool.put(data)
    age_files(app, 3)
    assert app.spool.put(data) == sha            # intake stores identical bytes again ...
    retention.prune(app)                         # ... but has not committed its row yet
    assert sha in spool_shas(app)
    assert count(app, SpoolBlob) == 1


def test_missing_bytes_raise_a_file_not_found_error(app: App) -> None:
    with pytest.raises(FileNotFoundError):
        app.spool.get("0" * 64)


def test_old_spool_files_are_imported_and_still_readable(app: App) -> None:
    """An installation from before the database spool: its message files."""
    import hashlib

    data = b"Subject: old\r\n\r\nfrom the spool directory\r\n"
    sha = hashlib.sha256(data).hexdigest()
    root = app.settings.spool_path
    (root / sha[:2]).mkdir(parents=True)
    (root / sha[:2] / f"{sha[2:]}.eml").write_bytes(data)
    (root / sha[:2] / ".half-written.tmp").write_bytes(b"half")
    assert app.spool.get(sha) == data            # read through before the import
    assert app.spool.import_files() == (1, len(data))
    assert app.spool.import_files() == (0, 0)    # idempotent
    (root / sha[:2] / f"{sha[2:]}.eml").unlink()
    assert app.spool.get(sha) == data and spool_shas(app) == {sha}


def test_bytes_referenced_by_a_row_committed_after_the_check_survive(
        app: App, list_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row that appears between the sweep's check and its DELETE keeps its bytes: the
    transaction that adds it stores the bytes too (Spool.put), which makes them recent."""
    data = message("late@out.example", "dev@example.org", body="late row")
    sha = app.spool.put(data)
    age_files(app, 2)
    real = retention.referenced

    def check_then_commit(session: Any, shas: list[str], *a: Any) -> set[str]:
        found = real(session, shas, *a)
        with app.db.unit_of_work() as s:         # another process commits its row now
            app.spool.put(data, session=s)
            s.add(InboundMessage(list_id=list_id, subaddress="post", rcpt="x", mail_from="",
                                 spool_sha=sha, received_at=app.now()))
        return found

    monkeypatch.setattr(retention, "referenced", check_then_commit)
    stats = retention.prune(app)
    assert sha in spool_shas(app) and stats.spool_messages == 0
    assert app.spool.get(sha) == data


def test_a_row_the_delete_sees_keeps_its_bytes(app: App, list_id: int,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The DELETE repeats the reference check: a row committed (without a put) after the
    check still keeps its bytes."""
    data = message("late@out.example", "dev@example.org", body="late row 2")
    sha = app.spool.put(data)
    age_files(app, 2)
    real = retention.referenced

    def check_then_commit(session: Any, shas: list[str], *a: Any) -> set[str]:
        found = real(session, shas, *a)
        with app.db.unit_of_work() as s:
            s.add(InboundMessage(list_id=list_id, subaddress="post", rcpt="x", mail_from="",
                                 spool_sha=sha, received_at=app.now()))
        return found

    monkeypatch.setattr(retention, "referenced", check_then_commit)
    assert retention.prune(app).spool_messages == 0
    assert sha in spool_shas(app)


def test_concurrent_prunes_remove_each_thing_once(app: App, clock: Any, list_id: int) -> None:
    """The CLI and several serve processes may prune at the same time."""
    import threading

    keep = {inbound(app, list_id, InboundState.new, f"keep {i}")[1] for i in range(30)}
    for i in range(30):
        inbound(app, list_id, InboundState.handled, f"old {i}")
        app.spool.put(b"orphan %d" % i)
    clock.advance(days=31)
    age_files(app, 31)
    results: list[retention.Stats] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(3)

    def run() -> None:
        barrier.wait()
        try:
            results.append(retention.prune(app))
        except BaseException as exc:     # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert sum(r.rows["inbound_message"] for r in results) == 30
    assert sum(r.spool_messages for r in results) == 60
    assert spool_shas(app) == keep


# ---------------------------------------------------------------------------- dry run, budget


def test_dry_run_reports_exactly_what_a_run_removes(app: App, clock: Any, list_id: int) -> None:
    outbound(app, DeliveryState.done, body="a")
    outbound(app, DeliveryState.pending, body="b")
    inbound(app, list_id, InboundState.accepted, "c")
    inbound(app, list_id, InboundState.held, "d")
    app.spool.put(b"orphan")
    clock.advance(days=31)
    age_files(app, 31)
    before = spool_shas(app)
    dry = retention.prune(app, dry_run=True)
    assert spool_shas(app) == before
    assert count(app, Delivery) == 2 and count(app, InboundMessage) == 2
    real = retention.prune(app)
    assert dry.dry_run and not real.dry_run
    assert dry.rows == real.rows
    assert (dry.spool_messages, dry.spool_bytes) == (real.spool_messages, real.spool_bytes)
    assert real.spool_messages == 3                # delivered notice, accepted post, orphan
    assert len(spool_shas(app)) == 2


def test_budget_stops_between_batches_and_the_next_run_goes_on(
        app: App, clock: Any, list_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 3)
    for i in range(7):
        inbound(app, list_id, InboundState.handled, f"m{i}")
    clock.advance(days=31)
    stats = retention.prune(app, budget=0.0)    # one batch, then out of time
    assert not stats.complete and stats.rows["inbound_message"] == 3
    stats = retention.prune(app)
    assert stats.complete and stats.rows["inbound_message"] == 4
    assert count(app, InboundMessage) == 0


def test_a_budgeted_sweep_goes_on_where_it_stopped(app: App, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    shas = sorted(app.spool.put(b"orphan %d" % i) for i in range(5))
    age_files(app, 2)
    retention._set_cursor(app, shas[1])
    stats = retention.prune(app, budget=0.0)    # one batch per run at this budget
    assert not stats.complete and stats.spool_messages == 2
    assert spool_shas(app) == set(shas[:2] + shas[4:])
    assert retention._get_cursor(app) == shas[3]
    stats = retention.prune(app)                # the rest, then from the start to the cursor
    assert stats.complete and stats.spool_messages == 3 and not spool_shas(app)
    assert retention._get_cursor(app) == ""


def retention_job() -> dict[str, Any]:
    from listserv import workers

    return {"retention": workers.REGISTRY["retention"]}


def test_the_job_returns_soon_while_a_backlog_remains(app: App, clock: Any, list_id: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    monkeypatch.setattr(retention, "TICK_BUDGET", 0.0)
    for i in range(5):
        inbound(app, list_id, InboundState.handled, f"b{i}")
    clock.advance(days=31)
    kinds = retention_job()
    jobs.ensure_periodic(app, kinds)
    assert jobs.run_next_job(app, kinds)
    assert count(app, InboundMessage) == 3
    assert not jobs.run_next_job(app, kinds)
    clock.advance(minutes=6)                    # BACKLOG_PAUSE, not a whole INTERVAL
    assert jobs.run_next_job(app, kinds)
    assert count(app, InboundMessage) == 1


# ---------------------------------------------------------------------------- job, CLI


def test_the_daemon_prunes_once_an_hour(app: App, clock: Any, list_id: int) -> None:
    """Retention is one periodic job of the job engine, whatever the number of processes."""
    kinds = retention_job()
    assert kinds["retention"].every == retention.INTERVAL
    assert jobs.ensure_periodic(app, kinds) == 1
    assert jobs.ensure_periodic(app, kinds) == 0
    assert jobs.run_next_job(app, kinds)
    assert not jobs.run_next_job(app, kinds)
    clock.advance(minutes=59)
    assert not jobs.run_next_job(app, kinds)
    clock.advance(minutes=2)
    inbound(app, list_id, InboundState.handled)
    clock.advance(days=31)
    assert jobs.run_next_job(app, kinds)
    assert count(app, InboundMessage) == 0
    with app.db.unit_of_work() as s:
        [job] = s.scalars(select(Job)).all()
        assert job.run_after == app.now() + retention.INTERVAL


def test_cli_prune_and_dry_run(app: App, clock: Any, list_id: int,
                               cli_env: dict[str, str]) -> None:
    # The CLI runs on the real clock: date the rows a year back.
    clock.t = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=365)
    ib, sha = inbound(app, list_id, InboundState.accepted)
    held_id = post_held(app, list_id, message("x@out.example", "dev@example.org", "held"))
    age_files(app, 365)
    cli = Cli(cli_env)
    out = cli("queue", "prune", "--dry-run").stdout
    assert out.splitlines()[0] == "would remove:"
    assert "inbound_message            1 rows" in out
    assert exists(app, InboundMessage, ib) and sha in spool_shas(app)
    data = json.loads(cli("queue", "prune", "--json").stdout)
    assert data["rows"]["inbound_message"] == 1 and data["spool"]["messages"] >= 1
    assert not data["dry_run"]
    assert not exists(app, InboundMessage, ib) and sha not in spool_shas(app)
    assert exists(app, HeldMessage, held_id)
    out = cli("queue", "prune").stdout
    assert out.splitlines()[0] == "removed:" and "inbound_message            0 rows" in out
    with app.db.unit_of_work() as s:       # the daemon's next run waits an hour
        [job] = s.scalars(select(Job).where(Job.kind == "retention")).all()
        assert job.run_after > dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=59)
    assert "--dry-run" in cli("queue", "prune", "--help").stdout


def test_cli_prune_refuses_an_uninitialised_database(tmp_path: Any) -> None:
    cli = Cli({"LISTSERV_DATA_DIR": str(tmp_path / "none"),
               "LISTSERV_DATABASE_URL": f"sqlite:///{tmp_path / 'none' / 'x.db'}"})
    assert "not initialised" in cli.error("queue", "prune")
