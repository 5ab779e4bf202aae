"""Archive search benchmark: full-text search over N generated archived posts.

    python bench/web_search.py [--posts 100000] [--db URL] [--repeat 5] [--live 500]

Builds a fresh database (SQLite in a temporary directory unless --db names an empty one),
one list and N archive index rows with generated text (subjects, senders and bodies of 40-400
words drawn from a 20,000-word vocabulary with a Zipf distribution, as natural language is),
inserted through the engine's full-text index (SQLite FTS5 triggers; PostgreSQL's generated
tsvector and GIN index). Then:
- search: archive_search.search() for common, middling and rare words, two words, a phrase,
  a prefix and an exclusion, first page of 20 by relevance and by date; each query --repeat
  times; median and 95th percentile over all runs, and the median per kind;
- live: the archive worker's cost of indexing one message (parse, text, insert), over --live
  real generated messages;
- browse: the month listing and one message with its prev/next and thread.
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

from sqlalchemy import insert

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from listserv.archive import index as archive_index, search as archive_search  # noqa: E402
from listserv.core import config, lists  # noqa: E402
from listserv.core.app import App, ensure_site_secret  # noqa: E402
from listserv.core.db import upgrade  # noqa: E402
from listserv.core.models import ArchiveMessage  # noqa: E402

LIST = "dev@example.org"
START = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "do", "gu", "he",
             "ji", "bo", "fe", "wa", "ty", "qu", "xi", "an", "el", "or", "us", "ing", "er"]


def vocabulary(n: int, rng: random.Random) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words, key=lambda w: (len(w), w))     # short words are the common ones


class Text:
    def __init__(self, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(20_000, self.rng)
        self.cum = list(_cumulative([1 / (r + 1) for r in range(len(self.words))]))

    def words_(self, k: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=k)

    def sentence(self, lo: int, hi: int) -> str:
        return " ".join(self.words_(self.rng.randint(lo, hi)))


def _cumulative(weights: list[float]) -> list[float]:
    total, out = 0.0, []
    for w in weights:
        total += w
        out.append(total)
    return out


def fill(app: App, list_id: int, posts: int, text: Text) -> None:
    senders = [(f"Person {i}", f"person{i}@host{i % 50}.example") for i in range(2000)]
    roots: list[str] = []
    batch = []
    with app.db.unit_of_work() as session:
        for i in range(posts):
            when = START + dt.timedelta(minutes=15 * i)
            mid = f"m{i}@bench.example"
            reply = roots and text.rng.random() < 0.6
            thread = text.rng.choice(roots[-200:]) if reply else mid
            if not reply:
                roots.append(mid)
            name, address = text.rng.choice(senders)
            batch.append({
                "list_id": list_id, "message_id": mid, "month": when.strftime("%Y-%m"),
                "archived_at": when, "sent_at": when,
                "sender_name": name, "sender_address": address,
                "subject": ("Re: " if reply else "") + text.sentence(2, 7),
                "parent_id": thread if reply else None, "thread_id": thread,
                "body": "\n".join(text.sentence(8, 20) for _ in range(text.rng.randint(5, 20))),
                "attachments": 0})
            if len(batch) == 5000:
                session.execute(insert(ArchiveMessage), batch)
                batch = []
        if batch:
            session.execute(insert(ArchiveMessage), batch)


def queries(text: Text) -> list[tuple[str, str]]:
    w = text.words
    return [("common", w[0]), ("common", w[3]), ("middling", w[300]), ("middling", w[900]),
            ("rare", w[8000]), ("rare", w[15000]), ("two words", f"{w[2]} {w[40]}"),
            ("two words", f"{w[100]} {w[700]}"), ("phrase", f'"{w[0]} {w[1]}"'),
            ("prefix", w[50][:3] + "*"), ("exclusion", f"{w[200]} -{w[1]}"),
            ("sender", "person42"), ("unmatched", "zzzzqqq")]


def time_it(fn: object, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append((time.perf_counter() - t0) * 1000)
    return out


def live(app: App, list_id: int, n: int, text: Text) -> float:
    raws = []
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = f"Person {i} <person{i}@x.example>"
        msg["Subject"] = text.sentence(2, 7)
        msg["Message-ID"] = f"<live{i}@bench.example>"
        msg["Date"] = "Mon, 02 Nov 2026 09:00:00 +0000"
        msg.set_content("\n".join(text.sentence(8, 20) for _ in range(10)))
        raws.append(msg.as_bytes())
    when = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
    with app.db.unit_of_work() as session:
        t0 = time.perf_counter()
        for raw in raws:      # one post at a time, as the archive job adds them
            archive_index.add_messages(session, list_id, [(raw, "2026-11", when)])
        per = (time.perf_counter() - t0) * 1000 / n
        session.rollback()
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=100_000)
    ap.add_argument("--db", default=None, help="database URL (default: SQLite in a temp dir)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--live", type=int, default=500)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="listserv-bench-search-"))
    url = args.db or f"sqlite:///{tmp}/listserv.db"
    settings = config.load(environ={"LISTSERV_DATA_DIR": str(tmp),
                                    "LISTSERV_DATABASE_URL": url})
    app = App.from_settings(settings)
    upgrade(app.db)
    with app.db.unit_of_work() as session:
        ensure_site_secret(session)
        list_id = lists.create_list(session, LIST).id
    text = Text()
    t0 = time.perf_counter()
    fill(app, list_id, args.posts, text)
    print(f"setup: {args.posts} archived posts indexed in {time.perf_counter() - t0:.1f} s "
          f"(db {url.split('://')[0]})")
    if not app.db.is_sqlite:
        with app.db.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE archive_message")

    every: list[float] = []
    for order in ("relevance", "date"):
        by_kind: dict[str, list[float]] = {}
        for kind, q in queries(text):
            def run(q: str = q) -> None:
                with app.db.unit_of_work() as session:
                    archive_search.search(session, list_id, q, limit=20, order=order)
            run()       # warm the cache once
            times = time_it(run, args.repeat)
            by_kind.setdefault(kind, []).extend(times)
            every.extend(times)
        print(f"search by {order}: " + ", ".join(
            f"{k} {statistics.median(v):.1f}" for k, v in by_kind.items()) + " (median ms)")
    every.sort()
    print(f"search: median {statistics.median(every):.1f} ms, "
          f"p95 {every[int(len(every) * 0.95)]:.1f} ms, max {every[-1]:.1f} ms "
          f"over {len(every)} searches (target: median <= 100 ms)")

    def month() -> None:
        with app.db.unit_of_work() as session:
            archive_search.month_threads(session, list_id, "2021-06")

    def one() -> None:
        with app.db.unit_of_work() as session:
            archive_search.message(session, list_id, f"m{args.posts // 2}@bench.example")
    print(f"browse: month page data {statistics.median(time_it(month, 5)):.1f} ms, "
          f"message with prev/next/thread {statistics.median(time_it(one, 5)):.1f} ms (median)")
    if args.live:
        print(f"live: indexing one archived message {live(app, list_id, args.live, text):.2f} ms "
              f"(parse, text, thread lookup, insert; over {args.live})")


if __name__ == "__main__":
    main()
