"""Benchmark: import 100,000 generated addresses into one list on SQLite.

Runs the same code path as ``listserv member add LIST --file PATH`` (read_member_file +
import_members) against a fresh, migrated SQLite database in a temporary directory, then
prints the wall time and the peak resident memory (resource.getrusage ru_maxrss).

    python bench/import_members.py [COUNT]

Target: 100,000 addresses in under 15 s and under 200 MB.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from listserv.core.db import Database, upgrade
from listserv.core.lists import create_list
from listserv.admin.member_import import import_members, read_member_file


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="listserv-bench-") as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'listserv.db'}")
        upgrade(db)
        with db.unit_of_work() as session:
            create_list(session, "bench@example.org")
        members = Path(tmp) / "members.txt"
        with members.open("w") as fh:
            for i in range(count):
                fh.write(f"Member {i} <member.{i}@host{i % 997}.example.com>\n")

        start = time.perf_counter()
        report = import_members(db, "bench@example.org", read_member_file(members))
        seconds = time.perf_counter() - start
        db.dispose()

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"imported {report.added} of {count} addresses "
          f"({report.skipped} skipped, {len(report.invalid)} invalid)")
    print(f"seconds: {seconds:.2f}")
    print(f"peak memory: {peak_mb:.1f} MB")
    ok = report.added == count and seconds < 15 and peak_mb < 200
    print("target (<15 s, <200 MB): " + ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
