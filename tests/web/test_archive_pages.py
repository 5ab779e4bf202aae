"""Directory, list pages, join form and the public archive over Starlette's test client:
what each page shows, escaping and sanitising, private archives refused, attachments as
downloads, search, the Atom feed, and the join form's confirmation mail and rate limits."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient

from listserv.core.app import App
from listserv.core.models import (
    Address,
    ArchivePolicy,
    Delivery,
    MailingList,
    Membership,
    PendingToken,
    SubscriptionPolicy,
)
from tests.db.test_archive_search import OTHER, mail, reindex, write_month
from tests.integration.harness import make_list

LIST = "dev@example.org"
PRIVATE = "board@example.org"
HIDDEN = "hidden@example.org"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the form"
    return found.group(1)


@pytest.fixture
def site(app: App) -> App:
    make_list(app, LIST, members=["ann@a.example", "bob@b.example"],
              archive=ArchivePolicy.public, display_name="Developers",
              description="Talk about <code> & releases")
    make_list(app, PRIVATE, members=["ann@a.example"], archive=ArchivePolicy.private)
    make_list(app, HIDDEN, advertised=False, archive=ArchivePolicy.public)
    write_month(app, "2026-11",
                mail("a", "Kick-off <script>alert(1)</script>", "Meet on Tuesday & bring x<y.\n"),
                mail("b", "Re: Kick-off", "Tuesday suits me.\n", sender="Bob <bob@b.example>",
                     In_Reply_To="<a@x.example>"),
                mail("c", "Newsletter", html='<p>Our <b>report</b></p><script>evil()</script>'
                     '<img src="https://tracker.example/x.png" alt="pixel">'
                     '<a href="javascript:alert(1)" onclick="x()">link</a>'),
                with_html_attachment(mail("e", "Slides", "See the attachment.\n",
                                          attach=("slides.pdf", b"%PDF-1.4 fake"))))
    write_month(app, "2026-11", mail("p", "Board secret", "Confidential Tuesday.\n"),
                address=PRIVATE)
    assert reindex(app) == 4
    assert reindex(app, PRIVATE) == 1
    return app


def with_html_attachment(raw: bytes) -> bytes:
    """``raw`` with a second attachment: HTML with script, under a hostile file name."""
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    msg.add_attachment("<script>alert(1)</script>", subtype="html",
                       filename='../../evil"name<1>.html')
    return msg.as_bytes()


def url(address: str, rest: str = "") -> str:
    return f"/lists/{address}/{rest}"


def msg_url(mid: str, address: str = LIST) -> str:
    return f"/lists/{address}/message/{quote(mid, safe='@')}"


def test_directory_lists_the_advertised_lists(site: App, web: TestClient) -> None:
    r = web.get("/")
    assert r.status_code == 200
    assert "Developers" in r.text and "2 members" in r.text
    assert "Talk about &lt;code&gt; &amp; releases" in r.text
    assert f'href="/lists/{LIST}/"' in r.text and f'href="/lists/{PRIVATE}/"' in r.text
    assert HIDDEN not in r.text
    assert f'href="/lists/{LIST}/archive/"' in r.text
    assert f'href="/lists/{PRIVATE}/archive/"' not in r.text
    assert "<script" not in r.text
    # Not advertised is not secret: the page of a list whose address one knows still works.
    assert web.get(url(HIDDEN)).status_code == 200


def test_list_page_has_a_join_form_and_the_archive_links(site: App, web: TestClient) -> None:
    r = web.get(url(LIST))
    assert r.status_code == 200
    assert f'action="/lists/{LIST}/join"' in r.text and 'name="csrf"' in r.text
    assert f'href="/lists/{LIST}/archive/atom.xml"' in r.text
    assert 'action="/lists/dev@example.org/archive/search"' in r.text
    private = web.get(url(PRIVATE))
    assert "not public" in private.text and "/archive/" not in private.text
    assert web.get(url("nope@example.org")).status_code == 404


def test_archive_months_month_threads_and_message(site: App, web: TestClient) -> None:
    r = web.get(url(LIST, "archive/"))
    assert r.status_code == 200
    assert f'href="/lists/{LIST}/archive/2026-11/"' in r.text and "<td>4</td>" in r.text
    month = web.get(url(LIST, "archive/2026-11/"))
    assert month.status_code == 200
    assert "Kick-off &lt;script&gt;alert(1)&lt;/script&gt;" in month.text
    assert "<script>" not in month.text
    assert month.text.index(msg_url("a@x.example")) < month.text.index(msg_url("b@x.example"))
    assert 'class="depth-1"><a href="' + msg_url("b@x.example") in month.text
    assert web.get(url(LIST, "archive/2026-12/")).status_code == 404
    assert web.get(url(LIST, "archive/2026-13/")).status_code == 404

    page = web.get(msg_url("b@x.example"))
    assert page.status_code == 200
    assert "Tuesday suits me." in page.text
    assert f'href="{msg_url("a@x.example")}" rel="prev"' in page.text
    assert f'href="{msg_url("c@x.example")}" rel="next"' in page.text
    assert "<h2>Thread</h2>" in page.text and 'aria-current="page">Re: Kick-off' in page.text
    assert "bob@b.example" not in page.text         # addresses are not published
    first = web.get(msg_url("a@x.example"))
    assert "Meet on Tuesday &amp; bring x&lt;y." in first.text and "<script>" not in first.text
    assert web.get(msg_url("nope@x.example")).status_code == 404


def test_html_messages_are_sanitised(site: App, web: TestClient) -> None:
    r = web.get(msg_url("c@x.example"))
    assert r.status_code == 200
    assert "<b>report</b>" in r.text
    for bad in ("<script", "evil()", "tracker.example", "javascript:", "onclick"):
        assert bad not in r.text, bad


def test_attachments_download_with_a_safe_name_and_type(site: App, web: TestClient) -> None:
    page = web.get(msg_url("e@x.example"))
    pdf, html = (f"/lists/{LIST}/attachment/{n}/e@x.example" for n in (1, 2))
    assert f'href="{pdf}"' in page.text and f'href="{html}"' in page.text
    assert "evil&#34;name&lt;1&gt;.html" in page.text
    r = web.get(pdf)
    assert r.status_code == 200 and r.content == b"%PDF-1.4 fake"
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"] == (
        "attachment; filename=\"slides.pdf\"; filename*=UTF-8''slides.pdf")
    r = web.get(html)
    assert r.status_code == 200
    assert r.content.strip() == b"<script>alert(1)</script>"
    assert r.headers["content-type"] == "application/octet-stream"      # never rendered
    assert r.headers["content-disposition"].startswith(
        'attachment; filename="evilname1.html"')
    assert "sandbox" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert web.get(f"/lists/{LIST}/attachment/3/e@x.example").status_code == 404


def test_private_and_unarchived_archives_are_not_served(site: App, web: TestClient) -> None:
    for path in ("archive/", "archive/2026-11/", "archive/search?q=tuesday",
                 "archive/atom.xml", "message/p@x.example", "attachment/1/p@x.example"):
        r = web.get(url(PRIVATE, path))
        assert r.status_code == 403, path
        assert "open to its members only" in r.text
        assert "Confidential" not in r.text and "Board secret" not in r.text
    make_list(site, OTHER, archive=ArchivePolicy.none)
    r = web.get(url(OTHER, "archive/"))
    assert r.status_code == 404 and "keeps no archive" in r.text


def test_search_finds_marks_and_pages(site: App, web: TestClient) -> None:
    r = web.get(url(LIST, "archive/search"), params={"q": "tuesday"})
    assert r.status_code == 200
    assert msg_url("a@x.example") in r.text and msg_url("b@x.example") in r.text
    assert "<mark>Tuesday</mark>" in r.text
    assert "Confidential" not in r.text                 # the private list's post
    r = web.get(url(LIST, "archive/search"), params={"q": "<script>x</script>"})
    assert r.status_code == 200 and "<script>x" not in r.text
    assert "&lt;script&gt;x&lt;/script&gt;" in r.text
    r = web.get(url(LIST, "archive/search"), params={"q": "-tuesday"})
    assert "at least one word" in r.text
    r = web.get(url(LIST, "archive/search"), params={"q": '"unbalanced'})
    assert r.status_code == 200
    empty = web.get(url(LIST, "archive/search"))
    assert empty.status_code == 200 and 'name="q"' in empty.text


def test_atom_feed(site: App, web: TestClient) -> None:
    r = web.get(url(LIST, "archive/atom.xml"))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/atom+xml")
    ns = {"a": "http://www.w3.org/2005/Atom"}
    feed = ET.fromstring(r.content)
    assert feed.findtext("a:title", namespaces=ns) == "Developers"
    entries = feed.findall("a:entry", ns)
    assert [e.findtext("a:title", namespaces=ns) for e in entries][:2] == [
        "Slides", "Newsletter"]
    assert entries[0].find("a:link", ns).get("href") == (  # type: ignore[union-attr]
        "http://testserver" + msg_url("e@x.example"))
    titles = [e.findtext("a:title", namespaces=ns) for e in entries]
    assert "Kick-off <script>alert(1)</script>" in titles      # as text, XML-escaped
    assert b"<script>alert" not in r.content


def pending_for(app: App, email: str) -> list[PendingToken]:
    with app.db.unit_of_work() as session:
        return list(session.scalars(select(PendingToken).where(PendingToken.email == email)))


def members_of(app: App, address: str) -> set[str]:
    with app.db.unit_of_work() as session:
        return set(session.scalars(select(Address.email).join(Membership).join(MailingList)
                                   .where(MailingList.name == address.split("@")[0])))


def mails_to(app: App, email: str) -> int:
    """Notices queued for delivery to ``email``."""
    with app.db.unit_of_work() as session:
        return sum(email in d.recipients.split("\n")
                   for d in session.scalars(select(Delivery)))


def test_join_sends_a_confirmation_even_to_an_open_list(site: App, web: TestClient) -> None:
    with site.db.unit_of_work() as session:
        ml = session.scalar(select(MailingList).where(MailingList.name == "dev"))
        assert ml is not None
        ml.subscription_policy = SubscriptionPolicy.open
    page = web.get(url(LIST))
    r = web.post(url(LIST, "join"), data={"email": "Carol@C.example", "csrf": csrf_of(page.text)})
    assert r.status_code == 200
    assert "Check your mail" in r.text and "carol@c.example" in r.text
    [token] = pending_for(site, "carol@c.example")
    assert token.kind.value == "subscribe"
    assert mails_to(site, "carol@c.example") == 1
    assert "carol@c.example" not in members_of(site, LIST)      # not before confirming
    # The answer says the same for a member (no mail, nothing revealed).
    again = web.post(url(LIST, "join"), data={"email": "ann@a.example",
                                              "csrf": csrf_of(page.text)})
    assert again.status_code == 200 and "Check your mail" in again.text
    assert pending_for(site, "ann@a.example") == [] and mails_to(site, "ann@a.example") == 0


def test_join_refuses_bad_input_and_cross_site_posts(site: App, web: TestClient) -> None:
    page = web.get(url(LIST))
    r = web.post(url(LIST, "join"), data={"email": "not an address", "csrf": csrf_of(page.text)})
    assert r.status_code == 400 and "not an email address" in r.text
    assert 'value="not an address"' in r.text
    r = web.post(url(LIST, "join"), data={"email": "eve@e.example"})
    assert r.status_code == 403
    r = web.post(url(LIST, "join"), data={"email": "eve@e.example", "csrf": csrf_of(page.text)},
                 headers={"Origin": "https://evil.example"})
    assert r.status_code == 403
    other = web.get(url(PRIVATE))     # a token for one list's form does not work on another
    r = web.post(url(LIST, "join"), data={"email": "eve@e.example", "csrf": csrf_of(other.text)})
    assert r.status_code == 403
    assert web.get(url(LIST, "join")).status_code == 405
    assert pending_for(site, "eve@e.example") == []


def test_join_is_rate_limited_per_address_and_per_ip(site: App, web: TestClient) -> None:
    csrf = csrf_of(web.get(url(LIST)).text)
    codes = [web.post(url(LIST, "join"), data={"email": "dan@d.example", "csrf": csrf})
             .status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    assert len(pending_for(site, "dan@d.example")) == 1     # one mail, re-sent hourly at most
    codes = [web.post(url(LIST, "join"), data={"email": f"p{i}@p.example", "csrf": csrf})
             .status_code for i in range(8)]
    assert codes[-1] == 429 and codes.count(200) == 10 - 4


def test_directory_and_list_page_name_the_included_lists(site: App, web: TestClient) -> None:
    from listserv.core import lists, network
    with site.db.unit_of_work() as session:
        network.include(session, lists.get_list(session, LIST), [PRIVATE, "far@remote.example"])
    r = web.get("/")
    assert f"Includes: {PRIVATE}, far@remote.example" in r.text
    assert f"also reaches the members of: {PRIVATE}, far@remote.example" in web.get(url(LIST)).text
