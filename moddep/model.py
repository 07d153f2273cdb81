"""The frozen model the depmod pipeline computes on: what each module file holds."""

from __future__ import annotations

from array import array
from operator import attrgetter
from typing import Optional, Sequence

from moddep.modinfo import parse_modinfo

_U64 = "Q" if array("Q").itemsize == 8 else "L"
# ModuleData's stored fields, in constructor order (the rest of its slots are unpacked forms)
_FIELDS = ("exports", "export_crcs", "undefined_blob", "undefined_weak", "undefined_crc_words",
           "modinfo_raw", "error")
_get_fields = attrgetter(*_FIELDS)


class ModuleData:
    """Everything depmod, verify and modinfo need from one module file, as bytes; never
    changed once built (equal and hashed by its fields).

    Kept compact because thousands of these cross process boundaries and the cache: the
    required symbols travel as one NUL-joined blob and their CRCs as packed words (a
    few objects per module instead of hundreds); :attr:`undefined` and
    :attr:`undefined_crcs` unpack them on first use. ``error`` is set when the file could not
    be read as a module (kmod then still lists the module, with no symbols, aliases or
    dependencies). A plain class rather than a dataclass: generating one costs a depmod
    re-run's start-up a millisecond.
    """

    __slots__ = (*_FIELDS, "_undefined", "_undefined_crcs", "_modinfo", "_aliases")

    def __init__(self, exports: tuple[bytes, ...] = (), export_crcs: tuple[int, ...] = (),
                 undefined_blob: bytes = b"", undefined_weak: bytes = b"",
                 undefined_crc_words: bytes = b"", modinfo_raw: bytes = b"",
                 error: Optional[str] = None) -> None:
        self.exports = exports  # as kmod_elf_get_symbols
        self.export_crcs = export_crcs
        # required symbols (kmod_elf_get_dependency_symbols), NUL-joined
        self.undefined_blob = undefined_blob
        self.undefined_weak = undefined_weak  # one byte per required symbol: 1 if weak
        # a native 32-bit word per symbol, or 64-bit when some CRC needs it
        self.undefined_crc_words = undefined_crc_words
        self.modinfo_raw = modinfo_raw
        self.error = error
        self._undefined: Optional[tuple[bytes, ...]] = None
        self._undefined_crcs: Optional[tuple[int, ...]] = None
        self._modinfo: Optional[list[tuple[bytes, bytes]]] = None
        self._aliases: Optional[list[bytes]] = None

    def fields(self) -> tuple[object, ...]:
        """The stored fields, in constructor order (never the unpacked caches)."""
        return _get_fields(self)  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not ModuleData:
            return NotImplemented
        return self.fields() == other.fields()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self.fields())

    def __repr__(self) -> str:
        return "ModuleData(" + ", ".join(f"{n}={v!r}" for n, v in zip(_FIELDS, self.fields())) \
            + ")"

    @classmethod
    def build(cls, exports: Sequence[bytes] = (), export_crcs: Sequence[int] = (),
              undefined: Sequence[bytes] = (), undefined_weak: bytes = b"",
              undefined_crcs: Sequence[int] = (), modinfo_raw: bytes = b"",
              error: Optional[str] = None) -> ModuleData:
        # CRCs are 32-bit words (a 64-bit ELF stores them in 64 bits): packed as such when
        # they fit, halving what crosses processes; the length tells the width
        words = array("I" if not undefined_crcs or max(undefined_crcs) <= 0xFFFFFFFF else _U64,
                      undefined_crcs)
        return cls(tuple(exports), tuple(export_crcs), b"\0".join(undefined), undefined_weak,
                   words.tobytes(), modinfo_raw, error)

    # The unpacked forms, each computed on first use and kept (plain properties over slots:
    # functools.cached_property takes a lock on every first use, thousands of times a run).
    @property
    def undefined(self) -> tuple[bytes, ...]:
        """Required symbol names, in kmod's order (one per byte of :attr:`undefined_weak`)."""
        got = self._undefined
        if got is None:
            got = self._undefined = tuple(self.undefined_blob.split(b"\0")) \
                if self.undefined_weak else ()
        return got

    @property
    def undefined_crcs(self) -> tuple[int, ...]:
        got = self._undefined_crcs
        if got is None:
            raw = self.undefined_crc_words
            words = array("I" if len(raw) == 4 * len(self.undefined_weak) else _U64)
            words.frombytes(raw)
            got = self._undefined_crcs = tuple(words)
        return got

    @property
    def modinfo(self) -> list[tuple[bytes, bytes]]:
        """(key, value) pairs in file order (parsed once, on first use)."""
        got = self._modinfo
        if got is None:
            got = self._modinfo = parse_modinfo(self.modinfo_raw)
        return got

    @property
    def aliases(self) -> list[bytes]:
        """The ``alias`` values (several outputs read them)."""
        got = self._aliases
        if got is None:
            got = self._aliases = self.values(b"alias")
        return got

    def values(self, key: bytes) -> list[bytes]:
        """All modinfo values of ``key``, in file order (each string runs from the start or
        a NUL to the next NUL; those starting ``key=`` count)."""
        raw = self.modinfo_raw
        head = key + b"="
        if head not in raw:
            return []
        n = len(head)
        return [s[n:] for s in raw.split(b"\0") if s[:n] == head]

    def __reduce__(self) -> tuple[type[ModuleData], tuple[object, ...]]:
        """Pickle as the constructor's arguments: the stored fields only, never the unpacked
        caches (thousands cross process boundaries and the cache, so this halves pickling
        time)."""
        return ModuleData, self.fields()
