"""Message bytes in and out: every parse and every serialisation of a message goes through here.

    parse(raw) -> EmailMessage            the whole message (untrusted.POLICY)
    parse_headers(raw) -> EmailMessage    the header block only, the body left unparsed
    to_bytes(msg, policy=None) -> bytes   the bytes to store or send (CRLF by default)

untrusted.POLICY is email.policy.default with hostile Date values read as invalid, so a
stranger's header never raises while it is read. to_bytes() writes text that a transform
decoded from hostile 8-bit input (which the generator cannot encode) as its UTF-8 bytes.
The cheap compat32 reader of archived mail stays with the archive (listserv.archive.read).
"""

from __future__ import annotations

from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import Policy

from listserv.message import untrusted


def parse(raw: bytes) -> EmailMessage:
    """The full message object of ``raw``."""
    return BytesParser(policy=untrusted.POLICY).parsebytes(raw)  # type: ignore[return-value]


def parse_headers(raw: bytes) -> EmailMessage:
    """The header fields of ``raw``; the body stays one unparsed string payload."""
    return BytesParser(policy=untrusted.POLICY).parsebytes(  # type: ignore[return-value]
        raw, headersonly=True)


def to_bytes(msg: EmailMessage, policy: Policy | None = None) -> bytes:
    """``msg`` as bytes under ``policy`` (default: untrusted.SMTP_POLICY, CRLF line ends),
    its header fields read with untrusted.POLICY's registry whatever ``policy`` says: a
    message built with the default policy (a digest) carries posts' hostile fields too."""
    policy = untrusted.SMTP_POLICY if policy is None else untrusted.safe(policy)
    try:
        return msg.as_bytes(policy=policy)
    except (UnicodeEncodeError, IndexError, ValueError, TypeError, AttributeError):
        # hostile text a transform decoded, or a field the email package fails to refold:
        # written as UTF-8 bytes, and the field as encoded words (untrusted.serialisable)
        return untrusted.serialisable(msg).as_bytes(policy=policy)
