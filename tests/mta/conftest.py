"""The MTA front door: a private Postfix (deploy/postfix as shipped) in front of a real
``listserv serve`` (deploy/listserv.toml as shipped) over LMTP; listserv's mail goes back
through Postfix's listener to the "world", Postfix's ``smtp-sink`` on loopback.

    client --SMTP--> Postfix public smtpd --LMTP--> listserv serve --SMTP--> Postfix listener
                                                                                   |
          world smtp-sink (dumps each transaction)  <--SMTP-- Postfix smtp <--------+
          gone.example smtp-sink (refuses every RCPT: Postfix bounces, DSN to listserv)

One instance serves the whole module (starting Postfix and listserv takes seconds); each test
uses subjects of its own. Skipped when Postfix is not installed (.ci/run installs it).
"""

from __future__ import annotations

import email
import json
import os
import re
import shutil
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.acceptance.conftest import _database, clean_env
from tests.mta.postfix import LIST_DOMAIN, PrivatePostfix, SmtpSink, have_postfix, open_path
from tests.waiting import free_port, until_listening

REPO = Path(__file__).resolve().parents[2]
LIST = f"dev@{LIST_DOMAIN}"
MEMBERS = ["ann@a.example", "bob@b.example", "cy@c.example", "gone@gone.example"]
OWNER = "owner@o.example"
MODERATOR = "mod@m.example"
SELECTOR = "s1"
OUTSIDE = "192.0.2.7"           # XCLIENT: a client outside mynetworks

# These tests need Postfix (`apt install postfix`, as .ci/run does): without it they fail.
@pytest.fixture(scope="session", autouse=True)
def _postfix_installed() -> None:
    if not have_postfix():
        pytest.fail("Postfix is not installed (apt install postfix): tests/mta need it")


