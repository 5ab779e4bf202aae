"""DMARC mitigation (pure; DNS comes in as ``resolve_txt``).

A list re-sends a poster's message with its own changes, so the poster's DKIM signature breaks
and SPF is ours: a receiver that applies the poster domain's DMARC policy would reject or
quarantine the copy. When (and only when) the poster's domain publishes ``p=reject`` or
``p=quarantine``, the list either

* ``munge_from``: ``From: "Name via List" <list@domain>``; the original From goes to Reply-To
  (added to a Reply-To the poster set) or, when the list's reply_to is ``list``, to Cc; or
* ``wrap``: sends a new message From the list (same munged From, Reply-To/Cc rule, Subject,
  To, Cc, Date, Message-ID, In-Reply-To, References) whose body is the original, untouched, as a
  message/rfc822 part (its own DKIM signature still verifies there).

Lookup: ``_dmarc.<from-domain>`` TXT, else ``_dmarc.<organisational domain>`` (its ``sp=``, else
``p=``). The organisational domain comes from a small public-suffix heuristic (no network, no
list download). A resolver error counts as "mitigate": a munged From always gets through, a
missed one may bounce. Posts from the list's own organisational domain are left alone.
"""

from __future__ import annotations

import logging
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Callable

from listserv.message import headers
from listserv.message.decorate import boundary_for
from listserv.message.parse import to_bytes
from listserv.core.models import DmarcMitigation, ReplyTo
from listserv.core.views import ListView

log = logging.getLogger(__name__)

Resolver = Callable[[str], list[str]]

STRICT_POLICIES = ("reject", "quarantine")

# Second-level labels under which registrations happen one level deeper in many ccTLDs
# (example.co.uk, example.com.au, example.ac.jp...). A heuristic, not the public suffix list.
_SECOND_LEVEL = frozenset({
    "ac", "co", "com", "edu", "gov", "govt", "net", "org", "mil", "nom", "ltd", "plc", "sch",
    "or", "ne", "go", "gob", "gv", "nic", "res", "lg", "ad", "ed", "gr", "in", "int", "info",
    "biz", "web", "kiwi", "id", "me", "nhs", "police", "mod", "asso", "gouv", "tm", "priv",
})

# Copied from the original onto a DMARC-wrapped outer message.
WRAP_HEADERS = ("Date", "Message-ID", "Subject", "To", "Cc", "In-Reply-To", "References",
                "Reply-To", "Auto-Submitted")


def organisational_domain(domain: str) -> str:
    """'mail.example.co.uk' -> 'example.co.uk'; 'a.b.example.org' -> 'example.org'."""
    labels = domain.lower().rstrip(".").split(".")
    if len(labels) <= 2:
        return ".".join(labels)
    if len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def parse_record(texts: list[str]) -> dict[str, str] | None:
    """The tags of the one DMARC record among ``texts`` (None when there is none or several,
    RFC 7489 6.6.3)."""
    records = [t for t in texts if t.strip().lower().replace(" ", "").startswith("v=dmarc1")]
    if len(records) != 1:
        return None
    tags: dict[str, str] = {}
    for part in records[0].split(";"):
        key, eq, value = part.partition("=")
        if eq:
            tags.setdefault(key.strip().lower(), value.strip().lower())
    return tags


class LookupFailed(Exception):
    pass


def _lookup(name: str, resolve_txt: Resolver) -> dict[str, str] | None:
    try:
        texts = resolve_txt(name)
    except Exception as exc:  # the resolver is injected; any failure is "unknown"
        raise LookupFailed(f"{name}: {exc}") from exc
    return parse_record([t.decode() if isinstance(t, bytes) else t for t in texts or []])


def policy(domain: str, resolve_txt: Resolver) -> str | None:
    """The DMARC policy ('none', 'quarantine', 'reject') that applies to mail From ``domain``,
    or None when the domain publishes none. Raises LookupFailed when the resolver fails."""
    domain = domain.lower().rstrip(".")
    tags = _lookup(f"_dmarc.{domain}", resolve_txt)
    if tags is not None:
        return tags.get("p")
    org = organisational_domain(domain)
    if org == domain:
        return None
    tags = _lookup(f"_dmarc.{org}", resolve_txt)
    if tags is None:
        return None
    return tags.get("sp") or tags.get("p")


