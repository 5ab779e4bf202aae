"""The token pages in a real browser (headless chromium) against a real `listserv serve`:
unsubscribe from a delivered copy's link, follow a confirmation link, approve a held post and
see its copy arrive, and the Content-Security-Policy stopping inline script."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from selenium.webdriver.common.by import By

from tests.acceptance.conftest import message
from tests.waiting import wait_until
from tests.web.conftest import Live, assert_no_script, press


def body_text(captured: Any) -> str:
    part = captured.message.get_body(preferencelist=("plain",))
    return str(part.get_content()) if part is not None else ""


def members_of(live: Live, address: str) -> str:
    return live.run("member", "ls", address)


def test_unsubscribe_from_a_delivered_copy(live: Live, browser: Any) -> None:
    lst = "garden@example.org"
    live.run("list", "create", lst)
    live.run("list", "set", lst, "nonmember_action", "accept")
    live.run("member", "add", lst, "ann@a.example", "bob@b.example")
    live.site.send(lst, message("ann@a.example", lst, "Seeds"))
    [copy] = live.site.mail_to("bob@b.example")
    assert copy.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = re.search(r"<(http[^>]+/u/[^>]+)>", str(copy.message["List-Unsubscribe"])).group(1)  # type: ignore[union-attr]
    assert url.startswith(live.base)

    browser.get(url)
    assert_no_script(browser)
    assert "bob@b.example" in browser.find_element(By.TAG_NAME, "main").text
    assert "bob@b.example" in members_of(live, lst)          # opening the page did nothing
    press(browser, "unsubscribe")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Unsubscribed"
    assert_no_script(browser)
    listed = members_of(live, lst)
    assert "bob@b.example" not in listed and "ann@a.example" in listed


def test_follow_a_confirmation_link(live: Live, browser: Any) -> None:
    lst = "choir@example.org"
    live.run("list", "create", lst)                     # subscription_policy confirm
    live.site.send("choir-join@example.org", message("carol@c.example", "choir-join@example.org",
                                                    "join"))
    [mail] = live.site.mail_to("carol@c.example")
    url = re.search(re.escape(live.base) + r"/c/[a-z2-7]+", body_text(mail)).group(0)  # type: ignore[union-attr]
    browser.get(url)
    assert_no_script(browser)
    assert "carol@c.example" not in members_of(live, lst)
    press(browser, "confirm")
    assert "now subscribed" in browser.find_element(By.TAG_NAME, "main").text
    assert "carol@c.example" in members_of(live, lst)


def test_approve_a_held_post_from_its_page(live: Live, browser: Any) -> None:
    lst = "board@example.org"
    live.run("list", "create", lst, "--moderator", "mo@m.example")
    live.run("member", "add", lst, "dora@d.example")
    live.site.send(lst, message("eve@e.example", lst, "Minutes <draft>",
                                "<script>alert(1)</script> see you\n"))
    [notice] = live.site.mail_to("mo@m.example")
    url = re.search(re.escape(live.base) + r"/m/[a-z2-7]+", body_text(notice)).group(0)  # type: ignore[union-attr]
    browser.get(url)
    assert_no_script(browser)
    main = browser.find_element(By.TAG_NAME, "main").text
    assert "Minutes <draft>" in main and "<script>alert(1)</script> see you" in main
    assert "non-member" in main
    assert live.site.count_to("dora@d.example") == 0
    press(browser, "approve")
    assert "approved" in browser.find_element(By.TAG_NAME, "main").text
    [copy] = live.site.mail_to("dora@d.example")
    assert "Minutes <draft>" in str(copy.message["Subject"])
    browser.get(url)                                  # the page now says what was done
    assert "already decided" in browser.find_element(By.TAG_NAME, "main").text


def test_the_content_security_policy_stops_inline_script(live: Live, browser: Any) -> None:
    lst = "csp@example.org"
    live.run("list", "create", lst)
    # a (careless) site template with inline script and an event handler
    override = Path(live.site.root) / "data" / "templates" / "lists" / lst / "web"
    override.mkdir(parents=True)
    (override / "leave.html.j2").write_text(
        '{% extends "default:web/leave.html.j2" %}{% block content %}'
        '<p id="probe">static</p>'
        "<script>document.getElementById('probe').textContent = 'script ran';</script>"
        '<img src="/nonexistent.png" alt="" onerror="document.title = \'handler ran\'">'
        "{{ super() }}{% endblock %}")
    browser.get(f"{live.base}/leave/{lst}")
    wait_until(lambda: browser.execute_script("return document.readyState") == "complete", 10,
               "the page to load")
    assert browser.find_element(By.ID, "probe").text == "static"
    assert browser.title != "handler ran"
    assert browser.find_elements(By.TAG_NAME, "script")       # it was there, and did not run
