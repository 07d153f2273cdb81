"""Hypothesis strategies for the fuzz targets: valid seeds, then structure-aware mutations.

Seeds are valid inputs (synthetic modules from ``tests/kofactory.py`` in all four ELF
variants, small real modules from ``sample_trees/``, kmod's own ``.bin`` indexes, compressed
streams of each codec). Mutations are the classic ones (bit flips, byte overwrites, truncation,
appended bytes) plus field overwrites that know the format: ELF header and section header
fields (``e_shoff``, ``e_shnum``, ``e_shstrndx``, ``sh_name``, ``sh_offset``, ``sh_size``...),
symbol fields (``st_name``, ``st_shndx``, ``st_value``, ``st_info``), ``__versions`` CRC words,
index node references, with values chosen at the edges (0, 1, all ones, the file size +-1,
huge counts).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hypothesis import strategies as st
from kofactory import EM_SPARCV9, EM_X86_64, STB_GLOBAL, VARIANTS, Module

from moddep.compression import compress
from moddep.elf import ELFCLASS64, ElfModule
from moddep.index.trie import encode

TOP = Path(__file__).resolve().parents[2]
SAMPLES = TOP / "sample_trees"


@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # bytes
    big: bool
    what: str


@dataclass(frozen=True)
class Seed:
    data: bytes
    fields: tuple[Field, ...]
    name: str


# --- mutations -----------------------------------------------------------------------------


def edge_values(size: int, length: int) -> list[int]:
    top = (1 << (8 * size)) - 1
    vals = [0, 1, 2, 3, 4, 7, 8, 12, 16, 24, 40, 64, 0x7F, 0x80, 0xFF, 0x100, 0xFFF0, 0xFFF1,
            0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1,
            1 << 63, top, top - 1, length - 1, length, length + 1, length // 2, length - 64]
    return sorted({v & top for v in vals if v >= 0})


@st.composite
def mutate(draw: st.DrawFn, seed: Seed, max_ops: int = 4) -> bytes:
    """``seed`` with 1..max_ops mutations applied in turn."""
    buf = bytearray(seed.data)
    for _ in range(draw(st.integers(1, max_ops))):
        kind = draw(st.sampled_from(
            ("flip", "byte", "field", "field", "field", "truncate", "append", "splice")
            if seed.fields else ("flip", "byte", "truncate", "append", "splice")))
        n = len(buf)
        if kind == "flip" and n:
            pos = draw(st.integers(0, n - 1))
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte" and n:
            pos = draw(st.integers(0, n - 1))
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos:pos + len(chunk)] = chunk
        elif kind == "field":
            f = draw(st.sampled_from(seed.fields))
            top = (1 << (8 * f.size)) - 1
            value = draw(st.one_of(st.sampled_from(edge_values(f.size, n)),
                                   st.integers(0, top)))
            if f.offset + f.size <= len(buf):
                buf[f.offset:f.offset + f.size] = value.to_bytes(
                    f.size, "big" if f.big else "little")
        elif kind == "truncate":
            del buf[draw(st.integers(0, n)):]
        elif kind == "append":
            buf += draw(st.binary(min_size=1, max_size=64))
        elif kind == "splice" and n:
            # copy a slice of the file elsewhere (duplicates headers, tables, names)
            a = draw(st.integers(0, n - 1))
            b = draw(st.integers(a, min(n, a + 256)))
            pos = draw(st.integers(0, n - 1))
            buf[pos:pos + (b - a)] = bytes(buf[a:b])
    return bytes(buf)


# --- ELF seeds -------------------------------------------------------------------------------

# (e_shoff, e_shentsize, e_shnum, e_shstrndx) offsets and sizes per class
_EHDR_FIELDS = {
    64: (("e_shoff", 0x28, 8), ("e_shentsize", 0x3A, 2), ("e_shnum", 0x3C, 2),
         ("e_shstrndx", 0x3E, 2), ("e_machine", 0x12, 2)),
    32: (("e_shoff", 0x20, 4), ("e_shentsize", 0x2E, 2), ("e_shnum", 0x30, 2),
         ("e_shstrndx", 0x32, 2), ("e_machine", 0x12, 2)),
}
_SHDR_FIELDS = {
    64: (("sh_name", 0, 4), ("sh_type", 4, 4), ("sh_flags", 8, 8), ("sh_offset", 24, 8),
         ("sh_size", 32, 8)),
    32: (("sh_name", 0, 4), ("sh_type", 4, 4), ("sh_flags", 8, 4), ("sh_offset", 16, 4),
         ("sh_size", 20, 4)),
}
_SYM_FIELDS = {
    64: (("st_name", 0, 4), ("st_info", 4, 1), ("st_shndx", 6, 2), ("st_value", 8, 8)),
    32: (("st_name", 0, 4), ("st_value", 4, 4), ("st_info", 12, 1), ("st_shndx", 14, 2)),
}


def elf_fields(data: bytes, max_symbols: int = 48) -> tuple[Field, ...]:
    """The interesting fields of a valid module image, located by reading it."""
    elf = ElfModule(data)
    bits = 64 if elf.elfclass == ELFCLASS64 else 32
    big = elf.big_endian
    out = [Field(off, size, big, name) for name, off, size in _EHDR_FIELDS[bits]]
    for i in range(elf.section_count):
        base = elf.section_header_offset(i)
        out += [Field(base + off, size, big, f"{name}[{i}]")
                for name, off, size in _SHDR_FIELDS[bits]]
    sym = elf.section_header(b".symtab")
    if sym is not None:
        entsize = 24 if bits == 64 else 16
        count = sym[4] // entsize
        step = max(1, count // max_symbols)
        for i in range(0, count, step):
            base = sym[3] + i * entsize
            out += [Field(base + off, size, big, f"{name}[{i}]")
                    for name, off, size in _SYM_FIELDS[bits]]
    ver = elf.section_header(b"__versions")
    if ver is not None:
        width = 8 if bits == 64 else 4
        for pos in range(ver[3], ver[3] + min(ver[4], 64 * 16), 64):
            out.append(Field(pos, width, big, "crc"))
            out.append(Field(pos + width, 8, big, "vname"))
    mi = elf.section_header(b".modinfo")
    if mi is not None and mi[4]:
        for pos in range(mi[3], mi[3] + mi[4], max(1, mi[4] // 8)):
            out.append(Field(pos, 1, big, "modinfo byte"))
    return tuple(out)


def synthetic_modules() -> list[tuple[str, bytes]]:
    out = []
    for bits, big in VARIANTS:
        tag = f"{bits}{'be' if big else 'le'}"
        out.append((f"full-{tag}", Module(
            bits=bits, big=big,
            modinfo=[(b"license", b"GPL"), (b"alias", b"pci:v00008086d*"), (b"depends", b"a,b"),
                     (b"softdep", b"pre: x post: y"), (b"vermagic", b"6.1.0 SMP")],
            exports=[(b"foo_fn", 0x12345678), (b"bar_fn", 0x9ABCDEF0)],
            undefined=[(b"printk", False), (b"weak_sym", True), (b"other_fn", False)],
            versions=[(b"module_layout", 0x1111), (b"printk", 0x2222), (b"extra", 0x3333)],
            defined=[b"local_fn"],
        ).build()))
        out.append((f"abs-{tag}", Module(
            bits=bits, big=big, exports=[(b"x", 1), (b"y", 2)], crc_mode="abs",
            ksymtab_strings=[b"x", b"y"], undefined=[(b"z", False)]).build()))
        out.append((f"strings-{tag}", Module(
            bits=bits, big=big, ksymtab_strings=[b"a", b"b", b"c"], modinfo=[(b"k", b"v")],
        ).build()))
    out.append(("sparc", Module(
        bits=64, big=True, machine=EM_SPARCV9, undefined=[(b"u", False)],
        raw_symbols=[(b"reg", (STB_GLOBAL << 4) | 13, 0, 0)]).build()))
    out.append(("nosymtab", Module(no_symtab=True, modinfo=[(b"a", b"b")]).build()))
    return out


def real_modules(count: int = 4) -> list[tuple[str, bytes]]:
    files = sorted(SAMPLES.glob("*/lib/modules/*/kernel/**/*.ko"), key=lambda p: p.stat().st_size)
    seen = set()
    out = []
    for p in files:
        if p.name in seen:
            continue
        seen.add(p.name)
        out.append((f"{p.parts[-6] if len(p.parts) > 6 else ''}:{p.name}", p.read_bytes()))
        if len(out) >= count:
            break
    return out


@cache
def elf_seeds() -> tuple[Seed, ...]:
    return tuple(Seed(data, elf_fields(data), name)
                 for name, data in synthetic_modules() + real_modules())


@st.composite
def mutated_elf(draw: st.DrawFn) -> bytes:
    return draw(mutate(draw(st.sampled_from(elf_seeds()))))


# Generated module contents: arbitrary names (NULs, blanks, high bytes), all variants.
_names = st.binary(min_size=0, max_size=10)


@st.composite
def generated_module(draw: st.DrawFn) -> bytes:
    bits, big = draw(st.sampled_from(VARIANTS))
    crc = st.integers(0, (1 << bits) - 1)
    m = Module(
        bits=bits, big=big,
        machine=draw(st.sampled_from((EM_X86_64, EM_SPARCV9))),
        modinfo=draw(st.lists(st.tuples(_names, _names), max_size=4)),
        exports=draw(st.lists(st.tuples(_names, st.integers(0, 0xFFFFFFFF)), max_size=4)),
        crc_mode=draw(st.sampled_from(("kcrctab", "abs"))),
        ksymtab_strings=draw(st.none() | st.lists(_names, max_size=4)),
        undefined=draw(st.lists(st.tuples(_names, st.booleans()), max_size=6)),
        versions=draw(st.lists(st.tuples(st.binary(max_size=70), crc), max_size=5)),
        defined=draw(st.lists(_names, max_size=2)),
        raw_symbols=draw(st.lists(st.tuples(
            _names, st.integers(0, 255), st.sampled_from((0, 1, 2, 0xFFF1, 0xFFFF, 500)),
            st.integers(0, (1 << bits) - 1)), max_size=3)),
        no_symtab=draw(st.booleans()),
    )
    return m.build()


# --- compressed streams ----------------------------------------------------------------------


@cache
def compressed_seeds() -> tuple[Seed, ...]:
    plain = [synthetic_modules()[0][1], b"", b"\0" * 4096, bytes(range(256)) * 8]
    out = []
    for codec in ("xz", "zstd", "gzip"):
        for i, p in enumerate(plain):
            data = compress(p, codec)
            # the container's header fields: magic, flags, sizes live in the first bytes
            fields = tuple(Field(o, 1, False, "header") for o in range(min(24, len(data))))
            fields += tuple(Field(len(data) - o, 1, False, "trailer")
                            for o in range(1, min(16, len(data)) + 1))
            out.append(Seed(data, fields, f"{codec}-{i}"))
    return tuple(out)


@st.composite
def mutated_stream(draw: st.DrawFn) -> bytes:
    seeds = compressed_seeds()
    kind = draw(st.sampled_from(("mutate", "mutate", "concat", "garbage", "truncate")))
    seed = draw(st.sampled_from(seeds))
    if kind == "mutate":
        return draw(mutate(seed))
    if kind == "concat":  # two streams, maybe of different codecs, back to back
        return seed.data + draw(st.sampled_from(seeds)).data
    if kind == "garbage":
        return seed.data + draw(st.binary(min_size=1, max_size=64))
    return seed.data[:draw(st.integers(0, max(0, len(seed.data) - 1)))]


# --- .bin indexes ----------------------------------------------------------------------------


def _index_fields(data: bytes) -> tuple[Field, ...]:
    """Every 4-byte word that looks like a node reference (offset within the file), plus the
    header words and some child-range bytes."""
    out = [Field(0, 4, True, "magic"), Field(4, 4, True, "version"), Field(8, 4, True, "root")]
    n = len(data)
    for pos in range(12, n - 3):
        (word,) = struct.unpack_from(">I", data, pos)
        off = word & 0x0FFFFFFF
        if word & 0xF0000000 and 12 <= off < n:
            out.append(Field(pos, 4, True, "ref"))
            if len(out) > 400:
                break
    return tuple(out)


@cache
def index_seeds() -> tuple[Seed, ...]:
    out = []
    for p in sorted(SAMPLES.glob("*/expected/*/modules.*.bin")):
        data = p.read_bytes()
        if len(data) <= 64 * 1024:
            out.append(Seed(data, _index_fields(data), f"{p.parts[-4]}/{p.parts[-2]}/{p.name}"))
    entries = [(b"ab", b"x", 0), (b"ac", b"y", 0), (b"ac", b"z", 1), (b"pci:v*d0001*", b"m", 2),
               (b"usb:v1234p*", b"n", 0), (b"a[bc]?", b"w", 0)]
    for layout in ("pre", "post"):
        data = encode(entries, layout)
        out.append(Seed(data, _index_fields(data), f"synthetic-{layout}"))
        empty = encode([], layout)
        out.append(Seed(empty, _index_fields(empty), f"empty-{layout}"))
    return tuple(out)


@st.composite
def mutated_index(draw: st.DrawFn) -> bytes:
    return draw(mutate(draw(st.sampled_from(index_seeds()))))


_key = st.binary(min_size=0, max_size=8).map(lambda b: bytes(c & 0x7F or 0x61 for c in b))


@st.composite
def encoded_index(draw: st.DrawFn) -> bytes:
    """A valid index of generated entries (wildcards included), maybe mutated."""
    entries = draw(st.lists(st.tuples(
        st.one_of(_key, st.sampled_from((b"*", b"?", b"[a-c]", b"x*y", b"[!a]*"))),
        _key, st.integers(0, 0xFFFFFFFF)), max_size=12))
    data = encode(entries, draw(st.sampled_from(("pre", "post"))))
    if draw(st.booleans()):
        return draw(mutate(Seed(data, _index_fields(data), "generated")))
    return data


# --- text configuration ----------------------------------------------------------------------

_SPECIAL = (b"*", b"built-in", b"external", b"updates", b"extra", b"6.1.0-50-amd64", b"6\\.1.*",
            b"(", b")", b"[", b"]", b"\\", b"[[:digit:]]+", b"a{99999999999}", b"((((a))))",
            b"(?<=x)", b"/lib/modules", b"../../..", b"pre:", b"post:", b"$CMDLINE_OPTS",
            b"$(touch x)", b"`id`", b";", b"|", b"'", b'"', b"a-b_c", b"foo[-_]bar", b"-",
            b"\xff\xfe", b"\0", b"#")
_token = st.one_of(st.sampled_from(_SPECIAL), st.binary(min_size=1, max_size=12))
_sep = st.sampled_from((b" ", b"\t", b"  ", b" \t ", b"\\\n", b""))


def config_lines(keywords: tuple[bytes, ...],
                 structured: tuple[st.SearchStrategy[bytes], ...] = ()) -> st.SearchStrategy[bytes]:
    """Files of lines: a keyword (or any token) and tokens with drawn separators, lines shaped
    like the grammar's own (``structured``), or random bytes."""
    generic = st.tuples(st.one_of(st.sampled_from(keywords), _token), st.lists(_token, max_size=6),
                        _sep, st.sampled_from((b"", b" ", b"\\", b"\t", b"#c"))).map(
        lambda t: t[0] + b"".join((t[2] or b" ") + tok for tok in t[1]) + t[3])
    line = st.one_of(generic, *structured) if structured else generic
    return st.lists(line, max_size=10).map(b"\n".join) | st.binary(max_size=256)


