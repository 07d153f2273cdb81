"""A narrow, bounds-checked ELF reader for kernel modules (ELF32/64, little/big endian).

depmod needs five sections of a ``.ko``, located by name with the first match winning, as
``libkmod/libkmod-elf.c`` does: ``.modinfo``, ``__ksymtab_strings``, ``.symtab``, ``.strtab``
and ``__versions``. Every offset read here is checked against the file size; a malformed file
raises :class:`~moddep.errors.ElfError` naming the offset and what was expected, carrying the
strerror text kmod prints for the same failure.

This is the hot path of a depmod run (thousands of modules), so symbol tables are decoded in
bulk with :func:`struct.iter_unpack` instead of per-symbol objects (pyelftools' object API costs
about 25x kmod's whole run on a distro tree; tests cross-check this reader against pyelftools).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

from moddep.errors import ElfError
from moddep.modinfo import parse_modinfo

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2

SHN_UNDEF = 0
SHN_ABS = 0xFFF1
STB_WEAK = 2
STT_REGISTER = 13
EM_SPARC, EM_SPARCV9 = 2, 43
EM_PPC64 = 21

SHF_ALLOC = 0x2

# The sections depmod and modinfo read.
WANTED = (b".modinfo", b"__ksymtab_strings", b".symtab", b".strtab", b"__versions")

# __versions records: a CRC word then a NUL-padded name, 64 bytes in all.
VERSIONS_RECORD = 64


@dataclass(frozen=True)
class Layout:
    """Field formats of one ELF class/byte order."""

    ehdr: struct.Struct  # e_shoff, e_shentsize, e_shnum, e_shstrndx (+ e_machine)
    shdr: struct.Struct  # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, ...
    shentsize: int
    sym: struct.Struct
    crc_word: struct.Struct  # u32 CRC in __kcrctab
    version_crc: struct.Struct  # CRC field of a __versions record
    bits: int


def _layout(cls: int, data: int) -> Layout:
    e = "<" if data == ELFDATA2LSB else ">"
    if cls == ELFCLASS64:
        return Layout(
            ehdr=struct.Struct(e + "16xHHIQQQIHHHHHH"),
            shdr=struct.Struct(e + "IIQQQQIIQQ"),
            shentsize=64,
            sym=struct.Struct(e + "IBBHQQ"),
            crc_word=struct.Struct(e + "I"),
            version_crc=struct.Struct(e + "Q"),
            bits=64,
        )
    return Layout(
        ehdr=struct.Struct(e + "16xHHIIIIIHHHHHH"),
        shdr=struct.Struct(e + "IIIIIIIIII"),
        shentsize=40,
        sym=struct.Struct(e + "IIIBBH"),
        crc_word=struct.Struct(e + "I"),
        version_crc=struct.Struct(e + "I"),
        bits=32,
    )


_LAYOUTS = {(c, d): _layout(c, d) for c in (1, 2) for d in (1, 2)}


@dataclass(frozen=True)
class Section:
    name: bytes
    index: int
    type: int
    flags: int
    offset: int
    size: int
    header_offset: int  # file offset of this section's header (modprobe --force patches it)


class ElfModule:
    """The sections of one module image that depmod, modprobe and modinfo need."""

    __slots__ = ("data", "path", "layout", "machine", "sections", "_by_name", "big_endian")

    def __init__(self, data: bytes, path: Optional[str] = None) -> None:
        self.data = data
        self.path = path
        if len(data) < 16:
            # kmod: an empty file fails with EINVAL, a short one with ENOEXEC.
            raise ElfError(
                f"file too short for an ELF header ({len(data)} bytes)", path,
                "Invalid argument" if not data else "Exec format error")
        if data[:4] != ELF_MAGIC:
            raise ElfError("not an ELF file (bad magic)", path)
        key = (data[4], data[5])
        if key not in _LAYOUTS:
            raise ElfError(f"unsupported ELF class/data ({data[4]}, {data[5]})", path,
                           "Invalid argument")
        layout = self.layout = _LAYOUTS[key]
        self.big_endian = data[5] == ELFDATA2MSB
        if len(data) < layout.ehdr.size:
            raise ElfError("truncated ELF header", path)
        (_type, machine, _version, _entry, _phoff, shoff, _flags, _ehsize, _phentsize, _phnum,
         shentsize, shnum, shstrndx) = layout.ehdr.unpack_from(data, 0)
        self.machine = machine
        if shentsize != layout.shentsize:
            raise ElfError(f"section header size {shentsize}, expected {layout.shentsize}", path)
        if shoff + shnum * shentsize > len(data) or shoff == 0 or shnum == 0:
            raise ElfError(
                f"section headers at offset {shoff} ({shnum} x {shentsize} bytes) lie outside "
                f"the file ({len(data)} bytes)", path)
        if shstrndx >= shnum:
            raise ElfError(f"section name table index {shstrndx} >= {shnum} sections", path)
        raw = []
        shdr = layout.shdr
        for i in range(shnum):
            off = shoff + i * shentsize
            name, stype, flags, _addr, offset, size = shdr.unpack_from(data, off)[:6]
            raw.append((name, stype, flags, offset, size, off))
        _n, _t, _f, str_off, str_size, _o = raw[shstrndx]
        self._check_range(str_off, str_size, "section name table")
        if str_size == 0 or data[str_off + str_size - 1] != 0:
            raise ElfError("section name table is empty or not NUL-terminated", path)
        self.sections: list[Section] = []
        by_name: dict[bytes, Section] = {}
        for i, (name, stype, flags, offset, size, hoff) in enumerate(raw):
            if name >= str_size:
                raise ElfError(f"section {i} name offset {name} outside the name table", path)
            end = data.index(b"\0", str_off + name)
            sname = data[str_off + name:end]
            sec = Section(sname, i, stype, flags, offset, size, hoff)
            self.sections.append(sec)
            # libkmod scans indices 1..n-1 and takes the first match.
            if i and sname not in by_name:
                by_name[sname] = sec
        self._by_name = by_name

    def _check_range(self, offset: int, size: int, what: str) -> None:
        if offset + size > len(self.data) or offset < 0 or size < 0:
            raise ElfError(
                f"{what} at offset {offset} (+{size} bytes) lies outside the file "
                f"({len(self.data)} bytes)", self.path)

    def section(self, name: bytes) -> Optional[Section]:
        """The first section called ``name`` (index >= 1), or None."""
        return self._by_name.get(name)

    def section_data(self, name: bytes) -> Optional[bytes]:
        """Contents of section ``name``, bounds-checked; None when absent or SHT_NOBITS."""
        sec = self._by_name.get(name)
        if sec is None:
            return None
        if sec.type == 8:  # SHT_NOBITS occupies no file space
            return b""
        self._check_range(sec.offset, sec.size, f"section {name.decode(errors='replace')}")
        return self.data[sec.offset:sec.offset + sec.size]

    # -- .modinfo ---------------------------------------------------------------------------
    def modinfo(self) -> list[tuple[bytes, bytes]]:
        """``.modinfo`` as (key, value) pairs in file order (KMOD_NOTES §6.5)."""
        data = self.section_data(b".modinfo")
        if not data:
            return []
        return parse_modinfo(data)

    # -- symbols ----------------------------------------------------------------------------
    def _symtab(self) -> tuple[int, int, int, int]:
        """(symtab offset, count, strtab offset, strtab size); raises if unusable."""
        sym = self._by_name.get(b".symtab")
        strtab = self._by_name.get(b".strtab")
        if sym is None or strtab is None:
            raise ElfError("no .symtab/.strtab section", self.path, "No such file or directory")
        entsize = self.layout.sym.size
        if sym.size % entsize:
            raise ElfError(f".symtab size {sym.size} is not a multiple of {entsize}", self.path,
                           "Invalid argument")
        self._check_range(sym.offset, sym.size, "section .symtab")
        self._check_range(strtab.offset, strtab.size, "section .strtab")
        return sym.offset, sym.size // entsize, strtab.offset, strtab.size

    def _string(self, stroff: int, strsize: int, name: int) -> bytes:
        if name >= strsize:
            raise ElfError(f"symbol name offset {name} outside .strtab ({strsize} bytes)",
                           self.path)
        data = self.data
        end = data.find(b"\0", stroff + name, stroff + strsize)
        if end < 0:
            end = stroff + strsize
        return data[stroff + name:end]

    def exported_symbols(self) -> list[tuple[bytes, int]]:
        """Exported (name, crc) pairs as ``kmod_elf_get_symbols`` finds them (KMOD_NOTES §6.3).

        Primary source: every ``__crc_NAME`` symbol in ``.symtab``; the CRC is the symbol value
        for SHN_UNDEF/SHN_ABS, else the 32-bit word at that offset in its section. Fallback when
        there are none (CONFIG_MODVERSIONS=n): the NUL-separated ``__ksymtab_strings`` with CRC 0.
        """
        out: list[tuple[bytes, int]] = []
        try:
            symoff, count, stroff, strsize = self._symtab()
        except ElfError:
            count = 0
        if count:
            data = self.data
            lay = self.layout
            startswith = data.startswith
            iswide = lay.bits == 64
            syms = lay.sym.iter_unpack(data[symoff:symoff + count * lay.sym.size])
            next(syms)  # index 0 is the null symbol
            for ent in syms:
                if iswide:
                    name, _info, _other, shndx, value, _size = ent
                else:
                    name, value, _size, _info, _other, shndx = ent
                if not startswith(b"__crc_", stroff + name) or name >= strsize:
                    continue
                sym = self._string(stroff, strsize, name)[6:]
                if shndx in (SHN_UNDEF, SHN_ABS):
                    crc = value
                else:
                    crc = self._section_word(shndx, value)
                out.append((sym, crc))
        if out:
            return out
        strings = self.section_data(b"__ksymtab_strings")
        if not strings:
            return []
        return [(s, 0) for s in strings.split(b"\0") if s]

    def _section_word(self, index: int, offset: int) -> int:
        """The u32 at ``offset`` in section ``index``; all-ones when out of range (as kmod)."""
        if index >= len(self.sections):
            return 0xFFFFFFFF
        sec = self.sections[index]
        if offset + 4 > sec.size:
            return 0xFFFFFFFF
        pos = sec.offset + offset
        if pos + 4 > len(self.data):
            return 0xFFFFFFFF
        return int(self.layout.crc_word.unpack_from(self.data, pos)[0])

    def versions(self) -> list[tuple[bytes, int]]:
        """``__versions`` as (name, crc) records; [] when absent or not a multiple of 64."""
        data = self.section_data(b"__versions")
        if not data or len(data) % VERSIONS_RECORD:
            return []
        crcfmt = self.layout.version_crc
        width = crcfmt.size
        out = []
        for pos in range(0, len(data), VERSIONS_RECORD):
            crc = crcfmt.unpack_from(data, pos)[0]
            raw = data[pos + width:pos + VERSIONS_RECORD]
            nul = raw.find(b"\0")
            out.append((raw if nul < 0 else raw[:nul], crc))
        return out

    def undefined_symbols(self) -> list[tuple[bytes, bool, int]]:
        """Required (name, weak, crc) as ``kmod_elf_get_dependency_symbols`` lists them.

        Undefined ``.symtab`` entries in table order, each with the CRC of the first
        ``__versions`` record of that name; then ``__versions`` records that matched no
        undefined name (e.g. ``module_layout``), in section order (KMOD_NOTES §6.4).
        """
        symoff, count, stroff, strsize = self._symtab()
        versions = self.versions()
        first: dict[bytes, int] = {}
        for i, (vname, _crc) in enumerate(versions):
            first.setdefault(vname, i)
        used: set[int] = set()
        lay = self.layout
        sparc = self.machine in (EM_SPARC, EM_SPARCV9)
        iswide = lay.bits == 64
        out: list[tuple[bytes, bool, int]] = []
        string = self._string
        syms = lay.sym.iter_unpack(self.data[symoff:symoff + count * lay.sym.size])
        next(syms, None)
        for ent in syms:
            if iswide:
                name, info, _other, shndx, _value, _size = ent
            else:
                name, _value, _size, info, _other, shndx = ent
            if shndx != SHN_UNDEF or name == 0:
                continue
            if sparc and info & 0xF == STT_REGISTER:
                continue
            sym = string(stroff, strsize, name)
            if not sym:
                continue
            crc = 0
            vi = first.get(sym)
            if vi is not None:
                crc = versions[vi][1]
                used.add(vi)
            out.append((sym, info >> 4 == STB_WEAK, crc))
        for i, (vname, crc) in enumerate(versions):
            if i not in used:
                out.append((vname, False, crc))
        return out

