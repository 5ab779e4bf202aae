"""ARC (RFC 8617): the list seals each post once, so that receivers can trust the poster's
authentication results that the list's changes (subject prefix, footer, List-* headers)
necessarily break.

    results(raw, resolve_txt, trusted_authserv_id) -> list[str]
        What we found on the post as it reached us: its DKIM signatures verified (dkimpy,
        DNS through the injected resolver), an incoming ARC chain validated, and the trusted
        front MTA's Authentication-Results (``moderation.trusted_authserv_id``) when present.
    seal(data, lst, results, timestamp=None) -> bytes
        ``data`` (the final copy, before the DKIM signature) with an ARC set prepended:
        ARC-Authentication-Results carrying ``results``, ARC-Message-Signature, ARC-Seal,
        signed with the list domain's key. An incoming chain is extended (i=N+1), not
        replaced. The AMS does not cover headers that may differ between copies of a post.

Sealing costs two RSA signatures per post (the copies share the seal). dkimpy assembles the
ARC set; the RSA operations go through OpenSSL (listserv.message.signing's per-key Signer), as for
DKIM: dkimpy's pure-Python RSA would take ~50 ms per post on a busy 2-core machine.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from typing import Any, Callable

import authres
import dkim

from listserv.message import signing
from listserv.message.signing import DnsFunc, _dkimpy_dnsfunc
from listserv.core.views import ListView

log = logging.getLogger(__name__)

# Covered by the ARC-Message-Signature: what a reader sees and what identifies the post.
# Not List-Unsubscribe(-Post): those may carry a per-member token in each copy.
SEALED_HEADERS = [b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"Reply-To",
                  b"In-Reply-To", b"References", b"MIME-Version", b"Content-Type",
                  b"Content-Transfer-Encoding", b"List-Id", b"List-Post", b"List-Help",
                  b"List-Subscribe", b"List-Owner", b"List-Archive"]

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def _header_block(raw: bytes) -> bytes:
    m = _HEADER_END.search(raw)
    return raw[:m.end()] if m else raw


def _own_dkim(raw: bytes, lookup: Callable[..., bytes]) -> list[str]:
    """One ``dkim=...`` result per DKIM-Signature of ``raw`` (none: ``dkim=none``)."""
    d = dkim.DKIM(raw)
    sigs = [v for n, v in d.headers if n.lower() == b"dkim-signature"]
    if not sigs:
        return ["dkim=none"]
    out = []
    for idx, sig in enumerate(sigs[:5]):
        try:
            tags = dkim.util.parse_tag_value(sig)
            domain = tags.get(b"d", b"").decode("ascii", "replace")
            selector = tags.get(b"s", b"").decode("ascii", "replace")
        except Exception:
            out.append("dkim=permerror")
            continue
        try:
            ok = dkim.DKIM(raw).verify(idx=idx, dnsfunc=lookup)
            verdict = "pass" if ok else "fail"
        except dkim.DKIMException:
            verdict = "fail"
        except Exception:     # malformed signature fields
            verdict = "permerror"
        prop = f" header.d={domain}" if domain and _ok_token(domain) else ""
        prop += f" header.s={selector}" if selector and _ok_token(selector) else ""
        out.append(f"dkim={verdict}{prop}")
    return out


def _ok_token(value: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9._-]{1,253}", value))


def _arc_chain(raw: bytes, lookup: Callable[..., bytes]) -> list[str]:
    """``arc=pass|fail`` when the post already carries an ARC chain, else nothing."""
    if not re.search(rb"(?im)^ARC-Seal:", _header_block(raw)):
        return []
    try:
        cv, _, _ = dkim.arc_verify(raw, dnsfunc=lookup)
    except Exception:
        cv = dkim.CV_Fail
    return [f"arc={cv.decode() if isinstance(cv, bytes) else cv}"]


def _trusted(raw: bytes, trusted_authserv_id: str) -> list[str]:
    """The results in Authentication-Results written by our front MTA (except dkim and arc,
    which we establish ourselves)."""
    if not trusted_authserv_id:
        return []
    out: list[str] = []
    for name, value in dkim.DKIM(raw).headers:
        if name.lower() != b"authentication-results":
            continue
        try:
            parsed = authres.AuthenticationResultsHeader.parse(
                "Authentication-Results: " + value.decode("utf-8", "replace").strip())
        except Exception:
            continue
        if parsed.authserv_id.lower() != trusted_authserv_id.lower():
            continue
        out.extend(str(r) for r in parsed.results if r.method not in ("dkim", "arc"))
    return out


def results(raw: bytes, resolve_txt: DnsFunc, trusted_authserv_id: str = "") -> list[str]:
    """Authentication results of the post ``raw`` as received (see the module docstring)."""
    lookup = _dkimpy_dnsfunc(resolve_txt)
    try:
        found = _own_dkim(raw, lookup) + _arc_chain(raw, lookup)
    except Exception as exc:   # unparsable header block: say so, never fail the post
        log.info("ARC: cannot check the incoming post: %s", exc)
        found = ["dkim=permerror"]
    return found + _trusted(raw, trusted_authserv_id)


class _Arc(dkim.ARC):  # type: ignore[misc]
    """dkimpy's ARC signer with the RSA signature made by OpenSSL: ``gen_header`` is
    dkimpy's (rsa-sha256, no "standardize" mode) with its pure-Python RSA call replaced."""

    def __init__(self, message: bytes, rsa: Callable[[bytes], bytes]) -> None:
        super().__init__(message)
        self._rsa_sign = rsa

    def gen_header(self, fields: list[tuple[bytes, bytes]], include_headers: Any,
                   canon_policy: Any, header_name: bytes, pk: Any,
                   standardize: bool = False) -> bytes:
        value = dkim.fold(b"; ".join(b"=".join(x) for x in fields), namelen=len(header_name),
                          linesep=b"\r\n")
        value = dkim.RE_BTAG.sub(b"\\1", value)
        hasher = hashlib.sha256()
        self.signed_headers = dkim.hash_headers(
            hasher, canon_policy, canon_policy.canonicalize_headers(self.headers),
            include_headers, (header_name, b" " + value), dict(fields))
        idx = next(i for i, (k, _) in enumerate(fields) if k == b"b")
        fields[idx] = (b"b", base64.b64encode(self._rsa_sign(hasher.digest())))
        value = b"; ".join(b"=".join(x) for x in fields) + self.linesep
        return bytes(dkim.fold(value, namelen=len(header_name), linesep=self.linesep))