# POSIX-ish regular expressions for the kernel-version fields (kmod: regcomp REG_EXTENDED)
_RE_ATOMS = (b"6", b".", b"\\.", b"*", b"+", b"?", b"(", b")", b"|", b"[0-9]", b"[[:digit:]]",
             b"^", b"$", b"{2}", b"{1,3}", b"{99999999999}", b"[", b"]", b"\\", b"amd64", b"-")
_regex = st.one_of(
    st.lists(st.sampled_from(_RE_ATOMS), max_size=8).map(b"".join),
    st.sampled_from((3, 40)).map(lambda k: b"(" * k + b"6" + b")" * k))  # deeper: regressions
_word = st.sampled_from((b"dummy", b"tun", b"updates", b"extra", b"/lib/modules/extra",
                         b"../../..", b"/../../etc", b"built-in", b"external"))
_DEPMOD_STRUCTURED = (
    st.tuples(_word, _regex, _word).map(lambda t: b"override " + b" ".join(t)),
    st.tuples(_regex, _word).map(lambda t: b"external " + b" ".join(t)),
    st.lists(_word, max_size=4).map(lambda w: b" ".join([b"search", *w])),
)
DEPMOD_D = config_lines((b"search", b"override", b"external", b"exclude", b"include",
                         b"make_map_files", b"#"), _DEPMOD_STRUCTURED)
