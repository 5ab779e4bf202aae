"""Benchmark: `listserv import mailman2 CONFIG_PCK --archive MBOX` of a big Mailman 2.1 list.

Writes a Python 2 protocol-2 config.pck of a list with MEMBERS members with mixed options
(digest MIME/plain, moderated, nomail, disabled by admin and by bounces with bounce info;
tests/mm2fixture.big_config) and a Pipermail-style archive of MESSAGES messages, then runs
the command's code (import_mailman2 + import_mbox) against a fresh SQLite database, checks
that every member arrived, and prints the wall time of each part. A second import is timed
too (it must change nothing).

    python bench/import_mailman2.py [MEMBERS] [MESSAGES] [--no-pages] [--dir=DIR]

Target: 5,000 members and 20,000 messages in at most 30 s. The data directory is made in DIR
(default: the system's temporary directory). Creating the 20,000 page files is the part that
depends on the file system: on an ext4 without a journal whose directory has seen many files
deleted lately (a busy /tmp), each creation scans recently freed inodes (about 1 ms here
against 35 us in a quiet directory).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from listserv.core.app import App, ensure_site_secret  # noqa: E402
from listserv.core.db import upgrade  # noqa: E402
from listserv.importers.apply import import_mailman2  # noqa: E402
from listserv.importers.mbox import import_mbox  # noqa: E402
from listserv.core.models import Membership, Role  # noqa: E402
from tests.mm2fixture import big_config, pipermail_mbox, write_config  # noqa: E402


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    members = int(args[0]) if args else 5000
    messages = int(args[1]) if len(args) > 1 else 20_000
    pages = "--no-pages" not in sys.argv
    where = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--dir=")), None)
    with tempfile.TemporaryDirectory(prefix="listserv-bench-", dir=where) as tmp:
        print(f"data directory in {Path(tmp).parent}")
        os.environ["LISTSERV_DATA_DIR"] = str(Path(tmp) / "data")
        app = App.load(None)
        Path(app.settings.data_dir).mkdir(parents=True, exist_ok=True)
        upgrade(app.db)
        with app.db.unit_of_work() as session:
            ensure_site_secret(session)
        pck = write_config(Path(tmp), big_config(members))
        mbox = Path(tmp) / "dev.mbox"
        pipermail_mbox(mbox, messages, step=1800.0)

        start = time.perf_counter()
        changes, plan = import_mailman2(app.db, pck)
        t_list = time.perf_counter() - start
        report = import_mbox(app, changes.list_address, mbox, html=pages)
        total = time.perf_counter() - start
        with app.db.unit_of_work() as session:
            count = session.scalar(select(func.count()).select_from(Membership).where(
                Membership.role == Role.member))
        again_start = time.perf_counter()
        again, _ = import_mailman2(app.db, pck)
        again_report = import_mbox(app, changes.list_address, mbox, html=pages)
        again_s = time.perf_counter() - again_start
        app.db.dispose()
    print(f"list + {count} members: {t_list:.1f} s; archive: {report.added} messages, "
          f"{len(report.months)} months, {report.pages} pages, {report.seconds:.1f} s")
    print(f"total: {total:.1f} s; second import: {again_s:.1f} s, nothing changed: "
          f"{again.nothing and again_report.added == 0}")
    ok = (count == members and report.added == messages and again.nothing
          and again_report.added == 0 and total <= 30)
    print("target (5,000 members + 20,000 messages in <= 30 s): " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
