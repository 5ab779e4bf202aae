"""`listserv serve` with the steps between a post's 250 and its first copy timed.

bench/fanout.py --trace starts the daemon through this module instead of `python -m
listserv`: it wraps the functions on that path (intake commit, job claims and runs, accept,
fan-out chunks, delivery claim, connect, first transactions, commits) so that each call's
start and end (wall clock, thread) is kept in memory, and writes them as JSON lines to the
file named by BENCH_TRACE_FILE when the daemon stops. Nothing of listserv itself changes;
the wrappers cost a few microseconds a call.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import json
import os
import threading
import time
from typing import Any, Callable

EVENTS: list[tuple[str, float, float, str, str, float]] = []
LIMIT = 20000


def _note(name: str, t0: float, t1: float, extra: str = "", cpu: float = 0.0) -> None:
    if len(EVENTS) < LIMIT:
        EVENTS.append((name, t0, t1, threading.current_thread().name, extra, cpu))


def wrap(owner: Any, attr: str, name: str | None = None,
         describe: Callable[..., str] | None = None) -> None:
    fn = getattr(owner, attr, None)
    if fn is None:          # renamed or gone: trace the rest
        return
    label = name or f"{getattr(owner, '__name__', owner)}.{attr}"
    if inspect.iscoroutinefunction(fn):
        @functools.wraps(fn)
        async def awrapper(*a: Any, **kw: Any) -> Any:
            t0 = time.time()
            try:
                return await fn(*a, **kw)
            finally:
                _note(label, t0, time.time(), describe(*a, **kw) if describe else "")
        setattr(owner, attr, awrapper)
        return

    @functools.wraps(fn)
    def wrapper(*a: Any, **kw: Any) -> Any:
        t0, c0 = time.time(), time.thread_time()
        result = None
        try:
            result = fn(*a, **kw)
            return result
        finally:
            extra = describe(*a, **kw) if describe else ""
            if attr == "claim" and result is not None and hasattr(result, "kind"):
                extra = result.kind
            _note(label, t0, time.time(), extra, time.thread_time() - c0)
    setattr(owner, attr, wrapper)


def dump() -> None:
    path = os.environ.get("BENCH_TRACE_FILE")
    if not path:
        return
    with open(path, "w") as fh:
        for e in EVENTS:
            fh.write(json.dumps(e) + "\n")


def install() -> None:
    from sqlalchemy.orm import Session

    from listserv import daemon
    from listserv.delivery import fanout, runner, signpool, smtpwire, transport, unsubscribe
    from listserv.intake import smtp as intake
    from listserv.jobs import engine
    from listserv.jobs import runner as jobs_runner
    from listserv.pipeline import incoming, posting

    wrap(intake, "store", "intake.store")
    wrap(intake, "spool", "intake.spool")
    wrap(intake, "record", "intake.record")
    wrap(intake.IntakeHandler, "_committed", "intake.committed (250 next)")
    wrap(engine, "claim", "jobs.claim")
    wrap(jobs_runner, "execute", "jobs.execute",
         describe=lambda app, job, kinds: job.kind)
    wrap(incoming, "process", "incoming.process")
    wrap(posting, "accept_post", "posting.accept_post")
    wrap(fanout, "step", "fanout.step")
    wrap(daemon.Daemon, "wake_delivery", "daemon.wake_delivery")
    wrap(runner.Runner, "_claim_sync", "delivery.claim (thread)")
    wrap(runner.Runner, "_claim", "delivery.claim (loop)")
    wrap(runner.Runner, "_record_sync", "delivery.record")
    wrap(runner.Runner, "_progress_sync", "delivery.progress commit")
    wrap(transport.SmtpTransport, "submit", "transport.submit")
    wrap(transport.SmtpTransport, "_connect", "transport.connect")
    wrap(transport.SmtpTransport, "_transaction", "transport.transaction")
    wrap(runner.Runner, "_load", "delivery.load message")
    wrap(runner.Runner, "_personalise", "delivery.personalise")
    wrap(unsubscribe, "memberships_for", "unsubscribe.memberships_for")
    wrap(signpool, "make", "signpool.make")
    wrap(posting, "_copies", "posting.copies")
    wrap(posting, "_arc_results", "posting.arc_results")
    wrap(fanout, "start", "fanout.start")
    wrap(smtpwire, "open_wire", "smtpwire.open_wire")
    wrap(transport.SmtpTransport, "take_spare", "transport.take_spare (connection ahead)")
    wrap(smtpwire, "transact", "smtpwire.transact")
    wrap(Session, "commit", "Session.commit")
    try:
        from listserv.core import writegate
    except ImportError:
        pass
    else:
        wrap(writegate.Gate, "acquire", "gate.acquire")
        wrap(writegate.Gate, "release", "gate.release")
    atexit.register(dump)
    if os.environ.get("BENCH_SWITCH_INTERVAL"):      # an experiment: the daemon's GIL interval
        daemon.SWITCH_INTERVAL = float(os.environ["BENCH_SWITCH_INTERVAL"])


if __name__ == "__main__":
    install()
    from listserv.cli import main
    main()
