"""DKIM signing of final message bytes. Signing is always the last step.

dkimpy does the DKIM work (parsing, relaxed canonicalisation, header selection, folding of the
DKIM-Signature field: its own functions, so the result is byte-identical to ``dkim.sign``);
the RSA-SHA256 signature itself is computed by OpenSSL through ``cryptography`` (~0.2 ms
instead of ~5.5 ms for dkimpy's pure-Python RSA with a 2048-bit key). ``Signer`` keeps the
parsed key and signs each distinct content once (a small cache keyed by the bytes' SHA-256):
decorated copies of one post that are identical for a whole batch cost one signature.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Callable, Iterable

import dkim
from dkim.canonicalization import CanonicalizationPolicy

from listserv.message import copies
from listserv.core.errors import UsageError

SIGNED_HEADERS = [b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"Reply-To",
                  b"In-Reply-To", b"References", b"MIME-Version", b"Content-Type",
                  b"List-Id", b"List-Post", b"List-Help", b"List-Subscribe",
                  b"List-Unsubscribe", b"List-Unsubscribe-Post", b"List-Owner",
                  b"List-Archive"]

CANONICALIZE = (b"relaxed", b"relaxed")
_SIG_NAME = b"DKIM-Signature"
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_NEWLINE = re.compile(rb"\r?\n")

DnsFunc = Callable[[str], "str | bytes | list[str] | list[bytes] | None"]


class Signer:
    """Signs for one (domain, selector, key). Thread-safe; keep one per key (``signer()``)."""

    cache_size = 256        # signed contents remembered (sign once per distinct content)
    body_cache_size = 64    # body hashes remembered (per-recipient header variants)

    def __init__(self, domain: str, selector: str, key_pem: str,
                 include_headers: Iterable[bytes] = SIGNED_HEADERS) -> None:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        # The key was validated when it was stored (load_key); skipping OpenSSL's RSA
        # consistency check makes this ~100 ms faster.
        try:
            key = serialization.load_pem_private_key(key_pem.encode(), password=None,
                                                     unsafe_skip_rsa_key_validation=True)
        except (ValueError, TypeError) as exc:
            raise UsageError(f"not a usable PEM private key: {exc}") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise UsageError("DKIM key must be an RSA private key")
        self._key = key
        self.key_pem = key_pem
        self._padding = padding.PKCS1v15()
        self._prehashed = utils.Prehashed(hashes.SHA256())
        self.domain = domain.encode("ascii")
        self.selector = selector.encode("ascii")
        self.include = tuple(h.lower() for h in include_headers)
        if b"from" not in self.include:
            raise UsageError("DKIM: the From header field must be signed")
        self._policy = CanonicalizationPolicy.from_c_value(b"/".join(CANONICALIZE))
        self._include_set = frozenset(self.include)
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._bodies: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.signatures = 0   # RSA operations done (for tests and benchmarks)

    def _rsa(self, digest: bytes) -> bytes:
        self.signatures += 1
        return self._key.sign(digest, self._padding, self._prehashed)

    def rsa_many(self, digests: list[bytes]) -> list[bytes]:
        """RSA signatures of SHA-256 ``digests``, here (see listserv.delivery.signpool for processes)."""
        return [self._rsa(d) for d in digests]

    def _split(self, data: bytes) -> tuple[list[list[bytes]], bytes]:
        """dkim.rfc822_parse, but the body is only line-ending-normalised (not split into
        lines) and only the header block goes through dkimpy's parser."""
        m = _HEADER_END.search(data)
        if m is None or data[:1] in (b"\r", b"\n"):
            headers, body = dkim.rfc822_parse(data)
            return headers, body
        headers, _ = dkim.rfc822_parse(data[:m.end()])
        body = data[m.end():]
        if body.count(b"\n") != body.count(b"\r\n"):
            body = _NEWLINE.sub(b"\r\n", body)
        return headers, body

    def body_hash(self, body: bytes) -> bytes:
        """bh= of a CRLF body; cached, so per-recipient variants of one post (same body,
        different headers) canonicalise the body once."""
        key = hashlib.sha256(body).digest()
        with self._lock:
            cached = self._bodies.get(key)
            if cached is not None:
                self._bodies.move_to_end(key)
                return cached
        bh = base64.b64encode(hashlib.sha256(self._policy.canonicalize_body(body)).digest())
        with self._lock:
            self._bodies[key] = bh
            while len(self._bodies) > self.body_cache_size:
                self._bodies.popitem(last=False)
        return bh

    def header(self, data: bytes, timestamp: int | None = None) -> bytes:
        """The DKIM-Signature header field (ending in CRLF) for ``data``; what
        ``dkim.sign(data, selector, domain, key, canonicalize=(relaxed, relaxed),
        include_headers=...)`` returns, signed through OpenSSL."""
        headers, body = self._split(data)
        return self.signature(headers, self.body_hash(body), timestamp)

    @staticmethod
    def parse_header_block(block: bytes) -> list[list[bytes]]:
        """The header fields of a CRLF header block (dkimpy's [name, value] pairs)."""
        headers, _ = dkim.rfc822_parse(block + b"\r\n")
        return headers

    def tags(self, stamp: int, bodyhash: bytes) -> list[tuple[bytes, bytes]]:
        """The DKIM-Signature tags before ``b=``, in dkimpy's order."""
        return [
            (b"v", b"1"),
            (b"a", b"rsa-sha256"),
            (b"c", self._policy.to_c_value()),
            (b"d", self.domain),
            (b"i", b"@" + self.domain),
            (b"q", b"dns/txt"),
            (b"s", self.selector),
            (b"t", str(stamp).encode("ascii")),
            (b"h", b" : ".join(self.include)),
            (b"bh", bodyhash),
        ]

    def signature(self, headers: list[list[bytes]], bodyhash: bytes,
                  timestamp: int | None = None) -> bytes:
        """The DKIM-Signature field for parsed ``headers`` and a body hash (``body_hash``):
        copies of one post that differ only in a few header fields hash the body once and
        pay per copy only this header hash and one RSA signature."""
        # Only the header fields that can be selected need canonicalising.
        wanted = [h for h in headers if h[0].lower() in self._include_set]
        stamp = int(time.time()) if timestamp is None else int(timestamp)
        fields = self.tags(stamp, bodyhash)
        fields.append((b"b", b"0" * 60))  # as dkimpy: forces b= onto a line of its own before folding
        value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(_SIG_NAME))
        value = dkim.RE_BTAG.sub(b"\\1", value)
        hasher = hashlib.sha256()
        dkim.hash_headers(hasher, self._policy, self._policy.canonicalize_headers(wanted),
                          self.include, (_SIG_NAME, b" " + value), None)
        fields[-1] = (b"b", base64.b64encode(self._rsa(hasher.digest())))
        value = dkim.fold(b"; ".join(b"=".join(x) for x in fields) + b"\r\n",
                          namelen=len(_SIG_NAME))
        return _SIG_NAME + b": " + value

    def for_copies(self, headers: list[list[bytes]], bodyhash: bytes,
                   names: tuple[bytes, ...]) -> "CopySigner":
        """A CopySigner for copies of one message: the parsed ``headers`` they share, the
        body hash, and the ``names`` of the fields each copy adds after them."""
        return CopySigner(self, headers, bodyhash, names)

    def sign(self, data: bytes, timestamp: int | None = None) -> bytes:
        """``data`` with a DKIM-Signature prepended; identical ``data`` is signed only once
        (while it stays in the cache)."""
        key = hashlib.sha256(data).digest()
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached + data
        sig = self.header(data, timestamp)
        with self._lock:
            self._cache[key] = sig
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return sig + data


