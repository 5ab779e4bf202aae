"""SMTP/LMTP intake: route recipients at RCPT, store mail durably at DATA, answer fast.

Only cheap, deterministic checks happen here; rules, moderation and fan-out run later in the
``incoming`` job (listserv.pipeline.incoming). Every database call runs in the intake's own
threads so that one slow session never stalls the event loop, and no other work of the
daemon waits in front of it. A message's bytes (listserv.core.spool), one InboundMessage row
per recipient list address and their jobs are committed in one transaction before the 250
is sent.

This module is one of the two places that format SMTP replies (the other is aiosmtpd itself):
inside, code raises ListservError subclasses carrying their SMTP code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import email.utils
import functools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP
from sqlalchemy import Table, bindparam, cast, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from listserv import __version__
from listserv.core import addresses, lists
from listserv.core import spool as spool_mod
from listserv.core import writegate
from listserv.core.app import App
from listserv.core.config import Settings
from listserv.core.errors import (
    ListservError,
    MalformedMessage,
    MessageTooBig,
    StructureRefused,
    TemporaryFailure,
    UnknownRecipient,
)
from listserv.core.models import (
    InboundMessage, InboundState, Job, MailingList,
)
from listserv.message import replies, untrusted
from listserv.message.parse import parse_headers
from listserv.pipeline import inbound

log = logging.getLogger(__name__)

POSITIVE_TTL = 5.0   # seconds a known list address is trusted without asking the database
NEGATIVE_TTL = 1.0   # seconds an unknown one is remembered
OK_RCPT = "250 2.1.5 OK"
OK_DATA = "250 2.0.0 Message accepted for delivery"
TOO_MANY_RECIPIENTS = "452 4.5.3 Too many recipients"
INTAKE_THREADS = 8   # the intake's own threads (commits, RCPT lookups)

R = TypeVar("R")


@dataclass(frozen=True)
class Resolved:
    """One accepted envelope recipient: the list row id and how the address was read."""

    rcpt: str
    list_id: int
    route: addresses.Route


class Router:
    """RCPT-time routing (addresses.route_candidates + lists.find_list) with a small cache."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._cache: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    _MISS = -1

    def _cached(self, address: str, now: float) -> int | None:
        """The cached list id of ``address`` (None: not a list), or _MISS."""
        with self._lock:
            hit = self._cache.get(address)
        return hit[1] if hit is not None and hit[0] > now else self._MISS

    def _list_id(self, address: str) -> int | None:
        now = time.monotonic()
        hit = self._cached(address, now)
        if hit != self._MISS:
            return hit
        with self.app.db.unit_of_work() as session:
            ml = lists.find_list(session, address)
            list_id = ml.id if ml is not None else None
        with self._lock:
            if len(self._cache) > 10000:
                self._cache.clear()
            ttl = POSITIVE_TTL if list_id is not None else NEGATIVE_TTL
            self._cache[address] = (now + ttl, list_id)
        return list_id

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def cached(self, rcpt: str) -> Resolved | None:
        """resolve() from the cache alone, without blocking: None when a reading of ``rcpt``
        would need the database (then call resolve() in a thread)."""
        now = time.monotonic()
        return self._first(rcpt, lambda address: self._cached(address, now))

    def resolve(self, rcpt: str) -> Resolved:
        """The route of ``rcpt`` or UnknownRecipient (550 5.1.1). Blocking: call in a thread."""
        resolved = self._first(rcpt, self._list_id)
        assert resolved is not None          # _list_id never answers _MISS
        return resolved

    def _first(self, rcpt: str, list_id_of: Callable[[str], int | None]) -> Resolved | None:
        """The first reading of ``rcpt`` whose list exists (by ``list_id_of``); None when
        ``list_id_of`` answered _MISS first; UnknownRecipient when none exists."""
        for route in addresses.route_candidates(rcpt):
            list_id = list_id_of(route.list_address)
            if list_id == self._MISS:
                return None
            if list_id is not None:
                return Resolved(rcpt, list_id, route)
        raise UnknownRecipient(f"no such list address <{rcpt}>")


@dataclass(frozen=True)
class Inspected:
    raw: bytes
    message_id: str
    from_addr: str          # '' when the From is missing, unparseable or ambiguous
    subject: str
    has_from: bool = True   # a From header that at least looks like an address


def _clip(value: str, size: int) -> str:
    return value if len(value) <= size else value[:size]


