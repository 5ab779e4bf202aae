"""Files the archive writes: replaced whole, so a reader sees the old file or the new one.

The mbox exports (listserv.archive.store) and the static pages (listserv.archive.html) are
written into a temporary file next to their path and renamed over it. The temporary name
holds the process and thread, so concurrent writers never share one. An export is fsynced
before the rename (``durable``): it may be the only copy someone downloads; pages are not,
they are derived from the database and a crash is repaired by building them again.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterable


def replace(path: Path, chunks: Iterable[bytes], *, mode: int | None = None,
            durable: bool = False) -> None:
    """Write the bytes of ``chunks`` to ``path`` atomically (its directory made when it is
    missing). ``mode``: the file's permissions exactly, whatever the umask (None: the
    umask's); ``durable``: on disk before the rename. When writing fails, or ``chunks``
    raises, ``path`` is as it was and no temporary file is left."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{path.name}")
    try:
        try:
            write(tmp, chunks, mode=mode, durable=durable)
        except FileNotFoundError:
            if path.parent.is_dir():
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp, chunks, mode=mode, durable=durable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write(path: Path, chunks: Iterable[bytes], *, mode: int | None = None,
          durable: bool = False) -> None:
    """Write the bytes of ``chunks`` to ``path`` in place (created or truncated): for a new
    file whose partial state the caller repairs after a crash, or a temporary one."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                 0o666 if mode is None else mode)
    try:
        if mode is not None and os.fstat(fd).st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)          # exactly ``mode``, whatever the umask
        with open(fd, "wb", closefd=False) as f:     # buffered: many small chunks
            for data in chunks:
                f.write(data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