def seal(data: bytes, lst: ListView, found: list[str], timestamp: int | None = None) -> bytes:
    """``data`` with a new ARC set on top (see the module docstring); ``data`` unchanged when
    the list's domain has no key or dkimpy refuses (logged)."""
    if not (lst.dkim_key and lst.dkim_selector):
        return data
    srv_id = lst.domain.encode("ascii")
    ar = b"Authentication-Results: " + srv_id + b"".join(
        b";\r\n " + r.encode("utf-8") for r in (found or ["none"])) + b"\r\n"
    if not found:
        ar = b"Authentication-Results: " + srv_id + b"; none\r\n"
    try:
        key = signing.signer(lst.domain, lst.dkim_selector, lst.dkim_key)
        signer = _Arc(ar + data, key._rsa)
        present = {n.lower() for n, _ in signer.headers}
        include = [h for h in SEALED_HEADERS if h.lower() in present]
        arc_set = signer.sign(lst.dkim_selector.encode("ascii"), srv_id,
                              lst.dkim_key.encode("ascii"), srv_id,
                              include_headers=include, timestamp=timestamp)
    except Exception as exc:
        log.warning("list_id=%s ARC: cannot seal: %s", lst.list_id, exc)
        return data
    if not arc_set:
        log.info("list_id=%s ARC: incoming chain cannot be extended; not sealed", lst.list_id)
        return data
    return b"".join(arc_set) + data
