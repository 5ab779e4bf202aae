"""Map a GNU Mailman 2.1 list (its decoded config.pck attribute dict) onto ours. Pure.

:func:`map_list` returns a :class:`Mm2List`: the list settings (model attribute -> value), the
people (members with their options, owners, moderators), the sender rules and bans, and a
``not_imported`` line for everything that has no equivalent here. Nothing is guessed: an
option we cannot carry over is named there.

Mailman 2.1 facts used (Defaults.py / MemberAdaptor.py / Bouncer.py):
- ``members`` and ``digest_members`` map the lower-cased address to 0 or its cased spelling;
  ``usernames`` holds real names; ``user_options`` a bitfield per member;
  ``delivery_status`` ``(status, time)`` where status is ENABLED 0, UNKNOWN 1, BYUSER 2,
  BYADMIN 3, BYBOUNCE 4 (meaningful when the DisableDelivery bit is set);
  ``bounce_info`` a ``_BounceInfo`` per bouncing member (score, date, noticesleft, lastnotice).
- generic_nonmember_action: 0 accept, 1 hold, 2 reject, 3 discard; member_moderation_action:
  0 hold, 1 reject, 2 discard; subscribe_policy: 0 open, 1 confirm, 2 approve, 3 confirm and
  approve; reply_goes_to_list: 0 poster, 1 list, 2 explicit address; header_filter_rules
  actions: 0 defer, 1 approve, 2 reject, 3 discard, 4 subscribe, 5 unsubscribe, 6 accept,
  7 hold; dmarc_moderation_action / from_is_list: 1 munge From, 2 wrap.
- max_message_size and digest_size_threshhold are in KB; bounce intervals in seconds.
- advertised: shown in the web directory.
- accept/hold/reject/discard_these_nonmembers entries: an address, ``^regex``, or
  ``@listname`` (the members of that list of the same site: here ``@listname@<our domain>``,
  kept by the import only when that list exists on this server).
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from listserv.core import addresses
from listserv.core.errors import UsageError
from listserv.importers.py2pickle import BounceInfo
from listserv.core.models import (
    Action,
    ArchivePolicy,
    DeliveryMode,
    DigestFrequency,
    DmarcMitigation,
    ReplyTo,
    Role,
    SubscriptionPolicy,
)

# user_options bits
DISABLE_DELIVERY, DONT_RECEIVE_OWN, ACKNOWLEDGE, DISABLE_MIME = 1, 2, 4, 8
CONCEAL, SUPPRESS_REMINDER, NONMATCHING_TOPICS, MODERATE, NO_DUPLICATES = 16, 32, 64, 128, 256
UNMAPPED_BITS = {DONT_RECEIVE_OWN: "not-metoo (no copy of one's own posts)",
                 ACKNOWLEDGE: "ack (acknowledge each post)",
                 CONCEAL: "hide (concealed from the roster)",
                 NONMATCHING_TOPICS: "topics filtering"}
# delivery_status
UNKNOWN, BYUSER, BYADMIN, BYBOUNCE = 1, 2, 3, 4

NONMEMBER = {0: Action.accept, 1: Action.hold, 2: Action.reject, 3: Action.discard}
SUBSCRIBE = {0: SubscriptionPolicy.open, 1: SubscriptionPolicy.confirm,
             2: SubscriptionPolicy.moderate, 3: SubscriptionPolicy.confirm_then_moderate}
DMARC = {0: DmarcMitigation.none, 1: DmarcMitigation.munge_from, 2: DmarcMitigation.wrap}
SENDER_LISTS = (("accept_these_nonmembers", Action.accept), ("hold_these_nonmembers", Action.hold),
                ("reject_these_nonmembers", Action.reject),
                ("discard_these_nonmembers", Action.discard))

# Attributes read by map_list, and Mailman's own bookkeeping (nothing to carry over).
MAPPED = {
    "real_name", "description", "info", "subject_prefix", "reply_goes_to_list",
    "reply_to_address", "generic_nonmember_action", "default_member_moderation",
    "member_moderation_action", "emergency", "subscribe_policy", "unsubscribe_policy",
    "max_message_size", "digestable", "nondigestable", "digest_is_default",
    "mime_is_default_digest", "digest_size_threshhold", "digest_send_periodic", "archive",
    "archive_private", "owner", "moderator", "members", "digest_members", "usernames",
    "user_options", "delivery_status", "bounce_info", "accept_these_nonmembers",
    "hold_these_nonmembers", "reject_these_nonmembers", "discard_these_nonmembers",
    "header_filter_rules", "ban_list", "bounce_score_threshold", "bounce_info_stale_after",
    "bounce_you_are_disabled_warnings", "bounce_you_are_disabled_warnings_interval",
    "max_num_recipients", "administrivia", "dmarc_moderation_action", "from_is_list",
    "preferred_language", "host_name", "passwords", "password", "mod_password", "advertised",
}
BOOKKEEPING = {
    "data_version", "last_post_time", "post_id", "volume", "next_digest_number",
    "one_last_digest", "digest_last_sent_at", "created_at", "hold_and_cmd_autoresponses",
    "postings_responses", "admin_responses", "request_responses", "language",
    "web_page_url", "available_languages", "new_member_options", "topics_userinterest",
    "lang", "pending", "bounce_info_stale_after_days",
}
# Options whose Mailman default needs nothing here: named only when set otherwise.
DEFAULT_OK: dict[str, Any] = {
    "require_explicit_destination": 1, "bounce_processing": 1,
    "include_rfc2369_headers": 1, "include_list_post_header": 1, "send_welcome_msg": 1,
    "send_goodbye_msg": 1, "respond_to_post_requests": 1, "admin_immed_notify": 1,
    "archive_volume_frequency": 1, "digest_volume_frequency": 1, "bounce_notify_owner_on_disable": 1,
    "bounce_notify_owner_on_removal": 1, "filter_content": 0, "collapse_alternatives": 1,
    "convert_html_to_plaintext": 1, "filter_action": 0, "pass_filename_extensions": [],
    "personalize": 0, "scrub_nondigest": 0, "anonymous_list": 0, "first_strip_reply_to": 0,
    "obscure_addresses": 1, "private_roster": 1, "umbrella_list": 0, "send_reminders": 0,
    "admin_notify_mchanges": 0, "forward_auto_discards": 1, "autorespond_postings": 0,
    "autorespond_admin": 0, "autorespond_requests": 0, "topics_enabled": 0,
}


@dataclass
class Person:
    email: str
    name: str
    role: Role
    delivery: DeliveryMode = DeliveryMode.regular
    moderated: bool = False
    enabled: bool = True
    disabled_reason: str | None = None
    bounce_score: float = 0.0
    last_bounce_at: dt.datetime | None = None
    warnings_sent: int = 0
    last_warning_at: dt.datetime | None = None


@dataclass
class Mm2List:
    name: str
    domain: str
    settings: dict[str, Any] = field(default_factory=dict)
    people: list[Person] = field(default_factory=list)
    sender_rules: list[tuple[str, Action]] = field(default_factory=list)
    bans: list[str] = field(default_factory=list)
    not_imported: list[str] = field(default_factory=list)


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _day(value: Any) -> dt.datetime | None:
    """A Bouncer date: a (year, month, day) tuple (or a time.time() float)."""
    try:
        if isinstance(value, (tuple, list)) and len(value) >= 3:
            return dt.datetime(int(value[0]), int(value[1]), int(value[2]),
                               tzinfo=dt.timezone.utc)
        if isinstance(value, (int, float)) and value > 0:
            return dt.datetime.fromtimestamp(float(value), dt.timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        pass
    return None


def _days(seconds: Any, default: int) -> int:
    s = _int(seconds, -1)
    return default if s < 0 else max(1, math.ceil(s / 86400))


def subject_prefix(prefix: str, real_name: str, name: str) -> tuple[str, str | None]:
    """Mailman's %-style prefix as ours ({list}); and a note when something was dropped."""
    note = None
    if re.search(r"%(\(\w+\))?0*\d*d", prefix):
        note = f"subject_prefix post number in {prefix!r} (no post numbers in prefixes)"
        prefix = re.sub(r"\s*%(\(\w+\))?0*\d*d", "", prefix)
    shown = "{list}" if real_name.lower() == name else real_name.replace("{", "").replace("}", "")
    prefix = prefix.replace("%(real_name)s", shown).replace("%%", "%")
    return prefix, note


