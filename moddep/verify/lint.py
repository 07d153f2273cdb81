"""Checks on the modules themselves: symbols, CRCs, vermagic, firmware, duplicates,
``depends=``, modules.order, cycles. Pure functions from module data to findings.

Symbols are resolved here with depmod's rules (KMOD_NOTES §7: the last module exporting a
name owns it, one leading ``.`` and the architecture prefix are stripped for lookups, weak
symbols never count as unresolved) because the depmod model keeps only resolved edges.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Optional

from moddep.diag import fs
from moddep.graph import FAKE_SYMBOLS
from moddep.model import ModuleData
from moddep.modinfo import modname_normalize
from moddep.scan import ALWAYS_SKIPPED, ModuleFile, is_module_name
from moddep.verify.findings import INFO, WARNING, Finding
from moddep.verify.firmware import FirmwareDirs, builtin_firmware
from moddep.verify.kernel import KernelSource

LIST_LIMIT = 12  # names shown in one message; the finding's items hold them all


def names(items: Sequence[str], limit: Optional[int] = LIST_LIMIT) -> str:
    """``a, b, c`` or ``a, b, ... and 7 more``."""
    if limit is None or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


class Modules:
    """The module set being checked: files and data in depmod's array order, with the symbol
    owners depmod would pick."""

    def __init__(self, files: Sequence[ModuleFile], data: Sequence[ModuleData],
                 prefix: bytes = b"") -> None:
        self.files = files
        self.data = data
        self.prefix = prefix
        self.owner: dict[bytes, int] = {}  # symbol -> exporting module (the last, as depmod)
        self.crc: dict[bytes, int] = {}  # symbol -> the CRC its owner exports
        plen = len(prefix)
        for i, d in enumerate(data):
            for sym, c in zip(d.exports, d.export_crcs):
                if plen and sym.startswith(prefix):
                    sym = sym[plen:]
                self.owner[sym] = i
                self.crc[sym] = c
        self.index = {f.name: i for i, f in enumerate(files)}  # module name -> position
        self._info: dict[int, dict[bytes, list[bytes]]] = {}

    def info(self, i: int) -> dict[bytes, list[bytes]]:
        """Module ``i``'s modinfo as key -> values (parsed once)."""
        got = self._info.get(i)
        if got is None:
            got = self._info[i] = {}
            for k, v in self.data[i].modinfo:
                got.setdefault(k, []).append(v)
        return got

    def key(self, sym: bytes) -> bytes:
        """depmod's lookup key: one leading ``.`` (ppc64 ELFv1) and the prefix dropped."""
        if sym[:1] == b".":
            sym = sym[1:]
        if self.prefix and sym.startswith(self.prefix):
            sym = sym[len(self.prefix):]
        return sym

    def name(self, i: int) -> str:
        return fs(self.files[i].name)

    def uses(self, i: int) -> dict[int, list[bytes]]:
        """Modules whose symbols module ``i`` uses (self excluded) -> the symbols."""
        out: dict[int, list[bytes]] = {}
        for sym in self.data[i].undefined:
            o = self.owner.get(self.key(sym))
            if o is not None and o != i:
                out.setdefault(o, []).append(sym)
        return out


# -- symbols ----------------------------------------------------------------------------------

def symbols(mods: Modules, kernel: Optional[KernelSource],
            installed: Optional[dict[bytes, bytes]] = None) -> list[Finding]:
    """Unresolved symbols and CRC mismatches.

    Without kernel symbols only what can be known is reported: symbols the installed
    modules.symbols (``installed``: symbol -> module) gives to a module that is gone. CRCs of
    module exports are compared whenever both sides carry one (a CRC of 0 means none).
    """
    known: dict[bytes, int] = {}
    if kernel is not None:
        known = dict(kernel.symbols.crcs)
        for fake in (*FAKE_SYMBOLS, b"TOC."):
            known.setdefault(fake, 0)
    out: list[Finding] = []
    owner, mcrc = mods.owner, mods.crc
    plain = not mods.prefix
    for i, d in enumerate(mods.data):
        unknown: list[bytes] = []
        bad: dict[str, list[tuple[bytes, int, int]]] = {}
        und, weak, crcs = d.undefined, d.undefined_weak, d.undefined_crcs
        for j, sym in enumerate(und):
            key = sym if plain and sym[:1] != b"." else mods.key(sym)
            want = crcs[j] if j < len(crcs) else 0
            o = owner.get(key)
            if o is not None:
                if not want:
                    continue
                have, where = mcrc[key], mods.name(o)
            elif key in known:
                if not want:
                    continue
                have, where = known[key], "vmlinux"
            else:
                if weak[j:j + 1] != b"\x01" and (kernel is not None or
                                                 (installed and key in installed)):
                    unknown.append(sym)
                continue
            if have and want != have:
                bad.setdefault(where, []).append((sym, want, have))
        if unknown:
            out.append(_unresolved(mods, i, unknown, installed, kernel))
        for where, syms in bad.items():
            what = (f"vmlinux ({kernel.path})" if where == "vmlinux" and kernel is not None
                    else where)
            out.append(Finding(
                "crc-mismatch",
                f"disagrees about the version of {_plural(len(syms), 'symbol')} of {what}: "
                f"{names([fs(s) for s, _w, _h in syms])}",
                module=mods.name(i), items=tuple(fs(s) for s, _w, _h in syms),
                details=tuple(f"{fs(s)}: built for 0x{w:08x}, {where} has 0x{h:08x}"
                              for s, w, h in syms)))
    return out


