"""A narrow, bounds-checked ELF reader for kernel modules (ELF32/64, little/big endian).

depmod needs five sections of a ``.ko``, located by name with the first match winning, as
``libkmod/libkmod-elf.c`` does: ``.modinfo``, ``__ksymtab_strings``, ``.symtab``, ``.strtab``
and ``__versions``. Every offset read here is checked against the file size; a malformed file
raises :class:`~moddep.errors.ElfError` naming the offset and what was expected, carrying the
strerror text kmod prints for the same failure.

This is the hot path of a depmod run (thousands of modules, ~800k symbols on a distro tree),
so tables are decoded column-wise: a whole ``.symtab`` becomes an :class:`array.array` of
16-bit or 32-bit words (byte-swapped once for a foreign byte order) and columns are taken with
extended slices, then filtered with :func:`itertools.compress`, all at C speed. Per-symbol
Python work happens only for the symbols kept (undefined ones and ``__crc_`` exports).
pyelftools' object API costs about 25x kmod's whole run here; the tests cross-check this
reader against pyelftools on synthetic and real modules.
"""

from __future__ import annotations

import struct
import sys
from array import array
from itertools import accumulate, compress, repeat
from typing import Callable, Optional, Protocol, overload

from moddep.errors import ElfError
from moddep.modinfo import parse_modinfo

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2

SHN_UNDEF = 0
SHN_ABS = 0xFFF1
SHT_NOBITS = 8
STB_WEAK = 2
STT_REGISTER = 13
EM_SPARC, EM_SPARCV9 = 2, 43
SHF_ALLOC = 0x2

# __versions records: a CRC word (u32 in ELF32, u64 in ELF64) then a NUL-padded name.
VERSIONS_RECORD = 64

_HOST_BIG = sys.byteorder == "big"
assert array("H").itemsize == 2 and array("I").itemsize == 4 and array("Q").itemsize == 8

# Per class: ELF header (from e_type on), section header, symbol entry; and column positions
# within a symbol entry in units of the column's item size.
_EHDR = {ELFCLASS64: "16xHHIQQQIHHHHHH", ELFCLASS32: "16xHHIIIIIHHHHHH"}
_SHENTSIZE = {ELFCLASS64: 64, ELFCLASS32: 40}
_SYMSIZE = {ELFCLASS64: 24, ELFCLASS32: 16}
# (name: index in u32 words, shndx: index in u16 words, info: byte offset, value: byte offset)
_SYMCOLS = {ELFCLASS64: (0, 3, 4, 8), ELFCLASS32: (0, 7, 12, 4)}
# the sections depmod reads (besides those __crc_ symbols point into), in the order the
# cache key takes them
_DEPMOD_SECTIONS = (b".symtab", b".strtab", b".modinfo", b"__versions", b"__ksymtab_strings")
_NO_CRCS: tuple[list[int], array, array] = ([], array("I"), array("H"))
# bytes read before the section header table with it, for the section name table (all of the
# Debian tree's, 0.9 KiB at most, end within 8 bytes of it)
_NAMES_BEFORE_TABLE = 2048
_NATIVE_U32 = struct.Struct("=I")
_EHDR_STRUCTS = {(cls, enc): struct.Struct((">" if enc == ELFDATA2MSB else "<") + fmt)
                 for cls, fmt in _EHDR.items() for enc in (ELFDATA2LSB, ELFDATA2MSB)}


class Image(Protocol):
    """What the reader needs of a module image: ``bytes``, or a file read on demand
    (:class:`moddep.extract.FileImage`), so only the ranges read are ever copied."""

    def __len__(self) -> int: ...

    @overload
    def __getitem__(self, key: int) -> int: ...

    @overload
    def __getitem__(self, key: slice) -> bytes: ...


def _slicer(data: Image) -> Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        return data[offset:offset + size]
    return read


