"""Intake limits on the real SMTP listener of the daemon: sessions, idle clients, recipients,
and an accept loop that reports running out of file descriptors at most once a minute."""

from __future__ import annotations

import logging
import smtplib
import socket
from typing import Iterator

import pytest

from listserv.core.app import App
from tests.integration.harness import Harness, make_list, make_message
from tests.sink import SmtpSink
from tests.waiting import wait_until

LIST = "dev@example.org"


@pytest.fixture
def limited(app: App, sink: SmtpSink) -> Iterator[Harness]:
    h = Harness(app, sink, intake__max_connections=2, intake__idle_timeout=0.5,
                intake__max_recipients_per_message=3).start()
    yield h
    h.stop()


def banner(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def test_sessions_over_max_connections_get_421_and_are_closed(limited: Harness) -> None:
    a = socket.create_connection(("127.0.0.1", limited.port))
    b = socket.create_connection(("127.0.0.1", limited.port))
    try:
        assert banner(a).startswith(b"220") and banner(b).startswith(b"220")
        with socket.create_connection(("127.0.0.1", limited.port)) as c:
            assert banner(c).startswith(b"421 4.7.0")
            c.settimeout(10)
            assert c.recv(1024) == b""                       # closed by the server
    finally:
        a.close()
        b.close()
    handler = limited.daemon.handler
    assert handler is not None
    wait_until(lambda: handler.sessions == 0, what="sessions closed")
    with socket.create_connection(("127.0.0.1", limited.port)) as d:   # room again
        assert banner(d).startswith(b"220")


def test_idle_client_is_dropped(limited: Harness) -> None:
    with socket.create_connection(("127.0.0.1", limited.port)) as s:
        assert banner(s).startswith(b"220")
        s.settimeout(10)
        rest = b""
        while True:     # closed by the server well within 10 s (the default would be 300 s)
            chunk = s.recv(1024)
            if not chunk:
                break
            rest += chunk
        assert rest in (b"",) or rest.startswith(b"421")


def test_recipients_per_transaction_are_capped(limited: Harness) -> None:
    for n in range(4):
        make_list(limited.app, f"l{n}@example.org", members=["a@x.example"],
                  nonmember_action=__import__("listserv.core.models").core.models.Action.accept)
    with smtplib.SMTP("127.0.0.1", limited.port, timeout=10) as client:
        client.ehlo()
        assert client.mail("a@x.example")[0] == 250
        codes = [client.rcpt(f"l{n}@example.org") for n in range(4)]
        assert [c for c, _ in codes] == [250, 250, 250, 452]
        assert codes[3][1].startswith(b"4.5.3")


def test_running_out_of_descriptors_is_logged_once_a_minute(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    loop = harness.daemon.loop
    assert loop is not None
    context = {"message": "socket.accept() out of system resource",
               "exception": OSError(24, "Too many open files")}
    caplog.set_level(logging.ERROR, logger="listserv.daemon")
    for _ in range(50):
        loop.call_soon_threadsafe(loop.call_exception_handler, context)
    done = []
    loop.call_soon_threadsafe(done.append, True)
    wait_until(lambda: done, what="the loop ran the reports")
    lines = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(lines) == 1
    make_list(harness.app, LIST, members=["a@x.example"])
    harness.send(make_message("a@x.example", LIST))          # the intake still works
