"""The re-run cache: what a build system runs all day is depmod on the same modules again.

Keyed by content, never by time, so a changed module is never served stale and an identical
one is found again after a reinstall gave it a new mtime:

* a module's **content key** is the SHA-256 of the file as stored (SHA-NI makes hashing a
  whole distro tree cheaper than any partial scheme's Python overhead);
* ``packs/`` holds, per module directory, the extracted :class:`~moddep.model.ModuleData` of
  its last run by content key (so a partly changed tree re-extracts only what changed);
* ``paths/`` remembers, per module directory, each file's stat identity and key, so unchanged
  files are not even read (any stat change means the key is computed again);
* ``runs/`` maps a run key — the hash of every input of a depmod run (options, kmod
  generation, configuration, modules.order, builtin files, kernel symbols, each module's path
  and content key) — to the finished output files and messages.

The cache lives outside the target root (default ``$XDG_CACHE_HOME/moddep`` or
``~/.cache/moddep``). Entries are written atomically; an unreadable entry is a miss.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from moddep import __version__
from moddep.compression import DEFAULT_LIMIT
from moddep.model import ModuleData

# bump when ModuleData or the extraction changes meaning
FORMAT = f"moddep-cache-1 {__version__}".encode()
KEEP_RUNS = 16


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "moddep"


def content_key(fspath: bytes, limit: int = DEFAULT_LIMIT) -> bytes:
    """SHA-256 of the whole module file (compressed or not), tagged with the cache format."""
    h = hashlib.sha256(FORMAT + b"%d:" % limit)
    fd = os.open(fspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as m:
                h.update(m)
        except (ValueError, OSError):  # empty or unmappable: read it
            with os.fdopen(os.dup(fd), "rb") as f:
                h.update(f.read())
    finally:
        os.close(fd)
    return h.digest()


def stat_identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class RunResult:
    outputs: dict[str, bytes]
    messages: list[tuple[int, str]]
    stdout: list[bytes]


class Cache:
    """One cache directory (created on first write)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)

    # -- helpers ---------------------------------------------------------------------------
    def _read(self, path: Path) -> Any:
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError,
                TypeError, IndexError):
            return None

    def _write(self, path: Path, obj: Any) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)
        except OSError:
            pass  # a cache that cannot be written is just a slower run

    # -- path index ------------------------------------------------------------------------
    def _paths_file(self, moddir: bytes) -> Path:
        return self.dir / "paths" / hashlib.sha256(moddir).hexdigest()[:32]

    def known_keys(self, moddir: bytes) -> dict[bytes, tuple[tuple[int, ...], bytes]]:
        return self._read(self._paths_file(moddir)) or {}

    def save_keys(self, moddir: bytes, keys: dict[bytes, tuple[tuple[int, ...], bytes]]) -> None:
        self._write(self._paths_file(moddir), keys)

    # -- module data -----------------------------------------------------------------------
    def _pack(self, moddir: bytes) -> Path:
        return self.dir / "packs" / hashlib.sha256(moddir).hexdigest()[:32]

    def load_pack(self, moddir: bytes) -> dict[bytes, ModuleData]:
        """Content key -> ModuleData of the last run over ``moddir``."""
        obj = self._read(self._pack(moddir))
        return obj if isinstance(obj, dict) else {}

    def save_pack(self, moddir: bytes, data: dict[bytes, ModuleData]) -> None:
        self._write(self._pack(moddir), data)

    # -- whole runs ------------------------------------------------------------------------
    def _run(self, key: bytes) -> Path:
        return self.dir / "runs" / key.hex()

    def load_run(self, key: bytes) -> Optional[RunResult]:
        obj = self._read(self._run(key))
        return obj if isinstance(obj, RunResult) else None

    def save_run(self, key: bytes, result: RunResult) -> None:
        self._write(self._run(key), result)
        runs = self.dir / "runs"
        try:
            entries = sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime)
        except OSError:
            return
        for old in entries[:-KEEP_RUNS]:
            try:
                old.unlink()
            except OSError:
                pass


def run_key(parts: Sequence[bytes]) -> bytes:
    """Hash of a run's inputs (each part length-prefixed)."""
    h = hashlib.sha256(FORMAT)
    for p in parts:
        h.update(b"%d:" % len(p))
        h.update(p)
    return h.digest()
