"""The depmod outputs who-uses reads: ``modules.alias``, ``modules.devname``, ``modules.builtin``.

They are read as text from ``<root>/lib/modules/<release>/`` (release from
``<root>/proc/sys/kernel/osrelease``). Formats, as depmod writes them:

``modules.alias``   ``alias <pattern> <module>`` per line; patterns may be fnmatch globs.
                    Those used here come from the modules' own ``alias=`` modinfo:
                    ``fs-<type>`` (MODULE_ALIAS_FS), ``char-major-<M>-<N|*>`` and
                    ``block-major-<M>-<N|*>`` (MODULE_ALIAS_CHARDEV/BLOCKDEV),
                    ``rtnl-link-<kind>`` (MODULE_ALIAS_RTNL_LINK).
``modules.devname`` ``<module> <devname> <c|b><major>:<minor>`` per line, e.g.
                    ``tun net/tun c10:200``; ``#`` starts a comment.
``modules.builtin`` one ``kernel/.../<name>.ko`` path per line.

All are optional: a missing file gives an empty table and a note, never an error.
"""

from __future__ import annotations

import fnmatch
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from moddep.whouses.model import DevNum, module_name

_DEVNAME = re.compile(
    r"^(?P<mod>\S+)\s+(?P<name>\S+)\s+(?P<kind>[cb])(?P<maj>\d+):(?P<min>\d+)\s*$")


def kernel_release(root: Path) -> Optional[str]:
    """The release of the kernel running under ``root`` (``uname -r``), if it can be told."""
    try:
        text = (root / "proc/sys/kernel/osrelease").read_text(errors="surrogateescape").strip()
    except OSError:
        text = ""
    if text:
        return text
    if root == Path("/"):
        return os.uname().release
    return None


@dataclass(frozen=True)
class ModuleTables:
    """Alias patterns, device names and builtin modules of one kernel release."""

    aliases: tuple[tuple[str, str], ...] = ()
    devnames: dict[DevNum, str] = field(default_factory=dict)
    builtin: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()

    def modules_for(self, key: str) -> list[str]:
        """Modules whose alias pattern matches ``key`` (in file order, without repeats)."""
        found: list[str] = []
        for pattern, mod in self.aliases:
            if mod not in found and fnmatch.fnmatchcase(key, pattern):
                found.append(mod)
        return found

    def alias_lines(self, key: str, module: str) -> list[str]:
        """The ``alias`` lines by which ``module`` claims ``key``, for evidence."""
        return [f"alias {p} {m}" for p, m in self.aliases
                if m == module and fnmatch.fnmatchcase(key, p)]


def load_tables(root: Path, release: Optional[str] = None) -> ModuleTables:
    """Read the tables for ``release`` (default: the running one) under ``root``."""
    release = release or kernel_release(root)
    if not release:
        return ModuleTables(notes=("kernel release unknown (no /proc/sys/kernel/osrelease):"
                                   " module aliases not consulted",))
    base = root / "lib/modules" / release
    shown = f"/lib/modules/{release}"
    notes: list[str] = []
    aliases: list[tuple[str, str]] = []
    devnames: dict[DevNum, str] = {}
    builtin: set[str] = set()
    try:
        for line in (base / "modules.alias").read_text(errors="surrogateescape").splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                aliases.append((parts[1], module_name(parts[2])))
    except OSError as exc:
        notes.append(f"{shown}/modules.alias: {exc.strerror}: filesystem and device aliases"
                     " not consulted")
    try:
        for line in (base / "modules.devname").read_text(errors="surrogateescape").splitlines():
            m = _DEVNAME.match(line)
            if m:
                dev = DevNum(m["kind"], int(m["maj"]), int(m["min"]))
                devnames.setdefault(dev, module_name(m["mod"]))
    except OSError:
        pass  # optional: modules.alias carries the same char-major-M-N aliases
    try:
        for line in (base / "modules.builtin").read_text(errors="surrogateescape").splitlines():
            if line.strip():
                builtin.add(module_name(line.strip()))
    except OSError:
        pass
    return ModuleTables(tuple(aliases), devnames, frozenset(builtin), tuple(notes))
