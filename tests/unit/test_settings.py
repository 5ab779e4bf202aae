"""The list-setting registry agrees with interface.md and with the model."""

from __future__ import annotations

import pytest

from listserv.core import settings
from listserv.core.errors import UsageError
from listserv.core.models import Action, MailingList

INTERFACE_KEYS = [
    "nonmember_action", "member_action", "emergency", "subscription_policy", "subject_prefix",
    "reply_to", "max_message_size", "dmarc_mitigation", "digest_frequency",
    "digest_size_threshold_kb", "archive", "bounce_score_threshold",
    "bounce_info_stale_after_days", "bounce_warnings", "bounce_warning_interval_days",
]


def test_registry_has_interface_keys_plus_notify() -> None:
    assert list(settings.NAMES) == INTERFACE_KEYS + [
        "notify_poster_on_hold", "administrivia", "arc", "max_recipients",
        "included_members_can_post", "moderation_log", "moderation_log_names",
        "footer_placement", "automatic_action", "sender_headers", "sender_post_limit",
        "display_name", "description", "advertised"]


@pytest.mark.parametrize("s", settings.SETTINGS, ids=lambda s: s.name)
def test_default_matches_model_column(s: settings.Setting) -> None:
    column = MailingList.__table__.c[s.name]
    default = column.default.arg  # type: ignore[union-attr]
    assert settings.format_json(default) == s.default
    assert s.help and s.describe().startswith(s.name)


def test_parse() -> None:
    assert settings.parse("nonmember_action", " Discard ") is Action.discard
    assert settings.parse("Nonmember-Action", "accept") is Action.accept
    assert settings.parse("emergency", "YES") is True
    assert settings.parse("notify_poster_on_hold", "0") is False
    assert settings.parse("bounce_score_threshold", "3") == 3.0
    assert settings.parse("subject_prefix", "  [x] ") == "  [x] "


@pytest.mark.parametrize("key, value", [
    ("member_action", "discard"), ("emergency", ""), ("max_message_size", "1e3"),
    ("bounce_score_threshold", "nan"), ("bounce_score_threshold", "inf"),
    ("subject_prefix", "x" * 256), ("subject_prefix", "a\rb"),
])
def test_parse_refuses(key: str, value: str) -> None:
    with pytest.raises(UsageError, match=key):
        settings.parse(key, value)


def test_unknown_setting_names_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown setting 'colour'.*archive"):
        settings.get("colour")


def test_format_value() -> None:
    assert settings.format_value(Action.hold) == "hold"
    assert settings.format_value(True) == "true"
    assert settings.format_value(5.0) == "5" and settings.format_value(2.5) == "2.5"


@pytest.mark.parametrize("name,text", [
    ("max_message_size", "99999999999999999999999"),     # beyond the database's INTEGER
    ("max_recipients", str(2**31)),
    ("bounce_info_stale_after_days", "1000000000"),      # beyond datetime arithmetic
    ("bounce_warning_interval_days", "36501"),
])
def test_parse_refuses_out_of_range_integers(name: str, text: str) -> None:
    with pytest.raises(UsageError, match=f"for {name}: at most"):
        settings.parse(name, text)
    assert settings.parse(name, "36500") == 36500
