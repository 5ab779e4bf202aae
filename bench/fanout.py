"""Fan-out benchmark: one post to a list of N members, through a real `listserv serve`.

    python bench/fanout.py --members 10000 --verp --dkim
    python bench/fanout.py --members 100000 --no-verp --dkim
    python bench/fanout.py --members 10000 --verp --dkim --no-per-member   # the baseline

It starts a fast SMTP sink (Postfix's `smtp-sink`; `apt-get install postfix` provides it — an
in-process aiosmtpd sink is the fallback, and says so), initialises a temporary data_dir, makes
the list (DKIM key via `listserv domain dkim-keygen`, members by direct SQL inserts), starts
`python -m listserv serve`, posts one message with smtplib and prints: seconds from the post's
250 to the last recipient delivered, deliveries per second, SMTP transactions, the latency to
the first delivery, the daemon's peak RSS (VmHWM), and the CPU seconds spent during the
fan-out by the daemon, its signing workers, the sink and this script, with the whole
machine's busy and idle CPU seconds: on two shared cores the wall-clock figures move with
whatever else runs, the CPU per copy much less. This script reads the queue's progress only
every half second until the sink has counted every transaction, so that it takes little CPU
from the daemon it measures.

VERP'd posts give each member a copy with their own one-click unsubscribe headers and DKIM
signature. ``--no-per-member`` runs the same daemon with that switched off (the post is then
signed once for everyone, as batched copies are): the baseline the per-copy figure is compared
with. ``--repeat N`` runs N times and prints the median.

``--intake-latency N`` also measures how fast the intake answers while the fan-out runs: from
the big post's 250 on, another client posts N 1 KB messages (one every
``--latency-interval`` seconds, on one SMTP connection, each from its own sender with text of
its own, so that none is held as a flood or a repeat) to a second list and times each
MAIL-to-250 exchange; it prints p50/p99/max over the posts answered while copies were still
going out:

    python bench/fanout.py --members 100000 --no-verp --dkim --intake-latency 200

``--trace`` runs the daemon through bench/trace_serve.py and prints, after the run, the timed
steps between the post's 250 and its first copies (job claims, accept, fan-out chunks,
delivery claim, connect, first transactions, commits), in milliseconds from the 250.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LIST = "bench@bench.example"
WARMUP = "warmup@bench.example"
PROBE = "probe@bench.example"
POSTER = "poster@sender.example"
POLL = 0.02               # seconds between two looks at the sink's count or the queue
SLOW_POLL = 0.5           # seconds between two reads of the queue before the sink has counted all
READ_PAUSE = 0.005        # seconds between two reads of smtp-sink's counter once it counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(to: str, subject: str) -> bytes:
    return (f"From: Poster <{POSTER}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <bench.{os.getpid()}.{time.time()}@sender.example>\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + "A post to measure fan-out, with a body of a usual size.\r\n" * 30).encode()


def probe_sender(n: int) -> str:
    """The sender of probe post ``n``: each probe comes from a sender of its own, as the
    posts to a busy site do (one sender's fiftieth post a second would be held as a flood,
    and the probe would measure moderation notices instead)."""
    return f"poster{n}@sender.example"


def small_post(n: int) -> bytes:
    """A 1 KB post (headers and body) for the intake latency probe, with text of its own
    (the same text from one sender twice in an hour is held as a repeat)."""
    head = (f"From: Poster {n} <{probe_sender(n)}>\r\nTo: {PROBE}\r\nSubject: probe {n}\r\n"
            f"Message-ID: <probe.{n}.{os.getpid()}.{time.time()}@sender.example>\r\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
    line = "A short post while a large fan-out is running.\r\n"
    head += f"Probe post number {n}.\r\n"
    return (head + line * ((1024 - len(head)) // len(line) + 1)).encode()[:1024 - 2] + b"\r\n"


def probe_intake(port: int, n: int, interval: float, running: threading.Event,
                 out: list[tuple[float, bool]]) -> None:
    """Post ``n`` 1 KB messages on one connection; append (seconds from MAIL FROM to the
    250 after DATA, whether the fan-out was still running) for each."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp.ehlo()
        for i in range(n):
            data = small_post(i)
            during = running.is_set()
            t = time.perf_counter()
            smtp.sendmail(probe_sender(i), [PROBE], data)
            out.append((time.perf_counter() - t, during and running.is_set()))
            time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def wait_delivered(cfg: Path, address: str, n: int, timeout: float,
                   daemon: subprocess.Popen[bytes], tmp: Path,
                   sink_done: Callable[[], bool] | None = None) -> tuple[int, int]:
    """(delivered, failed) once the queue has every recipient of the mail to ``address``
    done or failed. ``sink_done``: whether the sink has counted every transaction the fan-out
    needs; until it has, the queue is read only every SLOW_POLL seconds (a read costs about
    a millisecond of CPU, taken from the daemon being measured)."""
    deadline = time.monotonic() + timeout
    last = -SLOW_POLL
    while True:
        if sink_done is None or sink_done() or time.monotonic() - last >= SLOW_POLL:
            last = time.monotonic()
            done, failed, left = progress(cfg, address)
            if done + failed >= n and left == 0:
                return done, failed
        if time.monotonic() > deadline:
            raise SystemExit(f"timeout: {done} done, {failed} failed, {left} unfinished")
        if daemon.poll() is not None:
            raise SystemExit(f"listserv serve exited with {daemon.returncode}; "
                             f"see {tmp / 'serve.log'}")
        time.sleep(POLL)


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Sink:
    """Counts delivered transactions and the time of the first and of the latest one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.count = 0
        self.base = 0             # transactions before the measured post
        self.recipients = 0       # only known for the fallback sink
        self.first: float | None = None
        self.last: float | None = None
        self.kind = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.controller = None

    def reset(self) -> None:
        time.sleep(0.1)
        self.base, self.first, self.last = self.count, None, None

    def _seen(self, count: int) -> None:
        now = time.time()
        if count > self.count:
            if self.first is None:
                self.first = now
            self.last = now
            self.count = count

    def start(self, kind: str = "auto") -> None:
        exe = shutil.which("smtp-sink") or ("/usr/sbin/smtp-sink"
                                            if os.path.exists("/usr/sbin/smtp-sink") else None)
        if exe and kind != "aiosmtpd":
            cmd = [exe, "-c", "-m", "512"]
            if os.geteuid() == 0:
                cmd += ["-u", "nobody"]
            cmd += [f"127.0.0.1:{self.port}", "1024"]
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            self.kind = "postfix smtp-sink"
            threading.Thread(target=self._read, daemon=True).start()
            wait_port(self.port, 10, self.proc)
            return
        self._start_aiosmtpd()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            buf += chunk
            *records, buf = buf.split(b"\r")
            if records:
                last = records[-1]
                i = last.rfind(b"mesg=")
                if i >= 0:
                    self._seen(int(last[i + 5:].split()[0]))
            if self.first is not None:
                # smtp-sink prints its counter once per message: read it in batches (the
                # time of the last delivery is then up to READ_PAUSE late, never early), so
                # that this process does not take a core's tenth from the daemon it measures
                time.sleep(READ_PAUSE)

    def _start_aiosmtpd(self) -> None:
        from aiosmtpd.controller import Controller

        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
                sink.recipients += len(envelope.rcpt_tos)
                sink._seen(sink.count + 1)
                return "250 OK"

        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()
        self.kind = ("in-process aiosmtpd sink (FALLBACK, not Postfix smtp-sink: "
                     "the sink may be the bottleneck)")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
        if self.controller is not None:
            self.controller.stop()


def write_config(tmp: Path, intake_port: int, sink_port: int, database_url: str = "",
                 delivery: str = "") -> Path:
    """The benchmark's listserv.toml in ``tmp``: data_dir there (SQLite unless
    ``database_url``), the intake on 127.0.0.1:``intake_port``, outbound mail to the sink on
    ``sink_port`` (``delivery``: more [delivery] lines), web pages on a free port."""
    cfg = tmp / "listserv.toml"
    db = f'\n[database]\nurl = "{database_url}"\n' if database_url else ""
    cfg.write_text(f'data_dir = "{tmp / "data"}"\nsite_domain = "bench.example"\n{db}'
                   f'\n[intake]\nhost = "127.0.0.1"\nport = {intake_port}\n'
                   f'\n[delivery]\noutbound = "smtp://127.0.0.1:{sink_port}"\n{delivery}'
                   f'\n[web]\nlisten = "127.0.0.1:0"\n')
    return cfg


def cli(cfg: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "listserv", "--config", str(cfg), *args],
                         capture_output=True, text=True, cwd=ROOT)
    if res.returncode != 0:
        raise SystemExit(f"listserv {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def add_members(cfg: Path, n: int) -> None:
    """N members by direct SQL inserts (a bulk import of 100,000 is not what we measure)."""
    from sqlalchemy import insert, select

    from listserv.core.app import App
    from listserv.core.lists import get_list
    from listserv.core.models import Address, Membership

    app = App.load(str(cfg))
    emails = [f"member{i}@d{i % 97}.example" for i in range(n)]
    with app.db.unit_of_work() as session:
        list_id = get_list(session, LIST).id
        for i in range(0, n, 5000):
            session.execute(insert(Address), [{"email": e} for e in emails[i:i + 5000]])
        ids = session.execute(select(Address.id).where(Address.email.like("member%@d%.example"))
                              ).scalars().all()
        for i in range(0, len(ids), 5000):
            session.execute(insert(Membership),
                            [{"list_id": list_id, "address_id": a} for a in ids[i:i + 5000]])
    app.db.dispose()


def progress(cfg: Path, address: str = LIST) -> tuple[int, int, int]:
    """(done, failed, unfinished) recipients of the mail queued by the list ``address``."""
    from sqlalchemy import func, select

    from listserv.core.lists import get_list
    from listserv.core.models import Delivery, DeliveryState, OutboundMessage

    global _APP
    if _APP is None:
        from listserv.core.app import App
        _APP = App.load(str(cfg))
    with _APP.db.unit_of_work() as session:
        list_id = get_list(session, address).id
        rows = dict(session.execute(
            select(Delivery.state, func.coalesce(func.sum(Delivery.count), 0))
            .join(OutboundMessage).where(OutboundMessage.list_id == list_id)
            .group_by(Delivery.state)).all())
    return (int(rows.get(DeliveryState.done, 0)), int(rows.get(DeliveryState.failed, 0)),
            int(rows.get(DeliveryState.pending, 0)) + int(rows.get(DeliveryState.sending, 0)))


_APP = None


def signed(cfg: Path) -> str:
    """'once' (one signature for all copies), 'per copy' (VERP'd posts: each member's copy
    with its own one-click unsubscribe headers and signature) or 'no'."""
    from sqlalchemy import select

    from listserv.core.app import App
    from listserv.core.models import OutboundMessage

    app = App.load(str(cfg))
    with app.db.unit_of_work() as session:
        out = session.scalar(select(OutboundMessage).where(OutboundMessage.kind == "post"))
        per_member = bool(getattr(out, "per_member", False))
        sha = out.spool_sha if out is not None else None
    once = sha is not None and app.spool.get(sha).startswith(b"DKIM-Signature:")
    app.db.dispose()
    return "per copy" if per_member else "once" if once else "no"


# `listserv serve` with per-member copies switched off: posts are queued signed once (what
# notices.finalise does) and without per_member. Only for the baseline of this benchmark.
NO_PER_MEMBER = """
from listserv.delivery import outbound
from listserv.message import signing
from listserv.core.models import MailingList
from listserv.core.views import ListView
real = outbound.create_message
def create_message(session, app, data, **kw):
    if kw.get("per_member"):
        kw["per_member"] = False
        lv = ListView.of(session.get(MailingList, kw["list_id"]))
        if lv.dkim_key and lv.dkim_selector:
            data = signing.sign(data, lv.domain, lv.dkim_selector, lv.dkim_key)
    return real(session, app, data, **kw)