def _address(text: str, problems: list[str], what: str) -> str | None:
    try:
        return addresses.normalise(text)
    except UsageError:
        problems.append(f"{what} {text!r} (not a valid address)")
        return None


def map_list(cfg: dict[str, Any], name: str, domain: str) -> Mm2List:
    out = Mm2List(name, domain)
    _settings(cfg, out)
    _people(cfg, out)
    _senders(cfg, out)
    _unmapped(cfg, out)
    return out


def _settings(cfg: dict[str, Any], out: Mm2List) -> None:
    s, notes = out.settings, out.not_imported
    real_name = _str(cfg.get("real_name")) or out.name
    s["display_name"] = real_name[:255]
    description, info = _str(cfg.get("description")).strip(), _str(cfg.get("info")).strip()
    s["description"] = " ".join(description.split())[:1000]
    if info:
        notes.append("info (the list's long description: put it in a site template)")
    if "subject_prefix" in cfg:
        s["subject_prefix"], note = subject_prefix(_str(cfg["subject_prefix"]), real_name,
                                                   out.name)
        if note:
            notes.append(note)
    reply = _int(cfg.get("reply_goes_to_list"))
    s["reply_to"] = ReplyTo.list if reply == 1 else ReplyTo.poster
    if reply == 2:
        notes.append(f"reply_goes_to_list = explicit address "
                     f"{_str(cfg.get('reply_to_address'))!r} (replies go to the poster)")
    if "generic_nonmember_action" in cfg:
        s["nonmember_action"] = NONMEMBER.get(_int(cfg["generic_nonmember_action"]),
                                              Action.hold)
    mma = _int(cfg.get("member_moderation_action"))
    s["member_action"] = Action.hold
    if mma in (1, 2):
        notes.append(f"member_moderation_action = {'reject' if mma == 1 else 'discard'} "
                     "(moderated members' posts are held here)")
    if cfg.get("default_member_moderation"):
        notes.append("default_member_moderation (new members are not moderated "
                     "automatically; imported members keep their own flag)")
    s["emergency"] = bool(cfg.get("emergency"))
    if "subscribe_policy" in cfg:
        s["subscription_policy"] = SUBSCRIBE.get(_int(cfg["subscribe_policy"]),
                                                 SubscriptionPolicy.confirm)
    if _int(cfg.get("unsubscribe_policy")):
        notes.append("unsubscribe_policy = approval required (members leave after confirming)")
    if "max_message_size" in cfg:
        s["max_message_size"] = max(0, _int(cfg["max_message_size"])) * 1024
    if "digest_size_threshhold" in cfg:
        s["digest_size_threshold_kb"] = max(0, _int(cfg["digest_size_threshhold"]))
    if "digest_send_periodic" in cfg:
        s["digest_frequency"] = (DigestFrequency.daily if cfg["digest_send_periodic"]
                                 else DigestFrequency.never)
    for key, word in (("digestable", "digests off"), ("nondigestable", "regular delivery off")):
        if key in cfg and not cfg[key]:
            notes.append(f"{key} = no ({word}: every delivery mode stays available)")
    if cfg.get("digest_is_default"):
        notes.append("digest_is_default (new members get regular delivery)")
    if cfg.get("mime_is_default_digest"):
        notes.append("mime_is_default_digest (members choose their digest format)")
    if "archive" in cfg:
        s["archive"] = (ArchivePolicy.none if not cfg["archive"] else
                        ArchivePolicy.private if cfg.get("archive_private")
                        else ArchivePolicy.public)
    if "bounce_score_threshold" in cfg:
        threshold = float(cfg["bounce_score_threshold"] or 0)
        s["bounce_score_threshold"] = threshold if threshold > 0 else 5.0
    if "bounce_info_stale_after" in cfg:
        s["bounce_info_stale_after_days"] = _days(cfg["bounce_info_stale_after"], 7)
    if "bounce_you_are_disabled_warnings" in cfg:
        s["bounce_warnings"] = max(0, _int(cfg["bounce_you_are_disabled_warnings"], 3))
    if "bounce_you_are_disabled_warnings_interval" in cfg:
        s["bounce_warning_interval_days"] = _days(
            cfg["bounce_you_are_disabled_warnings_interval"], 7)
    if "max_num_recipients" in cfg:
        s["max_recipients"] = max(0, _int(cfg["max_num_recipients"]))
    if "administrivia" in cfg:
        s["administrivia"] = bool(cfg["administrivia"])
    if "advertised" in cfg:
        s["advertised"] = bool(cfg["advertised"])
    dmarc = max(_int(cfg.get("from_is_list")), _int(cfg.get("dmarc_moderation_action")))
    if "dmarc_moderation_action" in cfg or "from_is_list" in cfg:
        s["dmarc_mitigation"] = DMARC.get(dmarc, DmarcMitigation.munge_from)
        if dmarc in (3, 4):
            notes.append(f"dmarc_moderation_action = {'reject' if dmarc == 3 else 'discard'} "
                         "(DMARC-protected posts have their From munged instead)")
    language = _str(cfg.get("preferred_language")) or "en"
    if language != "en":
        notes.append(f"preferred_language = {language} (notices are sent from the "
                     "site's templates)")


