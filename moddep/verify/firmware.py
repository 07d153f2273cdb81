"""Firmware files named by modules (``firmware=`` in modinfo) and where the kernel finds them.

The kernel's firmware loader tries, for a name ``N``, ``DIR/N`` in each of its search
directories (``drivers/base/firmware_loader/main.c`` ``fw_path[]``: ``/lib/firmware/updates/
KVER``, ``/lib/firmware/updates``, ``/lib/firmware/KVER``, ``/lib/firmware``), and with
CONFIG_FW_LOADER_COMPRESS also ``N.xz`` (Linux 5.3) and ``N.zst`` (Linux 5.19). Distributions
with a merged ``/usr`` install under ``/usr/lib/firmware``, so those directories are searched
too. Links are followed inside the root; a link leading nowhere counts as missing.

Some drivers name patterns (``brcm/brcmfmac*-sdio.*.bin``): any matching file satisfies them.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Optional

from moddep.diag import fs
from moddep.verify.rootpaths import resolve

SEARCH = (b"/lib/firmware/updates/{kver}", b"/lib/firmware/updates", b"/lib/firmware/{kver}",
          b"/lib/firmware", b"/usr/lib/firmware/updates/{kver}", b"/usr/lib/firmware/updates",
          b"/usr/lib/firmware/{kver}", b"/usr/lib/firmware")
SUFFIXES = (b"", b".xz", b".zst")
_WILD = (b"*", b"?", b"[")


@dataclass(frozen=True)
class Lookup:
    """The result for one firmware name: ``path`` (target path) when found; otherwise
    ``dangling`` lists links that lead nowhere."""

    name: bytes
    path: Optional[bytes]
    dangling: tuple[bytes, ...] = ()


class FirmwareDirs:
    """The firmware search directories that exist in a root (links resolved, duplicates,
    e.g. ``/lib`` -> ``usr/lib``, dropped)."""

    def __init__(self, root: bytes, kver: bytes) -> None:
        self.root = root
        self.dirs: list[bytes] = []  # target paths, search order
        seen = set()
        for tmpl in SEARCH:
            path = tmpl.replace(b"{kver}", kver)
            r = resolve(root, path)
            if r.exists and r.is_dir and r.target not in seen:
                seen.add(r.target)
                self.dirs.append(path)

    def find(self, name: bytes) -> Lookup:
        dangling: list[bytes] = []
        wild = any(w in name for w in _WILD)
        for d in self.dirs:
            for suffix in SUFFIXES:
                cands = self._glob(d, name + suffix) if wild else [d + b"/" + name + suffix]
                for path in cands:
                    r = resolve(self.root, path)
                    if r.exists and r.is_file:
                        return Lookup(name, path)
                    if r.via_link and not r.exists:
                        dangling.append(path)
        return Lookup(name, None, tuple(dangling))

    def _glob(self, d: bytes, pattern: bytes) -> list[bytes]:
        base = resolve(self.root, d).host
        hits = glob.glob(os.path.join(glob.escape(base), pattern))
        return sorted(d + h[len(base):] for h in hits)


def builtin_firmware(modinfo: Optional[bytes]) -> dict[bytes, list[bytes]]:
    """``module.firmware=NAME`` records of modules.builtin.modinfo: module -> names."""
    out: dict[bytes, list[bytes]] = {}
    for rec in (modinfo or b"").split(b"\0"):
        mod, dot, rest = rec.partition(b".")
        if not dot:
            continue
        key, eq, value = rest.partition(b"=")
        if eq and key == b"firmware" and value:
            out.setdefault(mod, []).append(value)
    return out


def describe_dirs(dirs: FirmwareDirs) -> str:
    return ", ".join(fs(d) for d in dirs.dirs)
