"""DKIM signing speed: pure dkimpy (pure-Python RSA) against listserv.message.signing (dkimpy
canonicalisation + OpenSSL RSA through `cryptography`), and the per-content cache.

    python bench/sign.py [--seconds 2]

Prints signatures/s for each way on a typical prepared list post (RSA-2048, relaxed/relaxed).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

from listserv.message import signing

DOMAIN, SELECTOR = "example.org", "list2026"


def message(n: int = 0, body_n: int | None = None) -> bytes:
    body = (f"Hello list {n if body_n is None else body_n},\r\n\r\n" + "A line of a typical post, some seventy characters long, "
            "or thereabouts.\r\n" * 40 + "\r\n-- \r\nDev mailing list\r\n")
    return (f"From: Alice <alice@example.com>\r\nTo: dev@example.org\r\n"
            f"Subject: [Dev] Re: benchmark {n}\r\nDate: Mon, 02 Nov 2026 09:00:00 +0000\r\n"
            f"Message-ID: <bench{n}@example.com>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n"
            f"List-Id: Dev <dev.example.org>\r\nList-Post: <mailto:dev@example.org>\r\n"
            f"List-Unsubscribe: <mailto:dev-leave@example.org>\r\nPrecedence: list\r\n"
            f"\r\n{body}").encode()


def rate(label: str, fn: Callable[[int], object], seconds: float) -> float:
    fn(0)   # warm up (key parsing, imports)
    n, start = 0, time.perf_counter()
    while True:
        fn(n)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds and n >= 5:
            break
    per_s = n / elapsed
    print(f"{label:<58} {per_s:10.0f} signatures/s  ({1000 / per_s:.3f} ms each)")
    return per_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    args = ap.parse_args()
    key = signing.generate_key()
    record = signing.dns_record(key)
    msgs = [message(i) for i in range(64)]
    for m in msgs[:3]:   # both ways must produce signatures that verify
        assert signing.verify(signing.sign_dkimpy(m, DOMAIN, SELECTOR, key), lambda n: record)
        assert signing.verify(signing.Signer(DOMAIN, SELECTOR, key).sign(m), lambda n: record)

    size = len(msgs[0])
    print(f"RSA-2048, relaxed/relaxed, {size} byte message, {len(signing.SIGNED_HEADERS)} "
          f"signed header names")
    before = rate("before: dkimpy dkim.sign (pure-Python RSA)",
                  lambda i: signing.sign_dkimpy(msgs[i % 64], DOMAIN, SELECTOR, key),
                  args.seconds)
    fresh = signing.Signer(DOMAIN, SELECTOR, key)
    fresh.cache_size = fresh.body_cache_size = 0
    after = rate("after: listserv.message.signing.Signer, every message distinct",
                 lambda i: fresh.sign(msgs[i % 64]), args.seconds)
    variants = [message(i, body_n=0) for i in range(64)]
    per_rcpt = signing.Signer(DOMAIN, SELECTOR, key)
    per_rcpt.cache_size = 0
    rate("after: same body, headers differ (per-recipient copies)",
         lambda i: per_rcpt.sign(variants[i % 64]), args.seconds)
    cached = signing.Signer(DOMAIN, SELECTOR, key)
    hits = rate("after: same content again (sign once per distinct content)",
                lambda i: cached.sign(msgs[0]), args.seconds)
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, utils
    raw = fresh._key
    rate("reference: the bare OpenSSL RSA-2048 signature",
         lambda i: raw.sign(b"%32d" % i, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())),
         args.seconds)
    print(f"speed-up: x{after / before:.1f} distinct, x{hits / before:.0f} repeated content")


if __name__ == "__main__":
    main()