def inspect_message(raw: bytes, site_domain: str, *, require_from: bool = True) -> Inspected:
    """Parse enough of ``raw`` to index it; add a Message-ID when it has none.

    Raises MalformedMessage (550 5.6.0) for mail we cannot work with: no header block, no
    usable From address.
    """
    try:
        msg = parse_headers(raw)
        # The sender is the raw addr-spec of exactly one From (replies.sender_address); a
        # From that only looks like an address is accepted and held by the rules, with why.
        from_addr = replies.sender_address(msg)[0]
        has_from = bool(from_addr) or any("@" in v for v in replies.raw_values(msg, "From")) \
            or "@" in str(msg.get("From") or "")
        subject = str(msg.get("Subject") or "")
        message_id = str(msg.get("Message-ID") or "").strip()
    except Exception as exc:  # the email package raises many kinds on hostile input
        raise MalformedMessage(f"cannot parse message headers: {type(exc).__name__}") from None
    if not msg.keys():
        raise MalformedMessage("message has no header block")
    if require_from and not has_from:
        raise MalformedMessage("message has no usable From: address")
    if not message_id:
        message_id = email.utils.make_msgid("listserv", domain=site_domain)
        raw = f"Message-ID: {message_id}\r\n".encode("ascii") + raw
    return Inspected(raw, _clip(untrusted.one_line(message_id, 0), 998),
                     _clip(untrusted.clean_text(from_addr), 400), untrusted.one_line(subject),
                     has_from)




@dataclass(frozen=True)
class Spooled:
    """A message of one DATA, inspected once; record() stores its bytes (listserv.core.spool)
    with its rows."""

    mail_from: str          # the reverse-path without brackets, '' for the null one
    info: Inspected
    sha: str

    def check_from(self, routes: list[Resolved]) -> None:
        """MalformedMessage when a route other than -bounces needs a From: it does not have."""
        if not self.info.has_from and any(
                r.route.subaddress != addresses.BOUNCES for r in routes):
            raise MalformedMessage("message has no usable From: address")


def spool(app: App, mail_from: str, raw: bytes, *, require_from: bool) -> Spooled:
    """Check the size and inspect ``raw`` (adding a Message-ID when missing). Blocking.

    Done once per DATA, also when LMTP then records it for several lists: every list sees
    the same bytes and Message-ID (the cross-list duplicate check relies on it)."""
    limit = app.settings.intake.max_message_size
    if limit and len(raw) > limit:
        raise MessageTooBig(f"message size {len(raw)} exceeds the limit of {limit} bytes")
    mail_from = (mail_from or "").strip()
    if mail_from in ("<>", ""):
        mail_from = ""          # the null reverse-path
    elif mail_from.startswith("<") and mail_from.endswith(">"):
        mail_from = mail_from[1:-1]
    shape = untrusted.shape(raw)
    if shape.depth > untrusted.MAX_MIME_DEPTH:
        raise StructureRefused(f"MIME parts nested more than {untrusted.MAX_MIME_DEPTH} "
                               "levels deep")
    if shape.parts > untrusted.MAX_MIME_PARTS:
        raise StructureRefused(f"more than {untrusted.MAX_MIME_PARTS} MIME parts")
    if shape.field > untrusted.MAX_HEADER_FIELD:
        raise MessageTooBig(f"a header field of {shape.field} bytes exceeds the limit of "
                            f"{untrusted.MAX_HEADER_FIELD} bytes")
    if shape.head > untrusted.MAX_HEADER_SECTION:
        raise MessageTooBig(f"the message header of {shape.head} bytes exceeds the limit of "
                            f"{untrusted.MAX_HEADER_SECTION} bytes")
    info = inspect_message(raw, app.settings.site_domain, require_from=require_from)
    return Spooled(mail_from, info, spool_mod.sha_of(info.raw))


Route = tuple[int, str, str | None, str]   # list id, subaddress, extra, rcpt


def distinct_routes(resolved: list[Resolved]) -> list[Route]:
    """One (list id, subaddress, extra, rcpt) per distinct list address of ``resolved``."""
    seen: set[tuple[int, str, str | None]] = set()
    routes: list[Route] = []
    for r in resolved:
        key = (r.list_id, r.route.subaddress, r.route.extra)
        if key not in seen:
            seen.add(key)
            routes.append((*key, r.rcpt))
    return routes


