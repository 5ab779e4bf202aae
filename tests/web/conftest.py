"""Web fixtures: a Starlette test client over the application (``web``), and for the browser
tests a real `listserv serve` with its web pages on a free port (``live``) driven by Debian's
chromium through its chromedriver (``browser``).

Browser tests are skipped when chromium or chromedriver is missing (`.ci/run` installs them
with apt). Selenium is given the driver's path, so Selenium Manager never runs (no downloads);
the ``browser`` fixture makes sure of it. When a test fails, a screenshot of the page the
browser shows is saved as ``failure.png`` in the test's temp dir (printed in the report).
"""

from __future__ import annotations

import re
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest
from starlette.testclient import TestClient

from listserv.core.app import App
from listserv.web import create_app
from tests.integration.harness import harness, sink  # noqa: F401
from tests.waiting import wait_until

BASE_URL = "http://testserver"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def web(app: App) -> Iterator[TestClient]:
    """The pages of ``app`` through Starlette's test client (base_url http://testserver)."""
    with TestClient(create_app(app, base_url=BASE_URL), base_url=BASE_URL,
                    raise_server_exceptions=False, follow_redirects=False) as client:
        yield client


# ---------------------------------------------------------------------------- browser tests

def have_browser() -> bool:
    return Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()


@dataclass
class Live:
    """A running `listserv serve` (``site``: tests.acceptance.conftest.Site) and the base URL
    of its web pages."""

    site: Any
    base: str

    def run(self, *args: str) -> str:
        return str(self.site.run(*args))


def answer(url: str) -> str:
    """What a GET of ``url`` got: "HTTP <status>", or the error."""
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return f"HTTP {r.status}"
    except OSError as exc:
        return repr(exc)


def answers(url: str) -> bool:
    return answer(url) == "HTTP 200"


def serve_with_web(site: Any) -> str:
    """Give ``site`` (tests.acceptance.conftest.Site) web pages on a free port, start its
    `listserv serve` and wait until the directory page answers 200; return the base URL.
    When it does not, the failure says what the page answered last and what the daemon
    logged."""
    site.use_web_port()
    site.serve()
    base = str(site.base_url)
    last: list[str] = ["nothing yet"]

    def ready() -> bool:
        last[0] = answer(base + "/")
        return last[0] == "HTTP 200"
    try:
        wait_until(ready, 30, "the web pages to answer")
    except AssertionError as exc:
        alive = site.proc is not None and site.proc.poll() is None
        raise AssertionError(
            f"{exc}; last answer: {last[0]}; serve "
            f"{'running' if alive else 'exited'}; its log:\n{site.log.read_text()[-4000:]}"
        ) from None
    return base


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One `listserv serve` per test module, web pages on a free port, mail to its own sink."""
    from tests.acceptance.conftest import make_site
    from tests.sink import SmtpSink

    with SmtpSink() as sink_:
        for site in make_site(tmp_path_factory.mktemp("live"), sink_):
            yield Live(site, serve_with_web(site))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless chromium (phone-sized window) through Debian's chromedriver."""
    if not have_browser():
        pytest.fail("chromium and chromedriver are not installed "
                    "(apt install chromium chromium-driver): the browser tests need them")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.selenium_manager import SeleniumManager

    def no_manager(*args: Any, **kw: Any) -> Any:
        raise AssertionError("Selenium Manager must not run (it downloads drivers)")

    monkeypatch.setattr(SeleniumManager, "binary_paths", no_manager)
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=420,900", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        if request.node.stash.get(_FAILED, False):
            shot = tmp_path / "failure.png"
            try:
                driver.save_screenshot(str(shot))
                print(f"screenshot of the failing page: {shot}")
            except Exception:  # noqa: BLE001 - the browser itself may be gone
                pass
        driver.quit()


def assert_no_script(driver: Any) -> None:
    """No script element and no event-handler attribute in the page the browser has."""
    from selenium.webdriver.common.by import By

    assert driver.find_elements(By.TAG_NAME, "script") == []
    assert not re.search(r"<[^>]+\son[a-z]+\s*=", driver.page_source)


def press(driver: Any, element: Any, timeout: float = 30) -> None:
    """Click ``element`` (a WebElement, or the id of one) and wait until the browser shows the
    next page, so that later lookups never find an element of the page being left."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from selenium.common.exceptions import WebDriverException

    page = driver.find_element(By.TAG_NAME, "html")
    if isinstance(element, str):
        element = driver.find_element(By.ID, element)
    element.click()
    # mid-navigation chromedriver may answer "node does not belong to the document": ask again
    wait = WebDriverWait(driver, timeout, ignored_exceptions=(WebDriverException,))
    wait.until(expected_conditions.staleness_of(page))
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
