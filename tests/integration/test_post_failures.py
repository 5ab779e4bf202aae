"""Delivery failures about the message or the next hop are the post's, not the members':
posts through the real intake and delivery path to an SMTP sink that refuses them."""

from __future__ import annotations

import socket
from typing import Any

from sqlalchemy import select

from listserv.delivery import runner as delivery
from listserv.core.app import App
from listserv.core.models import BounceEvent, Delivery, DeliveryState, Membership
from tests.clirun import Cli
from tests.integration.harness import Harness, make_list, make_message
from tests.integration.test_delivery import enqueue, with_delivery
from tests.sink import SmtpSink

LIST = "dev@lists.example.org"
MEMBERS = ["ann@a.example", "bob@b.example", "cy@c.example"]
TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"


def scores(app: App) -> dict[str, float]:
    with app.db.unit_of_work() as s:
        return {m.address.email: m.bounce_score for m in s.scalars(select(Membership))
                if m.role.value == "member"}


def events(app: App) -> list[str]:
    with app.db.unit_of_work() as s:
        return [e.email for e in s.scalars(select(BounceEvent))]


def failed_rows(app: App) -> list[tuple[str, str | None, int | None]]:
    with app.db.unit_of_work() as s:
        return sorted((r, d.blame, d.last_code)
                      for d in s.scalars(select(Delivery).where(
                          Delivery.state == DeliveryState.failed))
                      for r in d.recipients.split("\n"))


def owner_notices(h: Harness) -> list[Any]:
    return [m for m in h.sink.messages if m.rcpt_tos == ["owner@o.example"]
            and "could not be delivered" in str(m.message["Subject"])]


def big_refused(data: bytes, rcpts: list[str]) -> str | None:
    return TOO_BIG if b"Subject: [dev] Big" in data else None


def test_size_refusal_at_data_scores_nobody_and_tells_owners_once(
        harness: Harness, cli_env: dict[str, str]) -> None:
    make_list(harness.app, LIST, members=MEMBERS, owners=["owner@o.example"])
    harness.sink.fail_data = big_refused
    harness.send(make_message("ann@a.example", LIST, "Big one", "x" * 5000 + "\n"))
    harness.run_until_idle()
    assert failed_rows(harness.app) == [(m, "message", 552) for m in MEMBERS]
    assert scores(harness.app) == {m: 0.0 for m in MEMBERS} and events(harness.app) == []
    harness.sink.wait_for(lambda ms: len(owner_notices(harness)) >= 1)
    [notice] = owner_notices(harness)
    body = notice.message.get_content()
    assert TOO_BIG in body and "Big one" in body
    # a post that fits goes through; a second big post gets its own (single) notice
    harness.send(make_message("bob@b.example", LIST, "Small"))
    harness.send(make_message("cy@c.example", LIST, "Big two"))
    harness.run_until_idle()
    harness.sink.wait_for(lambda ms: len(owner_notices(harness)) >= 2)
    assert len(owner_notices(harness)) == 2
    small = {r for m in harness.sink.messages if "Small" in str(m.message["Subject"])
             for r in m.rcpt_tos}
    assert small == set(MEMBERS)
    assert scores(harness.app) == {m: 0.0 for m in MEMBERS}

    rows = Cli(cli_env).json("queue", "failed")
    assert sum(r["recipients"] for r in rows) == 6 and len(rows) == 2
    assert {r["kind"] for r in rows} == {"outbound"}
    assert {r["blame"] for r in rows} == {"message"} and {r["code"] for r in rows} == {552}
    assert {r["list"] for r in rows} == {LIST} and {r["message_kind"] for r in rows} == {"post"}
    text = Cli(cli_env)("queue", "failed").stdout
    assert "blame=message" in text and "5.3.4" in text


def test_policy_refusal_and_same_refusal_for_all_are_the_posts(harness: Harness) -> None:
    make_list(harness.app, LIST, members=MEMBERS, owners=["owner@o.example"])
    # a 5.7.x refusal at RCPT for one member alone: policy, about the message
    harness.sink.fail_rcpt["bob@b.example"] = "554 5.7.1 Relay access denied"
    harness.send(make_message("ann@a.example", LIST, "Policy"))
    harness.run_until_idle()
    assert failed_rows(harness.app) == [("bob@b.example", "message", 554)]
    assert events(harness.app) == []
    harness.sink.wait_for(lambda ms: len(owner_notices(harness)) == 1)


def test_same_rcpt_refusal_for_every_recipient_of_a_transaction(app: App, sink: SmtpSink
                                                                 ) -> None:
    a = with_delivery(app, outbound=sink.url)
    list_id = make_list(a, LIST, members=MEMBERS)
    for m in MEMBERS:
        sink.fail_rcpt[m] = "550 5.1.1 Recipient address rejected: relay says no"
    enqueue(a, MEMBERS, list_id=list_id)
    enqueue(a, ["dana@d.example", "bob@b.example"], list_id=list_id)  # only bob refused
    assert delivery.deliver_pending(a) == 2
    assert failed_rows(a) == sorted([(m, "message", 550) for m in MEMBERS]
                                    + [("bob@b.example", "recipient", 550)])
    assert events(a) == ["bob@b.example"]          # the lone refusal is bob's own: scored
    assert scores(a)["bob@b.example"] == 1.0 and scores(a)["ann@a.example"] == 0.0


def test_relay_down_for_days_is_the_posts_failure(app: App, clock: Any) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()   # nothing listens there
    a = with_delivery(app, outbound=f"smtp://127.0.0.1:{port}", retry_schedule=(3600,),
                      give_up_after_days=0.1)
    list_id = make_list(a, LIST, members=MEMBERS)
    enqueue(a, MEMBERS, list_id=list_id, verp=True)
    delivery.deliver_pending(a)
    assert failed_rows(a) == []                    # connection refused: retried at first
    clock.advance(hours=3)                         # past give_up_after_days
    delivery.deliver_pending(a)
    assert failed_rows(a) == [(m, "message", 550) for m in MEMBERS]
    assert events(a) == []

