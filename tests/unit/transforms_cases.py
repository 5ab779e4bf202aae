"""Shared fixtures of the transform tests: a list snapshot, a fake DNS, the footers."""

from __future__ import annotations

import dataclasses
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from listserv.core.models import ArchivePolicy, DigestFrequency, DmarcMitigation, ReplyTo
from listserv.core.views import ListView

DATA = Path(__file__).resolve().parent.parent / "data"

LIST = ListView(id=1, name="dev", domain="example.org", display_name="Dev",
                subject_prefix="[Dev] ", reply_to=ReplyTo.poster,
                dmarc_mitigation=DmarcMitigation.munge_from, archive=ArchivePolicy.private,
                digest_frequency=DigestFrequency.daily, post_id=7, dkim_selector=None,
                dkim_key=None)

FOOTER = ("-- \nDev mailing list -- dev@example.org\n"
          "To unsubscribe send an email to dev-leave@example.org\n")
FOOTER_UTF8 = "-- \nDev — Entwickler · dev@example.org\nAbmelden: dev-leave@example.org\n"

TXT = {
    "_dmarc.yahoo.example": ["v=DMARC1; p=reject; rua=mailto:d@yahoo.example"],
    "_dmarc.example.net": ["v=DMARC1; p=none"],
    "_dmarc.quarantine.example": ["v=spf1 -all", "v=DMARC1; p=quarantine"],
    "_dmarc.sub.example": ["v=DMARC1; p=reject; sp=none"],
    "_dmarc.example.co.uk": ["v=DMARC1; p=reject"],
    "_dmarc.twice.example": ["v=DMARC1; p=reject", "v=DMARC1; p=none"],
}


class FakeDNS:
    """resolve_txt over a dict; records the names asked."""

    def __init__(self, records: dict[str, list[str]] | None = None) -> None:
        self.records = TXT if records is None else records
        self.asked: list[str] = []

    def __call__(self, name: str) -> list[str]:
        self.asked.append(name)
        return list(self.records.get(name, []))


def lst(**changes: Any) -> ListView:
    return dataclasses.replace(LIST, **changes)


def parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)
    return msg


def load(name: str) -> EmailMessage:
    return parse((DATA / "in" / name).read_bytes())


def serialise(msg: EmailMessage) -> bytes:
    """What the golden files hold: the message as bytes, LF line ends (readable diffs)."""
    return msg.as_bytes(policy=policy.default)
