"""One-click unsubscribe (RFC 8058): per-membership tokens and the per-member copies of a post.

A token is ``MAC + membership id``: MAC is 128 bits of HMAC-SHA256, keyed with the site secret,
over the membership id and that membership's random ``unsub_nonce``, written in lower-case
base32 (26 characters) so it survives in the local part of ``NAME-leave+TOKEN@DOMAIN``. It
cannot be derived from an address, and it dies with the membership row (leaving deletes the
row; joining again makes a new row with a new nonce).

Each member's copy of a VERP'd post carries

    List-Unsubscribe: <BASE_URL/u/TOKEN>, <mailto:NAME-leave+TOKEN@DOMAIN>
    List-Unsubscribe-Post: List-Unsubscribe=One-Click

and its own DKIM signature over them. ``CopyMaker`` is built once per post: it parses the
header block, hashes the body and canonicalises the shared fields once; a copy then costs
a token, two header fields, one header hash and one RSA signature (listserv.message.copies, run in
worker processes by listserv.delivery.signpool). Batched (non-VERP) copies cannot name the member:
they point at the list's page ``BASE_URL/leave/NAME@DOMAIN``, which asks for the address and
confirms by mail.
"""

from __future__ import annotations

import dataclasses
import hmac
import re
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from listserv.core import network
from listserv.delivery import signpool
from listserv.message import copies, signing
from listserv.core.config import WebSettings
from listserv.core.models import Address, ArchivePolicy, DeliveryMode, Membership, Role
from listserv.core.views import ListView

TOKEN_RE = re.compile(r"^([a-z2-7]{26})([1-9][0-9]{0,18})$")
ONE_CLICK = "List-Unsubscribe=One-Click"
_NAMES = (b"List-Unsubscribe", b"List-Unsubscribe-Post")     # each member's own fields
_DROP = tuple(n.lower() for n in _NAMES)


make_token = copies.make_token


def find(session: Session, secret: str, token: str) -> Membership | None:
    """The (member-role) membership a token belongs to, or None when it is not valid (any
    more). Case-insensitive: an MTA may fold the local part."""
    m = TOKEN_RE.match(token.strip().lower())
    if m is None:
        return None
    row = session.get(Membership, int(m.group(2)))
    if row is None or row.role is not Role.member:
        return None
    if not hmac.compare_digest(m.group(1), copies.mac(secret, row.id, row.unsub_nonce)):
        return None
    return row


def page_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/u/{token}"


def list_page_url(base_url: str, lv: ListView) -> str:
    """The per-list page (asks for the address, confirms by mail) for batched copies."""
    return f"{base_url.rstrip('/')}/leave/{lv.address}"


def archive_url(base_url: str, lv: ListView) -> str:
    """The list's web archive (listserv.web.archive.Urls.archive under ``base_url``)."""
    return f"{base_url.rstrip('/')}/lists/{quote(lv.address, safe='@')}/archive/"


def with_web(lv: ListView, web: WebSettings) -> ListView:
    """``lv`` naming the list's unsubscribe page (List-Unsubscribe of every copy) and, when
    the web side is on (``web.listen``) and the archive is public, its web archive
    (List-Archive; else the archive-by-mail address)."""
    archive = (archive_url(web.base_url, lv)
               if web.listen and lv.archive is ArchivePolicy.public else None)
    return dataclasses.replace(lv, unsubscribe_url=list_page_url(web.base_url, lv),
                               archive_url=archive)


def header_values(base_url: str, lv: ListView, token: str) -> tuple[bytes, bytes]:
    """The values (after "Name:", CRLF-terminated) of the two RFC 8058 fields of one
    member's copy: List-Unsubscribe and List-Unsubscribe-Post."""
    return ((f" <{page_url(base_url, token)}>,\r\n <mailto:{lv.sub('leave', token)}>\r\n"
             ).encode("ascii"), f" {ONE_CLICK}\r\n".encode("ascii"))


def header_lines(base_url: str, lv: ListView, token: str) -> bytes:
    """The two RFC 8058 header fields of one member's copy, CRLF-terminated."""
    unsub, post = header_values(base_url, lv, token)
    return b"List-Unsubscribe:" + unsub + b"List-Unsubscribe-Post:" + post


def find_for_list(session: Session, secret: str, token: str, list_id: int
                  ) -> Membership | None:
    """find(), when the membership is in ``list_id`` or a list it includes (a copy of a post
    to a parent list names the membership that brought it to the member)."""
    m = find(session, secret, token)
    if m is None or m.list_id == list_id:
        return m
    tree = network.subtree_ids(list_id).subquery()
    inside = session.scalar(select(tree.c.list_id).where(tree.c.list_id == m.list_id).limit(1))
    return m if inside is not None else None


