"""Domain services: hosting a domain, its DKIM selector and key, the DNS record to publish."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from listserv.core import addresses
from listserv.message import signing
from listserv.core.errors import UsageError
from listserv.core.lists import find_domain
from listserv.core.models import Domain, MailingList

SELECTOR_RE = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]{0,61}"
                         r"[a-z0-9])?)*$")


@dataclass(frozen=True)
class DomainInfo:
    domain: str
    dkim_selector: str | None
    has_key: bool
    lists: int

    def as_json(self) -> dict[str, object]:
        return {"domain": self.domain, "dkim_selector": self.dkim_selector,
                "dkim_key": self.has_key, "lists": self.lists}


def normalise_selector(selector: str) -> str:
    sel = selector.strip().lower()
    if len(sel) > 63 or not SELECTOR_RE.match(sel):
        raise UsageError(f"invalid DKIM selector {selector!r}: use letters, digits, '-' and '_'")
    return sel


def get_domain(session: Session, name: str) -> Domain:
    d = find_domain(session, name)
    if d is None:
        raise UsageError(f"no such domain: {name}")
    return d


def add_domain(session: Session, name: str, *, dkim_selector: str | None = None,
               dkim_key_pem: str | None = None) -> tuple[Domain, bool]:
    """Host ``name``. Returns (domain, created).

    An existing domain is refused unless a key is given, which then replaces its DKIM key.
    """
    if (dkim_selector is None) != (dkim_key_pem is None):
        raise UsageError("--dkim-selector and --dkim-key must be given together")
    norm = addresses.normalise_domain(name)
    sel = normalise_selector(dkim_selector) if dkim_selector is not None else None
    key = signing.load_key(dkim_key_pem) if dkim_key_pem is not None else None
    d = find_domain(session, norm)
    created = d is None
    if d is None:
        d = Domain(name=norm)
        session.add(d)
    elif key is None:
        raise UsageError(f"domain already exists: {norm}")
    if key is not None:
        d.dkim_selector, d.dkim_private_key = sel, key
    session.flush()
    return d, created


def generate_dkim_key(session: Session, name: str, selector: str, *,
                      replace: bool = False) -> Domain:
    """Make and store a new RSA-2048 key for ``name`` (hosted from now on if it was not, as
    ``list create`` does)."""
    sel = normalise_selector(selector)
    d = find_domain(session, name)
    if d is None:
        d, _ = add_domain(session, name)
    if d.dkim_private_key and not replace:
        raise UsageError(f"domain {d.name} already has a DKIM key (selector "
                         f"{d.dkim_selector}); use --force to replace it")
    d.dkim_selector, d.dkim_private_key = sel, signing.generate_key()
    session.flush()
    return d


def txt_record(d: Domain) -> tuple[str, str]:
    """(name, value) of the DNS TXT record that publishes the domain's public key."""
    if not d.dkim_private_key or not d.dkim_selector:
        raise UsageError(f"domain {d.name} has no DKIM key")
    return f"{d.dkim_selector}._domainkey.{d.name}", signing.dns_record(d.dkim_private_key)


def list_domains(session: Session) -> list[DomainInfo]:
    counts = {domain_id: n for domain_id, n in session.execute(
        select(MailingList.domain_id, func.count()).group_by(MailingList.domain_id))}
    return [DomainInfo(d.name, d.dkim_selector, bool(d.dkim_private_key), counts.get(d.id, 0))
            for d in session.scalars(select(Domain).order_by(Domain.name))]
