"""Shared helpers of the integration tests (Buildroot, kbuild's depmod.sh, Yocto); no tests.

Build systems run depmod as a program, so these tests run moddep as one too: a small
launcher script puts this checkout first on ``sys.path`` and calls ``moddep.cli.main``, and
(optionally) appends each argv it was given to a log, so a test can assert exactly how the
build system called it. A launcher named ``depmod`` behaves as depmod (argv[0] dispatch).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Iterable, Optional

from elftools.elf.elffile import ELFFile
from kofactory import Module

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_trees"
KVER = "6.1.0-50-amd64"
VERMAGIC = f"{KVER} SMP preempt mod_unload modversions ".encode()

LAUNCHER = """\
#!{python}
import json, os, sys
sys.path.insert(0, {repo!r})
log = os.environ.get("MODDEP_TEST_ARGV_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:], os.getcwd()]) + "\\n")
from moddep.cli import main
sys.exit(main())
"""


def launcher(path: Path) -> Path:
    """An executable at ``path`` running this checkout's moddep (as ``path.name`` says)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(LAUNCHER.format(python=sys.executable, repo=str(REPO)))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def calls(log: Path) -> list[list[str]]:
    """The argv lists a launcher logged: [program name, args..., working directory]."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def stage_sample(name: str, dest: Path) -> Path:
    """A private copy of ``sample_trees/<name>`` (its lib/ and etc/) at ``dest``."""
    src = SAMPLES / name
    dest.mkdir(parents=True, exist_ok=True)
    for part in ("lib", "etc"):
        if (src / part).exists():
            shutil.copytree(src / part, dest / part, symlinks=True)
    return dest


def needed_symbols(ko: Path) -> dict[str, int]:
    """Symbols one module needs, with the CRC its ``__versions`` records (0 where none).

    depmod checks both the undefined names of ``.symtab`` and every ``__versions`` entry
    (``module_layout`` is only there). Read with pyelftools, 64-bit little-endian layout.
    """
    out: dict[str, int] = {}
    with ko.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            for s in symtab.iter_symbols():
                if s.name and s["st_shndx"] == "SHN_UNDEF":
                    out.setdefault(s.name, 0)
        versions = elf.get_section_by_name("__versions")
        if versions is not None:
            data = versions.data()
            for off in range(0, len(data) - 63, 64):
                name = data[off + 8:off + 64].split(b"\0", 1)[0].decode()
                out[name] = int.from_bytes(data[off:off + 8], "little")
    return out


def module_exports(modules_symbols: Path) -> set[str]:
    """Symbols a modules.symbols file says modules export."""
    out = set()
    for line in modules_symbols.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias" and parts[1].startswith("symbol:"):
            out.add(parts[1][len("symbol:"):])
    return out


def kernel_symbols(moddir: Path, modules_symbols: Path) -> dict[str, int]:
    """What the kernel image must export for a tree (needed by a module, exported by none),
    with the CRCs the modules expect."""
    needed: dict[str, int] = {}
    for ko in sorted(moddir.rglob("*.ko")):
        needed.update(needed_symbols(ko))
    exported = module_exports(modules_symbols)
    return {k: v for k, v in needed.items() if k not in exported}


def module_symvers(symbols: dict[str, int]) -> bytes:
    """A Module.symvers listing ``symbols`` as vmlinux exports with those CRCs."""
    return b"".join(b"0x%08x\t%s\tvmlinux\tEXPORT_SYMBOL\t\n" % (crc, name.encode())
                    for name, crc in sorted(symbols.items()))


def system_map(symbols: Iterable[str]) -> bytes:
    """A System.map with a ``__ksymtab_NAME`` line per exported symbol (all depmod -F reads)."""
    return b"".join(b"ffffffff81000000 r __ksymtab_%s\n" % s.encode() for s in sorted(symbols))


def system_map_from_symvers(symvers: bytes) -> bytes:
    """System.map equivalent of a Module.symvers: its ``vmlinux`` exports as __ksymtab_ lines.

    A kernel's System.map lists ``__ksymtab_NAME`` for every symbol vmlinux exports, and
    depmod -F reads nothing else from it; Module.symvers lists the same exports (third field
    ``vmlinux``) with their CRCs.
    """
    names = set()
    for line in symvers.splitlines():
        fields = line.split(b"\t")
        if len(fields) >= 3 and fields[2] == b"vmlinux":
            names.add(fields[1].decode())
    return system_map(names)


def overlay_module(needs: list[bytes], exports: Optional[list[bytes]] = None,
                   versions: Optional[list[tuple[bytes, int]]] = None,
                   name: bytes = b"moddep_overlay") -> bytes:
    """An x86-64 module (kofactory) as an out-of-tree driver in a rootfs overlay would be."""
    return Module(
        modinfo=[(b"alias", b"pci:v00001AF4d00001099sv*sd*bc*sc*i*"),
                 (b"license", b"GPL"), (b"name", name), (b"vermagic", VERMAGIC)],
        exports=[(e, 0x10000 + i) for i, e in enumerate(exports or [])],
        undefined=[(n, False) for n in needs],
        versions=versions or [],
    ).build()


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without the variables a build system would set."""
    drop = {"TARGET_DIR", "HOST_DIR", "BUILD_DIR", "BINARIES_DIR", "BASE_DIR", "STAGING_DIR",
            "BR2_CONFIG", "LINUX_VERSION_PROBED", "MODDEP", "PARALLEL_JOBS", "INSTALL_MOD_PATH",
            "MODDEP_TEST_ARGV_LOG", "MODDEP_KMOD_VERSION", "MODDEP_CACHE_DIR", "PKGDATA_DIR"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["MODDEP_NO_CACHE"] = "1"
    env["LC_ALL"] = "C"
    env.update(extra)
    return env


def index_files(moddir: Path) -> dict[str, bytes]:
    """Every ``modules.*`` index depmod writes in ``moddir`` (not the kernel's own inputs)."""
    inputs = {"modules.order", "modules.builtin", "modules.builtin.modinfo"}
    return {p.name: p.read_bytes() for p in sorted(moddir.glob("modules.*"))
            if p.name not in inputs}
