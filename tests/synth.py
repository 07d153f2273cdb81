"""Synthetic module trees, and running moddep's and kmod's depmod on them side by side."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import debcache
import pytest

from moddep.cli import main

KVER = "4.4.4"
OUTPUTS = ("modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin",
           "modules.softdep", "modules.weakdep", "modules.symbols", "modules.symbols.bin",
           "modules.builtin.bin", "modules.builtin.alias.bin", "modules.devname")


def make_tree(root: Path, modules: dict[str, bytes], *, order: Optional[bytes] = None,
              builtin: Optional[bytes] = b"", builtin_modinfo: Optional[bytes] = b"",
              kver: str = KVER) -> Path:
    """A staged root with ``lib/modules/KVER/<relpath>`` for each module; returns the dir."""
    moddir = root / "lib" / "modules" / kver
    moddir.mkdir(parents=True, exist_ok=True)
    for rel, data in modules.items():
        p = moddir / rel if not rel.startswith("/") else root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    if order is not None:
        (moddir / "modules.order").write_bytes(order)
    if builtin is not None:
        (moddir / "modules.builtin").write_bytes(builtin)
    if builtin_modinfo is not None:
        (moddir / "modules.builtin.modinfo").write_bytes(builtin_modinfo)
    return moddir


@dataclass
class Run:
    rc: int
    stdout: bytes
    stderr: str
    files: dict[str, Optional[bytes]]


def _collect(moddir: Path) -> dict[str, Optional[bytes]]:
    return {n: (moddir / n).read_bytes() if (moddir / n).exists() else None for n in OUTPUTS}


def moddep(root: Path, *args: str, kver: str = KVER, kmod: int = 34) -> Run:
    """moddep depmod in-process; stdout/stderr captured."""
    out, err = io.BytesIO(), io.StringIO()
    wrapper = io.TextIOWrapper(out, write_through=True)
    with contextlib.redirect_stdout(wrapper), contextlib.redirect_stderr(err):
        rc = main(["depmod", "--kmod-version", str(kmod), "-b", str(root), *args, kver])
    wrapper.flush()
    return Run(rc, out.getvalue(), err.getvalue(), _collect(root / "lib/modules" / kver))


def kmod(version: int, root: Path, *args: str, kver: str = KVER) -> Run:
    """The real kmod depmod (skips the test when it cannot be had)."""
    try:
        prefix = debcache.kmod_depmod(version)
    except debcache.Unavailable as e:
        pytest.skip(f"kmod {version} unavailable: {e}")
    proc = subprocess.run([*prefix, "-b", str(root), *args, kver], capture_output=True,
                          timeout=120, env={**os.environ, "LC_ALL": "C"})
    return Run(proc.returncode, proc.stdout, proc.stderr.decode(errors="replace"),
               _collect(root / "lib/modules" / kver))


def copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-a", str(src), str(dst)], check=True)
    return dst
