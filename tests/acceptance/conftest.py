"""Acceptance harness: listserv driven from outside, as a new user would.

A ``Site`` is a data directory with one TOML config (intake on a free 127.0.0.1 port, outbound
to a real ``SmtpSink``), initialised with ``listserv init``. ``site.serve()`` starts
``python -m listserv serve`` as a subprocess; mail goes in with smtplib and is read back from
the sink. The database is a fresh SQLite file, or a fresh PostgreSQL database when
LISTSERV_TEST_DATABASE_URL is set.

``site.cli(...)`` runs the real command in a subprocess (exit codes, stderr, no traceback);
``site.run(...)`` runs the same click command in-process, for the many setup steps where the
process boundary adds nothing but half a second each.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from email import policy
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from listserv.cli import cli as click_cli
from tests.conftest import PG_URL, _pg_admin_url, pg_database_name
from tests.sink import Captured, SmtpSink
from tests.waiting import free_port, start_daemon, wait_until


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.5):
            return True
    except OSError:
        return False




REPO = Path(__file__).resolve().parents[2]


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any LISTSERV_* setting (a new user's shell). The
    repository under test comes first on PYTHONPATH, so that ``python -m listserv`` run from
    another directory runs this checkout, not whichever one is installed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def message(frm: str, to: str, subject: str, body: str | None = None,
            **headers: str) -> bytes:
    """A post as a mail client would send it (CRLF line ends)."""
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, subject
    m["Date"] = formatdate()
    m["Message-ID"] = make_msgid(domain="client.example")
    for name, value in headers.items():
        m[name.replace("_", "-")] = value
    m.set_content(body if body is not None else f"Hello list.\n\n{m['Message-ID']}\n")
    return m.as_bytes(policy=policy.SMTP)


class Site:
    def __init__(self, root: Path, sink: SmtpSink, database_url: str, extra: str = "", *,
                 lease_seconds: float | None = None) -> None:
        self.root = root
        self.sink = sink
        self.sqlite = database_url.startswith("sqlite")
        self.port = free_port()
        self.config = root / "listserv.toml"
        self.config.write_text(
            f'data_dir = "{root / "data"}"\n'
            f'[database]\nurl = "{database_url}"\n'
            + (f"lease_seconds = {lease_seconds}\n" if lease_seconds else "") +
            f'[intake]\nport = {self.port}\n'
            f'[web]\nlisten = "127.0.0.1:0"\n'
            f'[delivery]\noutbound = "{sink.url}"\nretry_schedule = [1]\n' + extra)
        self.web_port: int | None = None      # see use_web_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / "serve.log"
        self.runner = CliRunner()

    # -- the command line ------------------------------------------------------------
    def cli(self, *args: str, code: int | None = 0) -> subprocess.CompletedProcess[str]:
        """``listserv --config ... ARGS`` in a subprocess."""
        p = subprocess.run([sys.executable, "-m", "listserv", "--config", str(self.config),
                            *args], capture_output=True, text=True, env=clean_env(),
                           timeout=60)
        if code is not None:
            assert p.returncode == code, f"listserv {args}: {p.returncode}\n{p.stderr}"
        return p

    def run(self, *args: str, code: int = 0) -> str:
        """The same command in-process; returns stdout."""
        r = self.runner.invoke(click_cli, ["--config", str(self.config), *args],
                               catch_exceptions=False)
        assert r.exit_code == code, f"listserv {args}: {r.exit_code}\n{r.stderr}"
        return r.stdout

    def refused(self, *args: str, naming: str = "") -> str:
        """In-process: a refused command exits 1 with one stderr line (naming ``naming``)."""
        r = self.runner.invoke(click_cli, ["--config", str(self.config), *args],
                               catch_exceptions=False)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1, (args, r.exit_code, r.stderr)
        assert naming in lines[0], (naming, lines[0])
        return lines[0]

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json"))

    # -- the daemon ------------------------------------------------------------------
    def serve(self, *flags: str) -> "Site":
        """Start `listserv serve FLAGS` and wait until it logs that its intake listens on
        this site's port; when another process took one of the site's ports since it was
        found free, the site moves to new free ports and starts again (start_daemon)."""
        def start(port: int) -> subprocess.Popen[bytes]:
            if port != self.port:
                self.move_ports(port)
            return self.start_serve(*flags)
        self.proc, _ = start_daemon(start, self.log, self.port)
        return self

    def move_ports(self, port: int) -> None:
        """Give the intake ``port`` (and the web pages, when they have a port of their own,
        a new free one)."""
        text = self.config.read_text()
        old, self.port = self.port, port
        text = text.replace(f"[intake]\nport = {old}\n", f"[intake]\nport = {self.port}\n")
        if self.web_port is not None:
            old, self.web_port = self.web_port, free_port()
            text = text.replace(f"127.0.0.1:{old}", f"127.0.0.1:{self.web_port}")
        self.config.write_text(text)

    def use_web_port(self) -> None:
        """Web pages on a port of their own (base_url: that port), not on port 0."""
        self.web_port = port = free_port()
        self.config.write_text(self.config.read_text().replace(
            'listen = "127.0.0.1:0"',
            f'listen = "127.0.0.1:{port}"\nbase_url = "http://127.0.0.1:{port}"'))

    @property
    def base_url(self) -> str:
        assert self.web_port is not None, "use_web_port() first"
        return f"http://127.0.0.1:{self.web_port}"

    def start_serve(self, *flags: str) -> subprocess.Popen[bytes]:
        """Start `listserv serve FLAGS` (logging to serve.log) without waiting for it."""
        out = open(self.log, "ab")
        try:
            return subprocess.Popen(       # -v: serve.log says where it listens, and more
                [sys.executable, "-m", "listserv", "-v", "--config", str(self.config),
                 "serve", *flags], stdout=out, stderr=out, env=clean_env())
        finally:
            out.close()

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self.proc = None
        return rc

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    # -- mail ------------------------------------------------------------------------
    def send(self, rcpts: str | list[str], data: bytes, mail_from: str | None = None) -> Any:
        """One SMTP transaction to the intake; the envelope sender defaults to From."""
        if mail_from is None:
            from email import message_from_bytes
            from email.utils import parseaddr
            mail_from = parseaddr(str(message_from_bytes(data)["From"]))[1]
        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as c:
            return c.sendmail(mail_from, [rcpts] if isinstance(rcpts, str) else rcpts, data)

    def mail_to(self, rcpt: str, n: int = 1, timeout: float = 20.0) -> list[Captured]:
        """Wait until ``rcpt`` got at least ``n`` messages; return them all."""
        got = self.sink.wait_for(lambda ms: len([m for m in ms if rcpt in m.rcpt_tos]) >= n,
                                 timeout)
        return [m for m in got if rcpt in m.rcpt_tos]

    def count_to(self, rcpt: str) -> int:
        return sum(1 for m in list(self.sink.messages) if rcpt in m.rcpt_tos)

    def quiet(self, settle: float = 0.5) -> None:
        """Let the daemon finish what it is doing: both queues empty, then ``settle`` more
        seconds without a new outbound message (used before asserting that nothing came)."""
        def idle() -> bool:
            q = self.json("queue", "status")
            out, inc = q["outbound"], q["incoming"]
            return not (out["pending"]["recipients"] or out["in_flight"]["recipients"]
                        or inc["new"] or inc["processing"])
        wait_until(idle, 20, "the queues to drain")
        seen = {"n": len(self.sink.messages), "since": time.monotonic()}

        def settled() -> bool:
            n = len(self.sink.messages)
            if n != seen["n"]:
                seen.update(n=n, since=time.monotonic())
            return time.monotonic() - seen["since"] >= settle
        wait_until(settled, 60, f"{settle} s without a new outbound message", interval=0.05)


def _database(root: Path) -> Iterator[str]:
    if not PG_URL:
        yield f"sqlite:///{root / 'data' / 'listserv.db'}"
        return
    admin = create_engine(_pg_admin_url(), isolation_level="AUTOCOMMIT")
    name = pg_database_name("acc")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_URL.rpartition("/")[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def make_site(root: Path, sink: SmtpSink, extra: str = "", *,
              lease_seconds: float | None = None) -> Iterator[Site]:
    """An initialised Site on a fresh database (``lease_seconds``: [database] lease_seconds,
    for tests that wait for a killed process's leases to expire)."""
    for url in _database(root):
        site = Site(root, sink, url, extra, lease_seconds=lease_seconds)
        site.cli("init")
        try:
            yield site
        finally:
            if site.proc is not None:
                site.proc.kill()
                site.proc.wait(10)


@pytest.fixture(scope="session")
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, sink: SmtpSink) -> Iterator[Site]:
    """One initialised site with ``listserv serve`` running, shared by the acceptance tests
    (each uses lists and addresses of its own)."""
    for s in make_site(tmp_path_factory.mktemp("site"), sink):
        s.serve()
        yield s