# The row of each message taken, inserted before its 250: in Core on the table and built
# once (the ORM's unit of work and a statement built per message cost more than the INSERT).
_INSERT_INBOUND = insert(InboundMessage.__table__).returning(  # type: ignore[arg-type]
    InboundMessage.__table__.c.id)


def _row(route: Route, *, raw: bytes, sha: str, mail_from: str, message_id: str,
         from_addr: str, subject: str, received_at: dt.datetime) -> dict[str, Any]:
    """The InboundMessage of ``route``, column by column."""
    list_id, subaddress, extra, rcpt = route
    return {"list_id": list_id, "subaddress": subaddress,
            "extra": _clip(extra, 400) if extra else None, "rcpt": _clip(rcpt, 400),
            "mail_from": _clip(mail_from, 400), "message_id": message_id,
            "from_addr": from_addr, "subject": subject, "size": len(raw), "spool_sha": sha,
            "received_at": received_at, "state": InboundState.new, "attempts": 0}


def add_rows(session: Session, app: App, *, raw: bytes, sha: str, mail_from: str,
             message_id: str, from_addr: str, subject: str, received_at: dt.datetime,
             routes: list[Route]) -> None:
    """In the caller's transaction: the message's bytes and, per route, its InboundMessage
    and the job that will process it (listserv.pipeline.inbound)."""
    app.spool.put(raw, session=session)
    for route in routes:
        row_id = session.execute(_INSERT_INBOUND, _row(
            route, raw=raw, sha=sha, mail_from=mail_from, message_id=message_id,
            from_addr=from_addr, subject=subject, received_at=received_at)).scalar_one()
        inbound.enqueue(session, app, row_id, route[0], route[1])


_ONE_STATEMENT: dict[Any, Any] = {}
_JOB = "job_"           # the prefix of the job's parameters in _one_statement()


def _one_statement(blob: Any, row_columns: list[str], job_columns: list[str]) -> Any:
    """PostgreSQL: what add_rows() writes for one list address as one statement: the bytes
    (``blob``, Spool.part()'s statement), the InboundMessage (parameters named as
    its columns) and its job (named _JOB + column; the payload names the row), as
    data-modifying CTEs, built once. Run on its own (autocommit) it is one round trip to the
    server instead of five (BEGIN, three INSERTs, COMMIT), each of which waits for the server
    and then for the interpreter lock before the answer goes out."""
    stmt = _ONE_STATEMENT.get(blob)
    if stmt is not None:
        return stmt
    rows: Table = InboundMessage.__table__  # type: ignore[assignment]
    jobs_t: Table = Job.__table__  # type: ignore[assignment]
    row = insert(rows).values({c: bindparam(c, type_=rows.c[c].type) for c in row_columns}
                              ).returning(rows.c.id).cte("row")
    stmt = insert(jobs_t).from_select(
        ["payload", *job_columns],
        select(cast(func.json_build_object("inbound_id", row.c.id), jobs_t.c.payload.type),
               *[bindparam(_JOB + c, type_=jobs_t.c[c].type) for c in job_columns])
        .select_from(row),
    ).returning(jobs_t.c.id).add_cte(blob.cte("blob"))
    _ONE_STATEMENT[blob] = stmt
    return stmt


def _record_one(app: App, spooled: Spooled, route: Route) -> None:
    """add_rows() for one route on PostgreSQL, as _one_statement() in autocommit."""
    info = spooled.info
    row = _row(route, raw=info.raw, sha=spooled.sha, mail_from=spooled.mail_from,
               message_id=info.message_id, from_addr=info.from_addr, subject=info.subject,
               received_at=app.now())
    job = inbound.job_columns(app, route[0], route[1])
    blob, params = app.spool.part(info.raw, spooled.sha)
    params.update(row)
    params.update((_JOB + c, v) for c, v in job.items())
    with app.db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(_one_statement(blob, list(row), list(job)), params).scalar_one()


