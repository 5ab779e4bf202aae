"""One-click unsubscribe (RFC 8058): tokens, the members' own signed copies, the pages, and
mail to NAME-leave+TOKEN@."""

from __future__ import annotations

import re

import dkim
import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from listserv.core import members
from listserv.delivery import unsubscribe
from listserv.message import signing
from listserv.core.app import App, site_secret
from listserv.core.models import Domain, MailingList, Membership, OutboundMessage
from tests.integration.harness import Harness, make_list, make_message

LIST = "dev@example.org"
PEOPLE = ["ann@a.example", "bob@b.example", "cy@c.example"]
URL_RE = re.compile(r"<(https?://[^>]+/u/([a-z2-7]+[0-9]+))>")


def token_of(app: App, email: str, address: str = LIST) -> str:
    from listserv.core import lists

    with app.db.unit_of_work() as s:
        ml = lists.get_list(s, address)
        m = members.find_membership(s, ml, email)
        assert m is not None
        return unsubscribe.make_token(site_secret(s), m.id, m.unsub_nonce)


def is_member(app: App, email: str) -> bool:
    with app.db.unit_of_work() as s:
        ml = s.scalars(select(MailingList)).one()
        return members.find_membership(s, ml, email) is not None


def goodbyes(app: App) -> int:
    with app.db.unit_of_work() as s:
        rows = s.scalars(select(OutboundMessage).where(OutboundMessage.kind == "notice")).all()
        return sum(b"You have left" in app.spool.get(r.spool_sha) for r in rows)


# -- tokens ---------------------------------------------------------------------------------

def test_tokens_are_per_membership_and_die_with_it(app: App) -> None:
    make_list(app, LIST, members=PEOPLE)
    ann = token_of(app, "ann@a.example")
    assert ann != token_of(app, "bob@b.example")
    assert unsubscribe.TOKEN_RE.match(ann)
    with app.db.unit_of_work() as s:
        secret = site_secret(s)
        found = unsubscribe.find(s, secret, ann.upper())       # an MTA may fold the case
        assert found is not None and found.address.email == "ann@a.example"
        mid = found.id
        # the id alone, another MAC, another secret: nothing
        assert unsubscribe.find(s, secret, "a" * 26 + str(mid)) is None
        assert unsubscribe.find(s, "other-secret", ann) is None
        assert unsubscribe.find(s, secret, ann[:-len(str(mid))] + str(mid + 1)) is None
        assert unsubscribe.find(s, secret, "x") is None
    # leave and join again: the old token is dead, the new one differs
    with app.db.unit_of_work() as s:
        ml = s.scalars(select(MailingList)).one()
        members.remove_members(s, ml, ["ann@a.example"])
    with app.db.unit_of_work() as s:
        assert unsubscribe.find(s, secret, ann) is None
        ml = s.scalars(select(MailingList)).one()
        members.add_member(s, ml, "ann@a.example")
    again = token_of(app, "ann@a.example")
    assert again != ann
    with app.db.unit_of_work() as s:
        assert unsubscribe.find(s, secret, ann) is None
        assert unsubscribe.find(s, secret, again) is not None


# -- the delivered copies -------------------------------------------------------------------

def set_key(app: App) -> str:
    key = signing.generate_key()
    with app.db.unit_of_work() as s:
        d = s.scalars(select(Domain)).one()
        d.dkim_selector, d.dkim_private_key = "s1", key
    return key


def dns_for(key: str):  # type: ignore[no-untyped-def]
    record = signing.dns_record(key).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.example.org."
        return record
    return dns


