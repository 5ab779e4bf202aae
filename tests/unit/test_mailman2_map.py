"""import mailman2's mapping (pure): each Mailman 2.1 attribute the import maps, through every
value it distinguishes (the database test checks one whole list end to end)."""

from __future__ import annotations

from typing import Any

import pytest

from listserv.importers import py2pickle
from listserv.importers.mailman2 import Mm2List, map_list
from listserv.core.models import (
    Action,
    ArchivePolicy,
    DigestFrequency,
    DmarcMitigation,
    ReplyTo,
    SubscriptionPolicy,
)
from tests.mm2fixture import base_config
from tests.mm2pickle import dumps


def mapped(**changes: Any) -> Mm2List:
    """The fixture list with ``changes`` (Python 2 byte-string keys), pickled and read back
    as the import reads it."""
    cfg = base_config()
    for key, value in changes.items():
        cfg[key.encode()] = value
    return map_list(py2pickle.load_config(dumps(cfg)), "dev", "lists.example.org")


def noted(plan: Mm2List, text: str) -> bool:
    return any(text in line for line in plan.not_imported)


def test_defaults_of_the_fixture_note_nothing_they_map() -> None:
    plan = mapped()
    for text in ("reply_goes_to_list", "member_moderation_action", "default_member_moderation",
                 "unsubscribe_policy", "digestable", "digest_is_default",
                 "mime_is_default_digest", "preferred_language", "subject_prefix"):
        assert not noted(plan, text), text


@pytest.mark.parametrize("value, expected", [(0, ReplyTo.poster), (1, ReplyTo.list),
                                             (2, ReplyTo.poster)])
def test_reply_goes_to_list(value: int, expected: ReplyTo) -> None:
    plan = mapped(reply_goes_to_list=value, reply_to_address=b"talk@example.org")
    assert plan.settings["reply_to"] is expected
    assert noted(plan, "explicit address 'talk@example.org'") == (value == 2)


@pytest.mark.parametrize("value, expected", [(0, Action.accept), (1, Action.hold),
                                             (2, Action.reject), (3, Action.discard)])
def test_generic_nonmember_action(value: int, expected: Action) -> None:
    assert mapped(generic_nonmember_action=value).settings["nonmember_action"] is expected


@pytest.mark.parametrize("value, note", [(0, None), (1, "= reject"), (2, "= discard")])
def test_member_moderation_action(value: int, note: str | None) -> None:
    plan = mapped(member_moderation_action=value)
    assert plan.settings["member_action"] is Action.hold
    assert noted(plan, f"member_moderation_action {note}") if note else \
        not noted(plan, "member_moderation_action")


def test_default_member_moderation_and_unsubscribe_policy_are_named() -> None:
    plan = mapped(default_member_moderation=1, unsubscribe_policy=1)
    assert noted(plan, "default_member_moderation") and noted(plan, "unsubscribe_policy")


@pytest.mark.parametrize("value", [0, 1])
def test_emergency(value: int) -> None:
    assert mapped(emergency=value).settings["emergency"] is bool(value)


@pytest.mark.parametrize("value, expected", [
    (0, SubscriptionPolicy.open), (1, SubscriptionPolicy.confirm),
    (2, SubscriptionPolicy.moderate), (3, SubscriptionPolicy.confirm_then_moderate)])
def test_subscribe_policy(value: int, expected: SubscriptionPolicy) -> None:
    assert mapped(subscribe_policy=value).settings["subscription_policy"] is expected


def test_sizes_and_digest_settings() -> None:
    plan = mapped(max_message_size=0, digest_size_threshhold=30, digest_send_periodic=0,
                  digestable=0, nondigestable=0, digest_is_default=1, mime_is_default_digest=1)
    s = plan.settings
    assert s["max_message_size"] == 0 and s["digest_size_threshold_kb"] == 30
    assert s["digest_frequency"] is DigestFrequency.never
    for text in ("digestable = no", "nondigestable = no", "digest_is_default",
                 "mime_is_default_digest"):
        assert noted(plan, text), text
    assert mapped(digest_send_periodic=1).settings["digest_frequency"] is DigestFrequency.daily


@pytest.mark.parametrize("archive, private, expected", [
    (True, 0, ArchivePolicy.public), (True, 1, ArchivePolicy.private),
    (False, 0, ArchivePolicy.none), (False, 1, ArchivePolicy.none)])
def test_archive(archive: bool, private: int, expected: ArchivePolicy) -> None:
    assert mapped(archive=archive, archive_private=private).settings["archive"] is expected


