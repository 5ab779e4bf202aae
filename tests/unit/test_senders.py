"""Sender patterns: one address or a ^regular expression (pure, no database)."""

from __future__ import annotations

import pytest

from listserv.core import senders
from listserv.core.errors import UsageError
from listserv.core.models import Action
from listserv.core.senders import SenderRule


def test_normalise_pattern() -> None:
    assert senders.normalise_pattern(" Ann@Example.ORG ") == "ann@example.org"
    assert senders.normalise_pattern("^.*@Example\\.org$") == "^.*@Example\\.org$"
    with pytest.raises(UsageError, match="regular expression"):
        senders.normalise_pattern("^(unclosed")
    with pytest.raises(UsageError, match="invalid email address"):
        senders.normalise_pattern("not an address")
    with pytest.raises(UsageError):
        senders.normalise_pattern("   ")


def test_matches_is_case_insensitive_and_anchored_at_the_start() -> None:
    assert senders.matches("^.*@example\\.org$", "ann@EXAMPLE.org")
    assert not senders.matches("^.*@example\\.org$", "ann@example.org.evil")
    assert senders.matches("^bot", "bot-7@x.org") and not senders.matches("^bot", "abot@x.org")
    assert senders.matches("ann@x.org", "ann@x.org") and not senders.matches("ann@x.org", "a@x")


def test_action_order_and_first_candidate() -> None:
    rules = [SenderRule("^.*@x\\.org$", Action.discard), SenderRule("ann@x.org", Action.accept),
             SenderRule("^ann", Action.hold)]
    assert senders.action_for(rules, ["ann@x.org"]) == rules[1]          # accept first
    assert senders.action_for(rules, ["bob@x.org"]) == rules[0]
    assert senders.action_for(rules, ["zed@y.org", "ann@y.org"]) == rules[2]
    assert senders.action_for(rules, ["zed@y.org"]) is None
