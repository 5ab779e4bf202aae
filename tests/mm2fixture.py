"""Mailman 2.1 list files for tests and benchmarks: config.pck dicts with the attribute names
and types Mailman 2.1 stores (MailList.InitVars, Defaults.py, Bouncer._BounceInfo), written as
Python 2 pickles (tests/mm2pickle.py), and Pipermail-style mbox archives.

Python 2 ``str`` values are bytes here (Latin-1 for non-ASCII names, as an ``en`` or ``de``
list stores them); some real names are ``unicode`` (str), as Mailman writes names that
arrived through the web interface.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from tests.mm2pickle import OldInstance, dumps

# user_options bits (Mailman/Defaults.py)
DISABLE_DELIVERY, DONT_RECEIVE_OWN, ACK, DISABLE_MIME, CONCEAL, MODERATE = 1, 2, 4, 8, 16, 128
ENABLED, UNKNOWN, BYUSER, BYADMIN, BYBOUNCE = 0, 1, 2, 3, 4
DAY = 86400


def bounce_info(member: bytes, score: float, date: tuple[int, int, int], noticesleft: int,
                lastnotice: tuple[int, int, int]) -> OldInstance:
    return OldInstance("Mailman.Bouncer", "_BounceInfo", {
        b"member": member, b"score": score, b"date": date, b"noticesleft": noticesleft,
        b"lastnotice": lastnotice, b"cookie": None})


def base_config(name: bytes = b"Dev", host: bytes = b"lists.example.org") -> dict[bytes, Any]:
    """A list as Mailman 2.1.39 creates it, with a few settings changed from the defaults."""
    return {
        b"data_version": 112, b"real_name": name, b"host_name": host,
        b"web_page_url": b"http://" + host + b"/mailman/",
        b"description": b"Developers' list of the Caf\xe9 project",
        b"info": b"Talk about the code.\nBe nice.",
        b"subject_prefix": b"[%(real_name)s] ",
        b"preferred_language": b"en", b"available_languages": [b"en"],
        b"owner": [b"owner@example.org", b"Second.Owner@Example.org"],
        b"moderator": [b"mod@example.org"],
        b"reply_goes_to_list": 1, b"reply_to_address": b"",
        b"first_strip_reply_to": 0,
        b"generic_nonmember_action": 2, b"default_member_moderation": 0,
        b"member_moderation_action": 0, b"member_moderation_notice": b"",
        b"emergency": 0, b"subscribe_policy": 3, b"unsubscribe_policy": 0,
        b"max_message_size": 60, b"max_num_recipients": 7, b"administrivia": 0,
        b"require_explicit_destination": 1, b"acceptable_aliases": b"",
        b"digestable": 1, b"nondigestable": 1, b"digest_is_default": 0,
        b"mime_is_default_digest": 0, b"digest_size_threshhold": 45,
        b"digest_send_periodic": 1, b"digest_header": b"", b"digest_footer": b"",
        b"digest_volume_frequency": 1, b"volume": 3, b"next_digest_number": 17,
        b"archive": True, b"archive_private": 0, b"archive_volume_frequency": 1,
        b"bounce_processing": 1, b"bounce_score_threshold": 3.0,
        b"bounce_info_stale_after": 5 * DAY, b"bounce_you_are_disabled_warnings": 4,
        b"bounce_you_are_disabled_warnings_interval": 2 * DAY,
        b"bounce_notify_owner_on_disable": 1, b"bounce_notify_owner_on_removal": 1,
        b"dmarc_moderation_action": 2, b"from_is_list": 0,
        b"accept_these_nonmembers": [b"friend@partner.example", b"^.*@trusted\\.example$",
                                     b"@otherlist"],
        b"hold_these_nonmembers": [b"^newbie.*@"],
        b"reject_these_nonmembers": [b"rude@else.example"],
        b"discard_these_nonmembers": [b"^.*@spam\\.example$", b"Friend@partner.example"],
        b"ban_list": [b"troll@example.net", b"^.*@evil\\.example$"],
        b"header_filter_rules": [(b"^From:.*@junk\\.example\n^Subject:.*viagra", 3, False),
                                 (b"^X-Spam-Flag: YES", 7, False)],
        b"msg_header": b"", b"msg_footer": b"_______________________________________________\n"
                                            b"%(real_name)s mailing list\n",
        b"welcome_msg": b"Welcome!", b"goodbye_msg": b"", b"send_welcome_msg": 1,
        b"advertised": 0, b"private_roster": 1, b"obscure_addresses": 1,
        b"anonymous_list": 0, b"personalize": 0, b"topics": [], b"topics_enabled": 0,
        b"password": b"{SSHA}c2VjcmV0", b"mod_password": None,
        b"post_id": 20001, b"last_post_time": 1700000000.0, b"created_at": 1300000000.0,
        b"new_member_options": 256, b"respond_to_post_requests": 1, b"admin_immed_notify": 1,
        b"hold_and_cmd_autoresponses": {}, b"postings_responses": {}, b"admin_responses": {},
        b"members": {}, b"digest_members": {}, b"usernames": {}, b"user_options": {},
        b"delivery_status": {}, b"bounce_info": {}, b"passwords": {}, b"language": {},
        b"topics_userinterest": {}, b"one_last_digest": {}, b"pending": None,
        b"regular_exclude_lists": [], b"regular_include_lists": [],
        b"filter_content": 0, b"scrub_nondigest": 0,
    }


def add_member(cfg: dict[bytes, Any], email: bytes, name: Any = b"", *, digest: bool = False,
               options: int = 0, status: int | None = None,
               bounce: OldInstance | None = None) -> None:
    key = email.lower()
    table = b"digest_members" if digest else b"members"
    cfg[table][key] = email if email != key else 0
    if name:
        cfg[b"usernames"][key] = name
    cfg[b"user_options"][key] = options
    cfg[b"passwords"][key] = b"pw"
    cfg[b"language"][key] = b"en"
    if status is not None:
        cfg[b"delivery_status"][key] = (status, 1700000000.0)
    if bounce is not None:
        cfg[b"bounce_info"][key] = bounce


def small_config() -> dict[bytes, Any]:
    """Every per-member case once (tests/db/test_import_mailman2.py checks each)."""
    cfg = base_config()
    add_member(cfg, b"ann@example.org", b"Ann Smith")
    add_member(cfg, b"Bob.Mixed@Example.ORG", b"Bj\xf6rn M\xfcller")            # Latin-1 str
    add_member(cfg, b"carl@example.org", "Carl Gr\u00fcn", options=MODERATE)    # unicode
    add_member(cfg, b"dora@example.org", b"Dora", digest=True)                 # MIME digest
    add_member(cfg, b"emil@example.org", b"", digest=True, options=DISABLE_MIME)  # plain
    add_member(cfg, b"fay@example.org", b"Fay", options=DISABLE_DELIVERY, status=BYUSER)
    add_member(cfg, b"gus@example.org", b"Gus", options=DISABLE_DELIVERY, status=BYADMIN)
    add_member(cfg, b"hal@example.org", b"Hal", digest=True,
               options=DISABLE_DELIVERY | DISABLE_MIME, status=BYBOUNCE,
               bounce=bounce_info(b"hal@example.org", 3.0, (2023, 11, 14), 1, (2023, 11, 20)))
    add_member(cfg, b"ida@example.org", b"Ida", options=DONT_RECEIVE_OWN | ACK,
               bounce=bounce_info(b"ida@example.org", 1.0, (2023, 12, 1), 4, (0, 0, 0)))
    add_member(cfg, b"owner@example.org", b"The Owner")                       # also an owner
    return cfg


def big_config(members: int = 5000, seed: int = 15) -> dict[bytes, Any]:
    """A list of ``members`` people with mixed options: 20% digest (a third of them plain),
    5% moderated, 3% nomail by user, 1% disabled by admin, 2% disabled by bounces."""
    rnd = random.Random(seed)
    cfg = base_config()
    for i in range(members):
        email = f"member{i:05d}@d{i % 97}.example".encode()
        name: Any = f"Member N\u00b0{i}".encode("latin-1") if i % 3 else f"M\u00fcller {i}"
        digest = rnd.random() < 0.2
        options = 0
        if digest and rnd.random() < 0.33:
            options |= DISABLE_MIME
        if rnd.random() < 0.05:
            options |= MODERATE
        r = rnd.random()
        status = bounce = None
        if r < 0.03:
            options, status = options | DISABLE_DELIVERY, BYUSER
        elif r < 0.04:
            options, status = options | DISABLE_DELIVERY, BYADMIN
        elif r < 0.06:
            options, status = options | DISABLE_DELIVERY, BYBOUNCE
            bounce = bounce_info(email, 3.0, (2023, 10, 1 + i % 28), i % 4, (2023, 10, 28))
        add_member(cfg, email, name, digest=digest, options=options, status=status,
                   bounce=bounce)
    return cfg


def write_config(directory: Path, cfg: dict[bytes, Any], name: str = "dev") -> Path:
    """lists/NAME/config.pck under ``directory``."""
    path = directory / "lists" / name / "config.pck"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dumps(cfg))
    return path


def pipermail_mbox(path: Path, count: int, *, start: float = 1_300_000_000.0,
                   step: float = 3600.0, list_address: str = "dev@lists.example.org") -> None:
    """A Pipermail-style archive mbox: obfuscated From_ lines ("From ann at example.org"),
    some obfuscated From headers, '>From ' quoting, threads, a few messages without a
    Message-ID, Latin-1 bodies."""
    with open(path, "wb") as f:
        for i in range(count):
            when = start + i * step
            user = f"user{i % 211}"
            stamp = time.asctime(time.gmtime(when))
            f.write(f"From {user} at example.org  {stamp}\n".encode())
            if i % 5 == 0:
                f.write(f"From: {user} at example.org (User {i % 211})\n".encode())
            else:
                f.write(f"From: User {i % 211} <{user}@example.org>\n".encode())
            f.write(f"To: {list_address}\n".encode())
            date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when))
            f.write(f"Date: {date}\n".encode())
            thread = i - i % 4
            subject = f"Topic {thread}" if i == thread else f"Re: Topic {thread}"
            f.write(f"Subject: [Dev] {subject}\n".encode())
            if i % 50 != 7:
                f.write(f"Message-ID: <m{i}@example.org>\n".encode())
            if i != thread:
                f.write(f"In-Reply-To: <m{thread}@example.org>\n".encode())
            f.write(b"Content-Type: text/plain; charset=iso-8859-1\n\n")
            f.write(f"Message number {i}.\n".encode())
            f.write(b">From the quoted line of an mbox writer\n")
            f.write(b"Caf\xe9 and more text to make it a realistic size.\n" * 8)
            f.write(b"\n")
