"""What an idle `listserv serve` must not import (each costs megabytes of RSS it would keep):
Alembic (the schema check reads the migration heads itself), the HTML stack (lxml,
inscriptis, nh3: the first HTML mail or archive page loads it), WebSocket libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("alembic", "lxml", "inscriptis", "nh3", "wsproto", "websockets")

PROBE = """
import sys
import listserv.cli, listserv.daemon, listserv.workers
from listserv.web import create_app
from listserv.core.db import script_heads
script_heads()
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


def test_serve_imports_leave_out_the_heavy_libraries() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    assert "listserv" in out and "sqlalchemy" in out
    assert not set(HEAVY) & set(out), sorted(set(HEAVY) & set(out))


def test_the_html_stack_loads_when_used() -> None:
    probe = ("import sys\nfrom listserv.message import htmlmail\n"
             "assert 'lxml' not in sys.modules\n"
             "print(htmlmail.to_text('<p>a<br>b</p>'), 'lxml' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == ["a", "b", "True"]