def memberships_for(session: Session, list_id: int, emails: Iterable[str]
                    ) -> dict[str, tuple[int, str]]:
    """address -> (membership id, nonce) for those of ``emails`` that get posts to the list
    as members (one query per 500): its own members, else through a list it includes (that
    membership)."""
    wanted = list(dict.fromkeys(e.lower() for e in emails))
    tree = network.subtree_ids(list_id).subquery()
    out: dict[str, tuple[int, str]] = {}
    for i in range(0, len(wanted), 500):
        # address ids by the addresses (IN a subquery): the planner looks the memberships up
        # by them, instead of walking the whole list and testing each (O(list) per query)
        chunk = select(Address.id).where(Address.email.in_(wanted[i:i + 500]))
        rows = session.execute(
            select(Address.email, Membership.id, Membership.unsub_nonce, Membership.list_id)
            .join(Membership, Membership.address_id == Address.id)
            .where(Membership.list_id.in_(select(tree.c.list_id)),
                   Membership.role == Role.member, Membership.enabled.is_(True),
                   Membership.delivery_mode == DeliveryMode.regular,
                   Membership.address_id.in_(chunk))
            .order_by(Membership.id))
        for email, mid, nonce, lid in rows:
            if email not in out or lid == list_id:      # the list's own membership first
                out[email] = (mid, nonce)
    return out


def tokens_for(session: Session, secret: str, list_id: int, emails: Iterable[str]
               ) -> dict[str, str]:
    """address -> token (memberships_for)."""
    return {e: make_token(secret, mid, nonce)
            for e, (mid, nonce) in memberships_for(session, list_id, emails).items()}


def _strip_fields(head: bytes, names: tuple[bytes, ...]) -> bytes:
    """``head`` (CRLF header block) without the fields named (folded lines included)."""
    out: list[bytes] = []
    skipping = False
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.split(b":", 1)[0].strip().lower() in names
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)


@dataclass
class CopyMaker:
    """Builds the members' copies of one post from its unsigned final bytes: each copy is
    ``DKIM-Signature + head + the member's two fields + rest``."""

    head: bytes                        # header block without List-Unsubscribe*, ends in CRLF
    rest: bytes                        # CRLF + body
    lv: ListView
    base_url: str
    signer: signing.CopySigner | None

    @classmethod
    def of(cls, data: bytes, lv: ListView, base_url: str) -> "CopyMaker":
        end = data.find(b"\r\n\r\n")
        if end < 0:
            raise ValueError("message without a header/body separator")
        head = _strip_fields(data[:end + 2], _DROP)
        rest = data[end + 2:]
        signer = None
        if lv.dkim_key and lv.dkim_selector:
            key = signing.signer(lv.domain, lv.dkim_selector, lv.dkim_key)
            signer = key.for_copies(key.parse_header_block(head), key.body_hash(rest[2:]),
                                    _NAMES)
        return cls(head, rest, lv, base_url, signer)

    def job(self, secret: str, timestamp: int | None = None) -> copies.CopyJob:
        """What copies.make() needs for copies signed now (or at ``timestamp``)."""
        unsub, post = header_values(self.base_url, self.lv, "\0")
        parts = tuple(unsub.split(b"\0"))
        if self.signer is None:
            return copies.CopyJob(secret, parts, post)
        s = self.signer
        head, tail = s.for_stamp(int(time.time()) if timestamp is None else int(timestamp))
        job = copies.CopyJob(secret, parts, post, s.signer.key_pem, s.names,
                             tuple(s.pieces), tuple(s.slots), head, tail)
        return dataclasses.replace(job, canon=job.canonical())

    def own(self, secret: str, members: list[tuple[int, str]],
            on_part: Callable[[int, list[copies.Own]], None] | None = None, *,
            here_only: bool = False) -> list[copies.Own]:
        """(DKIM-Signature field, the member's two fields) of each member's copy, made in
        worker processes when there are many (listserv.delivery.signpool; ``on_part`` and
        ``here_only`` as there)."""
        return signpool.make(self.job(secret), members,
                             self.signer.signer if self.signer is not None else None, on_part,
                             here_only=here_only)

    def copy(self, secret: str, membership_id: int, nonce: str) -> bytes:
        """One member's whole copy."""
        (sig, fields), = copies.make(self.job(secret), [(membership_id, nonce)],
                                     self.signer.signer.rsa_many if self.signer else None)
        return sig + self.head + fields + self.rest
