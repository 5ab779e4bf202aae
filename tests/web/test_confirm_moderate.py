"""Confirmation pages (/c/TOKEN) and moderation pages (/m/TOKEN): GET shows, POST acts once."""

from __future__ import annotations

import re
from email import message_from_bytes, policy
from email.message import EmailMessage

from sqlalchemy import select
from starlette.testclient import TestClient

from listserv.core import lists, members
from listserv.core.app import App
from listserv.core.models import (
    HeldMessage,
    InboundMessage,
    InboundState,
    ModerationLog,
    OutboundMessage,
    SubscriptionPolicy,
)
from tests.integration.harness import Harness, make_list, make_message

LIST = "dev@example.org"
CONFIRM_RE = re.compile(rb"/c/([a-z2-7]{32})")
MODERATE_RE = re.compile(rb"/m/([a-z2-7]{32})")


def mails(app: App) -> list[bytes]:
    with app.db.unit_of_work() as s:
        return [app.spool.get(o.spool_sha) for o in
                s.scalars(select(OutboundMessage).order_by(OutboundMessage.id))]


def texts(app: App, to: str) -> list[str]:
    """The decoded text of every mail queued to ``to``."""
    out = []
    for data in mails(app):
        msg = message_from_bytes(data, policy=policy.default)
        if msg["To"] and to in str(msg["To"]):
            out.append("\n".join(str(p.get_content()) for p in msg.walk()
                                 if p.get_content_type() == "text/plain"))
    return out


def tokens_in(app: App, pattern: re.Pattern[bytes], to: str) -> list[str]:
    return [m.group(1).decode() for text in texts(app, to)
            for m in pattern.finditer(text.encode())]


def token_about(app: App, pattern: re.Pattern[bytes], to: str, subject: str) -> str:
    """The token in the notice to ``to`` about the post with ``subject`` (notices of two
    posts may be queued in either order)."""
    about = re.compile(rf"^\s*Subject:\s+{re.escape(subject)}\s*$", re.M)
    (token,) = {m.group(1).decode() for text in texts(app, to) if about.search(text)
                for m in pattern.finditer(text.encode())}
    return token


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]


def is_member(app: App, email: str) -> bool:
    with app.db.unit_of_work() as s:
        return members.find_membership(s, lists.get_list(s, LIST), email) is not None


def join(app: App, email: str) -> None:
    from listserv.pipeline import subscriptions

    with app.db.unit_of_work() as s:
        subscriptions.join(s, app, lists.get_list(s, LIST), email)


def test_confirming_a_subscription_on_its_page(app: App, web: TestClient) -> None:
    make_list(app, LIST, subscription_policy=SubscriptionPolicy.confirm)
    join(app, "carol@c.example")
    (token,) = set(tokens_in(app, CONFIRM_RE, "carol@c.example"))
    for _ in range(2):                                     # link scanners: nothing happens
        page = web.get(f"/c/{token}")
        assert page.status_code == 200 and "Join" in page.text
    assert not is_member(app, "carol@c.example")
    r = web.post(f"/c/{token}", data={"csrf": csrf_of(page.text), "action": "confirm"})
    assert r.status_code == 200 and "now subscribed" in r.text
    assert is_member(app, "carol@c.example")
    # single use; the welcome names the member's own unsubscribe page
    again = web.post(f"/c/{token}", data={"csrf": csrf_of(page.text), "action": "confirm"})
    assert "Already handled" in again.text
    assert "Already handled" in web.get(f"/c/{token}").text
    welcome = next(t for t in texts(app, "carol@c.example") if "is now subscribed" in t)
    assert re.search(r"/u/[a-z2-7]{26}[0-9]+", welcome)


def test_leaving_needs_the_button_and_a_csrf_token(app: App, web: TestClient) -> None:
    make_list(app, LIST, members=["ann@a.example"])
    from listserv.pipeline import subscriptions

    with app.db.unit_of_work() as s:
        subscriptions.leave(s, app, lists.get_list(s, LIST), "ann@a.example")
    (token,) = set(tokens_in(app, CONFIRM_RE, "ann@a.example"))
    page = web.get(f"/c/{token}")
    assert "Leave" in page.text and is_member(app, "ann@a.example")
    assert web.post(f"/c/{token}", data={"action": "confirm"}).status_code == 403
    assert web.post(f"/c/{token}", data={"action": "approve",
                                         "csrf": csrf_of(page.text)}).status_code == 400
    assert is_member(app, "ann@a.example")
    r = web.post(f"/c/{token}", data={"action": "confirm", "csrf": csrf_of(page.text)})
    assert r.status_code == 200 and not is_member(app, "ann@a.example")
    goodbye = next(t for t in texts(app, "ann@a.example") if "no longer subscribed" in t)
    assert "The lists of this site: http" in goodbye


def test_unknown_and_expired_tokens(app: App, web: TestClient, clock) -> None:  # type: ignore[no-untyped-def]
    make_list(app, LIST, subscription_policy=SubscriptionPolicy.confirm)
    assert web.get("/c/" + "a" * 32).status_code == 404
    join(app, "carol@c.example")
    (token,) = set(tokens_in(app, CONFIRM_RE, "carol@c.example"))
    page = web.get(f"/c/{token}")
    clock.advance(days=15)
    assert web.get(f"/c/{token}").status_code == 410
    r = web.post(f"/c/{token}", data={"action": "confirm", "csrf": csrf_of(page.text)})
    assert r.status_code == 410 and not is_member(app, "carol@c.example")


