"""A small factory of synthetic kernel-module ELF files (ELF32/64, little/big endian).

Declarative structures (construct) build the headers and tables; the factory lays out just
the sections depmod reads: .modinfo, __versions, __kcrctab, __ksymtab_strings, .symtab,
.strtab, .shstrtab. Real modules come from Debian packages; these are for edge cases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from construct import (  # noqa: F401
    Bytes,
    Int8ul,
    Int16sb,
    Int16ub,
    Int16ul,
    Int32ub,
    Int32ul,
    Int64ub,
    Int64ul,
    Padding,
    Struct,
    Switch,
    this,
)

EM_X86_64, EM_386, EM_AARCH64, EM_ARM, EM_S390, EM_PPC64, EM_MIPS, EM_SPARCV9 = (
    62, 3, 183, 40, 22, 21, 8, 43)
SHN_ABS = 0xFFF1
STB_GLOBAL, STB_WEAK = 1, 2
STT_FUNC, STT_OBJECT, STT_REGISTER = 2, 1, 13


def _types(bits: int, big: bool) -> dict:
    u16 = Int16ub if big else Int16ul
    u32 = Int32ub if big else Int32ul
    u64 = Int64ub if big else Int64ul
    word = u64 if bits == 64 else u32
    ehdr = Struct(
        "ident" / Bytes(16), "type" / u16, "machine" / u16, "version" / u32, "entry" / word,
        "phoff" / word, "shoff" / word, "flags" / u32, "ehsize" / u16, "phentsize" / u16,
        "phnum" / u16, "shentsize" / u16, "shnum" / u16, "shstrndx" / u16)
    shdr = Struct(
        "name" / u32, "type" / u32, "flags" / word, "addr" / word, "offset" / word,
        "size" / word, "link" / u32, "info" / u32, "addralign" / word, "entsize" / word)
    if bits == 64:
        sym = Struct("name" / u32, "info" / Int8ul, "other" / Int8ul, "shndx" / u16,
                     "value" / u64, "size" / u64)
    else:
        sym = Struct("name" / u32, "value" / u32, "size" / u32, "info" / Int8ul,
                     "other" / Int8ul, "shndx" / u16)
    return {"ehdr": ehdr, "shdr": shdr, "sym": sym, "u32": u32, "word": word}


@dataclass
class Module:
    """What to put in a synthetic module; ``build()`` gives its bytes."""

    bits: int = 64
    big: bool = False
    machine: int = EM_X86_64
    modinfo: list[tuple[bytes, bytes]] = field(default_factory=list)
    exports: list[tuple[bytes, int]] = field(default_factory=list)  # __crc_ symbols
    crc_mode: str = "kcrctab"  # kcrctab: CRC stored in __kcrctab; abs: SHN_ABS value
    ksymtab_strings: Optional[list[bytes]] = None
    undefined: list[tuple[bytes, bool]] = field(default_factory=list)  # (name, weak)
    versions: list[tuple[bytes, int]] = field(default_factory=list)
    defined: list[bytes] = field(default_factory=list)  # extra defined symbols
    raw_symbols: list[tuple[bytes, int, int, int]] = field(default_factory=list)
    # (name, info, shndx, value) appended verbatim
    no_symtab: bool = False
    modinfo_raw: Optional[bytes] = None
    text: bytes = b""  # a .text section (bytes depmod never reads), when non-empty

    def build(self) -> bytes:
        t = _types(self.bits, self.big)
        shstr = bytearray(b"\0")
        strtab = bytearray(b"\0")

        def sname(s: bytes) -> int:
            off = len(shstr)
            shstr.extend(s + b"\0")
            return off

        def symname(s: bytes) -> int:
            off = len(strtab)
            strtab.extend(s + b"\0")
            return off

        sections: list[tuple[bytes, int, bytes]] = []  # (name, type, data)
        modinfo = self.modinfo_raw
        if modinfo is None:
            modinfo = b"".join(k + b"=" + v + b"\0" for k, v in self.modinfo)
        if self.text:
            sections.append((b".text", 1, self.text))
        sections.append((b".modinfo", 1, modinfo))
        if self.versions:
            rec = bytearray()
            for name, crc in self.versions:
                width = 8 if self.bits == 64 else 4
                rec += crc.to_bytes(width, "big" if self.big else "little")
                rec += name.ljust(64 - width, b"\0")[:64 - width]
            sections.append((b"__versions", 1, bytes(rec)))
        kcrc = b"".join(t["u32"].build(crc) for _n, crc in self.exports)
        sections.append((b"__kcrctab", 1, kcrc))
        if self.ksymtab_strings is not None:
            sections.append((b"__ksymtab_strings", 1,
                             b"".join(s + b"\0" for s in self.ksymtab_strings)))
        # section indices: 0 null, then the list above, then .symtab .strtab .shstrtab
        index = {name: i + 1 for i, (name, _t, _d) in enumerate(sections)}
        syms = [t["sym"].build(dict(name=0, info=0, other=0, shndx=0, value=0, size=0))]

        def sym(name: bytes, info: int, shndx: int, value: int) -> None:
            syms.append(t["sym"].build(dict(name=symname(name), info=info, other=0,
                                            shndx=shndx, value=value, size=0)))

        for i, (name, crc) in enumerate(self.exports):
            if self.crc_mode == "abs":
                sym(b"__crc_" + name, (STB_GLOBAL << 4), SHN_ABS, crc)
            else:
                sym(b"__crc_" + name, (STB_GLOBAL << 4) | STT_OBJECT, index[b"__kcrctab"], 4 * i)
        for name in self.defined:
            sym(name, (STB_GLOBAL << 4) | STT_FUNC, index[b".modinfo"], 0)
        for name, weak in self.undefined:
            sym(name, ((STB_WEAK if weak else STB_GLOBAL) << 4), 0, 0)
        for name, info, shndx, value in self.raw_symbols:
            sym(name, info, shndx, value)
        if not self.no_symtab:
            sections.append((b".symtab", 2, b"".join(syms)))
            sections.append((b".strtab", 3, bytes(strtab)))
        shstrtab_index = len(sections) + 1
        names = [sname(n) for n, _t, _d in sections]
        shstr_name = sname(b".shstrtab")
        sections.append((b".shstrtab", 3, b""))  # placeholder, data set below
        body = bytearray()
        ehsize = t["ehdr"].sizeof()
        offsets = []
        for i, (_name, _typ, data) in enumerate(sections):
            if i == len(sections) - 1:
                data = bytes(shstr)
            offsets.append(ehsize + len(body))
            body += data
            while len(body) % 8:
                body += b"\0"
        shoff = ehsize + len(body)
        shdrs = [t["shdr"].build(dict(name=0, type=0, flags=0, addr=0, offset=0, size=0, link=0,
                                      info=0, addralign=0, entsize=0))]
        for i, (_name, typ, data) in enumerate(sections):
            size = len(bytes(shstr)) if i == len(sections) - 1 else len(data)
            nm = shstr_name if i == len(sections) - 1 else names[i]
            entsize = t["sym"].sizeof() if typ == 2 else 0
            link = i + 2 if typ == 2 else 0  # .symtab links to the .strtab right after it
            shdrs.append(t["shdr"].build(dict(name=nm, type=typ, flags=0, addr=0,
                                              offset=offsets[i], size=size, link=link, info=0,
                                              addralign=1, entsize=entsize)))
        ident = b"\x7fELF" + bytes([2 if self.bits == 64 else 1, 2 if self.big else 1, 1])
        ident = ident.ljust(16, b"\0")
        ehdr = t["ehdr"].build(dict(
            ident=ident, type=1, machine=self.machine, version=1, entry=0, phoff=0, shoff=shoff,
            flags=0, ehsize=ehsize, phentsize=0, phnum=0, shentsize=t["shdr"].sizeof(),
            shnum=len(shdrs), shstrndx=shstrtab_index))
        return bytes(ehdr) + bytes(body) + b"".join(shdrs)


VARIANTS = [(64, False), (64, True), (32, False), (32, True)]
