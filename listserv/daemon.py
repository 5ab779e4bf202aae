"""The asyncio supervisor behind `listserv serve`.

One event loop runs: the intake server (SMTP or LMTP), the web pages (uvicorn, when ``web``
is on and ``[web] listen`` is set), the delivery loop (listserv.delivery.runner.run) and job
loops (listserv.jobs) that run the job kinds of listserv.workers (processing accepted mail,
archive, digests, bounces, hold expiry, retention...) in threads of their own, apart from
the intake's: JOB_WORKERS loops for every kind, and INCOMING_LOOPS_* for incoming mail only.
The intake wakes the job loops right after it commits a message and its job; every finished
job wakes the delivery loop (it may have queued mail); short polls cover work stored by
other processes. stop.set() (SIGTERM/SIGINT) closes the listener, lets
in-flight SMTP transactions and jobs finish, then returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Coroutine

from listserv import jobs, workers
from listserv.core.app import App
from listserv.core.errors import ListservError
from listserv.intake import smtp as intake
from listserv.pipeline import inbound

log = logging.getLogger(__name__)


class WorkerFailed(ListservError):
    """A worker loop of the daemon died; the daemon stopped (``serve`` exits 1)."""

POLL_INTERVAL = 0.5
DRAIN_TIMEOUT = 30.0
JOB_WORKERS = 2        # job loops per process (one long pass does not hold up the archive)
# ... plus loops that run only incoming mail, so that long passes (digests, retention) never
# delay a post; on PostgreSQL two, so that one list's long post does not delay another's.
INCOMING_LOOPS_SQLITE = 1
INCOMING_LOOPS_PG = 2


def delivery_runner() -> Callable[[App, asyncio.Event, asyncio.Event], Coroutine[Any, Any, Any]] | None:
    """listserv.delivery.runner.run when the delivery module is installed."""
    try:
        from listserv.delivery import runner as delivery  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(delivery, "run", None)


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


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass


class Daemon:
    def __init__(self, app: App, *, host: str | None = None, port: int | None = None,
                 intake_enabled: bool = True, scheduler: bool = True,
                 incoming_worker: bool = True, delivery: bool = True, web: bool = False,
                 web_listen: str | None = None) -> None:
        self.app = app
        self.host = host if host is not None else app.settings.intake.host
        self.port = port if port is not None else app.settings.intake.port
        self.intake_enabled = intake_enabled
        self.scheduler_enabled = scheduler
        self.delivery_enabled = delivery
        self.web_listen = (app.settings.web.listen if web_listen is None else web_listen
                           ) if web else ""
        self.web_port: int | None = None      # the bound web port, once listening
        self.ready = threading.Event()        # set once listening (for embedding and tests)
        self.handler: intake.IntakeHandler | None = None
        self.bound_port: int | None = None
        self.delivery_wake: asyncio.Event | None = None
        self.jobs_wake: asyncio.Event | None = None
        # Without the scheduler (tests), only incoming mail and the archive pass (made due
        # by it) run; the periodic passes are left to the test.
        kinds: jobs.Registry = (
            workers.REGISTRY if scheduler else
            {k: workers.REGISTRY[k] for k in (inbound.KIND, workers.ARCHIVE)}
            if incoming_worker else {})
        self.job_kinds = {name: dataclasses.replace(k, handler=self._waking(k.handler))
                          for name, k in kinds.items()}
        self.job_owner = jobs.new_worker_id()
        self.loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Thread-safe: nudge every worker loop (tests, intake commits)."""
        loop = self.loop
        if loop is None:
            return
        for ev in (self.delivery_wake, self.jobs_wake):
            if ev is not None:
                loop.call_soon_threadsafe(ev.set)

    def _wake_delivery(self) -> None:
        loop, ev = self.loop, self.delivery_wake
        if loop is not None and ev is not None:
            loop.call_soon_threadsafe(ev.set)

    def _waking(self, handler: jobs.runner.Handler) -> jobs.runner.Handler:
        """``handler``, then a nudge to the delivery loop: the job may have queued mail."""
        def run(app: App, payload: dict[str, Any]) -> None:
            try:
                handler(app, payload)
            finally:
                self._wake_delivery()
        return run

    async def run(self, stop: asyncio.Event) -> None:
        app = self.app
        loop = self.loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrors())
        self.delivery_wake = asyncio.Event()
        self.jobs_wake = asyncio.Event()
        wake = self.jobs_wake

        def on_commit() -> None:
            loop.call_soon_threadsafe(wake.set)

        self.handler = intake.IntakeHandler(app, on_commit=on_commit)
        if self.job_kinds:
            await asyncio.to_thread(jobs.ensure_periodic, app, self.job_kinds)

        web_stop = asyncio.Event()
        web_task = await self._start_web(web_stop) if self.web_listen else None
        server = None
        if self.intake_enabled:
            handler = self.handler
            server = await loop.create_server(
                lambda: intake.make_protocol(handler, app.settings), self.host, self.port)
            self.bound_port = server.sockets[0].getsockname()[1]
            log.info("listserv: %s intake listening on %s:%d", app.settings.intake.protocol,
                     self.host, self.bound_port)
        self.ready.set()

        workers_stop = asyncio.Event()
        delivery_stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []
        # the job loops' own threads: a long pass never waits for, nor holds up, the intake's
        loops: list[jobs.Registry] = [self.job_kinds] * JOB_WORKERS if self.job_kinds else []
        if inbound.KIND in self.job_kinds:
            only = {inbound.KIND: self.job_kinds[inbound.KIND]}
            loops += [only] * (INCOMING_LOOPS_SQLITE if app.db.is_sqlite else INCOMING_LOOPS_PG)
        executor = concurrent.futures.ThreadPoolExecutor(max(1, len(loops)),
                                                         thread_name_prefix="listserv-job")
        for kinds in loops:
            tasks.append(asyncio.create_task(jobs.work(
                app, workers_stop, self.jobs_wake, kinds=kinds, owner=self.job_owner,
                executor=executor)))
        delivery_task: asyncio.Task[Any] | None = None
        runner = delivery_runner() if self.delivery_enabled else None
        if runner is not None:
            delivery_task = asyncio.create_task(runner(app, delivery_stop, self.delivery_wake))
        elif self.delivery_enabled:
            log.warning("listserv: delivery module not available; outbound mail stays queued")

        # A worker that dies (a bug, a bad transport) must not leave an intake that accepts
        # mail nobody will ever process: stop, and report the failure to the caller.
        failed: list[BaseException] = []

        def watch(task: asyncio.Task[Any]) -> None:
            if not task.cancelled() and task.exception() is not None and not stop.is_set():
                failed.append(task.exception())  # type: ignore[arg-type]
                log.error("listserv: a worker failed; stopping", exc_info=task.exception())
                stop.set()

        for t in [*tasks, *(t for t in (delivery_task, web_task) if t is not None)]:
            t.add_done_callback(watch)
        await stop.wait()
        log.info("listserv: stopping")
        web_stop.set()
        if server is not None:
            server.close()
            await self._drain_intake()
        workers_stop.set()
        self.wake()
        await asyncio.gather(*tasks, return_exceptions=True)
        executor.shutdown(wait=False)
        delivery_stop.set()
        self.delivery_wake.set()
        if delivery_task is not None and not (delivery_task.done() and failed):
            try:
                await asyncio.wait_for(delivery_task, DRAIN_TIMEOUT)
            except Exception:
                log.exception("delivery did not stop cleanly")
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


def serve(app: App) -> None:
    """Run the daemon in this thread until SIGTERM or SIGINT."""
    import signal

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Daemon(app, web=True).run(stop)

    asyncio.run(main())
