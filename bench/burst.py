"""A burst of small posts: what one post's processing costs `listserv serve`.

    python bench/burst.py [--posts 300] [--interval 0.02] [--database-url URL] [--repeat 1]

Initialises a temporary data_dir (SQLite unless --database-url), creates a list with one
member (archive on, as by default), starts `python -m listserv serve` with outbound mail to
Postfix's smtp-sink (or the aiosmtpd fallback), then posts ``--posts`` 1 KB messages on one
SMTP connection, one every ``--interval`` seconds, each from its own sender with text of its
own (as a busy site's posts come; one sender's repeated text would be held). Prints the time
from the first post to the last copy delivered, the daemon's CPU seconds per post (all its
threads: incoming job, rules, accept, archive and its pages, digest entry, fan-out,
delivery) and the intake's answer times.
"""

from __future__ import annotations

import argparse
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from fanout import (  # noqa: E402  (bench/fanout.py)
    PROBE, Sink, clean_up, cli, cpu_seconds, free_port, percentile, probe_sender,
    small_post, wait_delivered, wait_port, write_config,
)


def once(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="listserv-burst-"))
    sink = Sink()
    sink.start(args.sink)
    port = free_port()
    cfg = write_config(tmp, port, sink.port, args.database_url)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        cli(cfg, "init")
        cli(cfg, "list", "create", PROBE, "--owner", "owner@bench.example")
        cli(cfg, "member", "add", PROBE, "reader@bench.example")
        for key, value in (("nonmember_action", "accept"), ("dmarc_mitigation", "none")):
            cli(cfg, "list", "set", PROBE, key, value)
        log = open(tmp / "serve.log", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "listserv", "--config", str(cfg),
                                   "serve"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_port(port, 30, daemon)
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:     # warm: one post
            smtp.sendmail(probe_sender(-1), [PROBE], small_post(-1))
        wait_delivered(cfg, PROBE, 1, 60, daemon, tmp)
        cpu0, t0 = cpu_seconds(daemon.pid)[0], time.monotonic()
        answers: list[float] = []
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            for i in range(args.posts):
                t = time.perf_counter()
                smtp.sendmail(probe_sender(i), [PROBE], small_post(i))
                answers.append(time.perf_counter() - t)
                time.sleep(args.interval)
        posted = time.monotonic() - t0
        wait_delivered(cfg, PROBE, args.posts + 1, args.timeout, daemon, tmp)
        took, cpu = time.monotonic() - t0, cpu_seconds(daemon.pid)[0] - cpu0
        print(f"{args.posts} posts in {posted:.1f} s (one every {args.interval:g} s), the last "
              f"copy delivered {took:.1f} s after the first post")
        print(f"daemon CPU: {cpu:.2f} s, {cpu / args.posts * 1000:.1f} ms per post")
        print(f"intake answer (MAIL FROM to 250): p50 {percentile(answers, 50) * 1000:.1f} ms, "
              f"p99 {percentile(answers, 99) * 1000:.1f} ms")
    finally:
        clean_up(tmp, sink, args.keep, daemon)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--posts", type=int, default=300)
    ap.add_argument("--interval", type=float, default=0.02,
                    help="seconds between two posts")
    ap.add_argument("--database-url", default="", help="default: SQLite in the data_dir")
    ap.add_argument("--sink", choices=("auto", "aiosmtpd"), default="auto")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary data_dir")
    args = ap.parse_args()
    for n in range(args.repeat):
        if args.repeat > 1:
            print(f"-- run {n + 1} of {args.repeat}")
        once(args)


if __name__ == "__main__":
    main()
