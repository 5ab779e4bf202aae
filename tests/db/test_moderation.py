"""Held posts: notices with per-moderator tokens, replies, CLI, races, expiry, the log."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from listserv.core import tokens
from listserv.pipeline import hold_notices, moderation
from listserv.cli import cli
from listserv.core.models import (
    Decision,
    HeldMessage,
    InboundMessage,
    InboundState,
    ModerationLog,
    PendingToken,
)
from tests.db.modsupport import (
    Outbox,
    _inbound,
    command,
    make_list,
    message,
    post_held,
    run_hold_notices,
    token_of,
)

MODS = ("mod@example.org",)
OWNERS = ("boss@example.org",)


@pytest.fixture
def accepted(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record posting.accept_post calls (the posting pipeline is another issue's)."""
    calls: list[dict[str, Any]] = []

    def fake(session: Any, app: Any, inbound: InboundMessage, msg: Any, *,
             approved_by: str) -> None:
        calls.append({"inbound": inbound.id, "subject": str(msg["Subject"]),
                      "approved_by": approved_by})
        inbound.state = InboundState.accepted

    monkeypatch.setattr(moderation, "_accept_post", fake)
    return calls


@pytest.fixture
def setup(app: Any) -> tuple[int, Outbox]:
    list_id = make_list(app, owners=OWNERS, moderators=MODS, people=("member@example.org",))
    return list_id, Outbox(app)


def notices_for(sent: list[Any], rcpt: str) -> list[Any]:
    return [m for m in sent if m.recipients == [rcpt]]


def test_hold_sends_one_notice_per_moderator_with_own_token(app: Any, setup: Any) -> None:
    list_id, outbox = setup
    held_id = post_held(app, list_id, message("Poster <poster@out.example>", "dev@example.org",
                                              "Buy now", "line one\nline two\n"))
    sent = outbox.new()
    mod = notices_for(sent, "mod@example.org")
    boss = notices_for(sent, "boss@example.org")
    poster = notices_for(sent, "poster@out.example")
    assert len(mod) == len(boss) == len(poster) == 1
    t1, t2 = token_of(mod[0].msg), token_of(boss[0].msg)
    assert t1 != t2 and len(t1) == 32 and t1 == t1.lower()
    for n, t in ((mod[0], t1), (boss[0], t2)):
        assert str(n.msg["Reply-To"]) == f"dev-confirm+{t}@example.org"
        assert t in str(n.msg["Subject"])
        body = n.msg.get_body(("plain",)).get_content()
        assert "poster@out.example" in body and "Buy now" in body and "line two" in body
        assert "Post by non-member" in body
        assert f"mailto:dev-confirm+{t}@example.org?subject=" in body and "&body=approve" in body
        assert n.envelope_from == "dev-bounces@example.org"
    # tokens are stored only as hashes
    with app.db.unit_of_work() as s:
        rows = s.scalars(select(PendingToken).where(PendingToken.held_id == held_id)).all()
        hashes = {r.token_hash for r in rows}
        assert tokens.hash_token(t1) in hashes and t1 not in hashes
        assert {r.email for r in rows} == {"mod@example.org", "boss@example.org",
                                           "poster@out.example"}


def hold_only(app: Any, list_id: int, data: bytes) -> int:
    """A post held as the rules hold it, its notices' job not run yet."""
    with app.db.unit_of_work() as s:
        return moderation.hold(s, app, _inbound(s, app, list_id, "post", data,
                                                "poster@out.example", None),
                               ["Post by non-member"]).id


def test_hold_notices_are_a_job_of_their_own_sent_once(app: Any, setup: Any) -> None:
    list_id, outbox = setup
    held_id = hold_only(app, list_id, message("Poster <poster@out.example>", "dev@example.org",
                                              "Q"))
    assert outbox.new() == []                      # the hold's transaction queues none
    assert run_hold_notices(app) == 1
    assert sorted(m.recipients[0] for m in outbox.new()) == [
        "boss@example.org", "mod@example.org", "poster@out.example"]
    # run again (a worker that died after the commit, before the job was marked done)
    assert hold_notices.run(app, held_id) == 0
    assert outbox.new() == []


def test_hold_notices_not_sent_for_a_post_decided_first(app: Any, setup: Any) -> None:
    list_id, outbox = setup
    held_id = hold_only(app, list_id, message("poster@out.example", "dev@example.org", "Q"))
    with app.db.unit_of_work() as s:
        moderation.decide(s, app, held_id, Decision.discard, actor="boss@example.org",
                          via="cli")
    outbox.new()
    assert hold_notices.run(app, held_id) == 0
    assert outbox.new() == []