MODPROBE_D = config_lines((b"alias", b"blacklist", b"options", b"install", b"remove",
                           b"softdep", b"weakdep", b"include", b"config", b"#"))

@st.composite
def cmdline(draw: st.DrawFn) -> bytes:
    atoms = st.one_of(
        st.sampled_from((b"mod.param=1", b"a-b.c=d", b'"m.p=a b"', b'm.p="x y"', b"m.p",
                         b"modprobe.blacklist=a,b,c", b"modprobe.blacklist=", b"a.b.c=d",
                         b"=x", b".p=1", b'"', b"m.p=\"", b"quiet", b"root=/dev/vda",
                         b"m[.p=1", b"BOOT_IMAGE=/vmlinuz")),
        st.binary(min_size=1, max_size=12))
    words = draw(st.lists(atoms, max_size=10))
    seps = draw(st.lists(st.sampled_from((b" ", b"\t", b"\n", b"  ", b"")), min_size=len(words),
                         max_size=len(words)))
    return b"".join(s + w for s, w in zip(seps, words))


@st.composite
def kernel_symbols(draw: st.DrawFn) -> bytes:
    line = st.one_of(
        st.sampled_from((b"0x12345678\tsym\tvmlinux\tEXPORT_SYMBOL", b"zz sym vmlinux",
                         b"ffffffff81000000 T __ksymtab_foo", b"0 r __ksymtab_", b"x",
                         b"0x1\t_sym\tvmlinux", b"1 2")),
        st.binary(max_size=40))
    return b"\n".join(draw(st.lists(line, max_size=10)))

