"""The frozen model the depmod pipeline computes on: what each module file holds."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Optional

from moddep.modinfo import parse_modinfo


@dataclass(frozen=True)
class ModuleData:
    """Everything depmod, verify and modinfo need from one module file, as bytes.

    Kept compact (parallel tuples, raw ``.modinfo``) because thousands of these cross process
    boundaries and the cache. ``error`` is set when the file could not be read as a module
    (kmod then still lists the module, with no symbols, aliases or dependencies).
    """

    exports: tuple[bytes, ...] = ()  # as kmod_elf_get_symbols
    export_crcs: tuple[int, ...] = ()
    undefined: tuple[bytes, ...] = ()  # as kmod_elf_get_dependency_symbols
    undefined_weak: bytes = b""  # one byte per undefined symbol: 1 if weak
    undefined_crcs: tuple[int, ...] = ()
    modinfo_raw: bytes = b""
    error: Optional[str] = None

    @cached_property
    def modinfo(self) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs in file order (parsed once, on first use)."""
        return parse_modinfo(self.modinfo_raw)

    def values(self, key: bytes) -> list[bytes]:
        """All modinfo values of ``key``, in file order."""
        raw = self.modinfo_raw
        if key + b"=" not in raw:
            return []
        # strings start at the beginning or after a NUL; the value runs to the next NUL
        return re.findall(b"(?:^|\0)" + re.escape(key) + b"=([^\0]*)", raw)