def test_names_prefix_and_description() -> None:
    plan = mapped(real_name=b"Caf\xe9 Dev", description=b"  two\n lines ",
                  subject_prefix=b"[%(real_name)s %d] ", info=b"")
    assert plan.settings["display_name"] == "Café Dev"
    assert plan.settings["description"] == "two lines"
    assert plan.settings["subject_prefix"] == "[Café Dev] "
    assert noted(plan, "post number") and not noted(plan, "info (")
    assert mapped(real_name=b"dev").settings["subject_prefix"] == "[{list}] "


@pytest.mark.parametrize("dmarc, from_is_list, expected, note", [
    (0, 0, DmarcMitigation.none, False), (1, 0, DmarcMitigation.munge_from, False),
    (0, 2, DmarcMitigation.wrap, False), (3, 0, DmarcMitigation.munge_from, True),
    (4, 1, DmarcMitigation.munge_from, True)])
def test_dmarc(dmarc: int, from_is_list: int, expected: DmarcMitigation, note: bool) -> None:
    plan = mapped(dmarc_moderation_action=dmarc, from_is_list=from_is_list)
    assert plan.settings["dmarc_mitigation"] is expected
    assert noted(plan, "dmarc_moderation_action =") == note


def test_bounce_settings_and_limits() -> None:
    s = mapped(bounce_score_threshold=0.0, bounce_info_stale_after=90000,
               bounce_you_are_disabled_warnings=0,
               bounce_you_are_disabled_warnings_interval=3600, max_num_recipients=0,
               administrivia=1, advertised=1).settings
    assert s["bounce_score_threshold"] == 5.0          # 0 (never) has no equivalent: default
    assert s["bounce_info_stale_after_days"] == 2 and s["bounce_warnings"] == 0
    assert s["bounce_warning_interval_days"] == 1 and s["max_recipients"] == 0
    assert s["administrivia"] is True and s["advertised"] is True


def test_sender_lists_bans_and_header_rules() -> None:
    plan = mapped(accept_these_nonmembers=[b"@otherlist", b"@team@other.example", b"^(bad"],
                  ban_list=[b"@otherlist", b"Pest@X.example"],
                  header_filter_rules=[(b"^From: .*@junk\\.example", 2, False),
                                       (b"^From: x@y\\.example", 1, False)])
    assert plan.sender_rules[:2] == [("@otherlist@lists.example.org", Action.accept),
                                     ("@team@other.example", Action.accept)]
    assert noted(plan, "'^(bad' (invalid regular expression")
    assert plan.bans == ["pest@x.example", "^.*@junk\\.example"]
    assert noted(plan, "ban_list '@otherlist' (members of another list")
    assert noted(plan, "'^From: x@y\\\\.example' -> approve")


def test_preferred_language_is_named() -> None:
    assert noted(mapped(preferred_language=b"de"), "preferred_language = de")


def test_people_edge_cases() -> None:
    """Disabled with an UNKNOWN or missing status: disabled by the admin; a bad address is
    named; an address in both member tables is imported once (regular); the roster-hiding
    option is named; a single owner given as a string."""
    from listserv.core.models import DeliveryMode, Role
    from tests.mm2fixture import CONCEAL, DISABLE_DELIVERY, UNKNOWN, add_member

    cfg = base_config()
    cfg[b"owner"] = b"boss@example.org"
    add_member(cfg, b"unk@example.org", b"Unk", options=DISABLE_DELIVERY, status=UNKNOWN)
    add_member(cfg, b"nostatus@example.org", b"No", options=DISABLE_DELIVERY)
    add_member(cfg, b"not an address", b"Bad")
    add_member(cfg, b"both@example.org", b"Both")
    add_member(cfg, b"both@example.org", b"Both", digest=True)
    add_member(cfg, b"shy@example.org", b"Shy", options=CONCEAL)
    plan = map_list(py2pickle.load_config(dumps(cfg)), "dev", "lists.example.org")
    people = {(p.email, p.role): p for p in plan.people}
    for email in ("unk@example.org", "nostatus@example.org"):
        p = people[(email, Role.member)]
        assert (p.enabled, p.disabled_reason, p.delivery) == (False, "admin",
                                                              DeliveryMode.regular)
    assert people[("both@example.org", Role.member)].delivery is DeliveryMode.regular
    assert sum(1 for p in plan.people if p.email == "both@example.org") == 1
    assert ("boss@example.org", Role.owner) in people
    assert ("mod@example.org", Role.moderator) in people
    assert noted(plan, "member 'not an address' (not a valid address)")
    assert noted(plan, "hide (concealed from the roster): 1 member(s)")