class Dump:
    """One transaction as smtp-sink dumped it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        raw = path.read_bytes()
        self.raw = raw
        env, _, rest = raw.partition(b"\nReceived: from ")
        self.mail_from = _arg(env, b"X-Mail-Args")
        self.rcpts = [_arg(line, b"X-Rcpt-Args") for line in env.split(b"\n")
                      if line.startswith(b"X-Rcpt-Args:")]
        # the message as Postfix sent it: smtp-sink's own Received: line dropped, CRLF
        body = rest.partition(b"\n")[2]
        while body[:1] in (b"\t", b" "):
            body = body.partition(b"\n")[2]
        self.data = body.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=policy.default)  # type: ignore

    @property
    def subject(self) -> str:
        return str(self.message.get("subject", ""))


def _arg(env: bytes, name: bytes) -> str:
    m = re.search(rb"^" + name + rb": <([^>]*)>", env, re.M)
    return m.group(1).decode() if m else ""


class Front:
    def __init__(self, root: Path, database_url: str) -> None:
        self.root = root
        self.ports = {k: free_port()
                      for k in ("public", "outbound", "lmtp", "world", "gone", "web")}
        # the web part (not in deploy/listserv.toml) on a free port too, not on 8080
        self.env = clean_env(LISTSERV_WEB_LISTEN=f"127.0.0.1:{self.ports['web']}")
        self.world = SmtpSink(root / "world", self.ports["world"])
        self.gone = SmtpSink(root / "gone", self.ports["gone"],
                             ["-f", "RCPT", "-B", "550 5.1.1 No such user here"])
        self.postfix = PrivatePostfix(
            root / "postfix", public_port=self.ports["public"],
            outbound_port=self.ports["outbound"], lmtp_port=self.ports["lmtp"],
            world_port=self.ports["world"],
            extra_transport=f"# the test world\ngone.example   smtp:[127.0.0.1]:{self.ports['gone']}\n")
        self.config = root / "listserv.toml"
        self.config.write_text(self.listserv_toml(database_url))
        self.log = root / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.txt: str = ""

    def listserv_toml(self, database_url: str) -> str:
        """deploy/listserv.toml with only paths, ports and the database URL substituted."""
        text = (REPO / "deploy" / "listserv.toml").read_text()
        subs = [(r'^data_dir = "[^"]*"', f'data_dir = "{self.root / "listserv"}"'),
                (r'^url = "[^"]*"', f'url = "{database_url}"'),
                (r"^port = 8024$", f"port = {self.ports['lmtp']}"),
                (r'"smtp://127\.0\.0\.1:10025"', f'"smtp://127.0.0.1:{self.ports["outbound"]}"')]
        for pattern, repl in subs:
            text, n = re.subn(pattern, repl, text, count=1, flags=re.M)
            assert n == 1, f"deploy/listserv.toml: no {pattern}"
        return text

    # -- listserv ------------------------------------------------------------------------
    def cli(self, *args: str) -> str:
        p = subprocess.run([sys.executable, "-m", "listserv", "--config", str(self.config),
                            *args], capture_output=True, text=True, env=self.env,
                           cwd=REPO, timeout=60)
        assert p.returncode == 0, f"listserv {args}: {p.returncode}\n{p.stderr}"
        return p.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json"))

    def serve(self) -> None:
        """Start `listserv serve`; wait until it logs that its intake listens on its port
        (proof that the process listening there is this one)."""
        start = self.log.stat().st_size if self.log.exists() else 0
        out = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "listserv", "-v", "--config", str(self.config), "serve"],
            stdout=out, stderr=out, env=self.env, cwd=REPO)
        out.close()
        logged = until_listening(self.proc, self.log, start, self.ports["lmtp"])
        assert self.proc.poll() is None, logged

    def stop_listserv(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc = None

    # -- mail ----------------------------------------------------------------------------
    def client(self, outside: bool = False) -> smtplib.SMTP:
        """An SMTP session with the public smtpd, from 127.0.0.1 (mynetworks) or, with
        ``outside``, as a client outside mynetworks (XCLIENT, allowed for the test host)."""
        c = smtplib.SMTP("127.0.0.1", self.ports["public"], timeout=60)
        c.ehlo("client.test.example")
        if outside:
            code, text = c.docmd("XCLIENT", f"ADDR={OUTSIDE} NAME=[UNAVAILABLE]")
            assert code == 220, (code, text)
            c.ehlo("client.outside.example")
        return c

    def rcpt(self, address: str, outside: bool = False) -> tuple[int, str]:
        """The public smtpd's answer to RCPT TO:<address>."""
        with self.client(outside) as c:
            code, _ = c.mail("someone@elsewhere.example")
            assert code == 250
            code, text = c.rcpt(address)
            c.rset()
            return code, text.decode()

    def send(self, rcpts: str | list[str], data: bytes, mail_from: str,
             outside: bool = False) -> dict[str, Any]:
        with self.client(outside) as c:
            return c.sendmail(mail_from, [rcpts] if isinstance(rcpts, str) else rcpts, data)

    def dumps(self) -> list[Dump]:
        return [Dump(p) for p in self.world.files()]

    def copies(self, subject: str) -> dict[str, Dump]:
        """The world's copies whose Subject contains ``subject``, by recipient."""
        out: dict[str, Dump] = {}
        for p in self.world.files():
            head = p.read_bytes()[:20000]
            if subject.encode() not in head:
                continue
            d = Dump(p)
            for r in d.rcpts:
                out[r] = d
        return out

    def diagnostics(self) -> str:
        log = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- maillog\n{self.postfix.maillog()[-6000:]}\n--- serve.log\n{log[-4000:]}"


@pytest.fixture(scope="module")
def front() -> Iterator[Front]:
    # Not under pytest's basetemp: pytest keeps /tmp/pytest-of-USER at mode 0700 (and resets
    # it when any other session starts), but Postfix's daemons, running as the postfix user,
    # open its maps, logs and data files by absolute path.
    root = Path(tempfile.mkdtemp(prefix="listserv-mta-"))
    open_path(root)
    try:
        yield from _front(root)
    finally:
        if not os.environ.get("LISTSERV_TEST_KEEP_MTA"):   # keep it to read the logs
            shutil.rmtree(root, ignore_errors=True)


def _front(root: Path) -> Iterator[Front]:
    for url in _database(root):
        f = Front(root, url)
        try:
            f.cli("init")
            out = f.cli("domain", "dkim-keygen", LIST_DOMAIN, "--selector", SELECTOR)
            f.txt = _txt_record(out)
            f.cli("list", "create", LIST, "--owner", OWNER, "--moderator", MODERATOR)
            f.cli("member", "add", LIST, *MEMBERS)
            f.serve()
            f.postfix.start()
            f.started = time.monotonic()  # type: ignore[attr-defined]
            yield f
        finally:
            try:
                f.stop_listserv()
            finally:
                f.postfix.stop()
                f.world.stop()
                f.gone.stop()


def _txt_record(out: str) -> str:
    """The TXT value printed by ``listserv domain dkim-keygen`` (quoted strings joined)."""
    value = out[out.index("v=DKIM1"):] if "v=DKIM1" in out else out
    parts = re.findall(r'"([^"]*)"', value)
    text = "".join(parts) if parts else value.split("\n")[0]
    assert "v=DKIM1" in text and "p=" in text, out
    return text.strip()