def _unresolved(mods: Modules, i: int, unknown: list[bytes],
                installed: Optional[dict[bytes, bytes]],
                kernel: Optional[KernelSource]) -> Finding:
    syms = [fs(s) for s in unknown]
    details = []
    if installed:
        gone: dict[bytes, list[str]] = {}
        for s in unknown:
            prov = installed.get(mods.key(s))
            if prov is not None and prov not in mods.index:
                gone.setdefault(prov, []).append(fs(s))
        for prov, ss in gone.items():
            details.append(f"the installed modules.symbols gives {names(ss)} to {fs(prov)}, "
                           "which is not in the tree")
    return Finding("unresolved-symbol",
                   f"needs {_plural(len(syms), 'unknown symbol')}: {names(syms)}",
                   module=mods.name(i), items=tuple(syms), details=tuple(details))


# -- vermagic, readability --------------------------------------------------------------------

def modules(mods: Modules, kver: bytes) -> list[Finding]:
    """Unreadable module files, and vermagic strings naming another kernel."""
    out = []
    for i, (f, d) in enumerate(zip(mods.files, mods.data)):
        where = fs(f.display)
        if d.error is not None:
            out.append(Finding("module-unreadable", f"{where} cannot be read as a module: "
                               f"{d.error}", module=mods.name(i), file=where))
            continue
        vm = mods.info(i).get(b"vermagic")
        if not vm:
            out.append(Finding("vermagic-missing", f"{where} has no vermagic",
                               module=mods.name(i), file=where))
            continue
        release = vm[0].split(b" ", 1)[0]
        if release != kver:
            out.append(Finding(
                "vermagic-mismatch",
                f"vermagic '{fs(vm[0]).strip()}' is for kernel {fs(release)}, not {fs(kver)}",
                module=mods.name(i), file=where, items=(fs(release),)))
    return out


# -- firmware ---------------------------------------------------------------------------------

def firmware(mods: Modules, dirs: FirmwareDirs, builtin_modinfo: Optional[bytes]) -> list[Finding]:
    """Firmware named by modules and built-ins that no firmware directory provides."""
    wanted: list[tuple[str, Optional[str], list[bytes], bool]] = []
    for i, f in enumerate(mods.files):
        fw = mods.info(i).get(b"firmware")
        if fw:
            wanted.append((fs(f.name), fs(f.display), fw, False))
    for bname, bfw in builtin_firmware(builtin_modinfo).items():
        wanted.append((fs(bname), None, bfw, True))
    cache: dict[bytes, tuple[bool, tuple[bytes, ...]]] = {}
    out = []
    for mod, where, fw, builtin in wanted:
        missing: list[str] = []
        details: list[str] = []
        for name in dict.fromkeys(fw):
            hit = cache.get(name)
            if hit is None:
                r = dirs.find(name)
                hit = cache[name] = (r.path is not None, r.dangling)
            if not hit[0]:
                missing.append(fs(name))
                details += [f"{fs(p)} is a link to a file that does not exist" for p in hit[1]]
        if missing:
            kind = "built-in module" if builtin else "module"
            out.append(Finding(
                "firmware-missing",
                f"{_plural(len(missing), 'firmware file')} named by the {kind} not found: "
                f"{names(missing)}",
                module=mod, file=where, items=tuple(missing), details=tuple(details)))
    return out


# -- duplicates -------------------------------------------------------------------------------

def module_files(moddir: bytes) -> list[bytes]:
    """Every module file below ``moddir`` (relative paths), as depmod's walk sees them:
    ``build``, ``source``, ``.`` and ``..`` skipped, links followed, loops cut."""
    out: list[bytes] = []
    st = os.stat(moddir)
    stack = [(moddir, b"", {(st.st_dev, st.st_ino)})]
    while stack:
        d, rel, seen = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        for e in entries:
            if e.name in ALWAYS_SKIPPED:
                continue
            try:
                if e.is_dir():
                    s = e.stat()
                    key = (s.st_dev, s.st_ino)
                    if key not in seen:
                        stack.append((e.path, rel + e.name + b"/", seen | {key}))
                elif e.is_file() and is_module_name(e.name):
                    out.append(rel + e.name)
            except OSError:
                continue
    return sorted(out)


