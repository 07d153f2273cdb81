"""Read one module file into :class:`~moddep.model.ModuleData` (the per-module unit of work).

This runs once per module, possibly in worker processes, so it is a plain function of the
file's bytes. Failures never escape: they become ``ModuleData.error`` with kmod's wording,
because kmod keeps a module it cannot parse (with no symbols) and carries on.
"""

from __future__ import annotations

import mmap
import os
from typing import Optional, Union

from moddep.compression import DEFAULT_LIMIT, decompress, detect
from moddep.elf import ElfModule
from moddep.errors import ElfError, ModdepError
from moddep.model import ModuleData


def load_image(fspath: bytes, limit: int = DEFAULT_LIMIT) -> bytes:
    """The (decompressed) ELF image of a module file, read whole."""
    with open(fspath, "rb") as f:
        data = f.read()
    return decompress(data, fspath.decode(errors="surrogateescape"), limit)


def _map(fspath: bytes) -> Union[bytes, mmap.mmap]:
    """The file mapped read-only (only the pages of the sections read are touched), or its
    bytes when it is empty or cannot be mapped."""
    fd = os.open(fspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
        except (ValueError, OSError):  # empty file, or not mappable (a pipe, /proc, ...)
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read()
    finally:
        os.close(fd)


def parse_image(data: bytes, path: Optional[str] = None) -> ModuleData:
    """Extract exports, required symbols and modinfo from an ELF image."""
    try:
        elf = ElfModule(data, path)
    except ElfError as e:
        return ModuleData(error=f"{e.errno_text} ({e.message})")
    error = None
    try:
        exports, crcs = elf.exported_symbols()
    except ElfError as e:
        exports, crcs, error = [], [], f"{e.errno_text} ({e.message})"
    try:
        modinfo = elf.modinfo_raw()
    except ElfError:
        modinfo = b""
    try:
        undefined, weak, ucrcs = elf.undefined_symbols()
    except ElfError:
        undefined, weak, ucrcs = [], b"", []
    return ModuleData.build(exports, crcs, undefined, weak, ucrcs, modinfo, error)


def read_module(fspath: bytes, limit: int = DEFAULT_LIMIT) -> ModuleData:
    """:func:`load_image` then :func:`parse_image`; I/O and format errors become ``error``."""
    path = fspath.decode(errors="surrogateescape")
    try:
        raw = _map(fspath)
    except OSError as e:
        return ModuleData(error=e.strerror or str(e))
    try:
        if detect(raw[:8]) is None:
            return parse_image(raw, path)  # type: ignore[arg-type]
        data = decompress(raw[:], path, limit)
    except ModdepError as e:
        return ModuleData(error=e.message)
    finally:
        if isinstance(raw, mmap.mmap):
            raw.close()
    return parse_image(data, path)
