"""Digest benchmark: one digest of N posts to M digest members (half MIME, half plain).

    python bench/digest.py [--posts 200] [--members 5000] [--db URL] [--no-verp] [--no-deliver]
                           [--sink auto|postfix|python]

Builds a fresh database (SQLite in a temporary directory unless --db names an empty one), a
DKIM-keyed list, M digest members and N accepted posts (text, some with an attachment), then:
- build: both digests built, serialised and DKIM-signed (pure, outside any transaction);
- queue: outbound.queue_message of both digests to every recipient (streamed from the
  database), measured alone in a transaction that is rolled back;
- send: ``digests.send_now``, the real thing: lock, claim, build + sign, store, queue, commit;
- deliver: ``delivery.deliver_pending`` to a local SMTP sink in another process (so the peak
  RSS printed is listserv's alone): Postfix's C ``smtp-sink`` when installed, else a counting
  aiosmtpd sink (which, being pure Python, is then the bottleneck).
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing as mp
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from listserv import digests  # noqa: E402
from listserv.core import config, lists  # noqa: E402
from listserv.delivery import notices  # noqa: E402
from listserv.message import signing  # noqa: E402
from listserv.core.app import App, ensure_site_secret  # noqa: E402
from listserv.core.db import Database, upgrade  # noqa: E402
from listserv.digests.build import DigestItem  # noqa: E402
from listserv.digests.service import load_items  # noqa: E402
from listserv.core.models import (  # noqa: E402
    Address,
    Delivery,
    DeliveryMode,
    DeliveryState,
    DigestEntry,
    Membership,
)
from listserv.core.views import ListView  # noqa: E402

LIST = "dev@example.org"


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------- sink process


def _sink(port_q: "mp.Queue[int]", stop: "mp.Event", result_q: "mp.Queue[tuple[int, int, int]]"
          ) -> None:
    from aiosmtpd.controller import Controller

    class Counter:
        transactions = rcpts = nbytes = 0

        async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
            Counter.transactions += 1
            Counter.rcpts += len(envelope.rcpt_tos)
            Counter.nbytes += len(envelope.original_content or envelope.content)
            return "250 OK"

    class PortZero(Controller):
        def _trigger_server(self) -> None:   # aiosmtpd checks self.port: use the bound one
            if self.port == 0 and self.server is not None:
                self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    c = PortZero(Counter(), hostname="127.0.0.1", port=0, decode_data=False,
                 data_size_limit=0)
    c.start()
    port_q.put(c.server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    stop.wait()
    c.stop()
    result_q.put((Counter.transactions, Counter.rcpts, Counter.nbytes))


class PythonSink:
    name = "aiosmtpd sink (Python)"

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        port_q: mp.Queue[int] = ctx.Queue()
        self.result_q: mp.Queue[tuple[int, int, int]] = ctx.Queue()
        self.stop_ev = ctx.Event()
        self.proc = ctx.Process(target=_sink, args=(port_q, self.stop_ev, self.result_q),
                                daemon=True)
        self.proc.start()
        self.port = port_q.get(timeout=30)

    def stop(self) -> str:
        self.stop_ev.set()
        tx, rcpts, nbytes = self.result_q.get(timeout=60)
        self.proc.join(10)
        return f" [sink counted {tx} transactions, {rcpts} recipients, {nbytes / 1e6:.0f} MB]"


class PostfixSink:
    name = "Postfix smtp-sink (C)"

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", f"127.0.0.1:{self.port}",
                                      "256"], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:   # wait until it listens (a condition with a deadline)
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise SystemExit("smtp-sink did not start")
                time.sleep(0.05)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(10)
        return ""


# ---------------------------------------------------------------------------- fixture


def make_post(n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = f"Poster {n % 37} <poster{n % 37}@example.com>"
    msg["To"] = LIST
    msg["Subject"] = f"[Dev] Re: discussion thread {n // 5}"
    msg["Date"] = "Mon, 02 Nov 2026 09:00:00 +0000"
    msg["Message-ID"] = f"<bench{n}@example.com>"
    msg["List-Id"] = "Dev <dev.example.org>"
    para = ("A line of a typical post, some seventy characters long, or thereabouts.\n" *
            (10 + n % 30))
    msg.set_content(f"Hello list,\n\n> quoted earlier text {n}\n\n{para}\n-- \nPoster {n}\n")
    if n % 20 == 0:
        msg.add_attachment(bytes(range(256)) * 32, maintype="application", subtype="pdf",
                           filename=f"report-{n}.pdf")
    return msg


def setup(app: App, posts: int, members: int) -> None:
    key = signing.generate_key()
    with app.db.unit_of_work() as s:
        ensure_site_secret(s)
        ml = lists.create_list(s, LIST, display_name="Dev")
        ml.domain.dkim_selector, ml.domain.dkim_private_key = "bench", key
        ml.digest_size_threshold_kb = 0
        now = app.now()
        s.execute(insert(Address), [{"email": f"user{i:05d}@host{i % 50}.example",
                                     "display_name": "", "created_at": now}
                                    for i in range(members)])
        ids = list(s.scalars(select(Address.id).order_by(Address.id)))
        s.execute(insert(Membership), [
            {"list_id": ml.id, "address_id": a, "joined_at": now,
             "delivery_mode": DeliveryMode.mime_digest if i % 2 else DeliveryMode.plain_digest}
            for i, a in enumerate(ids)])
        for n in range(1, posts + 1):
            msg = make_post(n)
            ml.post_id = n
            sha = app.spool.put(msg.as_bytes(policy=msg.policy.clone(linesep="\r\n")), session=s)
            digests.add_post(s, app, ml, n, sha, msg)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=200)
    ap.add_argument("--members", type=int, default=5000)
    ap.add_argument("--db", default=None, help="database URL (default: SQLite in a temp dir)")
    ap.add_argument("--no-verp", action="store_true")
    ap.add_argument("--no-deliver", action="store_true")
    ap.add_argument("--sink", choices=["auto", "postfix", "python"], default="auto")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="listserv-bench-digest-"))
    url = args.db or f"sqlite:///{tmp}/listserv.db"
    settings = config.load(environ={"LISTSERV_DATA_DIR": str(tmp),
                                    "LISTSERV_DATABASE_URL": url})
    settings = config.replace(settings, delivery__verp=not args.no_verp)
    app = App.from_settings(settings)
    upgrade(app.db)
    t0 = time.perf_counter()
    setup(app, args.posts, args.members)
    print(f"setup: {args.members} digest members, {args.posts} posts "
          f"({time.perf_counter() - t0:.1f} s); db {url.split('://')[0]}, "
          f"verp {'on' if settings.delivery.verp else 'off'}")

    # build: pure, both kinds, serialised and signed
    with app.db.unit_of_work() as s:
        entries = list(s.scalars(select(DigestEntry).order_by(DigestEntry.seq)))
        lv = ListView.of(lists.get_list(s, LIST))
    digests.build_plain_digest(load_items(app, entries[:2]), lv, 1, 1,   # warm-up: templates
                               date=dt.datetime.now(dt.timezone.utc), data_dir=settings.data_dir)
    t0 = time.perf_counter()
    items: list[DigestItem] = load_items(app, entries)
    t_load = time.perf_counter() - t0
    sizes = {}
    blobs = {}
    for label, build in (("mime", digests.build_mime_digest),
                          ("plain", digests.build_plain_digest)):
        t1 = time.perf_counter()
        msg = build(items, lv, 1, 1, date=dt.datetime.now(dt.timezone.utc),
                    data_dir=settings.data_dir)
        t2 = time.perf_counter()
        data = notices.finalise(msg, lv)
        t3 = time.perf_counter()
        sizes[label] = len(data)
        blobs[label] = data
        print(f"build {label:5s}: {1000 * (t2 - t1):7.1f} ms build + {1000 * (t3 - t2):6.1f} ms "
              f"serialise+sign = {len(data) / 1024:8.1f} KB")
    print(f"load {args.posts} posts from the spool: {1000 * t_load:.1f} ms")
    print(f"build total (load, both kinds, sign): {1000 * (time.perf_counter() - t0):.1f} ms")

    # queue only: both digests to every digest member, streamed; rolled back
    from listserv.delivery.outbound import queue_message

    with app.db.sessions() as s:
        t0 = time.perf_counter()
        for label, mode in (("mime", DeliveryMode.mime_digest),
                            ("plain", DeliveryMode.plain_digest)):
            emails = s.scalars(select(Address.email).join(Membership)
                               .where(Membership.delivery_mode == mode)
                               .execution_options(yield_per=2000))
            queue_message(s, app, blobs[label], emails, kind="digest",
                          envelope_from=lv.bounces, list_id=lv.id, verp=settings.delivery.verp)
        s.flush()
        t_queue = time.perf_counter() - t0
        s.rollback()
    print(f"queue both digests to {args.members} recipients: {1000 * t_queue:.1f} ms")

    # send: the real transaction
    t0 = time.perf_counter()
    [res] = digests.send_now(app, LIST)
    t_send = time.perf_counter() - t0
    with app.db.unit_of_work() as s:
        rows = s.scalar(select(func.count(Delivery.id)))
    per_tx = 1 if settings.delivery.verp else settings.delivery.max_recipients_per_transaction
    txs = {k: -(-n // per_tx) for k, n in (("mime", res.mime_recipients),
                                           ("plain", res.plain_recipients))}
    wire = sizes["mime"] * txs["mime"] + sizes["plain"] * txs["plain"]
    print(f"send transaction (lock, claim, build, sign, queue, commit): {t_send:.2f} s: "
          f"Vol {res.volume} Issue {res.number}, "
          f"{res.mime_recipients} MIME + {res.plain_recipients} plain recipients, "
          f"{rows} delivery rows")
    print(f"total bytes to deliver: {wire / 1e6:.1f} MB in {sum(txs.values())} SMTP "
          f"transactions ({txs['mime']} x {sizes['mime']} + {txs['plain']} x "
          f"{sizes['plain']}); peak RSS so far {rss_mb():.0f} MB")

    if not args.no_deliver:
        from listserv.delivery import runner as delivery

        use_postfix = args.sink == "postfix" or (args.sink == "auto"
                                                  and shutil.which("smtp-sink") is not None)
        sink = PostfixSink() if use_postfix else PythonSink()
        app.settings = config.replace(app.settings,
                                      delivery__outbound=f"smtp://127.0.0.1:{sink.port}")
        t0 = time.perf_counter()
        delivery.deliver_pending(app)
        t_del = time.perf_counter() - t0
        counted = sink.stop()
        with app.db.unit_of_work() as s:
            left = s.scalar(select(func.count(Delivery.id))
                            .where(Delivery.state != DeliveryState.done))
        done = res.mime_recipients + res.plain_recipients
        print(f"deliver: {t_del:.2f} s to a local {sink.name}: {done} recipients, "
              f"{wire / 1e6:.0f} MB ({wire / 1e6 / t_del:.0f} MB/s, {done / t_del:.0f} "
              f"recipients/s){counted}; batches not done: {left}")
    print(f"peak RSS: {rss_mb():.0f} MB")
    app.db.dispose()


if __name__ == "__main__":
    main()
