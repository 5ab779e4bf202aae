"""The asyncio supervisor behind `listserv serve`.

The daemon's event loop runs the intake server (SMTP or LMTP; its blocking steps in the
intake's own threads), the web pages (uvicorn, when ``web`` is on and ``[web] listen`` is
set) and the job loops (listserv.jobs) that run the job kinds of listserv.workers
(processing accepted mail, fan-out, archive, digests, bounces, hold expiry, retention...) in
threads of their own: JOB_WORKERS loops for every kind, and INCOMING_LOOPS_* for incoming
mail only (a long pass never delays a post). Delivery (listserv.delivery.runner.run) runs on
a thread of its own with its own event loop (DeliveryThread): a fan-out of tens of thousands
of SMTP transactions is tens of thousands of callbacks, and on the intake's loop each would
sit in front of an SMTP answer. The intake wakes one free incoming loop right after it
commits a message and its job; every finished job wakes delivery (it may have queued mail)
and, when an incoming loop ran it, one free loop of every kind (it may have queued jobs: a
post's fan-out); a loop that takes a job while more are due wakes the next free one of its
kinds (listserv.jobs.runner.Idle); short polls cover work stored by other processes. stop.set()
(SIGTERM/SIGINT) closes the listener, lets in-flight SMTP transactions and jobs finish,
then returns.

`serve --role` splits this process in two (ROLES): an ``intake`` process answers SMTP (and
the web) and does nothing else, a ``worker`` process runs every job kind and delivery. The
intake then answers without sharing a GIL with a large fan-out's Python work; it wakes the
workers on its host through listserv.core.wakeup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
import logging
import sys
import threading
import time
from typing import Any, Callable, Coroutine

from listserv import jobs, workers
from listserv.core import wakeup
from listserv.core.app import App
from listserv.core.errors import ConfigError, ListservError
from listserv.intake import journal as intake_journal
from listserv.intake import smtp as intake
from listserv.pipeline import hold_notices, inbound

log = logging.getLogger(__name__)


class WorkerFailed(ListservError):
    """A worker loop of the daemon died; the daemon stopped (``serve`` exits 1)."""

DRAIN_TIMEOUT = 30.0
JOURNAL_ERROR_REPEAT = 300.0   # seconds between repeats of one intake-journal copy error
JOB_WORKERS = 2        # job loops per process (one long pass does not hold up the archive)
# ... plus loops that run only incoming mail, so that long passes (digests, retention) never
# delay a post; on PostgreSQL two, so that one list's long post does not delay another's.
INCOMING_LOOPS_SQLITE = 1
INCOMING_LOOPS_PG = 2
# The GIL's switch interval in `serve` (Python's default: 5 ms). A thread that gives up the GIL
# for each database statement or socket read (the intake storing a message, delivery claiming
# and sending) waits up to the interval to get it back from a thread that is computing (a
# fan-out chunk, an archive pass), once per statement. Measured here (8 inserts and a commit
# next to two computing threads): p99 126-218 ms at 5 ms, 66-163 ms at 2 ms, 37-98 ms at
# 1 ms; but 1 ms cost a 100,000-member fan-out about 25% more of the daemon's CPU (1.6-1.8 s
# against 1.3-1.4 s), 2 ms about half of that.
SWITCH_INTERVAL = 0.002
ROLES = ("all", "intake", "worker")


def delivery_runner() -> Callable[[App, asyncio.Event, asyncio.Event], Coroutine[Any, Any, Any]] | None:
    """listserv.delivery.runner.run when the delivery module is installed."""
    try:
        from listserv.delivery import runner as delivery  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(delivery, "run", None)


class Nudge:
    """Sets an asyncio.Event of another thread's event loop, from any thread; a set() before
    the loop has bound its event is kept and applied when it does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._target: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._early = False

    def bind(self, event: asyncio.Event) -> None:
        """Called in the loop that owns ``event``."""
        with self._lock:
            self._target = (asyncio.get_running_loop(), event)
            if self._early:
                event.set()

    def set(self) -> None:
        with self._lock:
            target = self._target
            if target is None:
                self._early = True
                return
        loop, event = target
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:      # that loop has ended
            pass


