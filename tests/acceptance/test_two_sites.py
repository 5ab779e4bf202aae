"""Two listserv sites including each other's lists: two `serve` processes with their own
databases, mail between them over loopback SMTP through a small router (as the Internet's
MTAs would), one post, no loop, each person once per site."""

from __future__ import annotations

import smtplib
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.acceptance.conftest import Site, make_site, message
from tests.sink import Captured, SmtpSink
from tests.waiting import wait_until


class Router(SmtpSink):
    """Records every message; forwards the recipients of a routed domain to that site's
    intake (keeping the envelope sender), as an MTA relaying between two sites would."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, int] = {}
        self.errors: list[str] = []

    def _record(self, captured: Captured) -> None:
        super()._record(captured)
        for domain, port in self.routes.items():
            rcpts = [r for r in captured.rcpt_tos if r.lower().endswith("@" + domain)]
            if rcpts:
                threading.Thread(target=self._forward, args=(port, captured, rcpts),
                                 daemon=True).start()

    def _forward(self, port: int, captured: Captured, rcpts: list[str]) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.sendmail(captured.mail_from, rcpts, captured.data)
        except (OSError, smtplib.SMTPException) as exc:
            self.errors.append(f"{rcpts}: {exc}")


@pytest.fixture
def router() -> Iterator[Router]:
    with Router() as r:
        yield r


def copies_to(router: Router, rcpt: str) -> list[Captured]:
    return [m for m in list(router.messages) if rcpt in m.rcpt_tos]


def test_two_sites_include_each_other(tmp_path: Path, router: Router) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for a in make_site(tmp_path / "a", router):
        for b in make_site(tmp_path / "b", router):
            router.routes = {"a.example": a.port, "b.example": b.port}
            a.run("list", "create", "net@a.example")
            a.run("member", "add", "net@a.example", "ann@people.example",
                  "both@people.example")
            b.run("list", "create", "net@b.example")
            b.run("member", "add", "net@b.example", "bob@people.example",
                  "both@people.example")
            assert "now includes net@b.example" in a.run("list", "include", "net@a.example",
                                                         "net@b.example")
            b.run("list", "include", "net@b.example", "net@a.example")
            [tree] = b.json("list", "tree", "net@b.example")
            assert tree["includes"][0]["remote"] is True
            a.serve()
            b.serve()          # (serve() moves a site whose free port was taken meanwhile)
            router.routes = {"a.example": a.port, "b.example": b.port}

            a.send("net@a.example", message("ann@people.example", "net@a.example",
                                            "Across the network"))
            # site A: ann, both, and one copy to site B's list; site B: bob and both
            wait_until(lambda: len(copies_to(router, "bob@people.example")) >= 1, 30,
                       "site B to distribute the post")
            wait_until(lambda: len(copies_to(router, "both@people.example")) >= 2, 30,
                       "both sites to reach both@")
            a.quiet()
            b.quiet()
            assert router.errors == []
            assert len(copies_to(router, "ann@people.example")) == 1
            assert len(copies_to(router, "bob@people.example")) == 1
            # once per site: the sites cannot know each other's members
            both = copies_to(router, "both@people.example")
            assert sorted(m.mail_from.split("@")[1] for m in both) == ["a.example",
                                                                        "b.example"]
            assert len(copies_to(router, "net@b.example")) == 1
            assert copies_to(router, "net@a.example") == []   # not sent back where it came
            [from_b] = copies_to(router, "bob@people.example")
            ids = from_b.message.get_all("List-Id")
            assert [v.split("<")[1].rstrip(">") for v in ids] == ["net.b.example",
                                                                  "net.a.example"]
            assert from_b.message["Subject"].count("[net]") == 1

            # a copy that comes back to site A anyway carries A's List-Id: a loop, dropped
            before = len(router.messages)
            a.send("net@a.example", from_b.data, mail_from=from_b.mail_from)
            a.quiet()
            assert len(router.messages) == before
            assert "dropped a looping message" in (tmp_path / "a" / "serve.log").read_text()
            a.stop()
            b.stop()
