"""Idle memory of `listserv serve`: VmRSS of the daemon on a fresh data_dir.

    python bench/idle.py [--wait 10] [--repeat 1] [--database-url URL] [--no-web]

Initialises a temporary data_dir (SQLite unless --database-url), starts
`python -m listserv serve` with the intake and the web pages on free loopback ports (outbound
mail to a Maildir), waits until both answer, lets it sit idle ``--wait`` seconds and prints
VmRSS and VmHWM of the daemon from /proc/PID/status, and the RSS of any child processes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fanout import free_port, stop_daemon, wait_port  # noqa: E402  (bench/fanout.py)


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.extend(int(c) for c in text)
    return out


def once(args: argparse.Namespace) -> tuple[float, float, float]:
    tmp = Path(tempfile.mkdtemp(prefix="listserv-idle-"))
    smtp_port = free_port()
    cfg = tmp / "listserv.toml"
    db = f'\n[database]\nurl = "{args.database_url}"\n' if args.database_url else ""
    if args.no_web:
        web, web_port = '\n[web]\nlisten = ""\n', None
    else:
        web_port = free_port()
        web = (f'\n[web]\nlisten = "127.0.0.1:{web_port}"\n'
               f'base_url = "http://127.0.0.1:{web_port}"\n')
    cfg.write_text(f'data_dir = "{tmp / "data"}"\nsite_domain = "bench.example"\n{db}'
                   f'\n[intake]\nport = {smtp_port}\n{web}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTSERV_")}
    daemon: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([sys.executable, "-m", "listserv", "--config", str(cfg), "init"],
                       check=True, capture_output=True, cwd=ROOT, env=env)
        log = open(tmp / "serve.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "listserv", "--config", str(cfg),
                                   "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                  env=env)
        wait_port(smtp_port, 60, daemon)
        if web_port is not None:
            wait_port(web_port, 60, daemon)
        time.sleep(args.wait)           # idle: what the daemon holds when nothing happens
        rss = status_kb(daemon.pid, "VmRSS") / 1024
        hwm = status_kb(daemon.pid, "VmHWM") / 1024
        kids = sum(status_kb(c, "VmRSS") for c in children(daemon.pid)) / 1024
        return rss, hwm, kids
    finally:
        stop_daemon(daemon)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wait", type=float, default=10.0, help="seconds idle before measuring")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--no-web", action="store_true", help="[web] listen = \"\"")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data_dir")
    args = ap.parse_args()
    for _ in range(args.repeat):
        rss, hwm, kids = once(args)
        print(f"serve idle {args.wait:g} s: VmRSS {rss:.1f} MB (peak {hwm:.1f} MB); "
              f"child processes {kids:.1f} MB")


if __name__ == "__main__":
    main()
