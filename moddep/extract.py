"""Read one module file into :class:`~moddep.model.ModuleData` (the per-module unit of work).

This runs once per module, possibly in worker processes, so it is a plain function of the
file's bytes. Failures never escape: they become ``ModuleData.error`` with kmod's wording,
because kmod keeps a module it cannot parse (with no symbols) and carries on.
"""

from __future__ import annotations

import os
import stat
from typing import Optional, Union, overload

from moddep.cache import (
    PackIndex,
    content_key,
    file_key,
    key_by_recipe,
    layout_key,
    recipe,
    stat_identity,
)
from moddep.compression import DEFAULT_LIMIT, decompress, detect
from moddep.elf import ElfModule
from moddep.errors import ElfError, ModdepError
from moddep.model import ModuleData


def load_image(fspath: bytes, limit: int = DEFAULT_LIMIT) -> bytes:
    """The (decompressed) ELF image of a module file, read whole."""
    with open(fspath, "rb") as f:
        data = f.read()
    return decompress(data, fspath.decode(errors="surrogateescape"), limit)


class FileImage:
    """A module file read on demand with ``pread``: only the ranges asked for are copied, each
    once (the cache key and the extraction read the same ones).

    Cheaper here than ``mmap``: mapping and unmapping thousands of files costs more in page
    table work than copying the few sections depmod reads.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._read: dict[tuple[int, int], bytes] = {}

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, key: int) -> int: ...

    @overload
    def __getitem__(self, key: slice) -> bytes: ...

    def __getitem__(self, key: Union[int, slice]) -> Union[int, bytes]:
        if isinstance(key, int):
            return self.range(key, 1)[0]
        start, stop = key.start, key.stop
        if key.step is None and start is not None and stop is not None and 0 <= start <= stop:
            return self.range(start, min(stop, self.size) - start)  # the usual [a:b]
        start, stop, step = key.indices(self.size)
        if step != 1:
            raise ValueError("FileImage slices are contiguous")
        return self.range(start, stop - start)

    def keep(self, offset: int, data: bytes) -> None:
        """Hold ``data`` as the bytes at ``offset`` (cut from a larger range already read)."""
        self._read[(offset, len(data))] = data

    def range(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` (fewer at the end of the file)."""
        if size <= 0 or offset >= self.size:
            return b""
        key = (offset, size)
        got = self._read.get(key)
        if got is None:
            size = min(size, self.size - offset)  # (a header may claim any size)
            got = os.pread(self.fd, size, offset)
            while len(got) < size and offset + len(got) < self.size:  # a short read
                more = os.pread(self.fd, size - len(got), offset + len(got))
                if not more:
                    break
                got += more
            self._read[key] = got
        return got


def _open(fspath: bytes) -> tuple[Union[bytes, FileImage], tuple[int, ...]]:
    """A regular file as a :class:`FileImage` (the caller closes its fd), anything else read
    whole (a pipe, /proc, ...); with its stat identity."""
    fd = os.open(fspath, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            return FileImage(fd, st.st_size), stat_identity(st)
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return data, stat_identity(st)


def parse_image(data: bytes, path: Optional[str] = None) -> ModuleData:
    """Extract exports, required symbols and modinfo from an ELF image."""
    try:
        elf = ElfModule(data, path)
    except ElfError as e:
        return ModuleData(error=f"{e.errno_text} ({e.message})")
    return parse_elf(elf)


def parse_elf(elf: ElfModule) -> ModuleData:
    """:func:`parse_image` on an image already opened as an :class:`ElfModule`."""
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
    return read_keyed(fspath, limit, None)[1]  # type: ignore[return-value]


Layout = tuple[bytes, tuple[int, ...]]
"""A module layout's digest and the CRC sections it decides (:func:`moddep.cache.content_key`)."""


Keyed = tuple[bytes, Optional[ModuleData], Optional[Layout], bytes, tuple[int, ...]]
"""What :func:`read_keyed` returns: key, ModuleData (None when the cache holds it), the layout
the cache has yet to learn, the key's :func:`~moddep.cache.recipe` (``b""`` for none) and the
file's stat identity (``()`` when it could not be opened)."""


def read_keyed(fspath: bytes, limit: int = DEFAULT_LIMIT, known: Optional[PackIndex] = None,
               ) -> Keyed:
    """(cache key, ModuleData, layout, recipe, identity) of one module file, in one pass over
    its bytes.

    The key (:func:`moddep.cache.content_key` / :func:`~moddep.cache.file_key`) is computed
    first; when ``known`` holds it the data is not extracted (None). For an ELF module whose
    layout ``known`` has not seen, the CRC sections that complete the key are only known once
    extraction has scanned ``.symtab``: the key is computed after it, and the layout returned
    so the cache can learn it. ``known=None`` means no cache: no key (``b""``), always
    extracted. I/O and format errors become ``error``.
    """
    path = fspath.decode(errors="surrogateescape")
    try:
        raw, ident = _open(fspath)
    except OSError as e:  # no key: a run with an unreadable module is not cached
        return b"", ModuleData(error=e.strerror or str(e)), None, b"", ()
    try:
        elf = error = None
        if detect(raw[:64]) is None:  # (the ELF header's range: read once)
            try:
                elf = ElfModule(raw, path)
            except ElfError as e:
                error = f"{e.errno_text} ({e.message})"
        if elf is None:  # compressed, or not a readable ELF image: keyed whole
            whole = raw[:]
            key = b"" if known is None else file_key(whole, limit)
            if known is not None and key in known:
                return key, None, None, b"", ident
            if error is not None:
                return key, ModuleData(error=error), None, b"", ident
            try:
                data = decompress(whole, path, limit)
            except ModdepError as e:
                return key, ModuleData(error=e.message), None, b"", ident
            return key, parse_image(data, path), None, b"", ident
        if known is None:
            return b"", parse_elf(elf), None, b"", ident
        state = layout_key(elf, limit)
        layout = state.digest()
        sections = known.sections(layout, elf.section_count)
        if sections is not None:
            key = content_key(state, elf, sections)
            if key in known:
                return key, None, None, recipe(elf, sections), ident
        extracted = parse_elf(elf)
        sections = elf.crc_sections()  # found by the extraction's own .symtab scan
        return (content_key(state, elf, sections), extracted, (layout, sections),
                recipe(elf, sections), ident)
    except OSError as e:  # a read failing half way
        return b"", ModuleData(error=e.strerror or str(e)), None, b"", ident
    finally:
        if isinstance(raw, FileImage):
            os.close(raw.fd)


def rekey(fspath: bytes, limit: int, how: bytes, same: tuple[int, ...] = (),
          ) -> tuple[tuple[int, ...], Optional[bytes]]:
    """(stat identity, content key) of a module file whose key was computed before by
    ``how`` (:func:`moddep.cache.key_by_recipe`: the same key, without parsing); the key is
    None when the identity is ``same`` (nothing to compute) or the file cannot be read that
    way (identity ``()`` when it cannot be opened)."""
    try:
        fd = os.open(fspath, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return (), None
    try:
        st = os.fstat(fd)
        ident = stat_identity(st)
        if ident == same or not stat.S_ISREG(st.st_mode):
            return ident, None
        # (a recipe's range may overrun a file that changed: FileImage reads what there is)
        return ident, key_by_recipe(FileImage(fd, st.st_size).range, st.st_size, limit, how)
    except (OSError, ValueError):
        return ident, None
    finally:
        os.close(fd)
