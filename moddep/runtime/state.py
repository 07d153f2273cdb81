"""What the running kernel says about its modules: /proc and /sys read under a root.

libkmod reads (KMOD_NOTES §12.6)::

    /sys/module/NAME/initstate   "live\\n", "coming\\n" or "going\\n"; a /sys/module/NAME
                                 directory without it counts as "coming"
    /sys/module/NAME/refcnt      decimal use count
    /sys/module/NAME/holders/    one entry per module using NAME (directory order)
    /sys/module/NAME/coresize    size; /proc/modules' second field when absent
    /proc/modules                "name size refcnt deps state address [taints]" per line
    /sys/module/compression      the kernel's in-kernel module decompressor (zstd, xz, gzip)
    /proc/cmdline                the kernel command line

``root`` is ``/`` on a live system; tests point it at a fake tree (see :mod:`.fake`). Values
that cannot be read come back as None (the caller decides what kmod would do); nothing here
writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

LIVE, COMING, GOING = "live", "coming", "going"


@dataclass(frozen=True)
class ProcModule:
    """One line of /proc/modules."""

    name: bytes
    size: int
    refcnt: int
    used_by: tuple[bytes, ...]
    state: bytes


def _num(fields: list[bytes], i: int) -> int:
    try:
        return int(fields[i])
    except (IndexError, ValueError):
        return 0


class KernelState:
    """Reads /proc and /sys below ``root``."""

    def __init__(self, root: bytes = b"/") -> None:
        self.root = root

    def path(self, path: bytes) -> bytes:
        if self.root in (b"", b"/"):
            return path
        return self.root.rstrip(b"/") + path

    def _read(self, path: bytes) -> Optional[bytes]:
        try:
            with open(self.path(path), "rb") as f:
                return f.read()
        except OSError:
            return None

    def module_dir(self, name: bytes) -> bytes:
        return self.path(b"/sys/module/" + name)

    def initstate(self, name: bytes) -> Optional[str]:
        """``live``/``coming``/``going``, None when not loaded; ``"?"`` for other text."""
        data = self._read(b"/sys/module/" + name + b"/initstate")
        if data is None:
            return COMING if os.path.isdir(self.module_dir(name)) else None
        for state in (LIVE, COMING, GOING):
            if data == state.encode() + b"\n":
                return state
        return "?"

    def refcnt(self, name: bytes) -> Optional[int]:
        data = self._read(b"/sys/module/" + name + b"/refcnt")
        if data is None:
            return None
        try:
            return int(data.strip())
        except ValueError:
            return None

    def holders(self, name: bytes) -> Optional[list[bytes]]:
        """Modules holding ``name`` in directory order; None when the directory is missing."""
        try:
            return [n for n in os.listdir(self.module_dir(name) + b"/holders")
                    if n not in (b".", b"..")]
        except OSError:
            return None

    def size(self, name: bytes) -> Optional[int]:
        """libkmod's kmod_module_get_size: coresize, else /proc/modules; None if not loaded."""
        if not os.path.isdir(self.module_dir(name)):
            return None
        data = self._read(b"/sys/module/" + name + b"/coresize")
        if data is not None:
            try:
                return int(data.strip())
            except ValueError:
                return None
        for m in self.proc_modules() or ():
            if m.name == name:
                return m.size
        return None

    def proc_modules(self) -> Optional[list[ProcModule]]:
        """Parsed /proc/modules (malformed fields read as 0); None when unreadable."""
        data = self._read(b"/proc/modules")
        if data is None:
            return None
        out = []
        for line in data.splitlines():
            f = line.split()
            if not f:
                continue
            used = tuple(u for u in f[3].split(b",") if u and u != b"-") if len(f) > 3 else ()
            out.append(ProcModule(f[0], _num(f, 1), _num(f, 2), used,
                                  f[4] if len(f) > 4 else b""))
        return out

    def loaded(self) -> Optional[list[bytes]]:
        """Names in /proc/modules order (newest first on Linux)."""
        mods = self.proc_modules()
        return None if mods is None else [m.name for m in mods]

    def kernel_compression(self) -> Optional[str]:
        """The codec name in /sys/module/compression (``zstd``, ``xz``, ``gzip``), or None."""
        data = self._read(b"/sys/module/compression")
        if data is None:
            return None
        value = data.decode("ascii", "replace")
        if value in ("zstd\n", "xz\n", "gzip\n"):
            return value[:-1]
        return None

    def cmdline(self) -> Optional[bytes]:
        return self._read(b"/proc/cmdline")

    def parameters(self, name: bytes) -> dict[bytes, bytes]:
        """/sys/module/NAME/parameters/*, values stripped of the trailing newline."""
        out: dict[bytes, bytes] = {}
        d = self.module_dir(name) + b"/parameters"
        try:
            names = sorted(os.listdir(d))
        except OSError:
            return out
        for p in names:
            try:
                with open(d + b"/" + p, "rb") as f:
                    out[p] = f.read().rstrip(b"\n")
            except OSError:
                continue
        return out