def delivery_loop() -> asyncio.AbstractEventLoop:
    """The delivery thread's event loop: uvloop's (libuv) where it is installed, else
    asyncio's. A VERP'd fan-out runs a few callbacks and two system calls per copy on it;
    uvloop's loop spends about a tenth less CPU on them (bench/fanout.py, 10,000 VERP'd
    copies: the daemon's CPU 0.95 s against 1.05 s)."""
    try:
        import uvloop
    except ImportError:           # (a platform without it: the same code on asyncio's loop)
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class DeliveryThread:
    """The delivery runner on its own thread and event loop. Chosen over a process: it shares
    the App (settings, database pool, spool) and the signing workers with the daemon, a crash
    of it stops the daemon as any worker's does, and the members' RSA signatures already run
    in processes of their own (listserv.delivery.signpool); what is left here is sending, a few
    callbacks per SMTP transaction, which on the intake's loop would queue in front of its
    answers. Its blocking steps use its loop's own default executor."""

    def __init__(self, app: App,
                 runner: Callable[[App, asyncio.Event, asyncio.Event], Coroutine[Any, Any, Any]]
                 ) -> None:
        self.app = app
        self.runner = runner
        self.wake = Nudge()
        self.stop = Nudge()
        self.thread: threading.Thread | None = None

    def start(self) -> "asyncio.Future[None]":
        """Start the thread; the future (of the calling loop) ends as the runner does."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def finish(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def target() -> None:
            error: BaseException | None = None
            try:
                with asyncio.Runner(loop_factory=delivery_loop) as runner:
                    runner.run(self._main())
            except BaseException as exc:     # handed to the daemon, which stops on it
                error = exc
            try:
                loop.call_soon_threadsafe(finish, error)
            except RuntimeError:             # the daemon's loop has ended already
                pass

        self.thread = threading.Thread(target=target, name="listserv-delivery", daemon=True)
        self.thread.start()
        return done

    async def _main(self) -> None:
        stop, wake = asyncio.Event(), asyncio.Event()
        self.stop.bind(stop)
        self.wake.bind(wake)
        await self.runner(self.app, stop, wake)


class AcceptErrors:
    """The event loop's exception handler: when accept() fails for lack of file descriptors
    (EMFILE/ENFILE), asyncio pauses the listener for a second and reports it each time;
    report it at most once a minute (with how often it happened), everything else as usual."""

    INTERVAL = 60.0

    def __init__(self) -> None:
        self.last = -self.INTERVAL
        self.suppressed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if not str(context.get("message", "")).startswith("socket.accept() out of system"):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < self.INTERVAL:
            self.suppressed += 1
            return
        more = f" ({self.suppressed} more since the last report)" if self.suppressed else ""
        log.error("intake: cannot accept connections: %s; the listener pauses and retries%s",
                  context.get("exception"), more)
        self.last, self.suppressed = now, 0


class Daemon:
    def __init__(self, app: App, *, host: str | None = None, port: int | None = None,
                 intake_enabled: bool = True, scheduler: bool = True,
                 incoming_worker: bool = True, delivery: bool = True, web: bool = False,
                 web_listen: str | None = None, wake_workers: bool = False,
                 wake_listen: bool = False, journal: bool = False) -> None:
        """``wake_workers``: wake the worker processes on this host (listserv.core.wakeup)
        after each commit of the intake and each mail queued here; ``wake_listen``: take
        those wake-ups (a worker process). ``journal`` (SQLite only): the intake commits to
        its own journal file (listserv.intake.journal). Incoming workers on SQLite copy any
        journal's entries into the database, also those left by an intake that ran before
        (a site that went back from `--role intake` to one process)."""
        self.app = app
        journal_path = intake_journal.path_for(app)
        self.journal = (intake_journal.Journal(app, journal_path)
                        if journal and journal_path is not None and intake_enabled else None)
        self.drain = (intake_journal.Drain(app, journal_path)
                      if journal_path is not None and incoming_worker else None)
        self.drain_wake: asyncio.Event | None = None
        # seconds between the job loops' (and the drain's) looks for work nobody woke them for
        self.poll = jobs.runner.POLL_INTERVAL
        self.wake_workers = wake_workers
        self.wake_listen = wake_listen
        self.host = host if host is not None else app.settings.intake.host
        self.port = port if port is not None else app.settings.intake.port
        self.intake_enabled = intake_enabled
        self.scheduler_enabled = scheduler
        self.delivery_enabled = delivery
        self.web_listen = (app.settings.web.listen if web_listen is None else web_listen
                           ) if web else ""
        self.web_port: int | None = None      # the bound web port, once listening
        self.ready = threading.Event()        # set once listening (for embedding and tests)
        self.on_ready: Callable[[], None] | None = None   # called once listening
        self.handler: intake.IntakeHandler | None = None
        self.bound_port: int | None = None
        self.delivery_wake: Nudge | None = None     # set from any thread
        self.jobs_wakes: list[asyncio.Event] = []   # one per job loop
        self.general = jobs.Idle()      # the loops that run every kind
        self.incoming = jobs.Idle()     # the loops that run only incoming mail
        # Without the scheduler (tests), only incoming mail, held posts' notices, the posts'
        # fan-outs and the lists' archive jobs (enqueued with them) run; the periodic passes
        # are left to the test.
        kinds: jobs.Registry = (
            workers.REGISTRY if scheduler else
            {k: workers.REGISTRY[k] for k in (inbound.KIND, hold_notices.KIND, workers.FANOUT,
                                               workers.ARCHIVE_LIST)}
            if incoming_worker else {})
        self.job_kinds = {name: dataclasses.replace(k, handler=self._waking(k.handler))
                          for name, k in kinds.items()}
        self.job_owner = jobs.new_worker_id()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.wake_sender: wakeup.Sender | None = None

    def wake_delivery(self) -> None:
        """Thread-safe: a fan-out queued recipients; the delivery loop takes them now."""
        if self.delivery_wake is not None:
            self.delivery_wake.set()        # a Nudge: straight to the delivery thread's loop
        if self.wake_sender is not None:
            self.wake_sender.send(wakeup.EVENT_DELIVERY)

    def _wake_incoming(self) -> None:
        """On this daemon's loop: a message and its job were stored; one free loop takes it
        (the others would only race it for the job, a claim each on the path to the
        message's first copy), one that runs only incoming mail when one is free."""
        if not self.incoming.wake_one():
            self.general.wake_one()

    def _woken(self, event: bytes) -> None:
        """A wake-up from the intake process (runs on this daemon's loop)."""
        if event == wakeup.EVENT_INCOMING:
            if self.drain_wake is not None:   # the drain wakes the incoming loops after
                self.drain_wake.set()
            else:
                self._wake_incoming()
        elif event == wakeup.EVENT_DELIVERY and self.delivery_wake is not None:
            self.delivery_wake.set()

    def wake(self) -> None:
        """Thread-safe: nudge every worker loop (tests, intake commits)."""
        loop = self.loop
        if loop is None:
            return
        if self.jobs_wakes:
            try:
                loop.call_soon_threadsafe(_set_all, self.jobs_wakes)
            except RuntimeError:       # the daemon has stopped: its loop is closed
                pass
        if self.delivery_wake is not None:
            self.delivery_wake.set()

    def _waking(self, handler: jobs.runner.Handler) -> jobs.runner.Handler:
        """``handler``, then a nudge to delivery: the job may have queued mail (a post's
        first transaction, committed with its accept)."""
        def run(app: App, payload: dict[str, Any]) -> None:
            try:
                handler(app, payload)
            finally:
                self.wake_delivery()
        return run

    async def run(self, stop: asyncio.Event) -> None:
        app = self.app
        loop = self.loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrors())
        runner = delivery_runner() if self.delivery_enabled else None
        delivery = DeliveryThread(app, runner) if runner is not None else None
        self.delivery_wake = delivery.wake if delivery is not None else Nudge()

        wake_dir = wakeup.directory(app.settings.data_path)
        sender = self.wake_sender = wakeup.Sender(wake_dir) if self.wake_workers else None

        def on_commit() -> None:
            if sender is not None:
                sender.send(wakeup.EVENT_INCOMING)
            if self.journal is not None and self.drain_wake is not None:
                loop.call_soon_threadsafe(self.drain_wake.set)
            elif self.jobs_wakes:
                loop.call_soon_threadsafe(self._wake_incoming)

        app.wake_delivery = self.wake_delivery
        self.handler = intake.IntakeHandler(
            app, on_commit=on_commit,
            recorder=self.journal.append if self.journal is not None else intake.record)
        if self.job_kinds:
            await asyncio.to_thread(jobs.ensure_periodic, app, self.job_kinds)

        # Both listening sockets are bound before either serves: a busy port stops the
        # daemon before it has answered anyone.
        server = await self._bind_intake() if self.intake_enabled else None
        web_stop = asyncio.Event()
        try:
            web_task = await self._start_web(web_stop) if self.web_listen else None
        except BaseException:
            if server is not None:
                server.close()
            raise
        if server is not None:
            await server.start_serving()
            log.info("listserv: %s intake listening on %s:%d", app.settings.intake.protocol,
                     self.host, self.bound_port)
        if self.on_ready is not None:
            self.on_ready()
        self.ready.set()

        workers_stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []
        # the job loops' own threads: a long pass never waits for, nor holds up, the intake's
        loops: list[jobs.Registry] = [self.job_kinds] * JOB_WORKERS if self.job_kinds else []
        if inbound.KIND in self.job_kinds:
            only = {inbound.KIND: self.job_kinds[inbound.KIND]}
            loops += [only] * (INCOMING_LOOPS_SQLITE if app.db.is_sqlite else INCOMING_LOOPS_PG)
        executor = concurrent.futures.ThreadPoolExecutor(max(1, len(loops)),
                                                         thread_name_prefix="listserv-job")
        for kinds in loops:
            wake = asyncio.Event()
            self.jobs_wakes.append(wake)
            # An incoming loop's job may have queued jobs of other kinds (a post's fan-out
            # and archive): one free loop of every kind looks for them. A loop of every
            # kind looks for more work itself when its job ends.
            only_incoming = set(kinds) == {inbound.KIND}
            tasks.append(asyncio.create_task(jobs.work(
                app, workers_stop, wake, kinds=kinds, owner=self.job_owner,
                executor=executor, poll=self.poll,
                idle=self.incoming if only_incoming else self.general,
                after_job=self.general.wake_one if only_incoming else None)))
        if self.drain is not None:
            self.drain_wake = asyncio.Event()
            tasks.append(asyncio.create_task(self._drain_journal(
                self.drain, workers_stop, self.drain_wake)))
        delivery_task: asyncio.Future[Any] | None = None
        if delivery is not None:
            delivery_task = delivery.start()
        elif self.delivery_enabled:
            log.warning("listserv: delivery module not available; outbound mail stays queued")
        receiver = wakeup.Receiver(wake_dir) if self.wake_listen else None
        if receiver is not None:
            await receiver.start(self._woken)

        # A worker that dies (a bug, a bad transport) must not leave an intake that accepts
        # mail nobody will ever process: stop, and report the failure to the caller.
        failed: list[BaseException] = []

        def watch(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and task.exception() is not None and not stop.is_set():
                failed.append(task.exception())  # type: ignore[arg-type]
                log.error("listserv: a worker failed; stopping", exc_info=task.exception())
                stop.set()

        for t in [*tasks, *(t for t in (delivery_task, web_task) if t is not None)]:
            t.add_done_callback(watch)
        await stop.wait()
        log.info("listserv: stopping")
        if receiver is not None:
            receiver.close()
        web_stop.set()
        if server is not None:
            server.close()
            await self._drain_intake()
        workers_stop.set()
        self.wake()
        if self.drain_wake is not None:
            self.drain_wake.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        executor.shutdown(wait=False)
        if delivery is not None and delivery_task is not None:
            delivery.stop.set()
            delivery.wake.set()
            if not (delivery_task.done() and failed):
                try:
                    await asyncio.wait_for(asyncio.shield(delivery_task), DRAIN_TIMEOUT)
                except Exception:
                    log.exception("delivery did not stop cleanly")
        self.handler.close()
        if self.journal is not None:
            self.journal.close()
        if self.drain is not None:
            self.drain.close()
        if sender is not None:
            sender.close()
        if web_task is not None:
            await asyncio.gather(web_task, return_exceptions=True)
        if server is not None:
            try:   # Python >= 3.12 waits here for idle client connections: bound it
                await asyncio.wait_for(server.wait_closed(), 5)
            except asyncio.TimeoutError:
                log.warning("listserv: closing with SMTP clients still connected")
        log.info("listserv: stopped")
        if failed:
            raise WorkerFailed(f"a worker failed: {failed[0]}") from failed[0]

    async def _drain_journal(self, drain: intake_journal.Drain, stop: asyncio.Event,
                             wake: asyncio.Event) -> None:
        """Copy the intake journal's entries into the database when the intake commits
        (``wake``) and every ``self.poll`` seconds, a batch per transaction, waking the
        incoming loops after each batch (and after a wake-up also when nothing was copied:
        that intake wrote the database itself). A stop is noticed between batches. A
        failure is logged when it changes, and again every JOURNAL_ERROR_REPEAT seconds."""
        failing, logged = "", float("-inf")
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            woken = wake.is_set()
            wake.clear()
            copied = 0
            try:
                while not stop.is_set() and (batch := await asyncio.to_thread(drain.batch)):
                    copied += batch
                    self._wake_incoming()
                failing = ""
            except Exception as exc:    # the database or the journal unavailable: retry
                if str(exc) != failing or loop.time() - logged >= JOURNAL_ERROR_REPEAT:
                    log.exception("listserv: cannot copy the intake journal")
                    logged = loop.time()
                failing = str(exc)
            if woken and not copied:
                self._wake_incoming()
            await jobs.runner.wait_at_most(wake, self.poll)

    async def _bind_intake(self) -> asyncio.Server:
        """The intake's listening socket, bound but not yet accepting; ConfigError (one
        line, naming the address) when it cannot be bound."""
        assert self.handler is not None
        handler, settings = self.handler, self.app.settings
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: intake.make_protocol(handler, settings), self.host, self.port,
                start_serving=False)
        except OSError as exc:
            raise ConfigError(f"intake {self.host}:{self.port}: cannot listen: "
                              f"{exc.strerror or exc}") from None
        self.bound_port = server.sockets[0].getsockname()[1]
        return server

    async def _start_web(self, web_stop: asyncio.Event) -> asyncio.Task[Any]:
        """Start the web server; return once it listens (a busy port raises here)."""
        from listserv.web import server as web_server

        listening = asyncio.Event()

        def on_listening(port: int) -> None:
            self.web_port = port
            listening.set()

        task = asyncio.create_task(web_server.run(self.app, web_stop, listen=self.web_listen,
                                                  on_listening=on_listening))
        ready = asyncio.create_task(listening.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()
        return task

    async def _drain_intake(self) -> None:
        """Wait (bounded) for SMTP DATA transactions already being stored."""
        assert self.handler is not None
        deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT
        while self.handler.active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


def for_role(app: App, role: str) -> Daemon:
    """The daemon of one `serve --role` (ROLES): ``all`` runs everything in this process;
    ``intake`` only the SMTP/LMTP intake and the web, waking the workers on this host;
    ``worker`` every job kind and delivery, without a listener. On SQLite the intake of
    ``all`` and ``intake`` commits to its journal (listserv.intake.journal)."""
    if role == "intake":
        return Daemon(app, web=True, scheduler=False, incoming_worker=False, delivery=False,
                      wake_workers=True, journal=True)
    if role == "worker":
        return Daemon(app, intake_enabled=False, wake_listen=True)
    if role == "all":
        return Daemon(app, web=True, journal=True)
    raise ValueError(f"unknown role {role!r}")


def freeze_heap() -> None:
    """Collect, then move every object alive now (modules, the ORM's mappers, compiled
    templates and statements: hundreds of thousands) out of the cycle collector's sight
    (gc.freeze). A full collection otherwise walks all of them: 60-90 ms of CPU holding the
    interpreter lock, every second or so while a fan-out makes objects, during which the
    intake cannot answer and a worker's write transaction holds SQLite's lock. Objects
    frozen are still freed when their last reference goes; only cycles among them are kept."""
    gc.collect()
    gc.freeze()


def serve(app: App, role: str = "all") -> None:
    """Run the daemon in this thread until SIGTERM or SIGINT."""
    import signal

    sys.setswitchinterval(SWITCH_INTERVAL)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        daemon = for_role(app, role)
        daemon.on_ready = freeze_heap
        await daemon.run(stop)

    asyncio.run(main())
