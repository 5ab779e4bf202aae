"""Every packaged template renders (StrictUndefined) with the context its call site passes, and
site overrides win over the packaged templates (architecture.md convention 10).

A new template under templates/ is picked up by the glob below and fails until CONTEXTS has an
entry for it: grep for its name in listserv/ and copy the keys of the dict passed there.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from markupsafe import Markup

from listserv.core import config, templating
from listserv.delivery import notices
from listserv.core.app import App
from listserv.archive.html import ListInfo, Summary
from listserv.pipeline.modlog import Entry
from listserv.digests.build import MESSAGE_SEPARATOR, PREAMBLE_SEPARATOR, Topic
from listserv.core.models import (
    ArchivePolicy,
    DigestFrequency,
    DmarcMitigation,
    HeldMessage,
    ReplyTo,
)
from listserv.core.views import ListView
from listserv.web.archive import Urls
from listserv.web.confirm import View as ConfirmView
from listserv.web.moderate import Part, Post
from listserv.web.moderate import View as ModView
from markupsafe import Markup

ROOT = templating.package_templates_dir()
TEMPLATES = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.j2"))
NOW = dt.datetime(2026, 3, 14, 9, 26, 53, tzinfo=dt.timezone.utc)

LIST = ListView(id=1, name="dev", domain="example.org", display_name="Developers",
                subject_prefix="[{list}] ", reply_to=ReplyTo.poster,
                dmarc_mitigation=DmarcMitigation.munge_from, archive=ArchivePolicy.private,
                digest_frequency=DigestFrequency.daily, post_id=42, dkim_selector=None,
                dkim_key=None)
TOKEN = "3q2-7ZbX0f9kq1hHn5aVxQ8mWcTt"
CONFIRM = LIST.sub("confirm", TOKEN)
HELD = HeldMessage(id=17, sender="bob@example.net", subject="Café menu: draft ✓", size=4213,
                   reasons=["post from a non-member", "the list address is in neither To nor Cc"])
HELD_2 = HeldMessage(id=18, sender="eve@example.com", subject="Re: [Developers] build",
                     size=900, reasons=["emergency moderation"])
DIGEST = {   # digests.build._context
    "list": LIST, "volume": 2026, "number": 12, "date": "Sat, 14 Mar 2026 09:26:53 +0000",
    "day": "Sat, 14 Mar 2026", "subject": "Developers Digest, Vol 2026, Issue 12",
    "topics": [Topic(1, "Release plan", "Ann <ann@example.org>"),
               Topic(2, "Café menu ✓", "bob@example.net")],
    "count": 2, "request": LIST.sub("request"),
}
ARCHIVE_PAGE = {"list": ListInfo("dev@example.org", "Developers", ArchivePolicy.public),
                "root": ""}
SUMMARY = Summary(1, "Café menu ✓", "Ann", NOW, "a@example.org", [])
REPLY = Summary(2, "Re: Café menu ✓", "bob at example.net", None, "", ["a@example.org"],
                parent=1)
URL = "https://lists.example.org"
URLS = Urls("/lists", "dev@example.org")
ROW = {"subject": "Café <menu> ✓", "sender": "Ann", "date": "2026-03-14 09:26 UTC",
       "url": URLS.message("a@example.org"), "depth": 0, "attachments": 1,
       "message_id": "a@example.org"}
DIRECTORY_ENTRY = {"address": "dev@example.org", "name": "Developers",
                   "description": "Talk <code>", "members": 3, "included": ["local@example.org"],
                   "url": URLS.page(), "public_archive": True, "archive_url": URLS.archive(),
                   "search_url": URLS.search(), "feed_url": URLS.feed(),
                   "join_url": URLS.join()}
# listserv.web.pages.render adds ``web`` to every page's context
WEB = {"web": {"prefix": "/lists", "base_url": "https://example.org/lists",
               "csrf": "1773480413.q2x7ZbX0f9kq1hHn5aVxQ8mW"}}
ARCHIVE_LIST = {**WEB, "list": {"address": "dev@example.org", "name": "Developers",
                                 "description": "Talk <code>"}, "urls": URLS}
MAILTO = f"mailto:{CONFIRM}?subject=Re%3A%20confirm%20{TOKEN}&body="

# Template name -> the contexts its call sites pass (several when branches differ).
# Notice templates also get ``list`` and ``settings``, added by notices.build_notice.
CONTEXTS: dict[str, list[dict[str, Any]]] = {
    "digest/footer.txt.j2": [DIGEST],
    "digest/masthead.txt.j2": [DIGEST],          # included by plain and mime_toc
    "digest/mime_toc.txt.j2": [DIGEST, {**DIGEST, "topics": [], "count": 0}],
    "digest/plain.txt.j2": [{
        **DIGEST, "messages": ["From: Ann <ann@example.org>\nSubject: Release plan\n\nSoon.",
                               "From: bob@example.net\nSubject: Café menu ✓\n\nCoffee."],
        "footer": "_____\nDevelopers mailing list -- dev@example.org",
        "end_line": "End of Developers Digest, Vol 2026, Issue 12",
        "preamble_separator": PREAMBLE_SEPARATOR, "separator": MESSAGE_SEPARATOR,
    }],
    "footer/list.txt.j2": [{"list": LIST}],      # posting.footer_text (adds settings)
    # moderation.expire_holds
    "notice/moderator/expired.txt.j2": [{"held_list": [HELD, HELD_2], "days": 14.0}],
    # moderation.notify_moderators
    "notice/moderator/held.txt.j2": [{
        "moderate_url": URL + "/m/" + TOKEN, "held": HELD, "token": TOKEN, "confirm_address": CONFIRM,
        "links": {w: MAILTO + w for w in ("approve", "reject", "discard")},
        "excerpt": ["Hi all,", "", "here is the draft menu."], "expires_at": NOW,
        "moderator": "mod@example.org", "attached": True,
    }, {
        "moderate_url": URL + "/m/" + TOKEN, "held": HELD, "token": TOKEN, "confirm_address": CONFIRM,
        "links": {w: MAILTO + w for w in ("approve", "reject", "discard")},
        "excerpt": [], "expires_at": NOW, "moderator": "mod@example.org", "attached": False,
    }],
    # commands._no_command
    "notice/moderator/no-command.txt.j2": [
        {"held": HELD, "line": "Hi, who is this?", "token": TOKEN, "confirm_address": CONFIRM},
        {"held": HELD, "line": "", "token": TOKEN, "confirm_address": CONFIRM}],
    # moderation.note_to_moderators
    "notice/moderator/poster-note.txt.j2": [
        {"held": HELD, "poster": "bob@example.net", "lines": ["let it through?"],
         "truncated": False},
        {"held": HELD, "poster": "bob@example.net", "lines": [], "truncated": True}],
    # subscriptions.ask_moderators (via _send_token)
    "notice/moderator/subscription.txt.j2": [{
        "confirm_url": URL + "/c/" + TOKEN, "token": TOKEN, "confirm_address": CONFIRM, "subscriber": "carol@example.com",
        "display_name": "Carol", "expires_at": NOW}, {
        "confirm_url": URL + "/c/" + TOKEN, "token": TOKEN, "confirm_address": CONFIRM, "subscriber": "carol@example.com",
        "display_name": "", "expires_at": NOW}],
    # bounces.disable (via bounce_report.notify_owners)
    "notice/owner/failed.txt.j2": [{
        "id": 12, "rcpt": "dev@example.org", "sender": "bob@example.net", "subject": "",
        "message_id": "<x@example.net>", "received_at": "2026-03-14 09:00 UTC",
        "error": "RecursionError: maximum recursion depth exceeded"}],
    "notice/owner/bounce_disabled.txt.j2": [{
        "email": "bob@example.net", "score": "5", "threshold": "5", "warnings": 3,
        "interval": 7, "events": [
            {"at": "2026-03-14 09:00", "kind": "hard", "status": "5.1.1",
             "diagnostic": "550 5.1.1 user unknown"},
            {"at": "2026-03-13 09:00", "kind": "hard", "status": None, "diagnostic": ""}]}, {
        "email": "bob@example.net", "score": "5.5", "threshold": "5", "warnings": 0,
        "interval": 7, "events": []}],
    # bounce_report.summarise_policy
    "notice/owner/bounce_policy.txt.j2": [{"total": 13, "domains": [
        {"domain": "example.net", "count": 12,
         "addresses": [f"u{i}@example.net" for i in range(12)], "status": "5.7.1",
         "diagnostic": "550 5.7.1 blocked by policy"},
        {"domain": "example.com", "count": 1, "addresses": ["eve@example.com"],
         "status": None, "diagnostic": ""}]}],
    # post_failures.report (via bounce_report.notify_owners)
    "notice/owner/delivery_failed.txt.j2": [{
        "message_id": "<m1@example.net>", "subject": "Release plan", "kind": "post",
        "count": 3, "reply": "552 5.3.4 Message size exceeds fixed limit",
        "outbound": "smtp://127.0.0.1:10025", "recipients": ["a@example.net"]}, {
        "message_id": "<m1@example.net>", "subject": "", "kind": "digest", "count": 1,
        "reply": "554 5.7.1 relay access denied", "outbound": "smtp://127.0.0.1:10025",
        "recipients": []}],
    # bounces.remove_member (owner and user notices)
    "notice/owner/bounce_removed.txt.j2": [{"email": "bob@example.net", "warnings": 3}],
    "notice/user/bounce_removed.txt.j2": [{"email": "bob@example.net", "warnings": 3}],
    # bounces.warn
    "notice/user/bounce_warning.txt.j2": [{
        "confirm_url": URL + "/c/" + TOKEN, "email": "bob@example.net", "token": TOKEN, "confirm_address": CONFIRM,
        "warning": 1, "warnings": 3, "left": 2, "removal_date": "2026-03-21", "score": "5"}, {
        "confirm_url": URL + "/c/" + TOKEN, "email": "bob@example.net", "token": TOKEN, "confirm_address": CONFIRM,
        "warning": 3, "warnings": 3, "left": 0, "removal_date": "2026-03-21", "score": "5"}],
    # subscriptions.join / leave (via _send_token)
    "notice/user/confirm-subscribe.txt.j2": [{
        "confirm_url": URL + "/c/" + TOKEN, "token": TOKEN, "confirm_address": CONFIRM, "email": "carol@example.com",
        "expires_at": NOW}],
    "notice/user/confirm-delivery.txt.j2": [{
        "token": TOKEN, "confirm_address": CONFIRM, "email": "carol@example.com",
        "mode": "nomail", "expires_at": NOW}],
    "notice/user/confirm-unsubscribe.txt.j2": [{
        "confirm_url": URL + "/c/" + TOKEN, "token": TOKEN, "confirm_address": CONFIRM, "email": "carol@example.com",
        "expires_at": NOW}],
    # subscriptions.unsubscribe_now / subscribe_now / ask_moderators / moderate reject
    "notice/user/goodbye.txt.j2": [{"site_url": URL + "/", "email": "carol@example.com"}],
    "notice/user/welcome.txt.j2": [{"unsubscribe_url": URL + "/u/" + TOKEN, "email": "carol@example.com"}],
    "notice/user/subscription-pending.txt.j2": [{"email": "carol@example.com"}],
    "notice/user/subscription-refused.txt.j2": [
        {"email": "carol@example.com", "reason": "not a member of staff"},
        {"email": "carol@example.com", "reason": ""}],
    # moderation.notify_poster
    "notice/user/held.txt.j2": [{
        "cancel_url": URL + "/c/" + TOKEN, "held": HELD, "token": TOKEN, "confirm_address": CONFIRM,
        "cancel_link": MAILTO + "cancel", "expires_at": NOW, "looks_like_command": False}, {
        "cancel_url": URL + "/c/" + TOKEN, "held": HELD, "token": TOKEN, "confirm_address": CONFIRM,
        "cancel_link": MAILTO + "cancel", "expires_at": NOW, "looks_like_command": True}],
    # moderation reject (notify the poster)
    "notice/user/moderation-rejected.txt.j2": [{"held": HELD, "reason": "off topic"},
                                               {"held": HELD, "reason": ""}],
    # posting.reject_post
    "notice/user/rejected.txt.j2": [
        {"reasons": ["post from a non-member"], "subject": "Café menu ✓",
         "sender": "bob@example.net"},
        {"reasons": ["message too big"], "subject": "", "sender": "bob@example.net"}],
    # archive_access._send_month / _send_index (via _reply, which adds request_address)
    "notice/user/archive-get.txt.j2": [
        {"request_address": LIST.sub("request"), "month": "2026-03", "included": 3,
         "total": 3, "cut": False, "max_bytes": 10 * 1024 * 1024},
        {"request_address": LIST.sub("request"), "month": "2026-03", "included": 250,
         "total": 1200, "cut": True, "max_bytes": 10 * 1024 * 1024}],
    "notice/user/archive-index.txt.j2": [
        {"request_address": LIST.sub("request"), "max_bytes": 10 * 1024 * 1024, "months": [
            {"month": "2026-02", "count": 1, "subjects": [("Release plan", 1)], "more": 0},
            {"month": "2026-03", "count": 104,
             "subjects": [("Café menu ✓", 3), ("build\nbroken", 1)], "more": 2}],
         "web_url": None},
        {"request_address": LIST.sub("request"), "max_bytes": 10 * 1024 * 1024,
         "months": [{"month": "2026-02", "count": 1, "subjects": [], "more": 0}],
         "web_url": "https://lists.example.org/lists/dev@example.org/archive/"},
        {"request_address": LIST.sub("request"), "max_bytes": 10 * 1024 * 1024,
         "months": [], "web_url": None}],
    # modlog.command
    "notice/user/moderation-log.txt.j2": [
        {"request_address": LIST.sub("request"), "days": 30, "entries": [
            Entry(NOW, "Buy\nnow", "eve@e.example", "rejected", "off topic", "a moderator",
                  "mail"),
            Entry(NOW, "", "", "approved", "", "Mia Mod", "CLI")]},
        {"request_address": LIST.sub("request"), "days": 30, "entries": []}],
    # archive_html.build (via _Writer.page, which adds list and root)
    "archive/base.html.j2": [ARCHIVE_PAGE],
    "archive/index.html.j2": [{**ARCHIVE_PAGE, "months": [{"month": "2026-03", "count": 2}]},
                              {**ARCHIVE_PAGE, "months": []}],
    "archive/month.html.j2": [{
        **ARCHIVE_PAGE, "root": "../", "month": "2026-03", "count": 2, "threads": [
            [(SUMMARY, 0), (REPLY, 1)]]}],
    "archive/message.html.j2": [{
        **ARCHIVE_PAGE, "root": "../", "month": "2026-03", "message": SUMMARY,
        "headers": [("From", "Ann <ann at example.org>"), ("Subject", "Café menu ✓")],
        "body": "Coffee <b>.\n", "html": None, "attachments": []}, {
        **ARCHIVE_PAGE, "root": "../", "month": "2026-03", "message": REPLY,
        "headers": [], "body": "", "html": Markup("<p>Coffee <b>now</b></p>"),
        "attachments": [{"filename": "menu.pdf", "content_type": "application/pdf",
                         "size": 1234, "file": "1-menu.pdf"}]}],
    # listserv.web.application (index, error_page) and the page modules
    "web/base.html.j2": [WEB],
    # listserv.web.directory and listserv.web.archive
    "web/index.html.j2": [{**WEB, "lists": [DIRECTORY_ENTRY]}, {**WEB, "lists": []}],
    "web/list.html.j2": [
        {**WEB, "list": DIRECTORY_ENTRY, "urls": URLS, "error": "", "email": ""},
        {**WEB, "list": {**DIRECTORY_ENTRY, "public_archive": False, "included": []},
         "urls": URLS, "error": "That is not an email address.", "email": "x<y"}],
    "web/archive.html.j2": [{**ARCHIVE_LIST, "months": [
        {"month": "2026-03", "count": 2, "url": URLS.month("2026-03")}]},
        {**ARCHIVE_LIST, "months": []}],
    "web/archive-month.html.j2": [{**ARCHIVE_LIST, "month": "2026-03", "count": 2,
                                   "threads": [[ROW, {**ROW, "depth": 1}]],
                                   "nav": {"newer": "", "older": URLS.month("2026-02")}}],
    "web/message-list.html.j2": [{**WEB, "items": [ROW, {**ROW, "depth": 1}]}],
    "web/search-form.html.j2": [{**WEB, "urls": URLS}],
    "web/search.html.j2": [{**ARCHIVE_LIST, "query": "café <menu>", "order": "relevance",
                            "hits": [{**ROW, "snippet": [("We serve ", False), ("café", True)]}],
                            "error": "", "page": 1, "newer": "", "older": URLS.search("x", 2)},
                           {**ARCHIVE_LIST, "query": "-x", "order": "date", "hits": [],
                            "error": "Type at least one word to search for.", "page": 1,
                            "newer": "", "older": ""}],
    "web/message.html.j2": [{
        **ARCHIVE_LIST, "message": ROW, "month": "2026-03", "month_url": URLS.month("2026-03"),
        "headers": [("From", "Ann"), ("Subject", "Café menu ✓")], "text": "Coffee <b>.\n",
        "html": None, "attachments": [{"filename": "menu.pdf", "content_type": "application/pdf",
                                       "size": 1234, "url": URLS.attachment("a@x", 1)}],
        "prev": ROW, "next": None, "thread": [ROW, {**ROW, "depth": 1}]}, {
        **ARCHIVE_LIST, "message": ROW, "month": "2026-03", "month_url": URLS.month("2026-03"),
        "headers": [], "text": "", "html": Markup("<p>Hi</p>"), "attachments": [],
        "prev": None, "next": ROW, "thread": [ROW]}],
    # web.modlog.moderation_log
    "web/moderation-log.html.j2": [
        {**WEB, "list": LIST, "days": 30, "entries": [
            Entry(NOW, "Buy <now>", "eve@e.example", "rejected", "off topic", "a moderator",
                  "mail")]},
        {**WEB, "list": LIST, "days": 30, "entries": []}],
    "web/error.html.j2": [{**WEB, "status": 404, "title": "Not found",
                           "detail": "There is no page <here>."},
                          {**WEB, "status": 500, "title": "Something went wrong", "detail": ""}],
    # listserv.web.unsubscribe
    "web/unsubscribe.html.j2": [{**WEB, "email": "carol@example.com"}],
    "web/leave.html.j2": [{**WEB, "sent_to": None, "error": ""},
                          {**WEB, "sent_to": None, "error": "Please give a valid address."},
                          {**WEB, "sent_to": "carol@example.com", "error": ""}],
    # listserv.web.confirm (one per kind, and one already used)
    "web/confirm.html.j2": [
        {**WEB, "v": ConfirmView("ok", kind, "carol@example.com", LIST, "",
                                 "dan@example.net", "Café ✓", actions)}
        for kind, actions in (("subscribe", ("confirm",)), ("unsubscribe", ("confirm",)),
                              ("reenable", ("confirm",)), ("cancel_post", ("cancel",)),
                              ("approve_subscription", ("approve", "reject", "discard")))
    ] + [{**WEB, "v": ConfirmView("used", "subscribe", "carol@example.com", LIST,
                                  "Already handled by carol@example.com.")}],
    # listserv.web.moderate
    "web/moderate.html.j2": [
        {**WEB, "token": TOKEN, "held": HELD, "v": ModView("ok", "", LIST, "mod@example.org"),
         "post": Post([("From", "Bob <bob@example.net>"), ("Subject", "Café <menu>")],
                      "Hi <all>\n", None, [Part(2, "menu.pdf", "application/pdf", 1234)])},
        {**WEB, "token": TOKEN, "held": HELD, "v": ModView("ok", "", LIST, "mod@example.org"),
         "post": Post([], "", Markup("<p>Hi <b>all</b></p>"), [])},
        {**WEB, "token": TOKEN, "held": HELD, "post": None,
         "v": ModView("used", "", LIST, "mod@example.org",
                      outcome="held message 17 approved by mod@example.org via web")}],
    "web/done.html.j2": [{**WEB, "title": "Unsubscribed", "lines": ["You left <dev>.", "Bye."]}],
    # commands.answer
    "notice/user/results.txt.j2": [{
        "results": [("subscribe", "A confirmation request has been sent to carol@example.com."),
                    ("", "Unknown command 'frobnicate'.")],
        "show_help": True, "original_subject": "help me", "request_address":
        LIST.sub("request")}, {
        "results": [("set delivery nomail", "Delivery set to nomail.")], "show_help": False,
        "original_subject": "", "request_address": LIST.sub("request")}],
}

HEADER_LINE = re.compile(r"[A-Za-z][A-Za-z0-9-]*: \S")


def _settings(data_dir: Path) -> config.Settings:
    return config.Settings(data_dir=str(data_dir), site_domain="lists.example.org")


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_renders(name: str, tmp_path: Path) -> None:
    assert name in CONTEXTS, f"add a fixture context for {name} to CONTEXTS in {__file__}"
    settings = _settings(tmp_path)
    for context in CONTEXTS[name]:
        ctx = {"list": LIST, "settings": settings, **context}
        text = templating.render(settings.data_dir, name, ctx, domain=LIST.domain,
                                 list_address=LIST.address)
        assert text.strip(), f"{name} renders nothing"
        assert "None" not in text, f"{name} shows a Python None:\n{text}"
        if not name.startswith("notice/"):
            continue
        head, sep, body = text.partition("\n\n")
        assert sep and body.strip(), f"{name}: no blank line then body:\n{text}"
        lines = head.split("\n")
        bad = [line for line in lines if not HEADER_LINE.match(line)]
        assert not bad, f"{name}: not header lines {bad!r}"
        assert lines[0].startswith("Subject: "), f"{name}: first line is not Subject:"
        assert "\n\n\n" not in body.strip(), f"{name}: two blank lines in a row:\n{text}"
        # And the real builder turns it into a message with that Subject.
        app = cast(App, SimpleNamespace(settings=settings, now=lambda: NOW))
        msg = notices.build_notice(app, LIST, name, "someone@example.com", context)
        assert msg["Subject"] == lines[0][len("Subject: "):].strip()
        assert msg.get_content().strip() == body.strip()


def test_every_context_names_a_template() -> None:
    assert sorted(set(CONTEXTS) - set(TEMPLATES)) == []


def test_site_override_wins_and_can_extend_default(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    ctx = {"list": LIST, "settings": settings, "email": "carol@example.com",
           "unsubscribe_url": URL + "/u/" + TOKEN}
    name = "notice/user/welcome.txt.j2"

    def render(data_dir: Path) -> str:
        return templating.render(str(data_dir), name, ctx, domain=LIST.domain,
                                 list_address=LIST.address)

    packaged = render(tmp_path / "none")
    assert packaged.startswith("Subject: Welcome to Developers")

    site = tmp_path / "a" / "templates" / "site" / name
    site.parent.mkdir(parents=True)
    site.write_text("Subject: Hello from {{ settings.site_domain }}\n\nHi {{ email }}.\n")
    assert render(tmp_path / "a") == "Subject: Hello from lists.example.org\n\nHi carol@example.com.\n"

    # A domain override comes before the site one, a list override before both.
    for data_dir, levels in (("b", ("site", "domains/example.org")),
                             ("c", ("site", "domains/example.org", "lists/dev@example.org"))):
        for level in levels:
            f = tmp_path / data_dir / "templates" / level / name
            f.parent.mkdir(parents=True)
            f.write_text(f"Subject: {level}\n\nbody\n")
        assert render(tmp_path / data_dir) == f"Subject: {levels[-1]}\n\nbody\n"

    # An override extending the packaged template (not itself: no recursion) and its blocks.
    ext = tmp_path / "d" / "templates" / "site" / name
    ext.parent.mkdir(parents=True)
    ext.write_text('{% extends "default:' + name + '" %}\n')
    assert render(tmp_path / "d") == packaged
    footer = tmp_path / "d" / "templates" / "site" / "footer" / "list.txt.j2"
    footer.parent.mkdir(parents=True)
    footer.write_text('{% include "default:footer/list.txt.j2" %}Archive: https://x/\n')
    text = templating.render(str(tmp_path / "d"), "footer/list.txt.j2", ctx)
    assert text.startswith("_____") and text.endswith("Archive: https://x/\n")
    assert "dev-leave@example.org" in text
