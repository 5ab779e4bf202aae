"""kill -9 of `listserv serve` leaves no signing worker behind (listserv.delivery.signpool).

A SIGKILLed daemon cannot shut its process pool down, and a worker blocked on the pool's task
queue never sees EOF (it holds both ends of the pipe), so each worker watches its daemon and
exits once the daemon is gone. The early case is the one that used to leave workers running
forever: the daemon killed while its workers were still starting, so that a worker took its
new parent for the daemon.

The daemon and everything it starts carry a marker in their environment; a worker re-parented
after the kill is still found by it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from listserv.admin import domains
from listserv.core.app import App
from listserv.delivery import signpool
from tests.waiting import free_port, start_daemon, wait_until

ROOT = Path(__file__).resolve().parents[2]
MARK = "LISTSERV_TEST_SIGNPOOL_MARK"


def marked(mark: str) -> dict[int, str]:
    """pid -> command line of the live (not zombie) processes whose environment has ``mark``."""
    needle = f"{MARK}={mark}".encode()
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle not in fh.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:           # gone meanwhile, or not ours to read
            continue
        if state != b"Z":
            found[int(entry)] = cmd
    return found


def threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


def workers(mark: str) -> list[int]:
    return [pid for pid, cmd in marked(mark).items() if "multiprocessing.spawn" in cmd]


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="finds the workers through /proc, which only Linux has")
@pytest.mark.parametrize("when", ["starting", "started"])
def test_kill_9_of_the_daemon_leaves_no_signing_worker(app: App, cli_env: dict[str, str],
                                                       tmp_path: Path, when: str) -> None:
    with app.db.unit_of_work() as session:      # a domain that signs: the pool starts
        domains.generate_dkim_key(session, "example.org", "s1")
    mark = uuid.uuid4().hex
    env = {**os.environ, **cli_env, MARK: mark,
           "LISTSERV_DELIVERY_VERP": "true",      # VERP'd posts: signed copy by copy
           "LISTSERV_DELIVERY_OUTBOUND": f"smtp://127.0.0.1:{free_port()}"}
    env.pop("LISTSERV_CONFIG", None)
    log = tmp_path / "serve.log"

    def start(port: int) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen([sys.executable, "-m", "listserv", "-v", "serve"],
                                    env={**env, "LISTSERV_INTAKE_PORT": str(port)}, cwd=ROOT,
                                    stdout=out, stderr=subprocess.STDOUT)

    if when == "starting":
        # the pool has spawned its processes (their start-up data is written): they are
        # still importing, far from their first task
        def ready(logged: str, port: int) -> bool:
            return "signing processes started" in logged
        what = "the signing processes spawned"
    else:                            # every worker is up: its parent-watching thread runs
        def ready(logged: str, port: int) -> bool:
            return len([p for p in workers(mark) if threads(p) >= 2]) >= signpool.WORKERS
        what = "every signing worker started"
    daemon, _ = start_daemon(start, log, ready=ready, timeout=60, what=what)
    try:
        assert daemon.poll() is None, "listserv serve exited"
    finally:
        daemon.kill()                # SIGKILL: the pool cannot be shut down
        daemon.wait(10)
    assert workers(mark), "no signing worker was running when the daemon was killed"

    def none_left() -> bool:
        return not marked(mark)      # the workers and multiprocessing's resource tracker

    wait_until(none_left, 60, "the signing workers to exit", interval=0.05)


def test_the_pool_starts_with_the_daemon_only_when_a_domain_signs(app: App) -> None:
    from listserv.delivery.runner import _signs
    assert not _signs(app)             # VERP'd copies unsigned: no RSA to spread over processes
    with app.db.unit_of_work() as session:
        domains.generate_dkim_key(session, "example.org", "s1")
    assert _signs(app)
