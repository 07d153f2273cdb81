"""The frozen model the depmod pipeline computes on: what each module file holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class ModuleData:
    """Everything depmod, verify and modinfo need from one module file, as bytes.

    ``error`` is set when the file could not be read as a module (kmod then still lists the
    module, with no symbols, aliases or dependencies).
    """

    exports: tuple[tuple[bytes, int], ...] = ()  # (symbol, crc) as kmod_elf_get_symbols
    undefined: tuple[tuple[bytes, bool, int], ...] = ()  # (symbol, weak, crc)
    modinfo: tuple[tuple[bytes, bytes], ...] = ()  # (key, value) in file order
    error: Optional[str] = None

    def values(self, key: bytes) -> list[bytes]:
        """All modinfo values of ``key``, in file order."""
        return [v for k, v in self.modinfo if k == key]
