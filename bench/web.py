"""Web benchmark: RFC 8058 one-click unsubscribe POSTs against a real `listserv serve`.

    python bench/web.py [--members 1000] [--sequential 200] [--concurrent 200]

Initialises a temporary data_dir (SQLite unless --database-url), makes a list with N members,
computes their one-click tokens, starts `python -m listserv serve` with its web pages on a free
port (outbound mail to a Maildir), then

1. posts ``--sequential`` one-click unsubscribes one after another (the daemon otherwise idle)
   and prints the median, 90th percentile and maximum answer time;
2. posts ``--concurrent`` one-click unsubscribes at once (one connection each) and prints how
   many were answered 200 and the wall time;

and checks that exactly those members are gone.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LIST = "bench@bench.example"
BODY = b"List-Unsubscribe=One-Click"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(cfg: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "listserv", "--config", str(cfg), *args],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"listserv {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def setup_members(cfg: Path, n: int) -> list[str]:
    """N members by direct SQL inserts; their one-click tokens, in order."""
    from sqlalchemy import insert, select

    from listserv.delivery import unsubscribe
    from listserv.core.app import App, site_secret
    from listserv.core.lists import get_list
    from listserv.core.models import Address, Membership, Role

    app = App.load(str(cfg))
    emails = [f"member{i}@d{i % 97}.example" for i in range(n)]
    with app.db.unit_of_work() as session:
        list_id = get_list(session, LIST).id
        session.execute(insert(Address), [{"email": e} for e in emails])
        ids = session.execute(select(Address.id).where(Address.email.in_(emails))
                              .order_by(Address.id)).scalars().all()
        session.execute(insert(Membership), [{"list_id": list_id, "address_id": a}
                                             for a in ids])
        secret = site_secret(session)
        rows = session.execute(select(Membership.id, Membership.unsub_nonce)
                               .where(Membership.list_id == list_id,
                                      Membership.role == Role.member)
                               .order_by(Membership.id)).all()
    app.db.dispose()
    return [unsubscribe.make_token(secret, mid, nonce) for mid, nonce in rows]


def members_left(cfg: Path) -> int:
    return sum(1 for line in cli(cfg, "member", "ls", LIST, "--role", "member").splitlines()
               if "@" in line)


def post(port: int, token: str) -> tuple[int, float]:
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", f"/u/{token}", body=BODY,
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
        resp = conn.getresponse()
        resp.read()
        return resp.status, time.perf_counter() - t
    finally:
        conn.close()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"listserv serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--members", type=int, default=1000)
    ap.add_argument("--sequential", type=int, default=200)
    ap.add_argument("--concurrent", type=int, default=200)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if args.sequential + args.concurrent > args.members:
        raise SystemExit("--members must be at least --sequential + --concurrent")

    tmp = Path(tempfile.mkdtemp(prefix="listserv-web-"))
    port, smtp_port = free_port(), free_port()
    cfg = tmp / "listserv.toml"
    db = f'\n[database]\nurl = "{args.database_url}"\n' if args.database_url else ""
    cfg.write_text(f'data_dir = "{tmp / "data"}"\nsite_domain = "bench.example"\n{db}'
                   f'\n[intake]\nport = {smtp_port}\n'
                   f'\n[web]\nlisten = "127.0.0.1:{port}"\nbase_url = "http://127.0.0.1:{port}"\n')
    daemon: subprocess.Popen[bytes] | None = None
    try:
        cli(cfg, "init")
        cli(cfg, "list", "create", LIST, "--owner", "owner@bench.example")
        tokens = setup_members(cfg, args.members)
        log = open(tmp / "serve.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "listserv", "--config", str(cfg),
                                   "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_port(port, daemon)
        post(port, "a" * 26 + "1")                      # warm up: imports, secret, connections

        seq = tokens[:args.sequential]
        times = []
        for token in seq:
            status, took = post(port, token)
            if status != 200:
                raise SystemExit(f"one-click POST answered {status}")
            times.append(took)
            time.sleep(0.02)                            # the daemon idle between requests
        times.sort()
        print(f"sequential one-click POSTs: {len(times)}, median {statistics.median(times) * 1000:.1f} ms, "
              f"p90 {times[int(len(times) * 0.9) - 1] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms")

        conc = tokens[args.sequential:args.sequential + args.concurrent]
        results: list[tuple[int, float]] = []
        lock = threading.Lock()
        start = threading.Barrier(len(conc) + 1)

        def one(token: str) -> None:
            start.wait()
            try:
                r = post(port, token)
            except OSError as exc:
                r = (0, 0.0)
                print(f"connection error: {exc}", file=sys.stderr)
            with lock:
                results.append(r)

        threads = [threading.Thread(target=one, args=(t,)) for t in conc]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        start.wait()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        ok = sum(1 for s, _ in results if s == 200)
        slowest = max(d for _, d in results)
        print(f"concurrent one-click POSTs: {ok}/{len(conc)} answered 200 in {wall:.2f} s "
              f"(slowest {slowest * 1000:.0f} ms)")
        left = members_left(cfg)
        expected = args.members - len(seq) - len(conc)
        print(f"members left: {left} (expected {expected})")
        if ok != len(conc) or left != expected:
            raise SystemExit(1)
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(60)
            except subprocess.TimeoutExpired:
                daemon.kill()
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
