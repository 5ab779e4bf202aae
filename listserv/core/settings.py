"""The list-setting registry: names, types, allowed values, defaults and help text.

``listserv list set ADDR KEY VALUE`` parses VALUE through :func:`parse`; ``list ls --json`` and
``list show`` read every setting through :func:`value_of`. The defaults here are those of
interface.md and of the model columns (a unit test checks they agree).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from listserv.core.errors import UsageError
from listserv.core.models import (
    Action,
    ArchivePolicy,
    DigestFrequency,
    DmarcMitigation,
    LogAccess,
    LogNames,
    MailingList,
    FooterPlacement,
    ReplyTo,
    SenderHeaders,
    SubscriptionPolicy,
)

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
INT_MAX = 2**31 - 1      # the database's INTEGER
DAYS_MAX = 36500         # day counts: date arithmetic must stay within datetime's range


@dataclass(frozen=True)
class Setting:
    name: str
    kind: str                                 # choice | bool | int | number | text
    default: Any                              # as shown to users (str, bool, int, float)
    help: str
    choices: tuple[str, ...] = ()             # for kind == "choice"
    enum_type: type[enum.Enum] | None = None  # the model's enum for a choice
    max_length: int = 0                       # for kind == "text"
    maximum: int = INT_MAX                    # for kind == "int"

    def describe(self) -> str:
        if self.kind == "choice":
            values = ", ".join(self.choices)
        elif self.kind == "bool":
            values = "true, false"
        elif self.kind == "int":
            values = "integer >= 0"
        elif self.kind == "number":
            values = "number > 0"
        else:
            values = "text"
        default = repr(self.default) if self.kind == "text" else format_value(self.default)
        return f"{self.name}: {values} (default {default}) - {self.help}"


def _choice(name: str, enum_type: type[enum.Enum], default: enum.Enum, help: str,
            allowed: tuple[enum.Enum, ...] | None = None) -> Setting:
    members = allowed if allowed is not None else tuple(enum_type)
    return Setting(name, "choice", default.value, help,
                   choices=tuple(str(m.value) for m in members), enum_type=enum_type)


# The order is the order of `list show` and of the keys in `list ls --json`.
SETTINGS: tuple[Setting, ...] = (
    _choice("nonmember_action", Action, Action.hold,
            "what happens to posts from addresses that are not members"),
    _choice("member_action", Action, Action.hold,
            "what happens to posts from members flagged --moderated",
            allowed=(Action.accept, Action.hold)),
    Setting("emergency", "bool", False, "hold every post for moderation"),
    _choice("subscription_policy", SubscriptionPolicy, SubscriptionPolicy.confirm,
            "how join requests are handled"),
    Setting("subject_prefix", "text", "[{list}] ",
            "prefix added to the Subject; {list} expands to the list name", max_length=255),
    _choice("reply_to", ReplyTo, ReplyTo.poster, "where replies go"),
    Setting("max_message_size", "int", 0, "largest post in bytes; 0 = the site default"),
    _choice("dmarc_mitigation", DmarcMitigation, DmarcMitigation.munge_from,
            "what to do with posts from domains with a strict DMARC policy"),
    _choice("digest_frequency", DigestFrequency, DigestFrequency.daily,
            "how often digests are sent"),
    Setting("digest_size_threshold_kb", "int", 30,
            "send a digest early when pending posts exceed this many KB"),
    _choice("archive", ArchivePolicy, ArchivePolicy.private, "who may read the archive"),
    Setting("bounce_score_threshold", "number", 5.0,
            "disable delivery at this bounce score (one score per member per day)"),
    Setting("bounce_info_stale_after_days", "int", 7,
            "forget bounce information older than this many days", maximum=DAYS_MAX),
    Setting("bounce_warnings", "int", 3,
            "warnings sent to a bounce-disabled member before removal"),
    Setting("bounce_warning_interval_days", "int", 7, "days between those warnings",
            maximum=DAYS_MAX),
    Setting("notify_poster_on_hold", "bool", True,
            "tell the poster when a post is held for moderation"),
    Setting("administrivia", "bool", True,
            "hold posts that look like commands (subscribe, unsubscribe, help...) "
            "meant for NAME-request@"),
    Setting("arc", "bool", True,
            "ARC-seal each post (RFC 8617) with the list domain's DKIM key, carrying the "
            "incoming post's DKIM result; only when the domain has a key"),
    Setting("max_recipients", "int", 10,
            "hold posts with this many or more To/Cc addresses; 0 = no limit"),
    Setting("included_members_can_post", "bool", True,
            "members of the lists this list includes may post to it as members do"),
    _choice("moderation_log", LogAccess, LogAccess.owners,
            "who may read the moderation log ('log' to NAME-request@): anyone, members, "
            "or only owners and moderators"),
    _choice("moderation_log_names", LogNames, LogNames.show,
            "whether the moderation log names the moderator (display name) or says "
            "'a moderator' to readers who are not moderators"),
    _choice("footer_placement", FooterPlacement, FooterPlacement.inline,
            "inline: the footer goes into the plain and HTML bodies; part: a MIME part of its "
            "own unless the post is plain text"),
    _choice("automatic_action", Action, Action.hold,
            "what happens to automatic mail posted to the list (Auto-Submitted other than "
            "no, Precedence bulk/junk/list, a null envelope sender); the sender is never told",
            allowed=(Action.hold, Action.discard)),
    _choice("sender_headers", SenderHeaders, SenderHeaders.from_,
            "who a post is from for the rules: 'from' (exactly one From header) or "
            "'from+sender' (Sender: or the envelope sender may also be the member)"),
    Setting("sender_post_limit", "int", 10,
            "posts one sender may make in 10 minutes; more are held (a looping "
            "auto-responder); 0 = no limit"),
    Setting("display_name", "text", "", "the list's human name (set by list create)",
            max_length=255),
    Setting("description", "text", "", "a one-line description of the list", max_length=1000),
    Setting("advertised", "bool", True,
            "show the list in the web directory (BASE_URL/); its page stays reachable"),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def get(name: str) -> Setting:
    """The setting ``name`` or UsageError naming the known settings."""
    key = name.strip().lower().replace("-", "_")
    setting = BY_NAME.get(key)
    if setting is None:
        raise UsageError(f"unknown setting {name!r}; settings are: {', '.join(NAMES)}")
    return setting


def parse(name: str, text: str) -> Any:
    """Parse the command-line VALUE of setting ``name`` into the model's value.

    Raises UsageError with one line that names the setting and the allowed values.
    """
    s = get(name)
    raw = text.strip()
    low = raw.lower()
    if s.kind == "choice":
        if low not in s.choices:
            raise UsageError(f"invalid value {text!r} for {s.name}: "
                             f"allowed values are {', '.join(s.choices)}")
        assert s.enum_type is not None
        return s.enum_type(low)
    if s.kind == "bool":
        if low in TRUE_WORDS:
            return True
        if low in FALSE_WORDS:
            return False
        raise UsageError(f"invalid value {text!r} for {s.name}: allowed values are true, false")
    if s.kind == "int":
        try:
            value = int(raw)
        except ValueError:
            raise UsageError(f"invalid value {text!r} for {s.name}: "
                             "expected a whole number >= 0") from None
        if value < 0:
            raise UsageError(f"invalid value {text!r} for {s.name}: "
                             "expected a whole number >= 0")
        if value > s.maximum:
            raise UsageError(f"invalid value {text!r} for {s.name}: "
                             f"at most {s.maximum}")
        return value
    if s.kind == "number":
        try:
            number = float(raw)
        except ValueError:
            raise UsageError(f"invalid value {text!r} for {s.name}: "
                             "expected a number > 0") from None
        if not number > 0 or number == float("inf"):
            raise UsageError(f"invalid value {text!r} for {s.name}: expected a number > 0")
        return number
    # text: kept verbatim (a prefix's trailing space matters), one line only
    if "\n" in text or "\r" in text:
        raise UsageError(f"invalid value for {s.name}: must be a single line")
    if s.max_length and len(text) > s.max_length:
        raise UsageError(f"invalid value for {s.name}: longer than {s.max_length} characters")
    return text


def value_of(ml: MailingList, name: str) -> Any:
    """The JSON-able value of a setting of ``ml`` (enum values as their words)."""
    value = getattr(ml, get(name).name)
    return format_json(value)


def format_json(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    return value


def format_value(value: Any) -> str:
    """A setting value for humans (true/false, enum words, text as is)."""
    value = format_json(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def set_value(ml: MailingList, name: str, text: str) -> Any:
    """Parse ``text`` and store it on ``ml``; return the stored value."""
    s = get(name)
    value = parse(s.name, text)
    setattr(ml, s.name, value)
    return value


def as_dict(ml: MailingList) -> dict[str, Any]:
    """Every setting of ``ml``, JSON-able, in registry order."""
    return {s.name: format_json(getattr(ml, s.name)) for s in SETTINGS}


def help_text() -> str:
    """One line per setting, for --help."""
    return "\n".join(s.describe() for s in SETTINGS)
