"""The kernel's own exported symbols, for the unresolved-symbol and CRC checks.

Given on the command line (``-E Module.symvers``/``vmlinux.symvers``, ``-F System.map``, as
depmod takes them) or found in the root, CRC-carrying lists first:

* ``MODDIR/build/Module.symvers``, ``MODDIR/build/vmlinux.symvers`` (the headers package;
  ``build`` is a link into ``/usr/src``, followed inside the root),
* ``MODDIR/Module.symvers``, ``MODDIR/vmlinux.symvers``, ``MODDIR/symvers[.gz|.xz|.zst]``,
  ``/boot/symvers-KVER[.gz|.xz|.zst]`` (Fedora-style, compressed),
* ``/boot/System.map-KVER``, ``MODDIR/System.map`` (names only, no CRCs).

A list that names no kernel export is skipped with a note: Debian's ``/boot/System.map-KVER``
is a one-line placeholder ("The real System.map is in the linux-image-<version>-dbg package"),
and using it would make every kernel symbol look unresolved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from moddep.compression import decompress
from moddep.depmod import _read_symvers, _read_system_map
from moddep.diag import Log, fs
from moddep.errors import ModdepError
from moddep.graph import KernelSymbols
from moddep.verify.rootpaths import existing_file

SYMVERS, SYSTEM_MAP = "symvers", "System.map"
COMPRESSED = (b"", b".gz", b".xz", b".zst")


@dataclass(frozen=True)
class KernelSource:
    """Where the kernel symbols came from (``path`` as the user knows it) and what they are."""

    path: str
    kind: str  # SYMVERS (with CRCs) or SYSTEM_MAP
    symbols: KernelSymbols

    def describe(self) -> str:
        crcs = "with CRCs" if self.kind == SYMVERS else "names only, no CRCs"
        return f"{self.path} ({len(self.symbols.crcs)} symbols, {crcs})"


def candidates(moddir: bytes, kver: bytes) -> list[tuple[bytes, str]]:
    """Target paths searched, in order of preference, with the format of each."""
    out = [(moddir + b"/build/Module.symvers", SYMVERS),
           (moddir + b"/build/vmlinux.symvers", SYMVERS),
           (moddir + b"/Module.symvers", SYMVERS),
           (moddir + b"/vmlinux.symvers", SYMVERS)]
    out += [(moddir + b"/symvers" + ext, SYMVERS) for ext in COMPRESSED]
    out += [(b"/boot/symvers-" + kver + ext, SYMVERS) for ext in COMPRESSED]
    out += [(b"/boot/System.map-" + kver, SYSTEM_MAP), (moddir + b"/System.map", SYSTEM_MAP)]
    return out


def load(host: bytes, kind: str, shown: str, prefix: bytes, log: Log) -> KernelSource:
    """Read one symbol list (compressed or not, by magic bytes)."""
    try:
        with open(host, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ModdepError(f"could not read kernel symbols from {shown}: {e.strerror}") from None
    raw = decompress(raw, fs(host))
    if kind == SYMVERS:
        syms = KernelSymbols(_read_symvers(host, raw, prefix, log), True)
    else:
        syms = KernelSymbols(_read_system_map(host, raw, prefix, log), False)
    return KernelSource(shown, kind, syms)


def find(root: bytes, moddir: bytes, kver: bytes, prefix: bytes, log: Log,
         symvers: Optional[bytes] = None, sysmap: Optional[bytes] = None
         ) -> tuple[Optional[KernelSource], list[str]]:
    """The kernel symbols to check against, and notes on lists found but not used.

    ``symvers``/``sysmap`` are host paths given by the user (used even when empty);
    otherwise the :func:`candidates` below ``root`` (``moddir`` is a target path).
    """
    if symvers is not None:
        return load(symvers, SYMVERS, fs(symvers), prefix, log), []
    if sysmap is not None:
        return load(sysmap, SYSTEM_MAP, fs(sysmap), prefix, log), []
    notes: list[str] = []
    for path, kind in candidates(moddir, kver):
        host = existing_file(root, path)
        if host is None:
            continue
        src = load(host, kind, fs(path), prefix, log)
        if src.symbols.crcs:
            return src, notes
        notes.append(f"{fs(path)} lists no exported kernel symbol (a placeholder?): not used")
    return None, notes
