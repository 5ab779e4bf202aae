"""End-to-end test harness: the real intake + workers in-process, delivering to an SmtpSink.

    def test_something(harness):                      # fixture: SMTP intake on 127.0.0.1:0
        make_list(harness.app, "dev@example.org", members=["a@x.org"], owners=["o@x.org"])
        harness.send(make_message("a@x.org", "dev@example.org"))
        harness.run_until_idle()                      # incoming, archive, delivery all done
        assert harness.sink.recipients() == [...]

Fixtures (registered in tests/integration/conftest.py; other test packages can import them):
``sink`` (an SmtpSink), ``harness`` (SMTP intake) and ``lmtp_harness`` (LMTP intake). The
daemon's loops run in a background thread with the test's App (fake clock, no DNS); the
scheduler (ticks) is off, call ``moderation.tick(harness.app)`` yourself. ``run_until_idle``
also runs worker passes synchronously, so a test never depends on timing.

When listserv.delivery.runner is not available yet, a small synchronous stand-in sends queued
Delivery rows to the sink so that pipeline tests still see real SMTP copies.
"""

from __future__ import annotations

import asyncio
from email import policy
import smtplib
import threading
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any, Iterator

import pytest
from sqlalchemy import func, select

from listserv import jobs, workers
from listserv.core import config, lists
from listserv.delivery import fanout
from listserv.core import members as members_mod
from listserv.core.app import App
from listserv.pipeline import hold_notices, inbound, incoming
from listserv.daemon import Daemon, delivery_runner
from listserv.core.models import (
    ArchiveEntry,
    Delivery,
    DeliveryState,
    Job,
    JobState,
    MailingList,
    OutboundMessage,
    Role,
)
from tests.sink import SmtpSink
from tests.waiting import wait_until


