"""Write pickles the way Python 2's cPickle does (protocol 2), for Mailman 2.1 fixtures.

Python 3's pickle cannot produce a Python 2 ``str``: this writer emits the opcodes itself.
``bytes`` become Python 2 ``str`` (SHORT_BINSTRING / BINSTRING), ``str`` becomes ``unicode``
(BINUNICODE), ``set`` a ``__builtin__.set`` call, and :class:`OldInstance` an old-style class
instance (MARK GLOBAL OBJ ... BUILD), as Mailman.Bouncer._BounceInfo is pickled.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any


@dataclass
class OldInstance:
    module: str
    name: str
    state: dict[Any, Any] = field(default_factory=dict)


@dataclass
class Global:
    """A bare reference to a global (what a hostile pickle would use)."""

    module: str
    name: str
    args: tuple[Any, ...] = ()


class Py2Pickler:
    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.memo = 0

    def _put(self) -> None:
        # cPickle memoises every container and string it writes (BINPUT / LONG_BINPUT).
        if self.memo < 256:
            self.out.append(b"q" + bytes([self.memo]))
        else:
            self.out.append(b"r" + struct.pack("<I", self.memo))
        self.memo += 1

    def dump(self, obj: Any) -> bytes:
        self.out = [b"\x80\x02"]
        self.save(obj)
        self.out.append(b".")
        return b"".join(self.out)

    def save(self, obj: Any) -> None:  # noqa: C901 - one branch per pickle type
        w = self.out.append
        if obj is None:
            w(b"N")
        elif obj is True:
            w(b"\x88")
        elif obj is False:
            w(b"\x89")
        elif isinstance(obj, int):
            if 0 <= obj < 256:
                w(b"K" + bytes([obj]))
            elif 0 <= obj < 65536:
                w(b"M" + struct.pack("<H", obj))
            elif -2**31 <= obj < 2**31:
                w(b"J" + struct.pack("<i", obj))
            else:
                n = (obj.bit_length() + 8) // 8
                w(b"\x8a" + bytes([n]) + obj.to_bytes(n, "little", signed=True))
        elif isinstance(obj, float):
            w(b"G" + struct.pack(">d", obj))
        elif isinstance(obj, bytes):
            if len(obj) < 256:
                w(b"U" + bytes([len(obj)]) + obj)
            else:
                w(b"T" + struct.pack("<i", len(obj)) + obj)
            self._put()
        elif isinstance(obj, str):
            data = obj.encode("utf-8", "surrogatepass")
            w(b"X" + struct.pack("<I", len(data)) + data)
            self._put()
        elif isinstance(obj, tuple):
            if not obj:
                w(b")")
                return
            if len(obj) <= 3:
                for item in obj:
                    self.save(item)
                w(b"\x85\x86\x87"[len(obj) - 1:len(obj)])
            else:
                w(b"(")
                for item in obj:
                    self.save(item)
                w(b"t")
            self._put()
        elif isinstance(obj, list):
            w(b"]")
            self._put()
            self._batched(obj, b"e")
        elif isinstance(obj, dict):
            w(b"}")
            self._put()
            items = list(obj.items())
            for i in range(0, len(items), 1000):
                w(b"(")
                for k, v in items[i:i + 1000]:
                    self.save(k)
                    self.save(v)
                w(b"u")
        elif isinstance(obj, (set, frozenset)):
            kind = b"set" if isinstance(obj, set) else b"frozenset"
            w(b"c__builtin__\n" + kind + b"\n")
            self._put()
            w(b"]")
            self._put()
            self._batched(sorted(obj, key=repr), b"e")
            w(b"\x85R")
            self._put()
        elif isinstance(obj, OldInstance):
            w(b"(c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
            self._put()
            w(b"o")
            self._put()
            self.save(obj.state)
            w(b"b")
        elif isinstance(obj, Global):
            w(b"c" + obj.module.encode() + b"\n" + obj.name.encode() + b"\n")
            self.save(tuple(obj.args))
            w(b"R")
        else:
            raise TypeError(f"cannot write {type(obj).__name__} as a Python 2 pickle")

    def _batched(self, items: list[Any], op: bytes) -> None:
        for i in range(0, len(items), 1000):
            self.out.append(b"(")
            for item in items[i:i + 1000]:
                self.save(item)
            self.out.append(op)


def dumps(obj: Any) -> bytes:
    return Py2Pickler().dump(obj)