def test_a_moderator_refuses_a_subscription_on_the_page(app: App, web: TestClient) -> None:
    make_list(app, LIST, subscription_policy=SubscriptionPolicy.moderate,
              moderators=["mod@m.example"])
    join(app, "dan@d.example")
    (token,) = set(tokens_in(app, CONFIRM_RE, "mod@m.example"))
    page = web.get(f"/c/{token}")
    assert "dan@d.example" in page.text and 'id="reject"' in page.text
    r = web.post(f"/c/{token}", data={"action": "reject", "reason": "staff only",
                                      "csrf": csrf_of(page.text)})
    assert r.status_code == 200 and "reject" in r.text
    assert not is_member(app, "dan@d.example")
    assert any("staff only" in t for t in texts(app, "dan@d.example"))
    with app.db.unit_of_work() as s:
        log = s.scalars(select(ModerationLog)).all()
    assert [(x.action, x.via, x.actor) for x in log if x.action != "hold"] == [
        ("reject_subscription", "web", "mod@m.example")]


def held_post() -> EmailMessage:
    msg = make_message("eve@e.example", LIST, "Menu <draft>")
    msg.set_content("Plain version.\n")
    msg.add_alternative('<p onclick="x()">Hi <b>all</b><script>alert(1)</script>'
                        '<img src="https://tracker.example/p.gif" alt="pixel"></p>',
                        subtype="html")
    msg.add_attachment(b"%PDF-1.4 menu", maintype="application", subtype="pdf",
                       filename="menu.pdf")
    return msg


def test_moderating_a_held_post_from_its_page(harness: Harness, app: App) -> None:
    from tests.web.conftest import BASE_URL
    from listserv.web import create_app

    h = harness
    make_list(h.app, LIST, members=["ann@a.example"],
              moderators=["mod@m.example", "mod2@m.example"])
    h.send(held_post())
    h.run_until_idle()
    (token,) = set(tokens_in(h.app, MODERATE_RE, "mod@m.example"))
    (token2,) = set(tokens_in(h.app, MODERATE_RE, "mod2@m.example"))
    with TestClient(create_app(h.app, base_url=BASE_URL), base_url=BASE_URL) as web:
        page = web.get(f"/m/{token}")
        assert page.status_code == 200
        text = page.text
        assert "post from a non-member" in text.lower() or "non-member" in text
        assert "Menu &lt;draft&gt;" in text
        assert "<script" not in text and "onclick" not in text and "tracker.example" not in text
        assert "menu.pdf" in text and "application/pdf" in text
        link = re.search(r'href="(/m/[^"]+/attachment/\d+)"', text).group(1)  # type: ignore[union-attr]
        att = web.get(link)
        assert att.status_code == 200 and att.content == b"%PDF-1.4 menu"
        assert att.headers["content-disposition"].startswith("attachment;")
        assert att.headers["content-type"] == "application/octet-stream"
        # the confirmation URL of a moderation token leads to this page
        assert web.get(f"/c/{token}", follow_redirects=False).status_code == 303
        r = web.post(f"/m/{token}", data={"action": "approve", "csrf": csrf_of(text)})
        assert r.status_code == 200 and "approved" in r.text
        h.run_until_idle()
        h.sink.wait_for(lambda m: any("ann@a.example" in x.rcpt_tos for x in m))
        # the first action wins; the other moderator's page says what was done
        other = web.get(f"/m/{token2}")
        assert "already decided" in other.text and "mod@m.example" in other.text
        late = web.post(f"/m/{token2}", data={"action": "discard",
                                              "csrf": csrf_of(page.text)})
        assert late.status_code == 403                       # the CSRF token is per page
    with h.app.db.unit_of_work() as s:
        held = s.scalars(select(HeldMessage)).one()
        assert (held.decided_by, held.decided_via) == ("mod@m.example", "web")
        log = s.scalars(select(ModerationLog)).all()
        assert [(x.action, x.via) for x in log if x.action != "hold"] == [("approve", "web")]
        inbound = s.get_one(InboundMessage, held.inbound_id)
        assert inbound.state is InboundState.accepted


def test_reject_with_a_reason_and_the_posters_cancel_page(harness: Harness) -> None:
    from tests.web.conftest import BASE_URL
    from listserv.web import create_app

    h = harness
    make_list(h.app, LIST, members=["ann@a.example"], moderators=["mod@m.example"])
    h.send(make_message("eve@e.example", LIST, "first"))
    h.send(make_message("eve@e.example", LIST, "second"))
    h.run_until_idle()
    mod_tokens = tokens_in(h.app, MODERATE_RE, "mod@m.example")
    cancel = tokens_in(h.app, CONFIRM_RE, "eve@e.example")
    assert len(set(mod_tokens)) == 2 and len(set(cancel)) == 2
    reject = token_about(h.app, MODERATE_RE, "mod@m.example", "first")
    withdraw = token_about(h.app, CONFIRM_RE, "eve@e.example", "second")
    with TestClient(create_app(h.app, base_url=BASE_URL), base_url=BASE_URL) as web:
        page = web.get(f"/m/{reject}")
        r = web.post(f"/m/{reject}", data={"action": "reject", "reason": "off topic",
                                           "csrf": csrf_of(page.text)})
        assert "rejected" in r.text and "off topic" in r.text
        page = web.get(f"/c/{withdraw}")
        assert "Withdraw" in page.text
        r = web.post(f"/c/{withdraw}", data={"action": "cancel", "csrf": csrf_of(page.text)})
        assert "withdrawn" in r.text
    with h.app.db.unit_of_work() as s:
        decided = {x.subject: (x.decision.value if x.decision else None, x.reason)
                   for x in s.scalars(select(HeldMessage))}
    assert decided == {"first": ("reject", "off topic"), "second": ("cancel", None)}