class CopySigner:
    """Signs many copies of one message that differ only in a few header fields, added by
    each copy after the shared ones (a member's own List-Unsubscribe, ...).

    Built once per message: the shared fields are selected and canonicalised once, in h=
    order, with a slot for each per-copy field; the DKIM-Signature field without b= is built
    and canonicalised once per second (its t=). A copy then costs the canonical form of its
    own fields, one SHA-256 over ~1 KB and one RSA signature (listserv.message.copies, which can run
    in worker processes: listserv.delivery.signpool)."""

    def __init__(self, signer: Signer, headers: list[list[bytes]], bodyhash: bytes,
                 names: tuple[bytes, ...]) -> None:
        self.signer = signer
        self.bodyhash = bodyhash
        self.names = tuple(n.lower() for n in names)
        policy = signer._policy
        if policy.header_algorithm.name != b"relaxed":
            raise ValueError("CopySigner canonicalises its own fields as relaxed")
        shared = [h for h in headers if h[0].lower() not in self.names]
        slots: list[list[bytes] | int] = [*shared, *range(len(self.names))]

        def name_of(x: list[bytes] | int) -> bytes:
            return self.names[x] if isinstance(x, int) else x[0].lower()

        # dkim.select_headers over shared fields + slots: per h= name, the last unused one;
        # hashed = pieces[0] + own[slots[0]] + pieces[1] + ... + pieces[-1] (+ the signature)
        self.slots: list[int] = []
        self.pieces: list[bytes] = [b""]
        last: dict[bytes, int] = {}
        for h in signer.include:
            i = last.get(h, len(slots))
            while i > 0:
                i -= 1
                if name_of(slots[i]) == h:
                    x = slots[i]
                    if isinstance(x, int):
                        self.slots.append(x)
                        self.pieces.append(b"")
                    else:
                        (n, v), = policy.canonicalize_headers([x])
                        self.pieces[-1] += n + b":" + v
                    break
            last[h] = i
        self._stamp: tuple[int, bytes, bytes] | None = None   # (t=, output head, hash tail)
        self._lock = threading.Lock()

    def for_stamp(self, stamp: int) -> tuple[bytes, bytes]:
        """(the DKIM-Signature field up to ``b=``, its canonical form for the hash) with
        t=``stamp``."""
        cached = self._stamp
        if cached is not None and cached[0] == stamp:
            return cached[1], cached[2]
        s = self.signer
        fields = s.tags(stamp, self.bodyhash)
        head = (_SIG_NAME + b": " + dkim.fold(b"; ".join(b"=".join(x) for x in fields) + b";",
                                              namelen=len(_SIG_NAME)) + b"\r\n b=")
        value = dkim.RE_BTAG.sub(b"\\1", head[len(_SIG_NAME) + 1:])
        (n, v), = s._policy.canonicalize_headers([(_SIG_NAME, value)])
        tail = n + b":" + v.rstrip()
        with self._lock:
            self._stamp = (stamp, head, tail)
        return head, tail

    def signature(self, values: list[bytes], timestamp: int | None = None) -> bytes:
        """The DKIM-Signature field (ending in CRLF) of the copy whose own fields (``names``,
        in order) have these raw ``values`` (as after "Name:", folding and CRLF included),
        signed here."""
        head, tail = self.for_stamp(int(time.time()) if timestamp is None else int(timestamp))
        own = [copies.relaxed(n, v) for n, v in zip(self.names, values)]
        digest = copies.digest(self.pieces, self.slots, own, tail)
        return copies.finish(head, self.signer._rsa(digest))


