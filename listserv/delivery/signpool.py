"""Members' own copies of a post (listserv.message.copies: token, unsubscribe fields, DKIM signature)
made in worker processes.

A thread that signs releases the GIL only during the RSA operation itself; while the event loop
is busy sending the copies already signed, the thread then waits for the GIL again after every
signature (measured here: 0.43 ms per RSA-2048 signature alone, 2.3 ms in a thread next to a
busy main thread), and the per-copy Python work competes with the sending. Worker processes
have neither: the delivery thread hands them the post's CopyJob and the members' (membership
id, nonce) pairs in chunks and gets back each copy's own header fields.

The pool is started on first use (``spawn``: a threaded daemon is never forked) and shared by
the process; until its workers are up, and for batches of fewer than MIN_COPIES copies, and
after any failure of the pool (it is started again on the next use), copies are signed in the
calling thread: a copy is never lost to it, nor waits for a process to start.
"""

from __future__ import annotations

import atexit
import concurrent.futures as cf
import logging
import multiprocessing
import os
import signal
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from listserv.message import copies

if TYPE_CHECKING:        # workers import this module: keep it light (no dkimpy)
    from listserv.message.signing import Signer

log = logging.getLogger(__name__)

# One per core: a copy's RSA signature costs about twice the daemon's work to send it, so
# on two cores one worker would cap a VERP'd fan-out at what one core can sign.
WORKERS = max(1, min(4, os.cpu_count() or 1))
MIN_COPIES = 64           # fewer are made in the calling thread
CHUNK = 50                # digests per task: the first copies go out early, workers share
FIRST_CHUNK = 10          # the first task's: the first copy leaves after ten signatures
TIMEOUT = 120.0           # seconds for one chunk before the pool counts as broken
RETRY_AFTER = 60.0        # seconds of signing in threads after the pool failed

_pool: cf.ProcessPoolExecutor | None = None
_ready: "cf.Future[None] | None" = None        # done when a worker has started
_failed_at = -RETRY_AFTER
_lock = threading.Lock()
_registered: list[bool] = []
made_in_workers = 0           # copies made by the workers (for tests and benchmarks)
_keys: dict[str, Any] = {}    # in a worker: PEM -> the parsed key


PARENT_CHECK = 1.0        # seconds between a worker's checks that its daemon is alive


def _init(parent: int) -> None:
    """In a worker, first: ``parent`` is the daemon's pid, passed from the daemon itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is for the daemon to handle
    # A daemon killed with SIGKILL cannot shut its pool down, and the workers' task queue
    # never reaches EOF (each worker holds both ends), so a worker exits by itself once
    # its parent is gone (it is then re-parented). The daemon's pid comes from the daemon:
    # a worker still starting when its daemon was killed would otherwise take its new
    # parent for the daemon, and wait for it forever.
    if os.getppid() != parent:
        os._exit(0)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True,
                     name="signpool-parent").start()


def _exit_with_parent(parent: int, check: float = PARENT_CHECK) -> None:
    gone = threading.Event()
    while not gone.wait(check):
        if os.getppid() != parent:
            os._exit(0)


def _make(job: copies.CopyJob, members: list[tuple[int, str]]) -> list[copies.Own]:
    """In a worker: copies.make() with the job's key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    key = _keys.get(job.key_pem) if job.key_pem else None
    if key is None and job.key_pem:
        key = _keys[job.key_pem] = serialization.load_pem_private_key(
            job.key_pem.encode(), password=None, unsafe_skip_rsa_key_validation=True)
    pad, alg = padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())

    def sign(digests: list[bytes]) -> list[bytes]:
        assert isinstance(key, rsa.RSAPrivateKey)
        return [key.sign(d, pad, alg) for d in digests]
    return copies.make(job, members, sign)


def _warm() -> None:
    """In a worker: load what signing needs before the first chunk arrives."""
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils  # noqa: F401


def _get() -> cf.ProcessPoolExecutor | None:
    """The pool when its workers are up; else start it (once) and return None."""
    global _pool, _ready
    with _lock:
        if _pool is None:
            _pool = cf.ProcessPoolExecutor(WORKERS, multiprocessing.get_context("spawn"),
                                           initializer=_init, initargs=(os.getpid(),))
            if not _registered:
                _registered.append(True)
                atexit.register(shutdown)      # before the interpreter tears modules down
            _ready = _pool.submit(_warm)
            for _ in range(WORKERS - 1):   # each task here starts one more process now,
                _pool.submit(_warm)         # not in the middle of the first large fan-out
            log.info("signing processes started: %d", WORKERS)
        assert _ready is not None
        if not _ready.done():
            return None
        if _ready.exception() is not None:
            raise RuntimeError(f"signing worker did not start: {_ready.exception()!r}")
        return _pool


def _drop(pool: cf.ProcessPoolExecutor | None) -> None:
    global _pool, _failed_at
    with _lock:
        _failed_at = time.monotonic()
        if pool is None or _pool is pool:
            pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def make(job: copies.CopyJob, members: list[tuple[int, str]], signer: "Signer | None",
         on_part: Callable[[int, list[copies.Own]], None] | None = None, *,
         here_only: bool = False) -> list[copies.Own]:
    """copies.make() for ``members``, in the worker processes when they are signed, there
    are at least MIN_COPIES, the workers are up and not ``here_only``, else here with
    ``signer`` (the job's key); blocks (call it from a thread). Made CHUNK at a time:
    ``on_part(start, owns)`` is called (in this thread, in order) as each chunk is ready, so
    their copies can leave at once."""
    here = signer.rsa_many if signer is not None else None
    out: list[copies.Own] = []

    def got(owns: list[copies.Own]) -> None:
        if on_part is not None:
            on_part(len(out), owns)
        out.extend(owns)

    def locally() -> list[copies.Own]:
        for i in range(len(out), len(members), CHUNK):
            got(copies.make(job, members[i:i + CHUNK], here))
        return out

    if (here_only or not job.key_pem or len(members) < MIN_COPIES
            or time.monotonic() - _failed_at < RETRY_AFTER):
        return locally()          # unsigned copies cost a token and two strings each
    pool = None
    try:
        pool = _get()
        if pool is None:
            return locally()
        bounds = [0, *range(FIRST_CHUNK, len(members), CHUNK), len(members)]
        parts = [pool.submit(_make, job, members[a:b]) for a, b in zip(bounds, bounds[1:])]
        for part in parts:
            owns = part.result(TIMEOUT)
            got(owns)
            _count(len(owns), signer if job.key_pem else None)
    except Exception as exc:          # a broken pool, a worker killed, no processes allowed
        log.warning("signing processes failed (%r); signing in the daemon instead", exc)
        _drop(pool)
        return locally()              # the chunks not made yet
    return out


def _count(n: int, signer: "Signer | None") -> None:
    global made_in_workers
    made_in_workers += n
    if signer is not None:
        signer.signatures += n


def ready() -> bool:
    """Are the workers up (after start())?"""
    with _lock:
        return _ready is not None and _ready.done() and _ready.exception() is None


def start() -> None:
    """Start the workers now (in the background), so that the first large batch finds them
    up; the daemon calls this when posts are VERP'd (copies signed one by one)."""
    try:
        _get()
    except Exception as exc:
        log.warning("signing processes cannot start (%r); signing in the daemon", exc)


def shutdown() -> None:
    """Stop the workers (the pool starts again on the next use)."""
    global _pool, _ready
    with _lock:
        pool, _pool, _ready = _pool, None, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
