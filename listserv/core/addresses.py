"""Pure address handling: validation/normalisation, list sub-addresses, VERP."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from email.utils import getaddresses, parseaddr

from email_validator import EmailNotValidError, validate_email

from listserv.core.errors import UsageError

# Sub-addresses of a list NAME@DOMAIN (interface.md, "Addresses of a list").
POST = "post"
REQUEST = "request"
JOIN = "join"
LEAVE = "leave"
OWNER = "owner"
BOUNCES = "bounces"
CONFIRM = "confirm"
SUFFIXES = (REQUEST, JOIN, LEAVE, OWNER, BOUNCES, CONFIRM)
# Suffixes that take a "+EXTRA" part (VERP recipient, confirmation or unsubscribe token).
PLUS_SUFFIXES = (BOUNCES, CONFIRM, LEAVE)

MAX_LOCAL_PART = 64                      # RFC 5321 local-part limit, octets
MAX_LIST_NAME = MAX_LOCAL_PART - len("-request")   # the longest fixed sub-address suffix
MAX_ADDRESS = 254                        # RFC 5321 path limit, minus the angle brackets
LIST_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._]*(-[a-z0-9._]+)*$")
DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*"
                       r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


# The plain ASCII dot-atom local part that email-validator accepts without further checks.
_ATEXT = r"a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~"
_DOT_ATOM = re.compile(f"[{_ATEXT}]+(?:\\.[{_ATEXT}]+)*\\Z")


def normalise(address: str) -> str:
    """Validate syntax (no DNS) and return the address with the domain lower-cased and the
    local part lower-cased too (lists match members case-insensitively)."""
    text = address.strip()
    local, at, domain = text.rpartition("@")
    if at and len(text) <= 254 and text.isascii() and _DOT_ATOM.match(local):
        # Fast path for the common case (bulk imports): the domain check, which dominates
        # email-validator's cost, is done once per distinct domain.
        try:
            return f"{local.lower()}@{_valid_domain(domain)}"
        except EmailNotValidError as exc:
            raise UsageError(f"invalid email address {text!r}: {exc}") from None
    try:
        result = validate_email(text, check_deliverability=False,
                                allow_smtputf8=True, allow_quoted_local=False,
                                test_environment=True)
    except EmailNotValidError as exc:
        raise UsageError(f"invalid email address {text!r}: {exc}") from None
    local, _, domain = result.normalized.rpartition("@")
    return f"{local.lower()}@{domain.lower()}"


@lru_cache(maxsize=4096)
def _valid_domain(domain: str) -> str:
    """The normalised, lower-cased domain of an address, validated by email-validator."""
    result = validate_email(f"postmaster@{domain}", check_deliverability=False,
                            allow_smtputf8=True, allow_quoted_local=False,
                            test_environment=True)
    return result.domain.lower()


def try_normalise(address: str) -> str | None:
    try:
        return normalise(address)
    except UsageError:
        return None


def normalise_domain(domain: str) -> str:
    d = domain.strip().lower().rstrip(".")
    try:
        d = d.encode("idna").decode("ascii")
    except UnicodeError:
        raise UsageError(f"invalid domain {domain!r}") from None
    if not DOMAIN_RE.match(d):
        raise UsageError(f"invalid domain {domain!r}")
    return d


def split_list_address(address: str) -> tuple[str, str]:
    """'Dev@Example.org' -> ('dev', 'example.org'); validates the list name."""
    if "@" not in address:
        raise UsageError(f"invalid list address {address!r}: expected NAME@DOMAIN")
    name, _, domain = address.strip().rpartition("@")
    name = name.lower()
    domain = normalise_domain(domain)
    if not LIST_NAME_RE.match(name) or ".." in name or name.endswith("."):
        raise UsageError(f"invalid list name {name!r}: use letters, digits, '.', '_' and '-' "
                         "(no '..', no '.' at the end)")
    if len(name) > MAX_LIST_NAME:
        raise UsageError(f"invalid list name {name!r}: longer than {MAX_LIST_NAME} characters "
                         f"(NAME-request@ must fit the {MAX_LOCAL_PART}-octet limit of a "
                         "mailbox name)")
    if len(name) + 1 + len(domain) > MAX_ADDRESS:
        raise UsageError(f"invalid list address {name}@{domain}: longer than {MAX_ADDRESS} "
                         "characters")
    for suffix in SUFFIXES:
        if name.endswith("-" + suffix):
            raise UsageError(f"invalid list name {name!r}: '-{suffix}' is reserved")
    return name, domain


@dataclass(frozen=True)
class Route:
    """Where one envelope recipient goes."""

    list_name: str
    domain: str
    subaddress: str          # one of POST, REQUEST, ...
    extra: str | None = None  # VERP recipient (decoded) or confirmation token

    @property
    def list_address(self) -> str:
        return f"{self.list_name}@{self.domain}"


def route_candidates(rcpt: str) -> list[Route]:
    """All readings of an envelope recipient, most specific list name first.

    'dev-request@x' -> [Route('dev-request', x, post), Route('dev', x, request)]. The caller
    keeps the first whose list exists. Unparseable input gives [].
    """
    rcpt = rcpt.strip().strip("<>")
    if rcpt.count("@") < 1:
        return []
    local, _, domain = rcpt.rpartition("@")
    domain = domain.lower().rstrip(".")
    if not local or not domain:
        return []
    out: list[Route] = []
    base, plus, extra = local.partition("+")
    base = base.lower()
    if not plus:
        out.append(Route(base, domain, POST))
    for suffix in SUFFIXES:
        tail = "-" + suffix
        if base.endswith(tail) and len(base) > len(tail):
            name = base[: -len(tail)]
            if plus:
                if suffix in PLUS_SUFFIXES and extra:
                    value = verp_decode_local(extra) if suffix == BOUNCES else extra
                    if value is not None:
                        out.append(Route(name, domain, suffix, value))
            else:
                out.append(Route(name, domain, suffix))
    return out


def subaddress(list_name: str, domain: str, suffix: str, extra: str | None = None) -> str:
    local = list_name if suffix == POST else f"{list_name}-{suffix}"
    if extra:
        local += "+" + extra
    return f"{local}@{domain}"


def verp_encode(list_name: str, domain: str, recipient: str) -> str:
    """NAME-bounces+user=host@DOMAIN for recipient user@host."""
    local, _, host = recipient.rpartition("@")
    return f"{list_name}-bounces+{local}={host}@{domain}"


def verp_decode_local(extra: str) -> str | None:
    """'user=host' -> 'user@host' (the last '=' separates local part and host)."""
    local, eq, host = extra.rpartition("=")
    if not eq or not local or not host:
        return None
    return f"{local}@{host}".lower()


def parse_from(value: str | None) -> tuple[str, str]:
    """(display name, lower-cased address) of a From-like header value."""
    name, addr = parseaddr(value or "")
    return name, addr.strip().lower()


def all_addresses(*values: str | None) -> list[str]:
    return [a.lower() for _, a in getaddresses([v for v in values if v]) if a]