@lru_cache(maxsize=64)
def signer(domain: str, selector: str, key_pem: str) -> Signer:
    """The shared Signer of one domain key (parsed once per process)."""
    return Signer(domain, selector, key_pem)


def sign(data: bytes, domain: str, selector: str, key_pem: str) -> bytes:
    """Return ``data`` with a DKIM-Signature header prepended (relaxed/relaxed, rsa-sha256)."""
    return signer(domain, selector, key_pem).sign(data)


def sign_dkimpy(data: bytes, domain: str, selector: str, key_pem: str) -> bytes:
    """Reference: the same signature made entirely by dkimpy (pure-Python RSA). For the
    benchmark and the equivalence test."""
    sig = dkim.sign(data, selector.encode(), domain.encode(), key_pem.encode(),
                    canonicalize=CANONICALIZE, include_headers=SIGNED_HEADERS)
    return sig + data


def _dkimpy_dnsfunc(dnsfunc: DnsFunc) -> Callable[..., bytes]:
    """Adapt ``dnsfunc(name) -> TXT`` (str/bytes, a list of strings, or None) to dkimpy's
    ``dnsfunc(name: bytes, timeout=...) -> bytes``. Names are passed without trailing dot."""
    def lookup(name: bytes, timeout: float = 5) -> bytes:
        answer = dnsfunc(name.decode("ascii").rstrip("."))
        if answer is None:
            return b""
        if isinstance(answer, (list, tuple)):
            answer = answer[0] if answer else b""
        return answer.encode("ascii") if isinstance(answer, str) else bytes(answer)
    return lookup


def verify(data: bytes, dnsfunc: DnsFunc) -> bool:
    """Does the first (topmost) DKIM-Signature of ``data`` verify? ``dnsfunc(name)`` returns
    the TXT record at ``name`` (e.g. ``sel._domainkey.example.org``)."""
    return bool(dkim.verify(data, dnsfunc=_dkimpy_dnsfunc(dnsfunc)))


def verified_domains(data: bytes, dnsfunc: DnsFunc) -> list[str]:
    """The d= domains (lower case) of every DKIM-Signature of ``data`` that verifies: for
    checks such as "signed by the From domain" on a moderator's reply."""
    lookup = _dkimpy_dnsfunc(dnsfunc)
    d = dkim.DKIM(data)
    count = sum(1 for name, _ in d.headers if name.lower() == b"dkim-signature")
    out: list[str] = []
    for idx in range(count):
        try:
            ok = dkim.DKIM(data).verify(idx=idx, dnsfunc=lookup)
            fields = dkim.util.parse_tag_value(
                [v for n, v in d.headers if n.lower() == b"dkim-signature"][idx])
        except dkim.DKIMException:
            continue
        except Exception:   # malformed tags, undecodable values
            continue
        if ok:
            domain = fields.get(b"d", b"").decode("ascii", "replace").lower()
            if domain and domain not in out:
                out.append(domain)
    return out


def generate_key() -> str:
    """A new RSA-2048 private key, PEM (PKCS#8)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def load_key(pem: str) -> str:
    """Validate an RSA private key PEM; return it normalised. UsageError when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"not a usable PEM private key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UsageError("DKIM key must be an RSA private key")
    if key.key_size < 1024:
        raise UsageError(f"DKIM key too short ({key.key_size} bits)")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def dns_record(key_pem: str) -> str:
    """The p= value of the TXT record for the public half of ``key_pem``."""
    import base64

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_pem.encode(), password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return "v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode()
