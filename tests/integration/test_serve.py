"""`listserv serve` as a real subprocess: first run, posting end to end, SIGTERM, kill -9."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import gc
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, insert, select

from listserv.core import lists
from listserv.core.app import App
from listserv.intake import journal
from listserv import daemon as daemon_mod
from listserv.daemon import delivery_runner
from listserv.core.models import (
    Address,
    Delivery,
    InboundMessage,
    InboundState,
    Membership,
    OutboundMessage,
    Role,
)
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import SmtpSink
from tests.waiting import free_port, start_daemon, wait_until

LIST = "dev@example.org"




class Server:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
        self.env = {**base, **env, "LISTSERV_INTAKE_PORT": str(port)}
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "Server":
        def start(port: int) -> subprocess.Popen[bytes]:
            self.port = port
            self.env["LISTSERV_INTAKE_PORT"] = str(port)
            with open(self.log, "ab") as out:
                return subprocess.Popen([sys.executable, "-m", "listserv", "-v", "serve"],
                                        env=self.env, stdout=out, stderr=out)
        self.proc, _ = start_daemon(start, self.log, self.port)
        return self

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def server_env(cli_env: dict[str, str], sink: SmtpSink) -> Iterator[dict[str, str]]:
    yield {**cli_env, "LISTSERV_DELIVERY_OUTBOUND": sink.url}


def count(app: App, *where) -> int:  # type: ignore[no-untyped-def]
    with app.db.unit_of_work() as s:
        return s.scalar(select(func.count()).select_from(InboundMessage).where(*where)) or 0


def test_serve_posts_end_to_end_and_stops_on_sigterm(app: App, sink: SmtpSink,
                                                      server_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    make_list(app, LIST, members=["ann@a.example", "bob@b.example"])
    srv = Server(server_env, free_port(), tmp_path / "serve.log").start()
    try:
        with smtplib.SMTP("127.0.0.1", srv.port) as c:
            c.sendmail("ann@a.example", [LIST],
                       make_message("ann@a.example", LIST, "live").as_bytes())
        wait_until(lambda: count(app, InboundMessage.state == InboundState.accepted) == 1,
                   20, "the post to be accepted")
        if delivery_runner() is not None:
            got = sink.wait_for(lambda m: len({r for x in m for r in x.rcpt_tos}) >= 2, 20)
            assert sorted({r for m in got for r in m.rcpt_tos}) == ["ann@a.example",
                                                                    "bob@b.example"]
            assert got[0].message["Subject"] == "[dev] live"
        else:
            with app.db.unit_of_work() as s:
                assert s.scalar(select(func.sum(Delivery.count))) == 2
    finally:
        rc = srv.terminate()
    assert rc == 0, (tmp_path / "serve.log").read_text()
    assert "stopped" in (tmp_path / "serve.log").read_text()


def test_serve_initialises_a_fresh_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    env = {"LISTSERV_DATA_DIR": str(data)}
    srv = Server(env, free_port(), tmp_path / "serve.log").start()
    assert srv.terminate() == 0
    assert (data / "listserv.db").exists()
    # and it can immediately be used by the other commands
    out = subprocess.run([sys.executable, "-m", "listserv", "list", "create", LIST],
                         env=srv.env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_a_busy_intake_port_is_one_line(cli_env: dict[str, str]) -> None:
    """Another process listens on the intake's port: serve exits 1 with one line naming
    the address; its web pages never start."""
    web_port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        base = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
        env = {**base, **cli_env, "LISTSERV_INTAKE_PORT": str(port),
               "LISTSERV_WEB_LISTEN": f"127.0.0.1:{web_port}"}
        p = subprocess.run([sys.executable, "-m", "listserv", "serve"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert f"intake 127.0.0.1:{port}: cannot listen" in lines[0], lines[0]
    assert "in use" in lines[0].lower()


def test_the_harness_moves_a_daemon_whose_port_was_taken(tmp_path: Path) -> None:
    """start_daemon: a port another process took after it was found free (here: held from
    the start) makes the daemon exit "already in use"; it starts again on a new port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        srv = Server({"LISTSERV_DATA_DIR": str(tmp_path / "data")}, taken,
                     tmp_path / "serve.log").start()
    try:
        assert srv.port != taken
        assert "already in use" in (tmp_path / "serve.log").read_text()
        with smtplib.SMTP("127.0.0.1", srv.port) as c:
            assert c.noop()[0] == 250
    finally:
        assert srv.terminate() == 0


