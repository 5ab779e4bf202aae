"""Content-addressed raw message store: <spool>/ab/cdef...eml, written tmp -> fsync -> rename.

listserv.admin.retention removes files no row refers to. For that to be race-free: put() refreshes the
mtime of a file that already exists (a file used in the last hour is never removed), and the
sweep first renames a file to its "parked" name (.cdef....eml.pruning); get() puts a parked
file back, so a reader never loses a file the sweep was still checking.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

PARKED_SUFFIX = ".pruning"


class Spool:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, sha: str) -> Path:
        return self.root / sha[:2] / f"{sha[2:]}.eml"

    def parked_path(self, sha: str) -> Path:
        """Where listserv.admin.retention moves a file while it decides whether to delete it."""
        return self.root / sha[:2] / f".{sha[2:]}.eml{PARKED_SUFFIX}"

    def put(self, data: bytes) -> str:
        """Store bytes durably; return their SHA-256. Idempotent."""
        sha = hashlib.sha256(data).hexdigest()
        final = self.path(sha)
        if final.exists():
            try:
                os.utime(final)      # recently used: the retention sweep leaves it alone
                return sha
            except FileNotFoundError:
                pass                 # removed meanwhile: write it again
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{id(data)}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return sha

    def get(self, sha: str) -> bytes:
        path = self.path(sha)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            try:   # parked by a retention sweep that has not decided yet: take it back
                os.replace(self.parked_path(sha), path)
            except FileNotFoundError:
                pass
            return path.read_bytes()

    def exists(self, sha: str) -> bool:
        return self.path(sha).exists()
