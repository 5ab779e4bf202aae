"""The web foundation: security headers, error pages, CSRF, rate limits, overrides, config,
and the pages served over real HTTP by `listserv serve` and `listserv web`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from listserv.core import config
from listserv.core.app import App
from listserv.core.errors import ConfigError
from listserv.web import create_app, pages, security
from listserv.web.application import page_routes
from tests.waiting import free_port, start_daemon, wait_until
from tests.web.conftest import BASE_URL

SECURITY = {
    "content-security-policy": "default-src 'self'; script-src 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}


def assert_secure(headers: object) -> None:
    for name, start in SECURITY.items():
        value = headers.get(name)  # type: ignore[attr-defined]
        assert value and value.startswith(start), (name, value)
    assert "unsafe-inline" not in headers.get("content-security-policy")  # type: ignore[attr-defined]


def test_pages_carry_the_security_headers(web: TestClient) -> None:
    for path in ("/", "/static/style.css", "/no/such/page"):
        r = web.get(path)
        assert_secure(r.headers)
    r = web.get("/")
    assert r.status_code == 200 and "<script" not in r.text
    assert r.headers["cache-control"] == "no-store"
    css = web.get("/static/style.css")
    assert css.headers["content-type"].startswith("text/css")
    assert web.get("/static/style.css",
                   headers={"If-None-Match": css.headers["etag"]}).status_code == 304


def test_errors_are_pages_without_a_traceback(app: App) -> None:
    def boom(request: Request) -> Response:
        raise RuntimeError("secret internals /etc/passwd")

    routes = [*page_routes(), Route("/boom", boom)]
    with TestClient(create_app(app, base_url=BASE_URL, routes=routes),
                    raise_server_exceptions=False) as client:
        r = client.get("/boom")
        assert r.status_code == 500
        assert "Something went wrong" in r.text
        assert "Traceback" not in r.text and "secret internals" not in r.text
        assert_secure(r.headers)
        r = client.get("/missing")
        assert r.status_code == 404 and "no page at this address" in r.text
        assert client.post("/").status_code == 405


def test_base_url_with_a_path_mounts_the_pages_there(app: App) -> None:
    with TestClient(create_app(app, base_url="https://example.org/lists/")) as client:
        r = client.get("/lists/")
        assert r.status_code == 200
        assert 'href="/lists/static/style.css"' in r.text
        assert client.get("/lists/static/style.css").status_code == 200
        assert client.get("/").status_code == 404


def test_a_site_can_override_page_templates_and_the_stylesheet(app: App,
                                                               web: TestClient) -> None:
    site = Path(app.settings.data_dir) / "templates" / "site" / "web"
    site.mkdir(parents=True)
    (site / "style.css").write_text("body { color: rebeccapurple; }\n")
    (site / "index.html.j2").write_text(
        '{% extends "default:web/index.html.j2" %}{% block site_name %}Our {{ "<groups>" }}'
        '{% endblock %}')
    from listserv.core import templating
    templating.environment.cache_clear()
    assert "rebeccapurple" in web.get("/static/style.css").text
    assert "Our &lt;groups&gt;" in web.get("/").text      # autoescaped


def csrf_app(app: App) -> TestClient:
    async def form(request: Request) -> Response:
        data = await pages.read_form(request)
        pages.check_csrf(request, data, request.path_params["token"])
        return PlainTextResponse("done")

    def show(request: Request) -> Response:
        return PlainTextResponse(security.csrf_token(pages.web(request).secret,
                                                     request.path_params["token"]))

    routes = [Route("/t/{token}", show), Route("/t/{token}", form, methods=["POST"])]
    return TestClient(create_app(app, base_url=BASE_URL, routes=routes),
                      raise_server_exceptions=False)


def test_csrf_token_is_tied_to_the_page_and_same_site(app: App) -> None:
    with csrf_app(app) as client:
        token = client.get("/t/abc").text
        assert client.post("/t/abc", data={"csrf": token}).text == "done"
        # another page's token, none, a forged one, a cross-site browser POST: refused
        assert client.post("/t/xyz", data={"csrf": token}).status_code == 403
        assert client.post("/t/abc", data={"x": "1"}).status_code == 403
        assert client.post("/t/abc", data={"csrf": token[:-2] + "AA"}).status_code == 403
        assert client.post("/t/abc", data={"csrf": token},
                           headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert client.post("/t/abc", data={"csrf": token},
                           headers={"Origin": "https://evil.example"}).status_code == 403
        # our own page under Referrer-Policy no-referrer sends Origin: null
        assert client.post("/t/abc", data={"csrf": token},
                           headers={"Origin": "null"}).text == "done"
        assert client.post("/t/abc", content=b"x" * 100_000, headers={
            "Content-Type": "application/x-www-form-urlencoded"}).status_code == 413


def test_csrf_tokens_expire() -> None:
    token = security.csrf_token("s3cret", "abc", now=1_000_000)
    assert security.csrf_valid("s3cret", "abc", token, now=1_000_000 + 3600)
    assert not security.csrf_valid("s3cret", "abc", token, now=1_000_000 + 2 * 86400)
    assert not security.csrf_valid("other", "abc", token, now=1_000_000)
    assert not security.csrf_valid("s3cret", "abc", "garbage", now=1_000_000)


def test_rate_limiter_window() -> None:
    t = [0.0]
    lim = security.RateLimiter(2, 10.0, clock=lambda: t[0])
    assert lim.allow("a") and lim.allow("a") and not lim.allow("a")
    assert lim.allow("b")
    t[0] = 10.5
    assert lim.allow("a")


@pytest.mark.parametrize("listen", ["8080", "localhost", "host:port", ":80", "h:70000"])
def test_bad_listen_is_a_config_error(listen: str) -> None:
    with pytest.raises(ConfigError, match="web.listen"):
        config.load(environ={"LISTSERV_WEB_LISTEN": listen})


def test_listen_and_base_url_config() -> None:
    s = config.load(environ={})
    assert (s.web.listen, s.web.base_url) == ("127.0.0.1:8080", "http://127.0.0.1:8080")
    assert config.load(environ={"LISTSERV_WEB_LISTEN": ""}).web.listen == ""
    assert config.parse_listen("[::1]:8081") == ("::1", 8081)
    for bad in ("ftp://x", "example.org", "https://x/?q=1"):
        with pytest.raises(ConfigError, match="web.base_url"):
            config.load(environ={"LISTSERV_WEB_BASE_URL": bad})


# -- over real HTTP -------------------------------------------------------------------------

def fetch(url: str) -> tuple[int, dict[str, str], str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read().decode()


def answers(url: str) -> bool:
    try:
        fetch(url)
        return True
    except OSError:
        return False


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "listserv", *args],
                                env={**base, **env}, stdout=out, stderr=out)


def test_serve_answers_http_and_stops_on_sigterm(cli_env: dict[str, str],
                                                 tmp_path: Path) -> None:
    web: list[str] = []
    log = tmp_path / "serve.log"

    def start(smtp_port: int) -> subprocess.Popen[bytes]:
        web[:] = [f"http://127.0.0.1:{free_port()}"]     # a new one at each start
        return spawn(["-v", "serve"], {**cli_env, "LISTSERV_WEB_LISTEN": web[0][7:],
                                       "LISTSERV_WEB_BASE_URL": web[0],
                                       "LISTSERV_INTAKE_PORT": str(smtp_port)}, log)
    # its intake listens once its web pages are up (both bound first)
    proc, smtp_port = start_daemon(start, log)
    url = web[0]
    try:
        wait_until(lambda: answers(url + "/"), 10, "the web pages")
        status, headers, body = fetch(url + "/")
        assert status == 200 and "<h1>" in body
        assert_secure(headers)
        status, headers, body = fetch(url + "/nothing-here")
        assert status == 404 and "Traceback" not in body
        # the mail side runs in the same process
        with socket.create_connection(("127.0.0.1", smtp_port), 5) as s:
            assert s.recv(100).startswith(b"220")
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
    assert rc == 0, log.read_text()
    assert not answers(url + "/")


def test_listen_empty_turns_the_web_off(cli_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "serve.log"

    def start(smtp_port: int) -> subprocess.Popen[bytes]:
        return spawn(["-v", "serve"], {**cli_env, "LISTSERV_WEB_LISTEN": "",
                                       "LISTSERV_INTAKE_PORT": str(smtp_port)}, log)
    proc, _ = start_daemon(start, log)
    try:
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert "web pages on" not in log.read_text()


def test_listserv_web_serves_alone_and_a_busy_port_is_one_line(cli_env: dict[str, str],
                                                               tmp_path: Path) -> None:
    log = tmp_path / "web.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        return spawn(["web", "--listen", f"127.0.0.1:{port}"], cli_env, log)
    proc, port = start_daemon(start, log, what="listserv web",
                              ready=lambda _, port: answers(f"http://127.0.0.1:{port}/"))
    url = f"http://127.0.0.1:{port}"
    try:
        assert fetch(url + "/static/style.css")[0] == 200
        base = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
        busy = subprocess.run([sys.executable, "-m", "listserv", "web", "--listen",
                               f"127.0.0.1:{port}"], env={**base, **cli_env},
                              capture_output=True, text=True, timeout=60)
        assert busy.returncode == 1
        assert busy.stderr.strip().count("\n") == 0 and "web.listen" in busy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