def test_kill_9_loses_nothing_accepted(app: App, cli_env: dict[str, str],
                                       tmp_path: Path) -> None:
    # outbound to a closed port: deliveries just wait for a retry (this test is about intake)
    server_env = {**cli_env, "LISTSERV_DELIVERY_OUTBOUND": f"smtp://127.0.0.1:{free_port()}",
                  # the restart takes the dead process's jobs over when their leases expire
                  "LISTSERV_DATABASE_LEASE_SECONDS": "8"}
    list_id = make_list(app, LIST, sender_post_limit=0)    # 30 posts from one member
    with app.db.unit_of_work() as s:        # a list big enough that fan-out takes a while
        s.execute(insert(Address), [{"email": f"m{i}@x{i % 50}.example", "display_name": ""}
                                    for i in range(6000)])
        ids = s.scalars(select(Address.id).where(Address.email.like("m%@x%"))).all()
        s.execute(insert(Membership), [{"list_id": list_id, "address_id": a,
                                        "role": Role.member} for a in ids])
    srv = Server(server_env, free_port(), tmp_path / "serve.log").start()
    sent = 0
    try:
        with smtplib.SMTP("127.0.0.1", srv.port) as c:
            for i in range(30):
                c.sendmail("m1@x1.example", [LIST],
                           make_message("m1@x1.example", LIST, f"post {i}").as_bytes())
                sent += 1
        wait_until(lambda: count(app, InboundMessage.state == InboundState.accepted) >= 1,
                   30, "processing to start")
    finally:
        srv.kill()                                          # kill -9 mid-processing
    # every 250 was durable: in the database, or on SQLite still in the intake's journal
    assert count(app) + (journal.waiting(app) or 0) == sent
    left = count(app, InboundMessage.state.in_([InboundState.new, InboundState.processing]))
    # a graceful stop (SIGTERM) mid-processing finishes or gives back what it holds
    srv2 = Server(server_env, srv.port, tmp_path / "serve2.log").start()
    done = count(app, InboundMessage.state == InboundState.accepted)
    wait_until(lambda: count(app, InboundMessage.state == InboundState.accepted) > done,
               30, "processing to resume")
    assert srv2.terminate() == 0
    assert count(app, InboundMessage.state == InboundState.processing) == 0
    srv2 = Server(server_env, srv.port, tmp_path / "serve3.log").start()
    try:
        wait_until(lambda: count(app, InboundMessage.state == InboundState.accepted) == sent,
                   60, "every accepted message to be processed after restart")
    finally:
        assert srv2.terminate() == 0
    with app.db.unit_of_work() as s:
        posts = s.scalar(select(func.count()).select_from(OutboundMessage).where(
            OutboundMessage.kind == "post"))
        ml = lists.get_list(s, LIST)
        assert posts == sent and ml.post_id == sent          # each exactly once
    assert left > 0, "the kill came too late to test anything"


def test_the_daemon_calls_on_ready_once_listening_and_freeze_heap_freezes(
        app: App, sink: SmtpSink) -> None:
    """`serve` hides the objects alive at startup from the cycle collector (freeze_heap, as
    the daemon's on_ready): a full collection then walks only what came after."""
    h = Harness(app, sink, background=False)
    seen: list[tuple[int | None, int]] = []

    def on_ready() -> None:
        before = gc.get_freeze_count()
        daemon_mod.freeze_heap()
        seen.append((h.daemon.bound_port, gc.get_freeze_count() - before))

    h.daemon.on_ready = on_ready
    h.start()
    try:
        [(port, frozen)] = seen
        assert port == h.port and frozen > 10_000
    finally:
        h.stop()
        gc.unfreeze()
