"""Benchmark: `listserv import mbox` of a generated Pipermail-style archive on SQLite.

Builds a fresh data directory, a public list and an mbox of COUNT messages (obfuscated From_
lines and headers, threads, '>From ' quoting; see tests/mm2fixture.py), then runs the same
code as the command (listserv.importers.mbox.import_mbox): the month files are written and
the HTML pages of every month rendered. Prints the wall time (archive files, then pages).

    python bench/import_mbox.py [COUNT] [--no-pages] [--dir=DIR]

(DIR: where the data directory is made; default the system's temporary directory. See
bench/import_mailman2.py on page files in a busy /tmp.)

Target: 100,000 messages in at most 60 s.
"""

from __future__ import annotations

import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from listserv.core.app import App, ensure_site_secret  # noqa: E402
from listserv.core.db import upgrade  # noqa: E402
from listserv.importers.mbox import import_mbox  # noqa: E402
from listserv.core.lists import create_list  # noqa: E402
from listserv.core.models import ArchivePolicy  # noqa: E402
from tests.mm2fixture import pipermail_mbox  # noqa: E402


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    count = int(args[0]) if args else 100_000
    html = "--no-pages" not in sys.argv
    where = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--dir=")), None)
    with tempfile.TemporaryDirectory(prefix="listserv-bench-", dir=where) as tmp:
        print(f"data directory in {Path(tmp).parent}")
        os.environ["LISTSERV_DATA_DIR"] = str(Path(tmp) / "data")
        app = App.load(None)
        Path(app.settings.data_dir).mkdir(parents=True, exist_ok=True)
        upgrade(app.db)
        with app.db.unit_of_work() as session:
            ensure_site_secret(session)
            create_list(session, "dev@lists.example.org").archive = ArchivePolicy.public
        mbox = Path(tmp) / "dev.mbox"
        pipermail_mbox(mbox, count, step=600.0)
        size_mb = mbox.stat().st_size / 1e6
        start = time.perf_counter()
        report = import_mbox(app, "dev@lists.example.org", mbox, html=html)
        seconds = time.perf_counter() - start
        app.db.dispose()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"mbox: {count} messages, {size_mb:.0f} MB; added {report.added}, "
          f"{len(report.months)} months, {report.pages} pages")
    print(f"seconds: {seconds:.1f} ({count / seconds:,.0f} messages/s); "
          f"peak memory {peak_mb:.0f} MB")
    ok = report.added == count and (seconds <= 60 * count / 100_000 or count < 100_000)
    print("target (100,000 in <= 60 s): " + ("met" if ok and count >= 100_000 else
                                              "n/a (smaller run)" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