def record(app: App, spooled: Spooled, resolved: list[Resolved]) -> None:
    """Commit the message's bytes and one InboundMessage per distinct list address of
    ``resolved``, each with the job that will process it, in one transaction. Blocking.
    (An intake with a journal records with listserv.intake.journal.Journal.append instead.)"""
    spooled.check_from(resolved)
    info, mail_from = spooled.info, spooled.mail_from
    routes = distinct_routes(resolved)
    try:
        if len(routes) == 1 and not app.db.is_sqlite:
            _record_one(app, spooled, routes[0])
        else:
            # urgent: the client waits for our answer; other writers of the process wait
            with writegate.urgent(), app.db.unit_of_work() as session:
                add_rows(session, app, raw=info.raw, sha=spooled.sha, mail_from=mail_from,
                         message_id=info.message_id, from_addr=info.from_addr,
                         subject=info.subject, received_at=app.now(), routes=routes)
    except SQLAlchemyError as exc:
        log.warning("intake: cannot record message %s: %s", info.message_id, exc)
        raise TemporaryFailure("cannot record the message now, try again later") from None
    log.info("accepted %s from <%s> for %s", info.message_id, mail_from,
             ", ".join(r.rcpt for r in resolved))


Recorder = Callable[[App, Spooled, list[Resolved]], None]


def store(app: App, mail_from: str, resolved: list[Resolved], raw: bytes,
          recorder: Recorder = record) -> None:
    """Inspect ``raw`` and commit it with one InboundMessage per distinct list address."""
    need_from = any(r.route.subaddress != addresses.BOUNCES for r in resolved)
    recorder(app, spool(app, mail_from, raw, require_from=need_from), resolved)


def list_exists(app: App, list_id: int) -> bool:
    with app.db.unit_of_work() as session:
        return session.scalar(select(MailingList.id).where(MailingList.id == list_id)) is not None


class IntakeHandler:
    """The aiosmtpd handler. ``on_commit`` is called (from a worker thread) after mail is stored
    by ``recorder`` (``record``: in the database; or listserv.intake.journal).

    Its blocking steps run in its own threads (``executor``, else INTAKE_THREADS made here),
    not the event loop's default executor: work elsewhere in the process (delivery, jobs)
    never queues ahead of an SMTP answer."""

    def __init__(self, app: App, on_commit: Callable[[], None] | None = None,
                 executor: concurrent.futures.ThreadPoolExecutor | None = None,
                 recorder: Recorder = record) -> None:
        self.app = app
        self.recorder = recorder
        self.executor = executor or concurrent.futures.ThreadPoolExecutor(
            INTAKE_THREADS, thread_name_prefix="listserv-intake")
        self.router = Router(app)
        self.on_commit = on_commit
        self.active = 0          # DATA transactions in flight (for a graceful stop)
        self.accepted = 0
        self.sessions = 0        # open SMTP/LMTP sessions (intake.max_connections)
        self.refused_sessions = 0

    async def _run(self, fn: Callable[..., R], *args: Any, **kw: Any) -> R:
        """``fn(*args, **kw)`` in the intake's threads."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kw))

    def close(self) -> None:
        """Let the intake's threads end once idle (the daemon calls this as it stops)."""
        self.executor.shutdown(wait=False)

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.app.settings.intake.max_recipients_per_message:
            return TOO_MANY_RECIPIENTS
        try:
            # a list address seen in the last seconds is answered here, without the
            # round trip through a thread (each hop waits for the interpreter lock)
            resolved = self.router.cached(address) or await self._run(self.router.resolve,
                                                                      address)
        except ListservError as exc:
            return exc.smtp_reply()
        except SQLAlchemyError as exc:
            log.warning("intake: database unavailable at RCPT: %s", exc)
            return TemporaryFailure("cannot look up recipients now, try again later").smtp_reply()
        envelope.rcpt_tos.append(address)
        routes = getattr(envelope, "listserv_routes", None)
        if routes is None:
            routes = envelope.listserv_routes = []
        routes.append(resolved)
        return OK_RCPT

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        routes: list[Resolved] = getattr(envelope, "listserv_routes", [])
        raw = bytes(envelope.original_content or b"")
        lmtp = isinstance(server, LMTP)
        self.active += 1
        try:
            if lmtp:
                return await self._store_lmtp(envelope.mail_from, routes, raw)
            return await self._store(envelope.mail_from, routes, raw)
        finally:
            self.active -= 1

    async def _store(self, mail_from: str, routes: list[Resolved], raw: bytes) -> str:
        try:
            await self._run(store, self.app, mail_from, routes, raw, self.recorder)
        except ListservError as exc:
            return exc.smtp_reply()
        self._committed()
        return OK_DATA

    def _committed(self) -> None:
        self.accepted += 1
        if self.on_commit is not None:
            self.on_commit()

    async def _store_lmtp(self, mail_from: str, routes: list[Resolved], raw: bytes) -> str:
        """LMTP: inspected once, then each recipient recorded in its own transaction and
        answered on its own (the same list address twice: recorded once)."""
        try:
            need_from = all(r.route.subaddress != addresses.BOUNCES for r in routes)
            spooled = await self._run(spool, self.app, mail_from, raw,
                                              require_from=need_from)
        except ListservError as exc:
            return "\r\n".join([exc.smtp_reply()] * len(routes))
        replies: list[str] = []
        done: dict[tuple[int, str, str | None], str] = {}
        for r in routes:
            key = (r.list_id, r.route.subaddress, r.route.extra)
            if key not in done:
                done[key] = await self._record_one(spooled, r)
            replies.append(done[key])
        return "\r\n".join(replies)

    async def _record_one(self, spooled: Spooled, route: Resolved) -> str:
        try:
            if not await self._run(list_exists, self.app, route.list_id):
                self.router.forget()
                return UnknownRecipient(f"no such list address <{route.rcpt}>").smtp_reply()
            await self._run(self.recorder, self.app, spooled, [route])
        except ListservError as exc:
            return exc.smtp_reply()
        except SQLAlchemyError:
            return TemporaryFailure("cannot record the message now").smtp_reply()
        self._committed()
        return OK_DATA

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, ListservError):
            return error.smtp_reply()
        log.exception("intake: unexpected error", exc_info=error)
        return TemporaryFailure("internal error, try again later").smtp_reply()