def make_message(sender: str, to: str | list[str], subject: str = "Hello",
                 body: str | None = None,
                 *, cc: str | list[str] | None = None, message_id: str | None = None,
                 **headers: str) -> EmailMessage:
    """A simple text message; extra headers as keyword arguments (Auto_Submitted=...). The
    default body names the Message-ID: the list holds a sender's repeated text."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to if isinstance(to, str) else ", ".join(to)
    if cc:
        msg["Cc"] = cc if isinstance(cc, str) else ", ".join(cc)
    msg["Subject"] = subject
    msg["Message-ID"] = message_id or make_msgid("test", domain="test.example")
    msg["Date"] = "Mon, 02 Nov 2026 09:00:00 +0000"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(body if body is not None else f"Hi.\n\n{msg['Message-ID']}\n")
    return msg


def make_list(app: App, address: str, *, members: list[str] | None = None,
              owners: list[str] | None = None, moderators: list[str] | None = None,
              moderated: list[str] | None = None, **settings: Any) -> int:
    """Create a list with members (role member), owners, moderators and settings; its id."""
    with app.db.unit_of_work() as session:
        ml = lists.create_list(session, address)
        for key, value in settings.items():
            setattr(ml, key, value)
        for email in members or []:
            members_mod.add_member(session, ml, email)
        for email in moderated or []:
            members_mod.add_member(session, ml, email, moderated=True)
        for email in owners or []:
            members_mod.add_member(session, ml, email, role=Role.owner)
        for email in moderators or []:
            members_mod.add_member(session, ml, email, role=Role.moderator)
        return ml.id


class Harness:
    def __init__(self, app: App, sink: SmtpSink, *, protocol: str = "smtp",
                 background: bool = True, journal: bool = False,
                 daemon: dict[str, Any] | None = None, **overrides: Any) -> None:
        """``background=False``: only the intake (and delivery) run by themselves; inbound
        messages stay 'new' until run_until_idle(). ``journal``: the intake writes to its
        journal (listserv.intake.journal). ``daemon``: more Daemon arguments (e.g. the
        roles' ``intake_enabled``, ``wake_workers``, ``wake_listen``). ``overrides``:
        config.replace() keys,
        e.g. ``intake__max_message_size=2000``."""
        settings = config.replace(app.settings, delivery__outbound=sink.url,
                                  intake__protocol=protocol, **overrides)
        self.app = App(settings=settings, db=app.db, spool=app.spool, now=app.now,
                       resolve_txt=app.resolve_txt)
        self.sink = sink
        self.protocol = protocol
        self.host = "127.0.0.1"
        self.real_delivery = delivery_runner() is not None
        self.daemon = Daemon(self.app, **{
            "host": self.host, "port": 0, "scheduler": False, "incoming_worker": background,
            "delivery": self.real_delivery, "journal": journal, **(daemon or {})})
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="listserv-harness", daemon=True)
        self._error: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------
    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.daemon.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by start()/stop()
            self._error = exc
            self.daemon.ready.set()

    def start(self) -> "Harness":
        self._thread.start()
        if not self.daemon.ready.wait(15):
            raise AssertionError("harness daemon did not start")
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        if self._thread.is_alive():
            raise AssertionError("harness daemon did not stop")

    @property
    def port(self) -> int:
        assert self.daemon.bound_port is not None
        return self.daemon.bound_port

    # -- sending ------------------------------------------------------------
    def send(self, msg: EmailMessage | bytes | str, *, mail_from: str | None = None,
             rcpts: list[str] | None = None) -> dict[str, tuple[int, bytes]]:
        """Send over SMTP (or LMTP) with smtplib; returns refused recipients like sendmail().

        Raises smtplib.SMTPRecipientsRefused / SMTPDataError / SMTPResponseException as
        smtplib does. Envelope defaults: From/To/Cc of the message.
        """
        if isinstance(msg, EmailMessage):
            if mail_from is None:
                mail_from = members_addr(str(msg["From"]))
            if rcpts is None:
                rcpts = [a for h in ("To", "Cc") for a in split_addrs(msg.get(h))]
            data: bytes | str = msg.as_bytes(policy=policy.SMTP)
        else:
            data = msg
        assert mail_from is not None and rcpts
        client: smtplib.SMTP
        client = (smtplib.LMTP(self.host, self.port) if self.protocol == "lmtp"
                  else smtplib.SMTP(self.host, self.port, timeout=30))
        with client:
            return client.sendmail(mail_from, rcpts, data)

    def lmtp_transaction(self, mail_from: str, rcpts: list[str], data: bytes
                         ) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
        """One LMTP transaction: (RCPT replies, per-recipient DATA replies)."""
        client = smtplib.LMTP(self.host, self.port)
        try:
            client.ehlo_or_helo_if_needed()
            code, _ = client.mail(mail_from)
            assert code == 250
            rcpt_replies = [(c, m.decode()) for c, m in (client.rcpt(r) for r in rcpts)]
            accepted = sum(1 for c, _ in rcpt_replies if c == 250)
            if not accepted:
                return rcpt_replies, []
            client.putcmd("data")
            code, _ = client.getreply()
            assert code == 354, code
            client.send(smtplib.quotedata(data.decode("utf-8", "surrogateescape"))
                        .encode("utf-8", "surrogateescape") + b"\r\n.\r\n")
            data_replies = []
            for _ in range(accepted):
                c, m = client.getreply()
                data_replies.append((c, m.decode()))
            return rcpt_replies, data_replies
        finally:
            client.close()

    # -- waiting ------------------------------------------------------------
    def run_until_idle(self, timeout: float = 15.0) -> None:
        """Run worker passes until no inbound message, archive entry or due delivery is left."""
        def settled() -> bool:
            busy = jobs.run_jobs_until_idle(self.app, INCOMING_KINDS)
            busy += run_fanouts(self.app)
            busy += jobs.run_jobs_until_idle(self.app, ARCHIVE_JOBS)
            if not self.real_delivery:
                busy += fallback_deliver(self.app)
            else:
                self.daemon.wake()
            return not busy and incoming.pending(self.app) == 0 \
                and deliveries_due(self.app) == 0 and archive_pending(self.app) == 0 \
                and fanouts_pending(self.app) == 0 and hold_notices_pending(self.app) == 0

        try:
            wait_until(settled, timeout, "the pipeline to be idle")
        except AssertionError:
            raise AssertionError(
                f"not idle after {timeout}s: {incoming.pending(self.app)} inbound, "
                f"{deliveries_due(self.app)} deliveries due") from None


# The job kinds run_until_idle drives itself (the periodic passes are left to the test).
INCOMING_KINDS = {k: workers.REGISTRY[k] for k in (inbound.KIND, hold_notices.KIND)}


def members_addr(value: str) -> str:
    from email.utils import parseaddr

    return parseaddr(value)[1]


def split_addrs(value: Any) -> list[str]:
    from email.utils import getaddresses

    return [a for _, a in getaddresses([str(value)]) if a] if value else []


ARCHIVE_JOBS = {workers.ARCHIVE_LIST: workers.REGISTRY[workers.ARCHIVE_LIST]}


def archive_pending(app: App) -> int:
    """Posts waiting to be archived (also those a daemon's archive job is archiving right
    now: it deletes their entries in the transaction that archives them)."""
    with app.db.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(ArchiveEntry)) or 0


def run_fanouts(app: App) -> int:
    """Run the posts' fan-out jobs that are due, one at a time (the daemon's job loops may
    take some of them: the job engine's claims keep each to one worker)."""
    return jobs.run_jobs_until_idle(app, {workers.FANOUT: workers.REGISTRY[workers.FANOUT]})


def fanouts_pending(app: App) -> int:
    with app.db.unit_of_work() as session:
        return fanout.pending(session)


def hold_notices_pending(app: App) -> int:
    """Held posts whose notices' job has not finished (a daemon's loop may be running it)."""
    with app.db.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(Job).where(
            Job.kind == hold_notices.KIND, Job.state != JobState.dead)) or 0


