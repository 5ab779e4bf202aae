"""Helpers for the moderation/commands tests: lists, inbound mail, the outbound queue."""

from __future__ import annotations

import email.utils
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from sqlalchemy import select

from listserv import jobs, workers
from listserv.core import lists, members
from listserv.pipeline import commands, hold_notices, moderation
from listserv.core.app import App
from listserv.core.models import Delivery, InboundMessage, MailingList, OutboundMessage, Role


def make_list(app: App, address: str = "dev@example.org", *, owners: tuple[str, ...] = (),
              moderators: tuple[str, ...] = (), people: tuple[str, ...] = (),
              **settings: Any) -> int:
    with app.db.unit_of_work() as s:
        ml = lists.create_list(s, address)
        for o in owners:
            members.add_member(s, ml, o, role=Role.owner)
        for m in moderators:
            members.add_member(s, ml, m, role=Role.moderator)
        for p in people:
            members.add_member(s, ml, p)
        for k, v in settings.items():
            setattr(ml, k, v)
        return ml.id


def message(sender: str, to: str, subject: str = "hello", body: str | None = None,
            **headers: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = email.utils.format_datetime(email.utils.localtime())
    msg["Message-ID"] = email.utils.make_msgid(domain="test.example")
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    msg.set_content(body if body is not None else f"Hi all\n\n{msg['Message-ID']}\n")
    return msg.as_bytes()


def parse(data: bytes) -> EmailMessage:
    return BytesParser(policy=policy.default).parsebytes(data)  # type: ignore[return-value]


def _inbound(s: Any, app: App, list_id: int, sub: str, data: bytes, mail_from: str,
             extra: str | None) -> InboundMessage:
    msg = parse(data)
    _, from_addr = email.utils.parseaddr(str(msg.get("From", "")))
    ib = InboundMessage(list_id=list_id, subaddress=sub, extra=extra, rcpt=f"{sub}@x",
                        mail_from=mail_from, message_id=str(msg.get("Message-ID", "")),
                        from_addr=from_addr.lower(), subject=str(msg.get("Subject", "")),
                        size=len(data), spool_sha=app.spool.put(data), received_at=app.now())
    s.add(ib)
    s.flush()
    return ib


def post_held(app: App, list_id: int, data: bytes, mail_from: str = "poster@out.example",
              reasons: tuple[str, ...] = ("Post by non-member",)) -> int:
    with app.db.unit_of_work() as s:
        ib = _inbound(s, app, list_id, "post", data, mail_from, None)
        held_id = moderation.hold(s, app, ib, list(reasons)).id
    run_hold_notices(app)
    return held_id


def command(app: App, list_id: int, sub: str, data: bytes, *, mail_from: str | None = None,
            extra: str | None = None) -> InboundMessage:
    if mail_from is None:
        _, mail_from = email.utils.parseaddr(str(parse(data).get("From", "")))
    with app.db.unit_of_work() as s:
        ib = _inbound(s, app, list_id, sub, data, mail_from, extra)
        commands.handle_mail(s, app, ib, parse(data), data)   # as the incoming worker does
        return ib


@dataclass
class Sent:
    id: int
    recipients: list[str]
    envelope_from: str
    msg: EmailMessage


class Outbox:
    """Reads the outbound queue; ``new()`` returns what was queued since the last call."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.seen = 0

    def all(self) -> list[Sent]:
        run_fanouts(self.app)        # accepted posts: their recipients are queued by a job
        with self.app.db.unit_of_work() as s:
            out = []
            for ob in s.scalars(select(OutboundMessage).order_by(OutboundMessage.id)):
                rcpts = [r for d in s.scalars(select(Delivery).where(
                    Delivery.outbound_id == ob.id)) for r in d.recipients.split("\n")]
                out.append(Sent(ob.id, rcpts, ob.envelope_from,
                                parse(self.app.spool.get(ob.spool_sha))))
            return out

    def new(self) -> list[Sent]:
        items = [m for m in self.all() if m.id > self.seen]
        if items:
            self.seen = items[-1].id
        return items


def run_hold_notices(app: App) -> int:
    """Run the jobs that send held posts' notices, as a daemon would."""
    return jobs.run_jobs_until_idle(app, {hold_notices.KIND: workers.REGISTRY[hold_notices.KIND]})


def run_fanouts(app: App) -> int:
    """Run the fan-out jobs of accepted posts (one job at a time), as a daemon would."""
    return jobs.run_jobs_until_idle(app, {workers.FANOUT: workers.REGISTRY[workers.FANOUT]})


def token_of(msg: EmailMessage) -> str:
    reply_to = str(msg["Reply-To"])
    local = reply_to.split("@")[0]
    return local.split("+", 1)[1]


def list_obj(s: Any, list_id: int) -> MailingList:
    return s.get_one(MailingList, list_id)
