"""The application context passed explicitly to services: settings, database, spool, clock, DNS."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv.core import config as config_mod
from listserv.core.config import Settings
from listserv.core.db import Database
from listserv.core.models import SiteSetting
from listserv.core.spool import Spool

Clock = Callable[[], dt.datetime]
# A DNS TXT resolver: name -> list of TXT strings (bytes joined), [] when none. Injected in tests.
TxtResolver = Callable[[str], list[str]]


def system_clock() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def no_wake() -> None:
    """App.wake_delivery outside the daemon: delivery runs when someone asks for it."""


def dns_txt(name: str) -> list[str]:
    """Production TXT lookups through dnspython."""
    import dns.exception
    import dns.resolver

    try:
        answer = dns.resolver.resolve(name, "TXT", lifetime=5)
    except (dns.exception.DNSException, OSError):
        return []
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


@dataclass
class App:
    settings: Settings
    db: Database
    spool: Spool
    now: Clock = system_clock
    resolve_txt: TxtResolver = dns_txt
    # Called from any thread after a transaction that queued outbound mail committed (a
    # fan-out job's chunk): `serve` sets it to wake its delivery loop at once.
    wake_delivery: Callable[[], None] = no_wake

    @classmethod
    def from_settings(cls, settings: Settings, **kw: Any) -> "App":
        db = Database(settings.database_url)
        return cls(settings=settings, db=db, spool=Spool(db, settings.spool_path), **kw)

    @classmethod
    def load(cls, config_path: str | None = None, **kw: Any) -> "App":
        return cls.from_settings(config_mod.load(config_path), **kw)


SITE_SECRET = "site_secret"


def ensure_site_secret(session: Session) -> str:
    row = session.get(SiteSetting, SITE_SECRET)
    if row is None:
        row = SiteSetting(name=SITE_SECRET, value=secrets.token_hex(32))
        session.add(row)
        session.flush()
    return row.value


def site_secret(session: Session) -> str:
    value = session.scalar(select(SiteSetting.value).where(SiteSetting.name == SITE_SECRET))
    if value is None:
        raise RuntimeError("site secret missing: run 'listserv init'")
    return value
