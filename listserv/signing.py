"""DKIM signing (dkimpy) of final message bytes. Signing is always the last step."""

from __future__ import annotations

import dkim

from listserv.errors import UsageError

SIGNED_HEADERS = [b"From", b"To", b"Cc", b"Subject", b"Date", b"Message-ID", b"Reply-To",
                  b"In-Reply-To", b"References", b"MIME-Version", b"Content-Type",
                  b"List-Id", b"List-Post", b"List-Help", b"List-Subscribe",
                  b"List-Unsubscribe", b"List-Unsubscribe-Post", b"List-Owner",
                  b"List-Archive"]


def sign(data: bytes, domain: str, selector: str, key_pem: str) -> bytes:
    """Return ``data`` with a DKIM-Signature header prepended (relaxed/relaxed, rsa-sha256)."""
    sig = dkim.sign(data, selector.encode(), domain.encode(), key_pem.encode(),
                    canonicalize=(b"relaxed", b"relaxed"), include_headers=SIGNED_HEADERS)
    return sig + data


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