def _people(cfg: dict[str, Any], out: Mm2List) -> None:
    notes = out.not_imported
    names: dict[str, Any] = cfg.get("usernames") or {}
    options: dict[str, Any] = cfg.get("user_options") or {}
    status: dict[str, Any] = cfg.get("delivery_status") or {}
    bounces: dict[str, Any] = cfg.get("bounce_info") or {}
    warnings = max(0, _int(cfg.get("bounce_you_are_disabled_warnings"), 3))
    problems: list[str] = []
    unmapped_bits: dict[int, int] = {}
    seen: set[str] = set()
    for table, digest in (("members", False), ("digest_members", True)):
        for key, cased in sorted((cfg.get(table) or {}).items()):
            spelled = cased if isinstance(cased, str) and cased else key
            email = _address(spelled, problems, "member")
            if email is None or email in seen:
                continue
            seen.add(email)
            bits = _int(options.get(key, options.get(email)))
            for bit in UNMAPPED_BITS:
                if bits & bit:
                    unmapped_bits[bit] = unmapped_bits.get(bit, 0) + 1
            p = Person(email, _str(names.get(key, names.get(email))).strip()[:255], Role.member,
                       moderated=bool(bits & MODERATE))
            if digest:
                p.delivery = (DeliveryMode.plain_digest if bits & DISABLE_MIME
                              else DeliveryMode.mime_digest)
            if bits & DISABLE_DELIVERY:
                st = status.get(key, status.get(email))
                code = _int(st[0] if isinstance(st, (tuple, list)) and st else UNKNOWN)
                if code == BYUSER:
                    p.delivery = DeliveryMode.nomail
                else:
                    p.enabled = False
                    p.disabled_reason = "bounce" if code == BYBOUNCE else "admin"
            info = bounces.get(key, bounces.get(email))
            if isinstance(info, BounceInfo):
                try:
                    p.bounce_score = max(0.0, float(info.get("score") or 0))
                except (TypeError, ValueError):
                    p.bounce_score = 0.0
                p.last_bounce_at = _day(info.get("date"))
                if p.disabled_reason == "bounce":
                    left = _int(info.get("noticesleft"), warnings)
                    p.warnings_sent = max(0, warnings - left)
                    p.last_warning_at = _day(info.get("lastnotice")) if p.warnings_sent else None
            out.people.append(p)
    for attr, role in (("owner", Role.owner), ("moderator", Role.moderator)):
        for text in _strings(cfg.get(attr)):
            email = _address(text, problems, attr)
            if email is not None and all(not (q.email == email and q.role is role)
                                         for q in out.people):
                out.people.append(Person(email, "", role))
    for bit, count in sorted(unmapped_bits.items()):
        notes.append(f"per-member option {UNMAPPED_BITS[bit]}: {count} member(s)")
    if any(cfg.get(k) for k in ("passwords", "password", "mod_password")):
        notes.append("passwords (list and member passwords are never imported; moderation "
                     "is by token replies)")
    notes.extend(problems)


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, (list, tuple, set, frozenset)):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    return []


