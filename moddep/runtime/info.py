"""A module's information as libkmod's ``kmod_module_get_info`` returns it (modinfo's input).

Built-in modules: their strings in ``modules.builtin.modinfo``. Module files: the ``.modinfo``
strings of the (decompressed) ELF file, then, for a signed file, ``sig_id``, ``signer``,
``sig_key``, ``sig_hashalgo`` and ``signature`` (see :mod:`.signature`). Errors carry the errno
libkmod would return.
"""

from __future__ import annotations

import errno
import os

from moddep.compression import decompress
from moddep.elf import ElfModule
from moddep.errors import CompressionError, ElfError
from moddep.modinfo import parse_modinfo
from moddep.runtime.resolve import Module, Resolver
from moddep.runtime.signature import info_fields, signature_info


class InfoError(Exception):
    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


_ERRNO_BY_TEXT = {os.strerror(e): e for e in (errno.ENOEXEC, errno.EINVAL, errno.ENOENT)}


def read_module(path: bytes) -> bytes:
    """The decompressed contents of a module file (InfoError on failure)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InfoError(e.errno or errno.EIO) from None
    if len(data) < 6:
        raise InfoError(errno.EINVAL)
    try:
        return decompress(data, os.fsdecode(path))
    except CompressionError:
        raise InfoError(errno.EINVAL) from None


def module_info(resolver: Resolver, mod: Module) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of ``mod`` in libkmod's order."""
    if resolver.is_builtin(mod):
        info = resolver.moddir.builtin_modinfo(mod.name)
        if info is None:
            raise InfoError(errno.ENOENT)
        return info
    path = resolver.path(mod)
    if path is None:
        raise InfoError(errno.ENOENT)
    content = read_module(path)
    try:
        elf = ElfModule(content, os.fsdecode(path))
        raw = elf.section_data(b".modinfo")
    except ElfError as e:
        raise InfoError(_ERRNO_BY_TEXT.get(e.errno_text, errno.ENOEXEC)) from None
    if raw is None:
        raise InfoError(errno.ENODATA)
    out = parse_modinfo(raw)
    sig = signature_info(content)
    if sig is not None:
        out += info_fields(sig)
    return out
