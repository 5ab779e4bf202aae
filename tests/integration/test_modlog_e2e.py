"""The moderation log by email: `log` to NAME-request@, open to whom moderation_log says."""

from __future__ import annotations

from sqlalchemy import select

from listserv.core import lists, members
from listserv.pipeline import moderation
from listserv.core.models import Decision, HeldMessage, LogAccess, LogNames, Role
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import Captured

LIST = "dev@example.org"
REQUEST = "dev-request@example.org"


def setup(h: Harness) -> None:
    make_list(h.app, LIST, members=["ann@x.org"], owners=["owner@x.org"])
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        members.add_members(s, ml, [("Mia Mod", "mod@x.org")], role=Role.moderator)
    h.send(make_message("eve@e.example", LIST, "Buy now"))
    h.send(make_message("zed@z.example", LIST, "A fair question"))
    h.run_until_idle()
    with h.app.db.unit_of_work() as s:
        first, second = s.scalars(select(HeldMessage.id).order_by(HeldMessage.id)).all()
        moderation.decide(s, h.app, first, Decision.reject, actor="mod@x.org", via="email",
                          reason="off topic")
        moderation.decide(s, h.app, second, Decision.approve, actor="root (shell)",
                          via="cli")
    h.run_until_idle()


def ask(h: Harness, sender: str) -> Captured:
    before = len(h.sink.messages)
    h.send(make_message(sender, REQUEST, "log", "log\n"))
    h.run_until_idle()
    got = h.sink.wait_for(lambda m: any(sender in c.rcpt_tos for c in m[before:]))
    [answer] = [c for c in got[before:] if sender in c.rcpt_tos]
    return answer


def body(c: Captured) -> str:
    return str(c.message.get_body().get_content())  # type: ignore[union-attr]


def set_access(h: Harness, access: LogAccess, names: LogNames = LogNames.show) -> None:
    with h.app.db.unit_of_work() as s:
        ml = lists.get_list(s, LIST)
        ml.moderation_log, ml.moderation_log_names = access, names


def test_owners_only_by_default(harness: Harness) -> None:
    setup(harness)
    refused = ask(harness, "ann@x.org")
    assert "open to its owners and moderators only" in body(refused)
    log = ask(harness, "owner@x.org")
    assert log.message["Subject"] == f"Moderation log of {LIST}"
    text = body(log)
    # a moderator reading sees addresses
    assert "rejected" in text and "Buy now from eve@e.example" in text
    assert "reason: off topic" in text and "by:     mod@x.org, by mail" in text
    assert "approved" in text and "root (shell), by CLI" in text
    assert "held" in text and "listserv (automatic), by posting rules" in text


def test_public_log_names_moderators_as_the_list_says(harness: Harness) -> None:
    setup(harness)
    set_access(harness, LogAccess.public)
    text = body(ask(harness, "stranger@s.example"))
    assert "Buy now from eve@e.example" in text and "reason: off topic" in text
    assert "by:     Mia Mod, by mail" in text and "mod@x.org" not in text
    assert "a moderator, by CLI" in text
    set_access(harness, LogAccess.public, LogNames.hide)
    text = body(ask(harness, "other@s.example"))
    assert "Mia Mod" not in text and "by:     a moderator, by mail" in text


def test_members_log(harness: Harness) -> None:
    setup(harness)
    set_access(harness, LogAccess.members)
    assert "open to its members only" in body(ask(harness, "stranger@s.example"))
    assert "Buy now" in body(ask(harness, "ann@x.org"))


def test_public_log_on_the_web(harness: Harness) -> None:
    from starlette.testclient import TestClient

    from listserv.web import create_app

    setup(harness)
    with TestClient(create_app(harness.app, base_url="http://testserver"),
                    base_url="http://testserver", raise_server_exceptions=False) as web:
        page = web.get(f"/lists/{LIST}/moderation-log")
        assert page.status_code == 403 and "send &#39;log&#39; to dev-request@" in page.text
        set_access(harness, LogAccess.public, LogNames.hide)
        page = web.get(f"/lists/{LIST}/moderation-log")
        assert page.status_code == 200
        assert "Buy now" in page.text and "off topic" in page.text
        assert "a moderator" in page.text and "mod@x.org" not in page.text
        assert web.get("/lists/nope@example.org/moderation-log").status_code == 404