def _pattern(text: str, notes: list[str], what: str, domain: str | None = None) -> str | None:
    """Our pattern for a Mailman one; ``domain``: where ``@listname`` (the members of another
    list of the same Mailman site) is taken to live (sender rules only; None for bans)."""
    if text.startswith("@"):
        if domain is None:
            notes.append(f"{what} {text!r} (members of another list: bans name addresses "
                         "and patterns only)")
            return None
        other = text[1:] if "@" in text[1:] else f"{text[1:]}@{domain}"
        try:
            return "@" + addresses.normalise(other)
        except UsageError:
            notes.append(f"{what} {text!r} (not a list name)")
            return None
    if text.startswith("^"):
        try:
            re.compile(text, re.IGNORECASE)
        except re.error as exc:
            notes.append(f"{what} {text!r} (invalid regular expression: {exc})")
            return None
        return text[:400]
    return _address(text, notes, what)


def _senders(cfg: dict[str, Any], out: Mm2List) -> None:
    notes = out.not_imported
    have: set[str] = set()
    for attr, action in SENDER_LISTS:
        for text in _strings(cfg.get(attr)):
            p = _pattern(text, notes, attr, out.domain)
            if p is not None and p not in have:      # Mailman checks the lists in this order
                have.add(p)
                out.sender_rules.append((p, action))
    bans: list[str] = []
    for text in _strings(cfg.get("ban_list")):
        p = _pattern(text, notes, "ban_list")
        if p is not None:
            bans.append(p)
    for rule in cfg.get("header_filter_rules") or []:
        bans.extend(_header_rule(rule, notes))
    out.bans = list(dict.fromkeys(bans))