outbound.create_message = create_message
from listserv.cli import main
main()
"""


TRACE_INSTALL = ("import sys; sys.path.insert(0, 'bench'); import trace_serve; "
                 "trace_serve.install()\n")
TRACED = TRACE_INSTALL + "from listserv.cli import main\nmain()\n"


def stop_daemon(daemon: subprocess.Popen[bytes] | None) -> None:
    if daemon is not None and daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()


def clean_up(tmp: Path, sink: "Sink", keep: bool,
             *daemons: subprocess.Popen[bytes] | None) -> None:
    """Stop the daemons and the sink; remove the temporary data_dir unless ``keep``."""
    for daemon in daemons:
        stop_daemon(daemon)
    sink.stop()
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def print_trace(path: Path, t_posted: float, t_accepted: float, first: float | None,
                steps: int) -> None:
    """The traced steps that started after the post was sent, in start order, in ms from the
    250 (negative: before it), up to the first copy seen by the sink and a few after."""
    import json

    if not path.exists():
        print("trace: no trace file (did the daemon stop cleanly?)")
        return
    events = [json.loads(line) for line in path.read_text().splitlines()]
    events = sorted((e for e in events if e[1] >= t_posted), key=lambda e: e[1])
    print(f"trace: {len(events)} steps after the post was sent; ms from the 250 "
          f"(the sink saw the first copy at "
          f"{(first - t_accepted) * 1000 if first else float('nan'):.1f} ms):")
    print("     start   +wall    cpu  step                           thread")
    steps_shown = [e for e in events if not e[0].startswith(("gate.", "Session.commit"))]
    for name, t0, t1, thread, extra, cpu in steps_shown[:steps]:
        print(f"  {(t0 - t_accepted) * 1000:8.1f} +{(t1 - t0) * 1000:6.1f} {cpu * 1000:6.1f}  "
              f"{name:<30} {thread[:22]:<22} {extra}")
    held: dict[str, float] = {}
    holds = []
    for name, t0, t1, thread, _, _ in events:
        if name == "gate.acquire":
            held[thread] = t1
        elif name == "gate.release" and thread in held:
            holds.append((t0 - held[thread], thread, held.pop(thread) - t_accepted))
    waits = sorted(t1 - t0 for name, t0, t1, _, _, _ in events if name == "gate.acquire")
    if waits:
        print(f"write gate: {len(waits)} takes, wait p50 {percentile(waits, 50) * 1000:.1f} ms, "
              f"p99 {percentile(waits, 99) * 1000:.1f} ms; longest holds (ms, thread, at):")
        for h, thread, at in sorted(holds)[-8:]:
            t0 = t_accepted + at
            inside = sorted({e[0] for e in events if e[3] == thread and e[1] <= t0 + h
                             and e[2] >= t0 and not e[0].startswith("gate.")})
            print(f"  {h * 1000:7.1f} {thread[:22]:<22} {at * 1000:8.1f}  {', '.join(inside)}")
    stores = [(t1 - t0, cpu, sub, t0 - t_accepted, thread)
              for name, t0, t1, thread, _, cpu in events
              for sub in [[(e[2] - e[1], e[5]) for e in events if e[0] == "Session.commit"
                           and e[3] == thread and t0 <= e[1] <= t1]]
              if name == "intake.store" and t0 > t_accepted]
    if stores:
        walls = sorted(w for w, _, _, _, _ in stores)
        worst = sorted(stores, key=lambda x: x[0])[-5:]
        print(f"intake.store after the 250 ({len(stores)}): wall p50 "
              f"{percentile(walls, 50) * 1000:.1f} ms, p99 {percentile(walls, 99) * 1000:.1f} ms;"
              " slowest (wall, cpu, at, thread, its commits' wall/cpu) ms:")
        for w, c, sub, at, thread in worst:
            print(f"  {w * 1000:7.1f} {c * 1000:6.1f} {at * 1000:8.1f} {thread[:18]:<18} "
                  + ", ".join(f"{a * 1000:.1f}/{b * 1000:.1f}" for a, b in sub))


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU seconds so far of process ``pid`` (all its threads) and of its child
    processes (the signing workers)."""
    own = kids = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid):
            own += int(fields[11]) + int(fields[12])
        elif fields[1] == str(pid):
            kids += int(fields[11]) + int(fields[12])
    tck = os.sysconf("SC_CLK_TCK")
    return own / tck, kids / tck


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]                     # idle + iowait
    tck = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tck, idle / tck


def vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--members", type=int, default=10000)
    ap.add_argument("--verp", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--dkim", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--per-member", action=argparse.BooleanOptionalAction, default=True,
                    help="VERP'd copies with their own unsubscribe headers and signature "
                         "(--no-per-member: the baseline, one signature per post)")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--database-url", default="", help="default: SQLite in the temp data_dir")
    ap.add_argument("--sink", choices=("auto", "aiosmtpd"), default="auto",
                    help="auto: Postfix smtp-sink when installed, else the aiosmtpd fallback")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="post once to a one-member list first (a running daemon is warm)")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the median is printed")
    ap.add_argument("--keep", action="store_true", help="keep the temp data_dir")
    ap.add_argument("--intake-latency", type=int, default=0, metavar="N",
                    help="post N 1 KB messages while the fan-out runs and print the "
                         "intake's answer times (p50/p99/max)")
    ap.add_argument("--trace", action="store_true",
                    help="print the daemon's timed steps from the post's 250 to its first "
                         "copies (bench/trace_serve.py)")
    ap.add_argument("--trace-steps", type=int, default=40, metavar="N",
                    help="how many traced steps to print")
    ap.add_argument("--latency-interval", type=float, default=0.02, metavar="SECONDS",
                    help="pause between two latency probe posts")
    ap.add_argument("--roles", choices=("all", "split"), default="all",
                    help="all: one `serve`; split: `serve --role intake` and "
                         "`serve --role worker` (figures are the two processes' sums/peaks)")
    args = ap.parse_args()
    rates = []
    for i in range(args.repeat):
        if args.repeat > 1:
            print(f"-- run {i + 1} of {args.repeat}")
        rates.append(run(args))
    if args.repeat > 1:
        print(f"median deliveries per second over {args.repeat} runs: "
              f"{statistics.median(rates):,.0f} (all: {', '.join(f'{r:,.0f}' for r in rates)})")