class ElfModule:
    """The sections of one module image that depmod, modprobe and modinfo need."""

    def __init__(self, data: Image, path: Optional[str] = None) -> None:
        self.data = data
        self.path = path
        self.size = size = len(data)
        if size < 16:
            # kmod: an empty file fails with EINVAL, a short one with ENOEXEC.
            raise ElfError(f"file too short for an ELF header ({size} bytes)", path,
                           "Invalid argument" if not size else "Exec format error")
        # read(offset, size): a FileImage hands out its (cached) ranges directly, bytes are
        # sliced (never by a bound method of self: that cycle would keep every image alive
        # while the cyclic collector is off, as it is during a depmod run)
        read = getattr(data, "range", None)
        if read is None:
            read = _slicer(data)
        self.read: Callable[[int, int], bytes] = read
        head = read(0, 64)
        if head[:4] != ELF_MAGIC:
            raise ElfError("not an ELF file (bad magic)", path)
        cls, enc = head[4], head[5]
        ehdr = _EHDR_STRUCTS.get((cls, enc))
        if ehdr is None:
            raise ElfError(f"unsupported ELF class/data ({cls}, {enc})", path, "Invalid argument")
        self.elfclass = cls
        self.big_endian = big = enc == ELFDATA2MSB
        self.endian = ">" if big else "<"
        self._swap = big != _HOST_BIG
        if size < ehdr.size:
            raise ElfError("truncated ELF header", path)
        (_type, machine, _version, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum,
         shentsize, shnum, shstrndx) = ehdr.unpack_from(head, 0)
        self.machine = machine
        if shentsize != _SHENTSIZE[cls]:
            raise ElfError(f"section header size {shentsize}, expected {_SHENTSIZE[cls]}", path)
        if shoff == 0 or shnum == 0 or shoff + shnum * shentsize > size:
            raise ElfError(
                f"section headers at offset {shoff} ({shnum} x {shentsize} bytes) lie outside "
                f"the file ({size} bytes)", path)
        if shstrndx >= shnum:
            raise ElfError(f"section name table index {shstrndx} >= {shnum} sections", path)
        block = TableBlock(read, shoff, shnum * shentsize)
        (self._sh_name, self._sh_type, self._sh_flags, self._sh_off,
         self._sh_size) = section_table_columns(block.table, cls, big)
        self._shnum = shnum
        self._shstrndx = shstrndx
        self._ehdr_size = ehdr.size
        self._inputs: Optional[list[tuple[int, int]]] = None
        self._depmod_sections: Optional[list[int]] = None
        self._name_words = self._sh_name[1:].tobytes()
        self._shoff = shoff
        self._shentsize = shentsize
        self._symtab_cache: Optional[tuple[bytes, int, bytes]] = None
        str_off, str_size = self._sh_off[shstrndx], self._sh_size[shstrndx]
        self._check_range(str_off, str_size, "section name table")
        shstrtab = block.before(str_off, str_size)
        if shstrtab is None:
            shstrtab = read(str_off, str_size)
        else:
            keep = getattr(data, "keep", None)
            if keep is not None:  # (the cache key reads it again)
                keep(str_off, shstrtab)
        self._shstrtab = shstrtab
        if str_size == 0 or shstrtab[-1] != 0:
            raise ElfError("section name table is empty or not NUL-terminated", path)
        self._shstr_range = (str_off, str_size)
        self._headers: dict[bytes, Optional[tuple[int, int, int, int, int]]] = {}
        self._crc_cache: Optional[tuple[list[int], array, array]] = None
        self._section_cache: dict[int, bytes] = {}

    def _check_range(self, offset: int, size: int, what: str) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ElfError(
                f"{what} at offset {offset} (+{size} bytes) lies outside the file "
                f"({self.size} bytes)", self.path)

    # -- sections -----------------------------------------------------------------------------
    def section_index(self, name: bytes) -> int:
        """Index of the first section (from 1) called ``name``; 0 when there is none.

        Modules have dozens of sections: rather than naming each, the table is searched
        for ``name`` and the section headers for that offset (names may share tails, e.g.
        ``.text`` inside ``.rela.text``, so every occurrence counts; C-level searches).
        """
        table = self._shstrtab
        words = self._name_words  # sh_name of sections 1..n-1, as native 32-bit words
        needle = name + b"\0"
        found = 0
        pos = table.find(needle)
        while pos >= 0:
            # the first section whose sh_name is pos: a 4-byte search on word boundaries
            word = _NATIVE_U32.pack(pos)
            at = words.find(word)
            while at > 0 and at & 3:
                at = words.find(word, at + 1)
            if at >= 0 and (not found or at // 4 + 1 < found):
                found = at // 4 + 1
            pos = table.find(needle, pos + 1)
        return found

    def section_header(self, name: bytes) -> Optional[tuple[int, int, int, int, int]]:
        """(index, type, flags, offset, size) of section ``name``, or None."""
        if name in self._headers:
            return self._headers[name]
        i = self.section_index(name)
        hdr = (i, self._sh_type[i], self._sh_flags[i], self._sh_off[i], self._sh_size[i]) \
            if i else None
        self._headers[name] = hdr
        return hdr

    @property
    def section_count(self) -> int:
        return self._shnum

    def section_header_offset(self, index: int) -> int:
        """File offset of section ``index``'s header (modprobe --force patches it)."""
        return self._shoff + index * self._shentsize

    def section_data(self, name: bytes) -> Optional[bytes]:
        """Contents of section ``name``, bounds-checked; None when absent."""
        hdr = self.section_header(name)
        if hdr is None:
            return None
        _i, stype, _flags, offset, size = hdr
        if stype == SHT_NOBITS:
            return b""
        self._check_range(offset, size, f"section {name.decode(errors='replace')}")
        return self.read(offset, size)

    def section_names(self) -> list[bytes]:
        """All section names in index order."""
        table = self._shstrtab
        out = []
        for off in self._sh_name:
            end = table.find(b"\0", off)
            out.append(table[off:end] if end >= 0 else b"")
        return out

    # -- .modinfo ---------------------------------------------------------------------------
    def modinfo_raw(self) -> bytes:
        return self.section_data(b".modinfo") or b""

    def modinfo(self) -> list[tuple[bytes, bytes]]:
        """``.modinfo`` as (key, value) pairs in file order (KMOD_NOTES §6.5)."""
        return parse_modinfo(self.modinfo_raw())

    # -- symbols ----------------------------------------------------------------------------
    def _words(self, buf: bytes, code: str) -> array:
        a = array(code)
        a.frombytes(buf)
        if self._swap:
            a.byteswap()
        return a

    def _symtab(self) -> tuple[bytes, int, bytes]:
        """(.symtab bytes, entry count, .strtab bytes); raises ElfError if unusable."""
        if self._symtab_cache is None:
            self._symtab_cache = self._read_symtab()
        return self._symtab_cache

    def _read_symtab(self) -> tuple[bytes, int, bytes]:
        sym = self.section_header(b".symtab")
        strtab = self.section_header(b".strtab")
        if sym is None or strtab is None:
            raise ElfError("no .symtab/.strtab section", self.path, "No such file or directory")
        entsize = _SYMSIZE[self.elfclass]
        _i, _t, _f, off, size = sym
        if size % entsize:
            raise ElfError(f".symtab size {size} is not a multiple of {entsize}", self.path,
                           "Invalid argument")
        self._check_range(off, size, "section .symtab")
        _i, _t, _f, soff, ssize = strtab
        self._check_range(soff, ssize, "section .strtab")
        return self.read(off, size), size // entsize, self.read(soff, ssize)

    def _name_column(self, symtab: bytes) -> array:
        step = _SYMSIZE[self.elfclass] // 4
        return self._words(symtab, "I")[_SYMCOLS[self.elfclass][0]::step]

    def _shndx_column(self, symtab: bytes) -> array:
        step = _SYMSIZE[self.elfclass] // 2
        return self._words(symtab, "H")[_SYMCOLS[self.elfclass][1]::step]

    def _undefined_indices(self, symtab: bytes, count: int) -> list[int]:
        """Indices (from 1) of the symbols whose st_shndx is SHN_UNDEF.

        The two bytes of st_shndx are taken as two byte columns and OR-ed as big integers;
        the zero bytes of the result are the undefined symbols, found by a regex scan.
        """
        size = _SYMSIZE[self.elfclass]
        off = _SYMCOLS[self.elfclass][1] * 2
        lo = symtab[off::size]
        hi = symtab[off + 1::size]
        both = (int.from_bytes(lo, "little") | int.from_bytes(hi, "little")).to_bytes(
            count, "little")
        return zero_positions(both)[1:] if both[:1] == b"\0" else zero_positions(both)

    def exported_symbols(self) -> tuple[list[bytes], list[int]]:
        """Exported symbol names and CRCs as ``kmod_elf_get_symbols`` finds them (§6.3).

        Primary source: every ``__crc_NAME`` symbol in ``.symtab``; the CRC is the symbol value
        for SHN_UNDEF/SHN_ABS, else the 32-bit word at that offset in its section. Fallback when
        there are none (CONFIG_MODVERSIONS=n): the NUL-separated ``__ksymtab_strings``, CRC 0.
        """
        names: list[bytes] = []
        crcs: list[int] = []
        hits, namecol, shndx = self._crc_symbols()
        if hits:
            symtab, _count, strtab = self._symtab()
            if not strtab.endswith(b"\0"):
                strtab += b"\0"
            cls = self.elfclass
            # column by column rather than symbol by symbol (thousands of exports a tree):
            # each name after "__crc_" up to its NUL (every hit's name starts with "__crc_"
            # inside .strtab), the values, the sections they point into
            find = strtab.find
            names = [strtab[o + 6:find(b"\0", o)] for o in map(namecol.__getitem__, hits)]
            wide = cls == ELFCLASS64
            step = _SYMSIZE[cls] // (8 if wide else 4)
            values = self._words(symtab, "Q" if wide else "I")[
                _SYMCOLS[cls][3] // (8 if wide else 4)::step]
            vals = list(map(values.__getitem__, hits))
            where = set(map(shndx.__getitem__, hits))
            bulk = self._crc_words(where.pop(), vals) if len(where) == 1 else None
            crcs = bulk if bulk is not None else [
                v if s in (SHN_UNDEF, SHN_ABS) else self._section_word(s, v)
                for s, v in zip(map(shndx.__getitem__, hits), vals)]
        if names:
            return names, crcs
        strings = self.section_data(b"__ksymtab_strings")
        if not strings:
            return [], []
        names = [s for s in strings.split(b"\0") if s]
        return names, [0] * len(names)

    def _crc_symbols(self) -> tuple[list[int], array, array]:
        """Indices of the ``__crc_*`` symbols, with the name and st_shndx columns (empty
        when there are none or .symtab is unusable)."""
        if self._crc_cache is not None:
            return self._crc_cache
        found: tuple[list[int], array, array] = _NO_CRCS
        strtab_hdr = self.section_header(b".strtab")
        if strtab_hdr is not None and b"__crc_" not in self.read(strtab_hdr[3], strtab_hdr[4]):
            self._crc_cache = found  # most modules export nothing: no need to read .symtab
            return found
        try:
            symtab, count, strtab = self._symtab()
        except ElfError:
            count = 0
        if count > 1:
            # every offset in .strtab where a string starting with "__crc_" can begin
            offs = set()
            pos = strtab.find(b"__crc_")
            while pos >= 0:
                offs.add(pos)
                pos = strtab.find(b"__crc_", pos + 1)
            namecol = self._name_column(symtab)
            hits = list(compress(range(1, count), map(offs.__contains__, namecol[1:])))
            if hits:
                found = (hits, namecol, self._shndx_column(symtab))
        self._crc_cache = found
        return found

    def depmod_inputs(self) -> list[tuple[int, int]]:
        """(offset, size) of the byte ranges depmod's extraction reads from this image,
        apart from the section header table and the CRC sections (:meth:`crc_sections`).

        With the image size, :meth:`section_columns` and the CRC sections' contents, these
        decide everything :func:`moddep.extract.parse_elf` returns (the cache keys a module
        by them): the ELF header, the section name table and the sections named in the
        module docstring. Which sections hold CRCs is itself decided by these (``.symtab``,
        ``.strtab``, the section count). Code, data and relocations are never read. Ranges
        may overrun the file; the reader checks that.
        """
        ranges = self._inputs
        if ranges is None:
            off, size = self._sh_off, self._sh_size
            ranges = self._inputs = [(0, self._ehdr_size), self._shstr_range,
                                     *[(off[i], size[i]) for i in self.depmod_sections()]]
        return ranges

    def depmod_sections(self) -> list[int]:
        """Indices of the sections named in the module docstring that this image has (with
        contents: not SHT_NOBITS), in the order :meth:`depmod_inputs` lists them."""
        found = self._depmod_sections
        if found is None:
            header = self.section_header
            found = self._depmod_sections = [
                hdr[0] for hdr in map(header, _DEPMOD_SECTIONS)
                if hdr is not None and hdr[1] != SHT_NOBITS]
        return found

    def section_columns(self) -> bytes:
        """The section header fields extraction depends on besides the offsets and sizes
        :meth:`depmod_inputs` gives: every section's name and type (which section is which),
        as native 32-bit words. The rest of the table (flags, addresses, links, the other
        sections' places) is an eighth of it and never read."""
        return self._sh_name.tobytes() + self._sh_type.tobytes()

    def section_table(self) -> tuple[int, int, int]:
        """(offset, size) of the section header table, and the section name table's index."""
        return self._shoff, self._shnum * self._shentsize, self._shstrndx

    def crc_sections(self) -> tuple[int, ...]:
        """Indices of the sections ``__crc_`` symbols point into (their words are read as
        CRCs), ascending; a function of the :meth:`depmod_inputs` ranges alone."""
        hits, _names, shndx = self._crc_symbols()
        if not hits:
            return ()
        return tuple(s for s in sorted({shndx[i] for i in hits} - {SHN_UNDEF, SHN_ABS})
                     if s < self._shnum)

    def section_range(self, index: int) -> tuple[int, int]:
        """(offset, size) of section ``index`` as its header states them."""
        return self._sh_off[index], self._sh_size[index]

    def _whole_section(self, index: int) -> bytes:
        """Section ``index`` (< the section count) as its header states it, cut at the file's
        end; read once (as the cache key reads it)."""
        section = self._section_cache.get(index)
        if section is None:
            section = self._section_cache[index] = self.read(*self.section_range(index))
        return section

    def _crc_words(self, index: int, offsets: list[int]) -> Optional[list[int]]:
        """:meth:`_section_word` of each offset in section ``index`` (the values themselves
        for SHN_UNDEF/SHN_ABS), all at once when every offset is a whole word inside the
        section (as the kernel places CRCs); None otherwise."""
        if index in (SHN_UNDEF, SHN_ABS):
            return offsets
        if index >= self._shnum or any(map(_MISALIGNMENT, offsets)):
            return None
        section = self._whole_section(index)
        if max(offsets) + 4 > len(section):
            return None
        words = self._words(section[:len(section) & ~3], "I")
        return list(map(words.__getitem__, map(_WORD_INDEX, offsets)))

    def _section_word(self, index: int, offset: int) -> int:
        """The u32 at ``offset`` in section ``index``; all-ones when out of range (as kmod)."""
        if index >= self._shnum:
            return 0xFFFFFFFF
        section = self._whole_section(index)
        if offset + 4 > len(section):
            return 0xFFFFFFFF
        return int(struct.unpack_from(self.endian + "I", section, offset)[0])

    def versions(self) -> tuple[list[bytes], list[int]]:
        """``__versions`` names and CRCs; empty when absent or not a multiple of 64 bytes."""
        data = self.section_data(b"__versions")
        if not data or len(data) % VERSIONS_RECORD:
            return [], []
        count = len(data) // VERSIONS_RECORD
        wide = self.elfclass == ELFCLASS64
        # The CRC word heads each record: as u32 (ELF32) or u64 (ELF64) columns, one per
        # VERSIONS_RECORD bytes. Zeroing that column leaves the names NUL-separated in one blob.
        words = array("Q" if wide else "I")
        words.frombytes(data)
        step = VERSIONS_RECORD // words.itemsize
        crcs = words[0::step]
        if self._swap:
            crcs.byteswap()
        words[0::step] = array(words.typecode, bytes(count * words.itemsize))
        # NUL runs -> one separator (symbol names never contain ASCII blanks). One word per
        # record is only right when every name starts its record (a NUL there is an empty
        # name, possibly with bytes after it) and no record holds a blank.
        blob = words.tobytes()
        width = words.itemsize
        names = blob.translate(_NUL_TO_BLANK).split()
        if (len(names) != count or b"\0" in blob[width::VERSIONS_RECORD]
                or len(blob.translate(None, _BLANKS)) != len(blob)):
            # an empty or odd name: read record by record instead
            names = [data[p:p + VERSIONS_RECORD - width].split(b"\0", 1)[0]
                     for p in range(width, len(data), VERSIONS_RECORD)]
        return names, crcs.tolist()

    def undefined_symbols(self) -> tuple[list[bytes], bytes, list[int]]:
        """Required symbols as ``kmod_elf_get_dependency_symbols`` lists them (§6.4).

        Returns (names, weak flags (one byte 0/1 per name), crcs): undefined ``.symtab``
        entries with a non-empty name, in table order, each with the CRC of the first
        ``__versions`` record of that name; then the ``__versions`` records that matched no
        undefined name (e.g. ``module_layout``), in section order.
        """
        symtab, count, strtab = self._symtab()
        if not strtab.endswith(b"\0"):
            strtab += b"\0"
        namecol = self._name_column(symtab)
        und = self._undefined_indices(symtab, count)
        cls = self.elfclass
        info = symtab[_SYMCOLS[cls][2]::_SYMSIZE[cls]]
        if self.machine in (EM_SPARC, EM_SPARCV9):
            und = [i for i in und if info[i] & 0xF != STT_REGISTER]
        # each name runs to the next NUL (a list comprehension beats map/slice here); an
        # offset past the table gives find() == -1 and an empty name, dropped like kmod's
        find = strtab.find
        names = [strtab[o:find(b"\0", o)] for o in map(namecol.__getitem__, und)]
        weak = bytes(map(info.__getitem__, und)).translate(_WEAK)
        if b"" in names:
            keep = [bool(n) for n in names]
            names = list(compress(names, keep))
            weak = bytes(compress(weak, keep))
        vnames, vcrcs = self.versions()
        if not vnames:
            return names, weak, [0] * len(names)
        crc_of = dict(zip(vnames, vcrcs))
        if len(crc_of) == len(vnames):
            # Distinct records (the usual case): each name takes its record out, and what
            # is left, in section order, are the records no name matched. Valid only when
            # every name found one: a name without a record, or one listed twice (the
            # second finds its record gone), takes the general way below.
            taken = list(map(crc_of.pop, names, repeat(_NO_RECORD, len(names))))
            if _NO_RECORD not in taken:
                names += crc_of
                weak += bytes(len(crc_of))
                return names, weak, taken + list(crc_of.values())
        # the first record of each name counts: built from the end so the earliest wins
        crc_of = dict(zip(reversed(vnames), reversed(vcrcs)))
        crcs = list(map(crc_of.get, names, repeat(0, len(names))))
        needed = set(names)
        if len(crc_of) == len(vnames):  # distinct names (the usual case)
            if needed.issuperset(vnames):
                return names, weak, crcs
            extra = [k for k, n in enumerate(vnames) if n not in needed]
        else:  # a repeated record is never the one matched, so it is listed again
            first = dict(zip(reversed(vnames), range(len(vnames) - 1, -1, -1)))
            used = {first[n] for n in needed if n in first}
            extra = [k for k in range(len(vnames)) if k not in used]
        names += [vnames[k] for k in extra]
        crcs += [vcrcs[k] for k in extra]
        weak += bytes(len(extra))
        return names, weak, crcs


_NO_RECORD = -1  # (CRCs are unsigned)
_NUL_TO_BLANK = bytes([0x20]) + bytes(range(1, 256))
_BLANKS = b" \t\n\r\x0b\x0c"  # what bytes.split() splits on besides the NULs made blanks


class TableBlock:
    """The section header table at ``offset`` (``size`` bytes), read together with the bytes
    just before it: the section name table usually ends there (the linker writes the two
    last), so one read takes both."""

    __slots__ = ("start", "end", "block")

    def __init__(self, read: Callable[[int, int], bytes], offset: int, size: int) -> None:
        self.start = offset - min(offset, _NAMES_BEFORE_TABLE)
        self.end = offset
        self.block = read(self.start, offset - self.start + size)

    @property
    def table(self) -> bytes:
        return self.block[self.end - self.start:]

    def before(self, offset: int, size: int) -> Optional[bytes]:
        """The ``size`` bytes at ``offset`` if they lie in what was read before the table."""
        if offset < self.start or offset + size > self.end:
            return None
        at = offset - self.start
        return self.block[at:at + size]


def header_size(head: bytes) -> int:
    """Size of the ELF header starting ``head`` (by its class and byte order); KeyError for
    a class or byte order this reader does not know."""
    return _EHDR_STRUCTS[head[4], head[5]].size


def section_table_columns(table: bytes, elfclass: int, big_endian: bool,
                          ) -> tuple[array, array, array, array, array]:
    """A section header table as native columns (one array slice per field, not a tuple
    per section): sh_name, sh_type, sh_flags, sh_offset, sh_size."""
    words = array("I", table)
    swap = big_endian != _HOST_BIG
    if swap:
        words.byteswap()
    if elfclass == ELFCLASS64:
        wide = array("Q", table)
        if swap:
            wide.byteswap()
        return words[0::16], words[1::16], wide[1::8], wide[3::8], wide[4::8]
    return words[0::10], words[1::10], words[2::10], words[4::10], words[5::10]


def zero_positions(data: bytes) -> list[int]:
    """Offsets of the NUL bytes of ``data``, computed from the lengths of the pieces between
    them (C-level: split, map, accumulate) rather than one byte at a time: each NUL is one
    past the previous one plus the length of the piece between them."""
    pieces = data.split(b"\0")
    del pieces[-1]
    return list(map(_MINUS_ONE, accumulate(map(_PLUS_ONE, map(len, pieces)))))


_PLUS_ONE = (1).__add__
_MISALIGNMENT = (3).__and__  # offset -> its distance past a 4-byte boundary
_WORD_INDEX = (2).__rrshift__  # offset -> index of the 4-byte word there
_MINUS_ONE = (-1).__add__


# symbol st_info byte -> 1 if its binding is STB_WEAK
_WEAK = bytes(int(b >> 4 == STB_WEAK) for b in range(256))
