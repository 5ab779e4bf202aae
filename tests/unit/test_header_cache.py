"""The untrusted policy's header objects: a field read again is not parsed again (a post's
way through rules, transforms and decoration reads the same fields dozens of times), long
values are parsed each time (no cache of hostile sizes), and a copied message shares the
policy's registry."""

from __future__ import annotations

import copy
from email import headerregistry
from typing import Any

import pytest

from listserv.message import untrusted
from listserv.message.parse import parse, to_bytes

RAW = (b"From: Ann <ann@a.example>\r\nTo: dev@example.org\r\nSubject: hello\r\n"
       b"Content-Type: text/plain; charset=\"utf-8\"\r\nX-Long: " + b"x" * 3000 + b"\r\n"
       b"\r\nbody\r\n")


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the fields the email package parses from now on."""
    seen: list[str] = []
    made = headerregistry.HeaderRegistry.__call__

    def counting(self: Any, name: str, value: Any) -> Any:
        seen.append(name)
        return made(self, name, value)
    monkeypatch.setattr(headerregistry.HeaderRegistry, "__call__", counting)
    return seen


def test_a_field_read_again_is_parsed_once(parses: list[str]) -> None:
    msg = parse(RAW)
    for _ in range(20):
        assert msg.get_content_type() == "text/plain"
        assert msg["From"].addresses[0].addr_spec == "ann@a.example"
    assert parses.count("Content-Type") <= 1 and parses.count("From") <= 1


def test_long_values_are_parsed_each_time(parses: list[str]) -> None:
    msg = parse(RAW)
    for _ in range(3):
        assert len(str(msg["X-Long"])) == 3000
    assert parses.count("X-Long") == 3


def test_an_equal_field_gives_an_equal_header_in_another_message() -> None:
    one, two = parse(RAW), parse(RAW.replace(b"hello", b"other"))
    assert one["Subject"] == "hello" and two["Subject"] == "other"
    assert one["Content-Type"].params == two["Content-Type"].params == {"charset": "utf-8"}


def test_a_copied_message_shares_the_registry_and_serialises_alike() -> None:
    msg = parse(RAW)
    twin = copy.deepcopy(msg)
    assert twin.policy.header_factory is untrusted.POLICY.header_factory
    twin.replace_header("Subject", "changed")
    assert msg["Subject"] == "hello" and twin["Subject"] == "changed"
    assert to_bytes(twin) == to_bytes(msg).replace(b"Subject: hello", b"Subject: changed")