class _Counted:
    """Counts its open sessions in the handler (intake.max_connections). A line of the
    message may be ``line_length_limit`` octets long (aiosmtpd refuses a line over 1,001
    with 500): such mail is sent, by web forms and HTML mailers written in one line, and
    Postfix in front of the intake passes it on whole; the copies are re-encoded into lines
    of at most 998 octets (listserv.message.lines). aiosmtpd reads command lines with the
    same reader: one over its own limit (512 octets) is still answered 500, once read."""

    def __init__(self, *args: Any, line_length_limit: int = 1001, **kw: Any) -> None:
        self.line_length_limit = line_length_limit    # before aiosmtpd makes its reader
        super().__init__(*args, **kw)

    def _count(self, handler: "IntakeHandler") -> None:
        self._sessions_of = handler
        handler.sessions += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._sessions_of.sessions -= 1
        super().connection_lost(exc)  # type: ignore[misc]


class CountedSMTP(_Counted, SMTP):
    pass


class CountedLMTP(_Counted, LMTP):
    pass


class Refuser(asyncio.Protocol):
    """A session over intake.max_connections: 421 4.7.0 and close, nothing else read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(TOO_MANY_SESSIONS.encode("ascii") + b"\r\n")
        transport.close()


TOO_MANY_SESSIONS = "421 4.7.0 Too many connections, try again later"
DATA_LINE_LIMIT = 64 * 1024 * 1024     # octets of a line when intake.max_message_size is 0


def make_protocol(handler: IntakeHandler, settings: Settings) -> asyncio.Protocol:
    """An SMTP or LMTP protocol instance per connection, as intake.protocol says (a Refuser
    beyond intake.max_connections). Silent clients are dropped after intake.idle_timeout."""
    if handler.sessions >= settings.intake.max_connections:
        handler.refused_sessions += 1
        return Refuser()
    cls = CountedLMTP if settings.intake.protocol == "lmtp" else CountedSMTP
    limit = settings.intake.max_message_size or None
    proto = cls(handler, data_size_limit=limit, enable_SMTPUTF8=True, decode_data=False,
                hostname=settings.site_domain, ident=f"listserv {__version__}",
                timeout=settings.intake.idle_timeout,
                line_length_limit=limit or DATA_LINE_LIMIT)
    proto._count(handler)
    return proto


class IntakeController(Controller):
    """A threaded aiosmtpd Controller serving the intake (tests, embedding). Port 0 works."""

    def __init__(self, handler: IntakeHandler, settings: Settings, *,
                 hostname: str | None = None, port: int | None = None) -> None:
        super().__init__(handler, hostname=hostname or settings.intake.host,
                         port=settings.intake.port if port is None else port)
        self.settings = settings

    def factory(self) -> SMTP:
        return make_protocol(self.handler, self.settings)  # type: ignore[return-value]

    def _trigger_server(self) -> None:
        if self.port == 0 and self.server is not None:
            self.port = self.server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        super()._trigger_server()
