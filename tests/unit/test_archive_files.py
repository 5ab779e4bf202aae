"""The archive's one atomic file writer (listserv.archive.files), on a real file system."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from listserv.archive import files


def test_replace_writes_the_chunks_making_the_directory(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "2026-12.mbox"
    files.replace(path, [b"From x\n", b"", b"body\n"], durable=True)
    assert path.read_bytes() == b"From x\nbody\n"
    files.replace(path, iter([b"new"]))
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["2026-12.mbox"]


def test_a_failure_midway_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_bytes(b"old")

    def chunks() -> Iterator[bytes]:
        yield b"half of the new"
        raise RuntimeError("the database went away")
    with pytest.raises(RuntimeError):
        files.replace(path, chunks())
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["page.html"]


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        files.replace(tmp_path / "x.html", [b"x"], mode=0o644)
        files.write(tmp_path / "y.html", [b"y"], mode=0o640)
        files.replace(tmp_path / "z.mbox", [b"z"])              # the umask's
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"x.html": 0o644, "y.html": 0o640, "z.mbox": 0o600}


def test_durable_syncs_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    path = tmp_path / "m.mbox"
    seen: list[bool] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        seen.append(path.exists())       # not yet renamed into place
        real(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    files.replace(path, [b"x"], durable=True)
    files.replace(tmp_path / "page.html", [b"x"])
    assert seen == [False]
