"""In a real browser (Debian's chromium through chromedriver, Selenium) against a real
`listserv serve`: join a list from the directory and confirm; post, then search the archive
and open the hit; no page runs or carries script. A screenshot of the page is saved under the
test's temp dir when a test fails."""

from __future__ import annotations

import re
import urllib.request
from email.message import EmailMessage
from typing import Any, Iterator

import pytest
from selenium.webdriver.common.by import By

from tests.acceptance.conftest import Site, make_site, message
from tests.sink import SmtpSink
from tests.waiting import wait_until
from tests.web.conftest import assert_no_script, press, serve_with_web


LIST = "garden@example.org"


@pytest.fixture(scope="module")
def browser_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, str]]:
    """`listserv serve` with its web pages on a free port: (site, base URL)."""
    with SmtpSink() as sink:
        for site in make_site(tmp_path_factory.mktemp("browser-site"), sink):
            site.run("list", "create", LIST)
            for key, value in (("archive", "public"), ("nonmember_action", "accept"),
                               ("display_name", "Community garden"),
                               ("description", "Seeds, tools <and> weekends")):
                site.run("list", "set", LIST, key, value)
            site.run("member", "add", LIST, "ann@a.example")
            yield site, serve_with_web(site)


def test_join_from_the_directory_and_confirm(browser_site: tuple[Site, str],
                                             browser: Any) -> None:
    site, base = browser_site
    browser.get(base + "/")
    assert_no_script(browser)
    press(browser, browser.find_element(By.LINK_TEXT, "Community garden"))
    assert "Seeds, tools <and> weekends" in browser.find_element(By.TAG_NAME, "main").text
    browser.find_element(By.NAME, "email").send_keys("carol@c.example")
    press(browser, browser.find_element(By.CSS_SELECTOR, "form[action$='/join'] button"))
    assert "Check your mail" in browser.find_element(By.TAG_NAME, "h1").text
    assert_no_script(browser)

    [mail] = site.mail_to("carol@c.example")
    confirm = mail.message
    link = re.search(re.escape(base) + r"/\S+", _text(confirm))
    if link:            # the confirmation page: GET shows a button, the POST confirms
        browser.get(link.group(0).rstrip(".>)"))
        assert_no_script(browser)
        press(browser, browser.find_element(By.CSS_SELECTOR, "main form button"))
    else:               # confirmation by reply
        reply = EmailMessage()
        reply["From"] = "carol@c.example"
        reply["To"] = str(confirm["Reply-To"])
        reply["Subject"] = "Re: " + str(confirm["Subject"])
        reply.set_content("yes\n")
        site.send(str(confirm["Reply-To"]), reply.as_bytes())
    wait_until(lambda: "carol@c.example" in site.run("member", "ls", LIST), 20,
               "carol to be a member")


def _text(msg: Any) -> str:
    part = msg.get_body(preferencelist=("plain",))
    return str(part.get_content()) if part is not None else ""


def test_search_the_archive_and_open_a_hit(browser_site: tuple[Site, str],
                                           browser: Any) -> None:
    site, base = browser_site
    site.send(LIST, message("ann@a.example", LIST, "Tomato seedlings",
                            "The zucchinivariety <b>sprouted</b> on Tuesday.\n"))
    search = f"{base}/lists/{LIST}/archive/search?q=zucchinivariety"
    # searches are rate limited (30 a minute per client): poll no faster than that allows
    wait_until(lambda: "Tomato seedlings" in _fetch(search), 30,
               "the post to be archived and indexed", interval=2.0)

    browser.get(f"{base}/lists/{LIST}/")
    box = browser.find_element(By.NAME, "q")
    box.send_keys("zucchini*")
    press(browser, browser.find_element(By.CSS_SELECTOR, "form[role='search'] button"))
    assert "search" in browser.current_url
    assert browser.find_elements(By.TAG_NAME, "mark")
    assert_no_script(browser)
    press(browser, browser.find_element(By.PARTIAL_LINK_TEXT, "Tomato seedlings"))
    body = browser.find_element(By.CSS_SELECTOR, ".message-body").text
    assert "The zucchinivariety <b>sprouted</b> on Tuesday." in body
    assert "/message/" in browser.current_url
    assert_no_script(browser)
    press(browser, browser.find_element(By.LINK_TEXT, "archive"))
    assert "Archive of Community garden" in browser.find_element(By.TAG_NAME, "h1").text


def _fetch(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode("utf-8"))
    except OSError:
        return ""