def test_each_member_gets_a_signed_copy_with_its_own_one_click_link(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=PEOPLE)
    key = set_key(h.app)
    h.send(make_message("ann@a.example", LIST, "per member"))
    h.run_until_idle()
    got = h.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    dns = dns_for(key)
    base = h.app.settings.web.base_url
    seen = {}
    for m in got:
        (rcpt,) = m.rcpt_tos
        msg = m.message
        assert dkim.verify(m.data, dnsfunc=dns), rcpt
        sig = dkim.util.parse_tag_value(msg["DKIM-Signature"].encode().replace(b"\r\n", b""))
        signed = {x.strip().lower() for x in sig[b"h"].split(b":")}
        assert {b"list-unsubscribe", b"list-unsubscribe-post"} <= signed
        assert msg.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
        (value,) = msg.get_all("List-Unsubscribe")
        url, token = URL_RE.search(value).groups()  # type: ignore[union-attr]
        assert url == f"{base}/u/{token}"
        assert f"<mailto:dev-leave+{token}@example.org>" in value
        assert token == token_of(h.app, rcpt)
        # changing the member's link breaks the signature: it is covered
        forged = m.data.replace(token.encode(), token_of(h.app, PEOPLE[0]).encode())
        if forged != m.data:
            assert not dkim.verify(forged, dnsfunc=dns)
        seen[rcpt] = token
    assert sorted(seen) == sorted(PEOPLE) and len(set(seen.values())) == 3


def check_copies(got, key: str, app: App) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """rcpt -> token of each copy, after checking its signature and one-click headers."""
    seen = {}
    for m in got:
        (rcpt,) = m.rcpt_tos
        assert dkim.verify(m.data, dnsfunc=dns_for(key)), rcpt
        assert m.message.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
        token = URL_RE.search(m.message["List-Unsubscribe"]).group(2)  # type: ignore[union-attr]
        assert token == token_of(app, rcpt)
        seen[rcpt] = token
    return seen


def _post_with_the_pool(h: Harness, subject: str) -> tuple[int, dict[str, str]]:
    """Start the signing workers, post to LIST (PEOPLE, the domain's key set) and wait for
    the three copies: (copies made in the workers, check_copies of what arrived)."""
    from listserv.delivery import signpool
    from tests.waiting import wait_until

    signpool.start()
    wait_until(signpool.ready, timeout=60)
    before = signpool.made_in_workers
    make_list(h.app, LIST, members=PEOPLE)
    key = set_key(h.app)
    h.send(make_message("ann@a.example", LIST, subject))
    h.run_until_idle()
    got = h.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    return signpool.made_in_workers - before, check_copies(got, key, h.app)


def test_copies_made_in_the_worker_processes_verify(  # type: ignore[no-untyped-def]
        harness: Harness, monkeypatch) -> None:
    from listserv.delivery import signpool

    monkeypatch.setattr(signpool, "MIN_COPIES", 1)
    monkeypatch.setattr(signpool, "CHUNK", 2)      # 3 members: two chunks
    made_in_workers, seen = _post_with_the_pool(harness, "made elsewhere")
    assert made_in_workers == 3
    assert sorted(seen) == sorted(PEOPLE) and len(set(seen.values())) == 3


def test_a_messages_first_copies_are_made_in_the_daemon_the_rest_in_the_workers(  # type: ignore[no-untyped-def]
        harness: Harness, monkeypatch) -> None:
    """The first FIRST_COPIES members' copies are made at once by the delivery thread (a
    small query and their signatures), not after the whole batch's query and a round trip
    through the workers; every copy verifies either way."""
    from listserv.delivery import runner, signpool

    monkeypatch.setattr(signpool, "MIN_COPIES", 1)
    monkeypatch.setattr(runner, "FIRST_COPIES", 1)
    made_in_workers, seen = _post_with_the_pool(harness, "first here")
    assert made_in_workers == 2
    assert sorted(seen) == sorted(PEOPLE) and len(set(seen.values())) == 3