def needs_mitigation(domain: str, resolve_txt: Resolver) -> bool:
    try:
        return policy(domain, resolve_txt) in STRICT_POLICIES
    except LookupFailed as exc:
        log.warning("DMARC lookup failed, mitigating anyway: %s", exc)
        return True


def original_sender(msg: EmailMessage) -> tuple[str, str] | None:
    """(display name, address) of the single From address, or None."""
    pairs = [(n, a) for n, a in getaddresses([str(v) for v in msg.get_all("From", [])])
             if "@" in a]
    if len(pairs) != 1:
        return None
    return pairs[0]


def via_name(name: str, address: str, lst: ListView) -> str:
    """'Alice via Dev' (Mailman's wording); an address as the name loses its '@'."""
    who = " ".join((name or address).split()).replace("@", " at ")
    return f"{who} via {lst.display_name or lst.name}"


def _address(name: str, addr: str) -> Address:
    local, _, domain = addr.rpartition("@")
    return Address(display_name=name, username=local, domain=domain)


def set_header(msg: EmailMessage, name: str, value: object) -> None:
    """Set the single ``name`` header to ``value``, where it already is when there is one."""
    if len(msg.get_all(name, [])) == 1:
        msg.replace_header(name, value)
    else:
        del msg[name]
        msg[name] = value


def _add_address(msg: EmailMessage, header: str, name: str, addr: str) -> None:
    existing = [(n, a) for n, a in getaddresses([str(v) for v in msg.get_all(header, [])]) if a]
    if any(a.lower() == addr.lower() for _, a in existing):
        return
    set_header(msg, header, [_address(n, a) for n, a in existing] + [_address(name, addr)])


def _munge_headers(msg: EmailMessage, lst: ListView, name: str, addr: str) -> None:
    local, _, domain = lst.address.rpartition("@")
    set_header(msg, "From", Address(display_name=via_name(name, addr, lst), username=local,
                                    domain=domain))
    _add_address(msg, "Cc" if lst.reply_to is ReplyTo.list else "Reply-To", name, addr)


def munge_from(msg: EmailMessage, lst: ListView, name: str, addr: str) -> EmailMessage:
    _munge_headers(msg, lst, name, addr)
    return msg


def wrap(msg: EmailMessage, lst: ListView, name: str, addr: str) -> EmailMessage:
    outer = EmailMessage(policy=msg.policy)
    for header in WRAP_HEADERS:
        for value in msg.get_all(header, []):
            # Subject: folded by us (CPython's folder can drop a space next to an encoded word)
            outer[header] = headers.unstructured(header, str(value)) if header == "Subject" \
                else value
    outer["MIME-Version"] = "1.0"
    _munge_headers(outer, lst, name, addr)
    inner_bytes = to_bytes(msg, msg.policy)
    part = EmailMessage(policy=msg.policy)
    part["Content-Type"] = "message/rfc822"
    part["Content-Disposition"] = "inline"
    part["Content-Transfer-Encoding"] = "7bit" if inner_bytes.isascii() else "8bit"
    part.set_payload([msg])
    boundary = boundary_for(inner_bytes, lst.list_id)
    outer["Content-Type"] = f'multipart/mixed; boundary="{boundary}"'
    outer.set_payload([part])
    return outer


def mitigate(msg: EmailMessage, lst: ListView, resolve_txt: Resolver) -> EmailMessage:
    """Apply the list's dmarc_mitigation to ``msg`` when the poster's domain needs it."""
    if lst.dmarc_mitigation is DmarcMitigation.none:
        return msg
    sender = original_sender(msg)
    if sender is None:
        return msg
    name, addr = sender
    domain = addr.rpartition("@")[2].lower()
    if organisational_domain(domain) == organisational_domain(lst.domain):
        return msg
    if not needs_mitigation(domain, resolve_txt):
        return msg
    if lst.dmarc_mitigation is DmarcMitigation.wrap:
        return wrap(msg, lst, name, addr)
    return munge_from(msg, lst, name, addr)