def run(args: argparse.Namespace) -> float:
    """One fan-out; returns the deliveries per second."""
    global _APP
    if _APP is not None:
        _APP.db.dispose()
    _APP = None
    tmp = Path(tempfile.mkdtemp(prefix="listserv-fanout-"))
    sink = Sink()
    sink.start(args.sink)
    intake_port = free_port()
    cfg = write_config(tmp, intake_port, sink.port, args.database_url,
                       f'connections = {args.connections}\n'
                       f'verp = {"true" if args.verp else "false"}\n')
    daemon: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        cli(cfg, "init")
        cli(cfg, "list", "create", LIST, "--owner", "owner@bench.example")
        if args.dkim:
            cli(cfg, "domain", "dkim-keygen", "bench.example", "--selector", "bench")
        cli(cfg, "list", "create", WARMUP, "--owner", "owner@bench.example")
        cli(cfg, "member", "add", WARMUP, "reader@bench.example")
        cli(cfg, "list", "create", PROBE, "--owner", "owner@bench.example")
        cli(cfg, "member", "add", PROBE, "reader@bench.example")
        for lst in (LIST, WARMUP, PROBE):
            for key, value in (("nonmember_action", "accept"), ("dmarc_mitigation", "none")):
                cli(cfg, "list", "set", lst, key, value)
        t = time.monotonic()
        add_members(cfg, args.members)
        print(f"setup: {args.members} members inserted in {time.monotonic() - t:.1f}s")

        log = open(tmp / "serve.log", "wb")
        flags = os.environ.get("BENCH_SERVE_FLAGS", "").split()   # e.g. "-vv"
        how = ["-m", "listserv"] if args.per_member else ["-c", NO_PER_MEMBER]
        env = dict(os.environ)
        if args.trace:
            how = ["-c", TRACED if args.per_member else NO_PER_MEMBER.replace(
                "from listserv.cli import main", TRACE_INSTALL + "from listserv.cli import main")]
            env["BENCH_TRACE_FILE"] = str(tmp / "trace.jsonl")
        role = ["--role", "intake"] if args.roles == "split" else []
        daemon = subprocess.Popen([sys.executable, *how, "--config", str(cfg),
                                   *flags, "serve", *role], stdout=log,
                                  stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        wait_port(intake_port, 30, daemon)
        if args.roles == "split":
            worker = subprocess.Popen([sys.executable, *how, "--config", str(cfg),
                                       *flags, "serve", "--role", "worker"], stdout=log,
                                      stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        pids = [p.pid for p in (daemon, worker) if p is not None]

        if args.warmup:
            # A long-running daemon is warm: imports done, key loaded, connections open.
            with smtplib.SMTP("127.0.0.1", intake_port) as smtp:
                smtp.sendmail(POSTER, [WARMUP], message(WARMUP, "warm-up"))
            wait_delivered(cfg, WARMUP, 1, 60, worker or daemon, tmp)
            sink.reset()
        cpu0 = [cpu_seconds(pid) for pid in pids]
        sink0 = cpu_seconds(sink.proc.pid)[0] if sink.proc is not None else 0.0
        machine0 = machine_cpu()
        self0 = time.process_time()
        load0 = os.getloadavg()[0]
        with smtplib.SMTP("127.0.0.1", intake_port) as smtp:
            t_posted = time.time()
            smtp.sendmail(POSTER, [LIST], message(LIST, "fan-out benchmark"))
            t_accepted = time.time()
        running = threading.Event()
        running.set()
        answers: list[tuple[float, bool]] = []
        probe = None
        if args.intake_latency:
            probe = threading.Thread(target=probe_intake, daemon=True, args=(
                intake_port, args.intake_latency, args.latency_interval, running, answers))
            probe.start()
        try:
            # one transaction per recipient with VERP, else at least one per 500
            want = sink.base + (args.members if args.verp else -(-args.members // 500))
            done, failed = wait_delivered(cfg, LIST, args.members, args.timeout,
                                          worker or daemon, tmp, lambda: sink.count >= want)
        finally:
            running.clear()
        t_recorded = time.time()
        machine = [b - a for a, b in zip(machine0, machine_cpu())]
        self_cpu = time.process_time() - self0
        sink_cpu = (cpu_seconds(sink.proc.pid)[0] - sink0) if sink.proc is not None else None
        time.sleep(0.2)           # let the sink's counter catch up
        hwms = [vm_hwm_mb(pid) for pid in pids]
        hwm = sum(hwms)
        cpus = [[b - a for a, b in zip(c0, cpu_seconds(pid))] for c0, pid in zip(cpu0, pids)]
        cpu = [sum(c[0] for c in cpus), sum(c[1] for c in cpus)]
        last = sink.last or t_recorded
        elapsed = last - t_accepted
        first = (sink.first - t_accepted) if sink.first else float("nan")
        print(f"sink: {sink.kind}")
        print(f"members={args.members} verp={args.verp} dkim={args.dkim} "
              f"connections={args.connections} signed={signed(cfg) if args.dkim else 'no'}")
        print(f"delivered: {done} recipients, failed: {failed}")
        print(f"seconds from the post's 250 to the last recipient delivered: {elapsed:.2f}")
        print(f"  (to the last result recorded in the queue: {t_recorded - t_accepted:.2f})")
        print(f"deliveries per second: {done / elapsed:,.0f}")
        print(f"SMTP transactions: {sink.count - sink.base}")
        print(f"first delivery latency: {first:.3f} s "
              f"({'warm daemon' if args.warmup else 'first post after start'})")
        print(f"daemon peak RSS (VmHWM): {hwm:.0f} MB"
              + (f" (intake {hwms[0]:.0f} + worker {hwms[1]:.0f})" if worker else ""))
        print(f"CPU during the fan-out: daemon {cpu[0]:.2f} s, its signing workers "
              f"{cpu[1]:.2f} s; load average before: {load0:.2f}"
              + (f" (intake process {cpus[0][0]:.2f} s)" if worker else ""))
        print(f"  the sink {'%.2f s' % sink_cpu if sink_cpu is not None else 'in-process'}, "
              f"this benchmark {self_cpu:.2f} s; "
              f"the whole machine from the post to the last result recorded: busy "
              f"{machine[0]:.2f} s, idle {machine[1]:.2f} s ({os.cpu_count()} cores)")
        if probe is not None:
            probe.join(args.timeout)
            during = [a for a, busy in answers if busy]
            if during:
                print(f"intake answer to a 1 KB post during the fan-out ({len(during)} of "
                      f"{len(answers)} posts, MAIL FROM to 250): "
                      f"p50 {percentile(during, 50) * 1000:.1f} ms, "
                      f"p99 {percentile(during, 99) * 1000:.1f} ms, "
                      f"max {max(during) * 1000:.1f} ms")
            else:
                print(f"intake latency: none of the {len(answers)} posts was answered while "
                      "the fan-out ran (a larger --members?)")
        if args.trace:
            stop_daemon(worker)
            stop_daemon(daemon)
            print_trace(tmp / "trace.jsonl", t_posted, t_accepted, sink.first,
                        args.trace_steps)
        return done / elapsed
    finally:
        clean_up(tmp, sink, args.keep, worker, daemon)


if __name__ == "__main__":
    main()
