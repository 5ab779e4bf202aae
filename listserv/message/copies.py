"""The members' own parts of their copies of a post, made in bulk: one-click unsubscribe token,
the two RFC 8058 header fields, and the copy's DKIM signature over them.

Pure functions over plain picklable data (``CopyJob``), importing nothing heavy, so that
listserv.delivery.signpool can run them in worker processes; the same code runs in a thread when there
is no pool. ``CopyJob`` carries what is shared by all copies of the post, prepared once
(listserv.message.signing.CopySigner, listserv.delivery.unsubscribe.CopyMaker): the canonical form of the
shared header fields in h= order with a slot for each of the member's fields, and the
DKIM-Signature field up to ``b=``. A copy then costs an HMAC, two short strings, their relaxed
canonical form, one SHA-256 over ~1 KB and one RSA signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Callable

_UNFOLD = re.compile(rb"\r?\n")
_WSP = re.compile(rb"[\t ]+")

Rsa = Callable[[list[bytes]], list[bytes]]   # SHA-256 digests -> PKCS#1 v1.5 signatures
Own = tuple[bytes, bytes]     # (the copy's DKIM-Signature field or b"", the member's fields)


def mac(secret: str, membership_id: int, nonce: str) -> str:
    """128 bits of HMAC-SHA256 over the membership and its nonce, lower-case base32."""
    digest = hmac.digest(secret.encode(), f"unsubscribe\0{membership_id}\0{nonce}".encode(),
                         "sha256")[:16]
    return base64.b32encode(digest).decode("ascii").rstrip("=").lower()


def make_token(secret: str, membership_id: int, nonce: str) -> str:
    return mac(secret, membership_id, nonce) + str(membership_id)


def relaxed(name: bytes, value: bytes) -> bytes:
    """A header field in DKIM relaxed canonical form (dkimpy's: lower-case name, value
    unfolded, runs of WSP as one space, stripped), CRLF-terminated."""
    return (name.lower().rstrip() + b":" + _WSP.sub(b" ", _UNFOLD.sub(b"", value)).strip()
            + b"\r\n")


def finish(sig_head: bytes, rsa_signature: bytes) -> bytes:
    """The DKIM-Signature field (ending in CRLF): its part up to ``b=`` and the signature."""
    sig = base64.b64encode(rsa_signature)
    return sig_head + b"\r\n ".join(sig[i:i + 70] for i in range(0, len(sig), 70)) + b"\r\n"


def digest(pieces: tuple[bytes, ...] | list[bytes], slots: tuple[int, ...] | list[int],
           own: list[bytes], tail: bytes) -> bytes:
    """SHA-256 of the header hash input: pieces[0] + own[slots[0]] + pieces[1] + ... +
    pieces[-1] + the canonical DKIM-Signature field without b= (``tail``)."""
    hashed = [pieces[0]]
    for k, slot in enumerate(slots):
        hashed += (own[slot], pieces[k + 1])
    hashed.append(tail)
    return hashlib.sha256(b"".join(hashed)).digest()


@dataclass(frozen=True)
class CopyJob:
    """What the copies of one post share (picklable)."""

    secret: str                        # the site secret (tokens)
    unsub: tuple[bytes, ...]           # List-Unsubscribe value, split where the token goes
    post: bytes                        # List-Unsubscribe-Post value
    key_pem: str = ""                  # "": copies are not signed
    names: tuple[bytes, ...] = ()      # the slots' field names (lower case)
    pieces: tuple[bytes, ...] = ()     # canonical shared fields between the slots
    slots: tuple[int, ...] = ()
    sig_head: bytes = b""              # DKIM-Signature field up to b=
    sig_tail: bytes = b""              # its canonical form without b= (hashed last)
    # the relaxed canonical forms of the member's two fields, the first split where the
    # token goes (a token is letters and digits: canonicalisation leaves it as it is)
    canon: tuple[tuple[bytes, ...], bytes] = ((), b"")

    def canonical(self) -> tuple[tuple[bytes, ...], bytes]:
        """``canon``, or (when the job was made without it) computed from the fields."""
        if self.canon[0]:
            return self.canon
        return (tuple(relaxed(self.names[0], b"\0".join(self.unsub)).split(b"\0")),
                relaxed(self.names[1], self.post))


def make(job: CopyJob, members: list[tuple[int, str]], rsa: Rsa | None) -> list[Own]:
    """The own parts of the copies for ``members`` ((membership id, nonce) pairs): the
    copy's DKIM-Signature field (b"" when ``job`` has no key) and the member's two fields."""
    fields: list[bytes] = []
    digests: list[bytes] = []
    signed = bool(job.key_pem)
    if signed:
        (canon_unsub, canon_post) = job.canonical()
    for mid, nonce in members:
        token = make_token(job.secret, mid, nonce).encode("ascii")
        fields.append(b"List-Unsubscribe:" + token.join(job.unsub)
                      + b"List-Unsubscribe-Post:" + job.post)
        if signed:
            own = [token.join(canon_unsub), canon_post]
            digests.append(digest(job.pieces, job.slots, own, job.sig_tail))
    if not job.key_pem:
        return [(b"", f) for f in fields]
    assert rsa is not None, "a signed job needs the RSA function"
    return [(finish(job.sig_head, sig), f) for sig, f in zip(rsa(digests), fields)]