def test_a_broken_pool_falls_back_to_signing_in_the_daemon(  # type: ignore[no-untyped-def]
        harness: Harness, monkeypatch, caplog) -> None:
    import concurrent.futures.process as cfp

    from listserv.delivery import signpool

    class Broken:
        def submit(self, *a: object) -> None:
            raise cfp.BrokenProcessPool("a worker died")

        def shutdown(self, **kw: object) -> None:
            pass

    monkeypatch.setattr(signpool, "MIN_COPIES", 1)
    monkeypatch.setattr(signpool, "_failed_at", -1e9)
    monkeypatch.setattr(signpool, "_get", lambda: Broken())
    before = signpool.made_in_workers
    h = harness
    make_list(h.app, LIST, members=PEOPLE)
    key = set_key(h.app)
    h.send(make_message("ann@a.example", LIST, "fallback"))
    h.run_until_idle()
    got = h.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    assert signpool.made_in_workers == before
    assert sorted(check_copies(got, key, h.app)) == sorted(PEOPLE)
    assert "signing processes failed" in caplog.text


def test_batched_copies_point_at_the_list_page(app: App, sink) -> None:  # type: ignore[no-untyped-def]
    h = Harness(app, sink, delivery__verp=False).start()
    try:
        make_list(h.app, LIST, members=PEOPLE)
        key = set_key(h.app)
        h.send(make_message("ann@a.example", LIST, "batched"))
        h.run_until_idle()
        got = h.sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 3)
    finally:
        h.stop()
    assert len(got) == 1 and len(got[0].rcpt_tos) == 3        # one transaction, one copy
    msg = got[0].message
    assert msg["List-Unsubscribe"].strip() == (f"<{h.app.settings.web.base_url}/leave/{LIST}>, "
                                       "<mailto:dev-leave@example.org>")
    assert msg["List-Unsubscribe-Post"] is None              # it cannot name the member
    assert dkim.verify(got[0].data, dnsfunc=dns_for(key))


def test_mail_to_the_leave_token_address_removes_at_once(harness: Harness) -> None:
    h = harness
    make_list(h.app, LIST, members=PEOPLE)
    token = token_of(h.app, "bob@b.example")
    # sent from another address (a provider's unsubscribe robot): the token is the credential
    h.send(make_message("robot@mail.example", f"dev-leave+{token.upper()}@example.org",
                        "unsubscribe"))
    h.run_until_idle()
    assert not is_member(h.app, "bob@b.example") and is_member(h.app, "ann@a.example")
    bye = h.sink.wait_for(lambda m: any("bob@b.example" in x.rcpt_tos for x in m))
    assert any("You have left" in str(x.message["Subject"]) for x in bye
               if "bob@b.example" in x.rcpt_tos)
    # a dead token is an ordinary -leave: a confirmation to the sender, nobody removed
    h.send(make_message("ann@a.example", f"dev-leave+{token}@example.org", "again"))
    h.run_until_idle()
    assert is_member(h.app, "ann@a.example")
    h.sink.wait_for(lambda m: any("confirm you want to leave" in str(x.message["Subject"])
                                  for x in m if "ann@a.example" in x.rcpt_tos))


# -- the pages ------------------------------------------------------------------------------

def test_get_shows_a_button_and_changes_nothing(app: App, web: TestClient) -> None:
    make_list(app, LIST, members=PEOPLE)
    token = token_of(app, "ann@a.example")
    for _ in range(3):                                      # link scanners fetch with GET
        r = web.get(f"/u/{token}")
        assert r.status_code == 200
    assert is_member(app, "ann@a.example")
    assert "ann@a.example" in r.text and 'method="post"' in r.text
    assert 'name="List-Unsubscribe" value="One-Click"' in r.text
    assert web.head(f"/u/{token}").status_code == 200
    assert is_member(app, "ann@a.example")


def test_one_click_post_removes_the_member(app: App, web: TestClient) -> None:
    make_list(app, LIST, members=PEOPLE)
    token = token_of(app, "ann@a.example")
    # exactly what a mail provider sends (RFC 8058 section 3.2)
    r = web.post(f"/u/{token}", content=b"List-Unsubscribe=One-Click",
                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert not is_member(app, "ann@a.example") and is_member(app, "bob@b.example")
    assert goodbyes(app) == 1
    again = web.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 404 and "not valid" in again.text
    assert goodbyes(app) == 1


def test_the_pages_button_posts_with_its_csrf_token(app: App, web: TestClient) -> None:
    make_list(app, LIST, members=PEOPLE)
    token = token_of(app, "bob@b.example")
    page = web.get(f"/u/{token}").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    # a wrong CSRF token, a cross-site browser POST without ours, a body without One-Click
    assert web.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click",
                                         "csrf": "1.x"}).status_code == 403
    assert web.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click"},
                    headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert web.post(f"/u/{token}", data={"csrf": csrf}).status_code == 400
    assert is_member(app, "bob@b.example")
    r = web.post(f"/u/{token}", data={"List-Unsubscribe": "One-Click", "csrf": csrf},
                 headers={"Sec-Fetch-Site": "same-origin", "Origin": "null"})
    assert r.status_code == 200 and not is_member(app, "bob@b.example")


