"""CLI output helpers: JSON arrays streamed in batches, aligned tables."""

from __future__ import annotations

import json

import pytest

from listserv.cli.output import json_array, pairs, table


@pytest.mark.parametrize("n", [0, 1, 3, 1000, 1001, 2500])
def test_json_array_batches(n: int, capsys: pytest.CaptureFixture[str]) -> None:
    json_array(({"i": i, "s": "é"} for i in range(n)), batch=1000)
    out = capsys.readouterr().out
    assert json.loads(out) == [{"i": i, "s": "é"} for i in range(n)]
    assert out.endswith("]\n")


def test_table_aligns_and_marks_empty(capsys: pytest.CaptureFixture[str]) -> None:
    table(["email", "on", "n"], [("a@x.org", True, None), ("longer@x.org", False, 2.0)])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["EMAIL         ON   N", "a@x.org       yes  -", "longer@x.org  no   2"]
    table(["x"], [], empty="nothing")
    assert capsys.readouterr().out == "nothing\n"


def test_pairs(capsys: pytest.CaptureFixture[str]) -> None:
    pairs([("a", 1), ("long key", None)])
    assert capsys.readouterr().out.splitlines() == ["a:        1", "long key: -"]
