"""Notices the list sends to people (welcome, held, rejected, confirmations, warnings...).

A notice template (``templates/notice/<audience>/<event>.txt.j2``) renders header lines first
(``Subject: ...``, optionally more), a blank line, then the body. build_notice() turns that into
an EmailMessage; send_notice() signs it with the list domain's key and queues it.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from typing import Any, Callable, Iterable

from sqlalchemy.orm import Session

from listserv.message import headers, lines, signing, untrusted
from listserv.core.app import App
from listserv.delivery.outbound import queue_message
from listserv.core.templating import render
from listserv.core.views import ListView
from listserv.message.parse import to_bytes


HEADER_LIMIT = 300      # characters of one rendered notice header value


def build_notice(app: App, lst: ListView | None, template: str, to: str | list[str],
                 context: dict[str, Any], *, reply_to: str | None = None,
                 in_reply_to: str | None = None, auto_submitted: str = "auto-generated",
                 from_addr: str | None = None) -> EmailMessage:
    ctx: dict[str, Any] = {"list": lst, "settings": app.settings, **context}
    text = render(app.settings.data_dir, template, ctx,
                  domain=lst.domain if lst else None,
                  list_address=lst.address if lst else None)
    # Text from a message (a Subject, an excerpt) may hold lone surrogates: replace, never
    # raise. Header lines are split on LF only and each is one capped line, so an echoed
    # Subject can never add a header.
    head, _, body = untrusted.clean_text(text).partition("\n\n")
    msg = EmailMessage()
    for line in head.split("\n"):
        name, _, value = line.partition(":")
        if name.strip() and value.strip():
            name, value = name.strip(), untrusted.one_line(value, HEADER_LIMIT)
            msg[name] = headers.unstructured(name, value) if name == "Subject" else value
    if "Subject" not in msg:
        raise ValueError(f"notice template {template} renders no Subject: header")
    domain = lst.domain if lst else app.settings.site_domain
    if from_addr is None:
        if lst:
            from_addr = email.utils.formataddr((f"{lst.display_name} list", lst.owner))
        else:
            from_addr = f"listserv@{domain}"
    msg["From"] = from_addr
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    msg["Date"] = email.utils.format_datetime(app.now())
    msg["Message-ID"] = email.utils.make_msgid("notice", domain=domain)
    if reply_to:
        msg["Reply-To"] = reply_to
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
        msg["References"] = in_reply_to
    msg["Auto-Submitted"] = auto_submitted
    if lst:
        msg["List-Id"] = f"<{lst.list_id}>"
    msg.set_content(body, charset="utf-8")
    return msg


def serialise(msg: EmailMessage, seal: Callable[[bytes], bytes] | None = None) -> bytes:
    """The bytes on the wire (CRLF line ends) with ``seal`` applied (the post's ARC set),
    not DKIM-signed."""
    data = lines.on_the_wire(to_bytes(msg, msg.policy.clone(linesep="\r\n")))
    return seal(data) if seal is not None else data


def finalise(msg: EmailMessage, lst: ListView | None,
             seal: Callable[[bytes], bytes] | None = None) -> bytes:
    """Serialise (CRLF), apply ``seal`` (the post's ARC set), and DKIM-sign with the list
    domain's key when it has one."""
    data = serialise(msg, seal)
    if lst and lst.dkim_key and lst.dkim_selector:
        data = signing.sign(data, lst.domain, lst.dkim_selector, lst.dkim_key)
    return data


def send_notice(session: Session, app: App, lst: ListView | None, msg: EmailMessage,
                recipients: Iterable[str], *, null_sender: bool = False) -> None:
    """Queue a notice. Its envelope sender is the list's -bounces address (so failures come
    back to the bounce processor, never to a person), or null when ``null_sender``."""
    queue_notice(session, app, lst, finalise(msg, lst), str(msg["Message-ID"]), recipients,
                 null_sender=null_sender)


def queue_notice(session: Session, app: App, lst: ListView | None, data: bytes,
                 message_id: str, recipients: Iterable[str], *,
                 null_sender: bool = False) -> None:
    """send_notice() for a notice finalised already (``data``: finalise()'s bytes)."""
    env_from = "" if null_sender or lst is None else lst.bounces
    queue_message(session, app, data, list(recipients), kind="notice",
                  envelope_from=env_from, list_id=lst.id if lst else None,
                  message_id=message_id)