def test_unknown_tokens_are_rate_limited(app: App, web: TestClient) -> None:
    codes = [web.get(f"/u/{'a' * 26}{i + 1}").status_code for i in range(40)]
    assert codes[0] == 404 and codes[-1] == 429


def test_list_page_asks_for_the_address_and_confirms_by_mail(app: App,
                                                            web: TestClient) -> None:
    make_list(app, LIST, members=PEOPLE)
    page = web.get(f"/leave/{LIST}")
    assert page.status_code == 200 and 'type="email"' in page.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    for email in ("cy@c.example", "stranger@x.example"):
        r = web.post(f"/leave/{LIST}", data={"email": email, "csrf": csrf})
        assert r.status_code == 200 and "confirmation" in r.text
    assert is_member(app, "cy@c.example")                     # only confirmed by mail
    with app.db.unit_of_work() as s:
        sent = [app.spool.get(o.spool_sha) for o in s.scalars(select(OutboundMessage))]
    assert sum(b"confirm you want to leave" in d for d in sent) == 1   # not to a stranger
    assert web.post(f"/leave/{LIST}", data={"email": "nope", "csrf": csrf}).status_code == 400
    assert web.post(f"/leave/{LIST}", data={"email": "cy@c.example"}).status_code == 403
    assert web.get("/leave/none@example.org").status_code == 404


@pytest.mark.parametrize("path", ["/u/{t}", "/leave/dev@example.org"])
def test_token_pages_keep_the_token_to_themselves(app: App, web: TestClient, path: str) -> None:
    make_list(app, LIST, members=PEOPLE)
    r = web.get(path.format(t=token_of(app, "ann@a.example")))
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert "<script" not in r.text
    assert not re.search(r'(src|href)="https?://', r.text)       # nothing from elsewhere


def test_membership_rows_get_distinct_nonces(app: App) -> None:
    make_list(app, LIST, members=PEOPLE)
    with app.db.unit_of_work() as s:
        nonces = s.scalars(select(Membership.unsub_nonce)).all()
    assert len(set(nonces)) == len(nonces) == 3 and all(len(n) == 32 for n in nonces)


def test_members_of_an_included_list_get_their_own_lists_link(harness: Harness) -> None:
    from listserv.core import lists, network

    h = harness
    make_list(h.app, LIST, members=["ann@a.example"])
    make_list(h.app, "local@example.org", members=["dan@d.example"])
    with h.app.db.unit_of_work() as s:
        network.include(s, lists.get_list(s, LIST), ["local@example.org"])
    h.send(make_message("ann@a.example", LIST, "network"))
    h.run_until_idle()
    got = h.sink.wait_for(lambda m: any("dan@d.example" in x.rcpt_tos for x in m))
    dan = next(x for x in got if "dan@d.example" in x.rcpt_tos).message
    token = URL_RE.search(dan["List-Unsubscribe"]).group(2)  # type: ignore[union-attr]
    with h.app.db.unit_of_work() as s:
        m = unsubscribe.find(s, site_secret(s), token)
        assert m is not None and m.mailing_list.name == "local"
    h.send(make_message("dan@d.example", f"dev-leave+{token}@example.org", "bye"))
    h.run_until_idle()
    with h.app.db.unit_of_work() as s:
        assert members.find_membership(s, lists.get_list(s, "local@example.org"),
                                       "dan@d.example") is None