def duplicates(mods: Modules, present: list[bytes]) -> list[Finding]:
    """Module names that more than one file below the module directory has (``present``:
    :func:`module_files`)."""
    by_name: dict[bytes, list[bytes]] = {}
    for rel in present:
        by_name.setdefault(modname_normalize(rel.rpartition(b"/")[2]), []).append(rel)
    out = []
    for name, rels in sorted(by_name.items()):
        if len(rels) < 2:
            continue
        i = mods.index.get(name)
        used = f"; depmod uses {fs(mods.files[i].display)}" if i is not None else ""
        out.append(Finding("duplicate-module",
                           f"{len(rels)} files have this module name: "
                           f"{names([fs(r) for r in rels])}{used}",
                           module=fs(name), items=tuple(fs(r) for r in rels)))
    return out


# -- modinfo depends= -------------------------------------------------------------------------

def depends(mods: Modules) -> list[Finding]:
    """``depends=`` (written by modpost from the same symbols) against symbol-derived deps."""
    out = []
    for i, d in enumerate(mods.data):
        if d.error is not None:
            continue
        listed = {modname_normalize(x) for v in mods.info(i).get(b"depends", ())
                  for x in v.split(b",") if x}
        uses = mods.uses(i)
        derived = {mods.files[o].name: syms for o, syms in uses.items()}
        if listed == set(derived):
            continue
        parts = []
        details = []
        unlisted = sorted(set(derived) - listed)
        if unlisted:
            parts.append(f"does not list {names([fs(n) for n in unlisted])}")
            for n in unlisted:
                details.append(f"uses {fs(n)}'s {names([fs(s) for s in derived[n]], 5)}")
        extra = sorted(listed - set(derived))
        absent = [fs(n) for n in extra if n not in mods.index]
        unused = [fs(n) for n in extra if n in mods.index]
        if absent:
            parts.append(f"lists {names(absent)}, not installed")
        if unused:
            parts.append(f"lists {names(unused)}, whose symbols it does not use")
        out.append(Finding("depends-mismatch", "modinfo depends= " + "; ".join(parts),
                           module=mods.name(i), items=tuple(fs(n) for n in unlisted + extra),
                           details=tuple(details)))
    return out


# -- modules.order ----------------------------------------------------------------------------

def order(mods: Modules, content: Optional[bytes],
          present: Optional[list[bytes]] = None) -> list[Finding]:
    """Modules modules.order does not list (kernel/ ones: warning; others, e.g. updates/ or
    DKMS modules that were never in the kernel build: info), and lines naming no module file
    present (``present``: relative paths of every module file, shadowed duplicates included)."""
    if content is None:
        return [Finding("order-missing", "modules.order is missing: depmod orders modules by "
                        "name hash only", file="modules.order")]
    lines = {line for line in content.split(b"\n") if line}
    out = []
    have = set()
    for i, f in enumerate(mods.files):
        key = f.uncrelpath
        if key is None:
            continue
        have.add(key)
        if key not in lines:
            sev = WARNING if f.display.startswith(b"kernel/") else INFO
            out.append(Finding("not-in-order", f"{fs(f.display)} is not in modules.order",
                               module=mods.name(i), file=fs(f.display), severity=sev))
    for rel in present or ():
        base = rel.rpartition(b"/")[2]
        key = ModuleFile(modname_normalize(base), rel, rel, rel, base).uncrelpath
        if key is not None:
            have.add(key)
    stale = sorted(lines - have)
    if stale:
        out.append(Finding("order-stale",
                           f"modules.order lists {_plural(len(stale), 'module')} not installed: "
                           f"{names([fs(s) for s in stale])}",
                           file="modules.order", items=tuple(fs(s) for s in stale)))
    return out


# -- cycles -----------------------------------------------------------------------------------

def cycles(mods: Modules, lines: list[str]) -> list[Finding]:
    """One finding per ``Cycle detected: a -> b -> a`` line of depmod, with the symbols."""
    out = []
    for line in lines:
        chain = line.split(": ", 1)[-1].split(" -> ")
        details = []
        for user, prov in zip(chain, chain[1:]):
            u = mods.index.get(os.fsencode(user))
            p = mods.index.get(os.fsencode(prov))
            if u is None or p is None:
                continue
            syms = mods.uses(u).get(p, [])
            details.append(f"{user} uses {prov}'s {names([fs(s) for s in syms], 5)}")
        out.append(Finding("dependency-cycle", "dependency cycle: " + " -> ".join(chain),
                           module=chain[0], items=tuple(dict.fromkeys(chain)),
                           details=tuple(details)))
    return out