_FROM_RULE = re.compile(r"^\^?from:\s*(?:\.\*)?(.*)$", re.IGNORECASE)
HEADER_ACTIONS = {0: "defer", 1: "approve", 2: "reject", 3: "discard", 4: "subscribe",
                  5: "unsubscribe", 6: "accept", 7: "hold"}


def _header_rule(rule: Any, notes: list[str]) -> Iterable[str]:
    """A header_filter_rules entry that discards or rejects by a From: pattern becomes a ban;
    anything else is named as not imported."""
    if not isinstance(rule, (tuple, list)) or len(rule) < 2:
        return []
    patterns = [p.strip() for p in _str(rule[0]).splitlines() if p.strip()]
    action = HEADER_ACTIONS.get(_int(rule[1]), "?")
    bans = []
    for p in patterns:
        m = _FROM_RULE.match(p)
        if action in ("discard", "reject") and m is not None and m.group(1):
            ban = "^.*" + m.group(1) if not m.group(1).startswith("^") else m.group(1)
            try:
                re.compile(ban, re.IGNORECASE)
            except re.error:
                notes.append(f"header_filter_rules {p!r} -> {action} (invalid expression)")
                continue
            bans.append(ban[:400])
        else:
            notes.append(f"header_filter_rules {p!r} -> {action} (only From: rules that "
                         "discard or reject become bans)")
    return bans


def _unmapped(cfg: dict[str, Any], out: Mm2List) -> None:
    named: list[str] = []
    for key in sorted(cfg):
        if key in MAPPED or key in BOOKKEEPING or key.startswith("_"):
            continue
        value = cfg[key]
        if key in DEFAULT_OK:
            if _same(value, DEFAULT_OK[key]):
                continue
        elif not value:
            continue
        named.append(key)
    if named:
        out.not_imported.append("settings without an equivalent: " + ", ".join(named))


def _same(value: Any, default: Any) -> bool:
    if isinstance(default, list):
        return not value
    return _int(value, -1) == default
