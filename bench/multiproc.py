"""Several `listserv serve` processes on one PostgreSQL: one VERP'd post to N members.

    python bench/multiproc.py --members 100000                # 1 process, then 3
    python bench/multiproc.py --members 100000 --kill         # kill -9 one of the 3 mid-way
    python bench/multiproc.py --database-url postgresql+psycopg://...   # else .ci/pg-start

It starts Postfix's `smtp-sink` (bench/fanout.py's Sink), a throw-away PostgreSQL server
(`.ci/pg-start`, unless --database-url names an empty database), makes the list and its
members as bench/fanout.py does, then for each run starts the processes (each its own intake
port, all with `[delivery] connections`), posts one message to the first one and waits until
every recipient is recorded as delivered. It prints the seconds from the 250 to the last
delivery, deliveries per second, and:
- lost: members not recorded as delivered (every recipient recorded ``done`` had a 250 from
  the sink, so none of those is lost);
- duplicates: SMTP transactions the sink accepted beyond one per member (VERP: one
  transaction per recipient).
With --kill, one of the processes other than the one that took the post is killed (SIGKILL)
when a third of the members are delivered; the others take its batches over when their leases
expire (listserv.jobs.engine.LEASE, 30 s), and it prints the seconds from the kill to the
last delivery.

The processes share one data_dir (they are one host's processes); message bytes are in the
database, so each could have its own.
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fanout  # noqa: E402  (bench/fanout.py: sink, list setup, members)

LIST = fanout.LIST


def counts(cfg: Path, after: int = 0) -> tuple[int, int, int, int]:
    """(done, failed, unfinished, in sending) recipients of the newest post of LIST, if its
    outbound id is above ``after`` (else all 0)."""
    from sqlalchemy import func, select

    from listserv.core.lists import get_list
    from listserv.core.models import Delivery, DeliveryState, OutboundMessage

    app = app_for(cfg)
    with app.db.unit_of_work() as session:
        list_id = get_list(session, LIST).id
        out = session.scalar(select(func.max(OutboundMessage.id))
                             .where(OutboundMessage.list_id == list_id,
                                    OutboundMessage.kind == "post"))
        if out is None or out <= after:
            return 0, 0, 0, 0
        rows = dict(session.execute(
            select(Delivery.state, func.coalesce(func.sum(Delivery.count), 0))
            .where(Delivery.outbound_id == out).group_by(Delivery.state)).all())
    get = lambda s: int(rows.get(s, 0))  # noqa: E731
    return (get(DeliveryState.done), get(DeliveryState.failed),
            get(DeliveryState.pending) + get(DeliveryState.sending), get(DeliveryState.sending))


def newest_post(cfg: Path) -> int:
    from sqlalchemy import func, select

    from listserv.core.models import OutboundMessage

    with app_for(cfg).db.unit_of_work() as session:
        return int(session.scalar(select(func.max(OutboundMessage.id))) or 0)


_APPS: dict[Path, object] = {}


def app_for(cfg: Path):  # type: ignore[no-untyped-def]
    from listserv.core.app import App

    if cfg not in _APPS:
        _APPS[cfg] = App.load(str(cfg))
    return _APPS[cfg]


def start(cfg: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "LISTSERV_INTAKE_PORT": str(port)}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "listserv", "--config", str(cfg),
                                 "serve"], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env=env)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


def run(cfg: Path, tmp: Path, sink: fanout.Sink, n_procs: int, members: int, kill: bool,
        timeout: float) -> float:
    """One post delivered by ``n_procs`` processes; returns the seconds it took."""
    ports = [fanout.free_port() for _ in range(n_procs)]
    procs = [start(cfg, port, tmp / f"serve-{n_procs}-{i}.log") for i, port in enumerate(ports)]
    try:
        for port, p in zip(ports, procs):
            fanout.wait_port(port, 60, p)
        sink.reset()
        base = sink.count
        before = newest_post(cfg)
        with smtplib.SMTP("127.0.0.1", ports[0]) as smtp:
            body = fanout.message(LIST, f"{n_procs} processes")   # a text of its own: not a
            body += f"run {time.time()} with {n_procs} processes\r\n".encode()  # repeated post
            smtp.sendmail(fanout.POSTER, [LIST], body)
            t0 = time.time()
        killed_at = None
        in_sending = 0
        deadline = time.monotonic() + timeout
        while True:
            done, failed, left, sending = counts(cfg, before)
            if done + failed >= members and left == 0:
                break
            if kill and killed_at is None and done >= members // 3:
                procs[1].send_signal(signal.SIGKILL)
                procs[1].wait(10)
                killed_at, in_sending = time.time(), sending
                print(f"killed process 2 of {n_procs} (kill -9) with {done} delivered, "
                      f"{sending} recipients in claimed batches")
            for i, p in enumerate(procs):
                if p.poll() is not None and not (kill and i == 1):
                    raise SystemExit(f"process {i + 1} exited with {p.returncode}; see {tmp}")
            if time.monotonic() > deadline:
                raise SystemExit(f"timeout: {done} done, {failed} failed, {left} unfinished")
            time.sleep(0.05)
        t_recorded = time.time()
        time.sleep(0.3)          # let the sink's counter catch up
        last = sink.last or t_recorded
        elapsed = last - t0
        transactions = sink.count - base
        print(f"processes: {n_procs}, members: {members}, connections each: "
              f"{CONNECTIONS}")
        print(f"  seconds from the post's 250 to the last delivery: {elapsed:.2f} "
              f"({done / elapsed:,.0f} deliveries/s)")
        if killed_at is not None:
            print(f"  seconds from the kill to the last delivery: {last - killed_at:.2f} "
                  f"(recipients in claimed batches at the kill: {in_sending})")
        print(f"  lost: {members - done - failed}, failed: {failed}, "
              f"duplicates: {transactions - done} "
              f"(SMTP transactions {transactions} for {done} delivered)")
        return elapsed
    finally:
        stop([p for p in procs if p.poll() is None])


CONNECTIONS = 8


def main() -> None:
    global CONNECTIONS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=100000)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--dkim", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--kill", action="store_true",
                    help="kill -9 one process mid-way (and skip the one-process run)")
    ap.add_argument("--database-url", default="",
                    help="an empty PostgreSQL database (default: start one with .ci/pg-start)")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    CONNECTIONS = args.connections
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))     # clean up on kill, too
    tmp = Path(tempfile.mkdtemp(prefix="listserv-multiproc-"))
    pgdir = None
    url = args.database_url
    if not url:
        pgdir = Path(f"/tmp/listserv-multiproc-pg-{os.getpid()}")   # postgres must reach it
        url = subprocess.run([str(ROOT / ".ci" / "pg-start"), str(pgdir)], check=True,
                             capture_output=True, text=True).stdout.strip()
    sink = fanout.Sink()
    sink.start()
    try:
        if not sink.kind.startswith("postfix"):
            print(f"sink: {sink.kind}")
        cfg = tmp / "listserv.toml"
        cfg.write_text(f'data_dir = "{tmp / "data"}"\nsite_domain = "bench.example"\n'
                       f'\n[database]\nurl = "{url}"\n'
                       f'\n[intake]\nhost = "127.0.0.1"\nport = {fanout.free_port()}\n'
                       f'\n[delivery]\noutbound = "smtp://127.0.0.1:{sink.port}"\n'
                       f'connections = {args.connections}\nverp = true\n'
                       f'\n[web]\nlisten = "127.0.0.1:0"\n')
        fanout.cli(cfg, "init")
        fanout.cli(cfg, "list", "create", LIST, "--owner", "owner@bench.example")
        if args.dkim:
            fanout.cli(cfg, "domain", "dkim-keygen", "bench.example", "--selector", "bench")
        for key, value in (("nonmember_action", "accept"), ("dmarc_mitigation", "none")):
            fanout.cli(cfg, "list", "set", LIST, key, value)
        fanout.add_members(cfg, args.members)
        print(f"PostgreSQL, {args.members} members, VERP, DKIM {'on' if args.dkim else 'off'}, "
              f"load average {os.getloadavg()[0]:.2f}")
        one = None
        if not args.kill:
            one = run(cfg, tmp, sink, 1, args.members, False, args.timeout)
        many = run(cfg, tmp, sink, args.processes, args.members, args.kill, args.timeout)
        if one is not None:
            print(f"{args.processes} processes vs 1: {one / many:.2f}x as fast "
                  f"({many:.2f} s vs {one:.2f} s)")
    finally:
        sink.stop()
        for app in _APPS.values():
            app.db.dispose()  # type: ignore[attr-defined]
        if pgdir is not None:
            subprocess.run([str(ROOT / ".ci" / "pg-stop"), str(pgdir)], check=False,
                           capture_output=True)
        print(f"logs in {tmp}")


if __name__ == "__main__":
    main()