def test_hold_notices_are_made_before_their_transaction_writes(
        app: Any, setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The notices (templates, the post attached, signature) are made before the first write
    of their transaction: on SQLite the one write lock is not held meanwhile."""
    from sqlalchemy import event

    from listserv.core import writegate
    from listserv.delivery import notices

    list_id, outbox = setup
    held_id = hold_only(app, list_id, message("Poster <poster@out.example>", "dev@example.org",
                                              "Q"))
    steps: list[str] = []
    finalise = notices.finalise
    monkeypatch.setattr(notices, "finalise",
                        lambda *a, **k: steps.append("made") or finalise(*a, **k))

    def seen(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        steps.append("write" if writegate.is_write(statement) else "read")

    event.listen(app.db.engine, "before_cursor_execute", seen)
    try:
        assert hold_notices.run(app, held_id) == 3
    finally:
        event.remove(app.db.engine, "before_cursor_execute", seen)
    assert steps.count("made") == 3
    first_write = steps.index("write")
    assert "made" not in steps[first_write:]


def reply(app: Any, list_id: int, token: str, sender: str, body: str, **headers: str) -> Any:
    data = message(sender, f"dev-confirm+{token}@example.org", f"Re: confirm {token}", body,
                   **headers)
    return command(app, list_id, "confirm", data, extra=token)


def test_reply_flow(app: Any, setup: Any, accepted: list[Any]) -> None:
    list_id, outbox = setup
    held_id = post_held(app, list_id, message("poster@out.example", "dev@example.org", "Q"))
    sent = outbox.new()
    token = token_of(notices_for(sent, "mod@example.org")[0].msg)
    boss_token = token_of(notices_for(sent, "boss@example.org")[0].msg)

    # from another address: nothing happens, help text goes to that address
    reply(app, list_id, token, "stranger@example.net", "approve")
    assert accepted == []
    got = outbox.new()
    assert [m.recipients for m in got] == [["stranger@example.net"]]
    assert "not sent to your address" in got[0].msg.get_body(("plain",)).get_content()

    # an auto-reply from the moderator: never acted on, never answered
    reply(app, list_id, token, "mod@example.org", "approve", Auto_Submitted="auto-replied")
    reply(app, list_id, token, "mod@example.org", "approve", Precedence="bulk")
    command(app, list_id, "confirm", message("mod@example.org", "x", "Re", "approve"),
            mail_from="", extra=token)
    assert accepted == [] and outbox.new() == []

    # no command word: a short answer naming the line read, replying to it works again
    reply(app, list_id, token, "mod@example.org", "> approve\nthanks!")
    assert accepted == []
    got = outbox.new()
    text = got[0].msg.get_body(("plain",)).get_content()
    assert len(got) == 1 and "thanks!" in text and "approve, reject or discard" in text
    assert str(got[0].msg["Reply-To"]) == f"dev-confirm+{token}@example.org"
    assert "subscribe" not in text            # never the member help text

    # the moderator approves (quoted lines and blank lines skipped, any case)
    reply(app, list_id, token, "Mod <MOD@example.org>", "\n> quoted\n\nApprove\n")
    assert len(accepted) == 1 and accepted[0]["approved_by"] == "mod@example.org"
    got = outbox.new()
    assert [m.recipients for m in got] == [["mod@example.org"]]
    assert "approved" in got[0].msg.get_body(("plain",)).get_content()

    # the same reply again, and the other moderator: told who handled it, nothing done
    reply(app, list_id, token, "mod@example.org", "approve")
    reply(app, list_id, boss_token, "boss@example.org", "discard")
    assert len(accepted) == 1
    got = outbox.new()
    assert [m.recipients for m in got] == [["mod@example.org"], ["boss@example.org"]]
    for m in got:
        assert "approved by mod@example.org via email" in m.msg.get_body(("plain",)).get_content()
    with app.db.unit_of_work() as s:
        held = s.get_one(HeldMessage, held_id)
        assert held.decision is Decision.approve and held.decided_via == "email"


def test_reject_tells_poster_with_reason(app: Any, setup: Any, accepted: list[Any]) -> None:
    list_id, outbox = setup
    post_held(app, list_id, message("poster@out.example", "dev@example.org", "Spam?"))
    token = token_of(notices_for(outbox.new(), "mod@example.org")[0].msg)
    reply(app, list_id, token, "mod@example.org", "reject off topic here\n-- \nsig")
    got = outbox.new()
    poster = notices_for(got, "poster@out.example")
    assert len(poster) == 1 and "off topic here" in poster[0].msg.get_body(("plain",)).get_content()
    assert "Spam?" in poster[0].msg.get_body(("plain",)).get_content()
    assert len(notices_for(got, "mod@example.org")) == 1
    assert accepted == []


def test_discard_is_silent_and_poster_can_cancel(app: Any, setup: Any,
                                                  accepted: list[Any]) -> None:
    list_id, outbox = setup
    h1 = post_held(app, list_id, message("poster@out.example", "dev@example.org", "one"))
    token = token_of(notices_for(outbox.new(), "mod@example.org")[0].msg)
    reply(app, list_id, token, "mod@example.org", "discard")
    assert [m.recipients for m in outbox.new()] == [["mod@example.org"]]

    h2 = post_held(app, list_id, message("poster@out.example", "dev@example.org", "two"))
    cancel = token_of(notices_for(outbox.new(), "poster@out.example")[0].msg)
    reply(app, list_id, cancel, "poster@out.example", "cancel")
    with app.db.unit_of_work() as s:
        assert s.get_one(HeldMessage, h1).decision is Decision.discard
        assert s.get_one(HeldMessage, h2).decision is Decision.cancel
        assert s.get_one(HeldMessage, h2).decided_by == "poster@out.example"
    assert accepted == []


def test_poster_notice_not_to_auto_senders_and_rate_limited(app: Any, setup: Any) -> None:
    list_id, outbox = setup
    post_held(app, list_id, message("bot@out.example", "dev@example.org", Precedence="list"))
    post_held(app, list_id, message("bot@out.example", "dev@example.org"), mail_from="")
    assert notices_for(outbox.new(), "bot@out.example") == []
    for i in range(5):
        post_held(app, list_id, message("p@out.example", "dev@example.org", f"n{i}"))
    assert len(notices_for(outbox.new(), "p@out.example")) == 3


def test_tokens_attacked(app: Any, setup: Any, clock: Any, accepted: list[Any]) -> None:
    list_id, outbox = setup
    other = make_list(app, "other@example.org", moderators=MODS)
    post_held(app, list_id, message("poster@out.example", "dev@example.org"))
    token = token_of(notices_for(outbox.new(), "mod@example.org")[0].msg)
    guessed = tokens.new_token()
    reply(app, list_id, guessed, "mod@example.org", "approve")
    reply(app, list_id, "not-a-token", "mod@example.org", "approve")
    # used on another list's confirm address
    command(app, other, "confirm", message("mod@example.org", "other-confirm@example.org",
                                           "Re", "approve"), extra=token)
    assert accepted == []
    assert all("unknown" in m.msg.get_body(("plain",)).get_content() for m in outbox.new())
    # upper-cased by some MTA: still works
    clock.advance(days=13)
    reply(app, list_id, token.upper(), "mod@example.org", "approve")
    assert len(accepted) == 1


def test_expired_token_and_tick(app: Any, setup: Any, clock: Any, accepted: list[Any]) -> None:
    list_id, outbox = setup
    held_id = post_held(app, list_id, message("poster@out.example", "dev@example.org", "old"))
    token = token_of(notices_for(outbox.new(), "mod@example.org")[0].msg)
    clock.advance(days=14, seconds=1)
    reply(app, list_id, token, "mod@example.org", "approve")
    assert accepted == []
    assert "expired" in outbox.new()[0].msg.get_body(("plain",)).get_content()
    moderation.tick(app)
    got = outbox.new()
    assert sorted(r for m in got for r in m.recipients) == ["boss@example.org",
                                                            "mod@example.org"]
    assert "old" in got[0].msg.get_body(("plain",)).get_content()
    with app.db.unit_of_work() as s:
        held = s.get_one(HeldMessage, held_id)
        assert held.decision is Decision.expire and held.decided_via == "schedule"
        assert s.get_one(InboundMessage, held.inbound_id).state is InboundState.discarded
    moderation.tick(app)
    assert outbox.new() == []


def test_authenticated_replies_required(app: Any, setup: Any, accepted: list[Any],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    list_id, outbox = setup
    mod_settings = dataclasses.replace(app.settings.moderation,
                                       require_authenticated_replies=True,
                                       trusted_authserv_id="mx.example.org")
    monkeypatch.setattr(app, "settings", dataclasses.replace(app.settings,
                                                             moderation=mod_settings))
    post_held(app, list_id, message("poster@out.example", "dev@example.org"))
    token = token_of(notices_for(outbox.new(), "mod@example.org")[0].msg)
    reply(app, list_id, token, "mod@example.org", "approve")
    assert accepted == []
    assert "not authenticated" in outbox.new()[0].msg.get_body(("plain",)).get_content()
    # an A-R from another authserv-id does not count
    reply(app, list_id, token, "mod@example.org", "approve",
          Authentication_Results="evil.example; dkim=pass header.d=example.org")
    assert accepted == []
    reply(app, list_id, token, "mod@example.org", "approve",
          Authentication_Results="mx.example.org; dkim=pass header.d=example.org")
    assert len(accepted) == 1


def test_concurrent_decisions_one_winner(app: Any, setup: Any) -> None:
    list_id, _ = setup
    held_id = post_held(app, list_id, message("poster@out.example", "dev@example.org"))
    barrier = threading.Barrier(4)
    results: list[bool] = []
    errors: list[BaseException] = []

    def act(n: int) -> None:
        try:
            barrier.wait(5)
            with app.db.unit_of_work() as s:
                out = moderation.decide(s, app, held_id, Decision.discard, actor=f"a{n}",
                                        via="cli")
                results.append(out.won)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=act, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(results) == [False, False, False, True]
    with app.db.unit_of_work() as s:
        logs = s.scalars(select(ModerationLog).where(ModerationLog.action == "discard")).all()
        assert len(logs) == 1


def test_cli_held(app: Any, setup: Any, cli_env: dict[str, str], accepted: list[Any]) -> None:
    list_id, outbox = setup
    h1 = post_held(app, list_id, message("poster@out.example", "dev@example.org", "first"))
    h2 = post_held(app, list_id, message("poster@out.example", "dev@example.org", "second"))
    h3 = post_held(app, list_id, message("poster@out.example", "dev@example.org", "third"))
    runner = CliRunner()
    r = runner.invoke(cli, ["held", "ls", "dev@example.org", "--json"], env=cli_env)
    assert r.exit_code == 0, r.output
    items = json.loads(r.output)
    assert [i["id"] for i in items] == [h1, h2, h3]
    assert set(items[0]) >= {"id", "list", "sender", "subject", "reasons", "held_at"}
    assert items[0]["list"] == "dev@example.org" and items[0]["subject"] == "first"
    assert items[0]["reasons"] == ["Post by non-member"]

    r = runner.invoke(cli, ["held", "approve", str(h1)], env=cli_env)
    assert r.exit_code == 0 and "approved" in r.output
    assert len(accepted) == 1
    outbox.new()
    r = runner.invoke(cli, ["held", "reject", str(h2), "--reason", "not here"], env=cli_env)
    assert r.exit_code == 0
    assert "not here" in notices_for(outbox.new(), "poster@out.example")[0].msg.get_body(("plain",)).get_content()
    r = runner.invoke(cli, ["held", "discard", str(h3)], env=cli_env)
    assert r.exit_code == 0
    r = runner.invoke(cli, ["held", "discard", str(h1)], env=cli_env)
    assert r.exit_code == 1 and "already handled" in r.stderr and "approved by" in r.stderr
    r = runner.invoke(cli, ["held", "approve", "9999"], env=cli_env)
    assert r.exit_code == 1 and "no held message" in r.stderr
    for bad in ("99999999999999999999999", "0", "-1"):   # no traceback on overflow
        r = runner.invoke(cli, ["held", "approve", "--", bad], env=cli_env)
        assert r.exit_code == 1 and "no held message" in r.stderr, r.output
    r = runner.invoke(cli, ["held", "ls", "nope@example.org"], env=cli_env)
    assert r.exit_code == 1 and "no such list" in r.stderr
    r = runner.invoke(cli, ["held", "ls", "--json"], env=cli_env)
    assert json.loads(r.output) == []
    assert len(accepted) == 1
    r = runner.invoke(cli, ["held", "log", "dev@example.org", "--json"], env=cli_env)
    log = json.loads(r.output)
    assert [e["action"] for e in log] == ["hold"] * 3 + ["approve", "reject", "discard"]
    assert log[4]["via"] == "cli" and log[4]["detail"] == "not here"
    assert log[3]["held_id"] == h1 and "(shell)" in log[3]["actor"]