def deliveries_due(app: App) -> int:
    with app.db.unit_of_work() as session:
        return session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.state.in_([DeliveryState.pending, DeliveryState.sending]),
            Delivery.next_attempt_at <= app.now())) or 0


def fallback_deliver(app: App) -> int:
    """Stand-in for listserv.delivery.runner: send due Delivery rows with smtplib (tests only)."""
    outbound = app.settings.outbound
    assert outbound.startswith("smtp://")
    host, _, port = outbound[len("smtp://"):].partition(":")
    sent = 0
    with app.db.unit_of_work() as session:
        rows = session.execute(select(Delivery, OutboundMessage).join(OutboundMessage).where(
            Delivery.state == DeliveryState.pending,
            Delivery.next_attempt_at <= app.now())).all()
        if not rows:
            return 0
        with smtplib.SMTP(host, int(port)) as client:
            for d, out in rows:
                data = app.spool.get(out.spool_sha)
                for rcpt in d.recipients.split("\n"):
                    env = out.envelope_from
                    if out.verp and env:
                        local, _, dom = env.rpartition("@")
                        user, _, rhost = rcpt.rpartition("@")
                        env = f"{local}+{user}={rhost}@{dom}"
                    client.sendmail(env, [rcpt], data)
                d.state = DeliveryState.done
                sent += 1
    return sent


def list_id_of(app: App, address: str) -> int:
    with app.db.unit_of_work() as session:
        ml = lists.find_list(session, address)
        assert ml is not None
        return ml.id


def post_id_of(app: App, address: str) -> int:
    with app.db.unit_of_work() as session:
        return session.scalar(select(MailingList.post_id).where(
            MailingList.id == list_id_of(app, address))) or 0


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    with SmtpSink() as s:
        yield s


@pytest.fixture
def harness(app: App, sink: SmtpSink) -> Iterator[Harness]:
    h = Harness(app, sink).start()
    yield h
    h.stop()


@pytest.fixture
def quiet_harness(app: App, sink: SmtpSink) -> Iterator[Harness]:
    """SMTP intake only: inbound messages wait in state 'new' until run_until_idle()."""
    h = Harness(app, sink, background=False).start()
    yield h
    h.stop()


@pytest.fixture
def lmtp_harness(app: App, sink: SmtpSink) -> Iterator[Harness]:
    h = Harness(app, sink, protocol="lmtp").start()
    yield h
    h.stop()
