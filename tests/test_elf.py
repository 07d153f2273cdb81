"""The ELF reader and per-module extraction, on synthetic modules of all four ELF variants."""

from __future__ import annotations

import gc
import io
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection
from kofactory import EM_SPARCV9, SHN_ABS, STB_GLOBAL, STT_REGISTER, VARIANTS, Module

from moddep.cache import PackIndex
from moddep.compression import compress, decompress, detect
from moddep.elf import ElfModule
from moddep.errors import CompressionError, ElfError
from moddep.extract import parse_image, read_keyed, read_module
from moddep.modinfo import alias_normalize, modname_normalize, parse_modinfo, path_to_modname

variants = pytest.mark.parametrize("bits,big", VARIANTS)


@variants
def test_exports_from_crc_symbols(bits: int, big: bool) -> None:
    m = Module(bits=bits, big=big, exports=[(b"foo", 0x1234), (b"bar", 0xDEADBEEF)])
    assert ElfModule(m.build()).exported_symbols() == ([b"foo", b"bar"], [0x1234, 0xDEADBEEF])


@variants
def test_crc_of_absolute_symbol_is_its_value(bits: int, big: bool) -> None:
    m = Module(bits=bits, big=big, exports=[(b"foo", 0x55AA)], crc_mode="abs")
    assert ElfModule(m.build()).exported_symbols() == ([b"foo"], [0x55AA])


@variants
def test_ksymtab_strings_fallback_without_crcs(bits: int, big: bool) -> None:
    m = Module(bits=bits, big=big, ksymtab_strings=[b"", b"alpha", b"beta", b"NS"])
    assert ElfModule(m.build()).exported_symbols() == ([b"alpha", b"beta", b"NS"], [0, 0, 0])


def test_crc_symbols_win_over_ksymtab_strings() -> None:
    m = Module(exports=[(b"foo", 1)], ksymtab_strings=[b"other"])
    assert ElfModule(m.build()).exported_symbols()[0] == [b"foo"]


def test_crc_out_of_section_is_all_ones() -> None:
    m = Module(raw_symbols=[(b"__crc_far", STB_GLOBAL << 4, 3, 4096)])  # beyond __kcrctab
    assert ElfModule(m.build()).exported_symbols() == ([b"far"], [0xFFFFFFFF])


@variants
def test_crcs_read_word_by_word_when_not_all_whole_words_in_one_section(bits: int,
                                                                         big: bool) -> None:
    """CRC words are read in bulk only when every __crc_ symbol points at a whole word of
    one section; otherwise each is read on its own (a misaligned word, one past the end, one
    in another section, an absolute value): same results either way."""
    m = Module(bits=bits, big=big, exports=[(b"a", 0x11223344), (b"b", 0x55667788)])
    image = m.build()
    elf = ElfModule(image)
    kcrctab = elf.section_header(b"__kcrctab")[0]
    data = elf.section_data(b"__kcrctab")
    endian = "big" if big else "little"

    def word(off: int) -> int:
        return int.from_bytes(data[off:off + 4], endian) if off + 4 <= len(data) else 0xFFFFFFFF

    cases = {
        "aligned": [0, 4],
        "misaligned": [0, 2],
        "past the end": [4, 8],
    }
    for what, offsets in cases.items():
        raw = [(b"__crc_s%d" % i, STB_GLOBAL << 4, kcrctab, off) for i, off in enumerate(offsets)]
        got = ElfModule(Module(bits=bits, big=big, exports=[(b"a", 0x11223344),
                                                            (b"b", 0x55667788)],
                               raw_symbols=raw).build()).exported_symbols()
        assert got[1][-2:] == [word(off) for off in offsets], what
    mixed = [(b"__crc_x", STB_GLOBAL << 4, kcrctab, 4), (b"__crc_y", STB_GLOBAL << 4, SHN_ABS, 9)]
    got = ElfModule(Module(bits=bits, big=big, exports=[(b"a", 0x11223344), (b"b", 0x55667788)],
                           raw_symbols=mixed).build()).exported_symbols()
    assert got == ([b"a", b"b", b"x", b"y"], [0x11223344, 0x55667788, 0x55667788, 9])


def _expected_undefined(und: list[tuple[bytes, bool]], versions: list[tuple[bytes, int]],
                        ) -> tuple[list[bytes], bytes, list[int]]:
    """The rule, plainly: symtab order, each with the CRC of the first record of its name (0
    without one); then every record not the first of a name some symbol has, in order."""
    first: dict[bytes, int] = {}
    for k, (n, _crc) in enumerate(versions):
        first.setdefault(n, k)
    names = [n for n, _w in und]
    used = {first[n] for n in names if n in first}
    extra = [k for k in range(len(versions)) if k not in used]
    return (names + [versions[k][0] for k in extra],
            bytes(int(w) for _n, w in und) + bytes(len(extra)),
            [versions[first[n]][1] if n in first else 0 for n in names]
            + [versions[k][1] for k in extra])


@variants
@pytest.mark.parametrize("und,versions", [
    # every name has one record, extras before, between and after them
    ([(b"a", False), (b"b", True), (b"c", False)],
     [(b"x", 1), (b"c", 2), (b"y", 3), (b"a", 4), (b"b", 5), (b"z", 6)]),
    # a name without a record
    ([(b"a", False), (b"nover", False), (b"b", False)], [(b"b", 7), (b"a", 8), (b"x", 9)]),
    # a name twice in .symtab
    ([(b"a", False), (b"b", False), (b"a", True)], [(b"a", 1), (b"b", 2), (b"m", 3)]),
    # a record twice
    ([(b"a", False), (b"b", False)], [(b"b", 1), (b"a", 2), (b"b", 3)]),
    # no name matches
    ([(b"a", False)], [(b"x", 1), (b"y", 2)]),
])
def test_undefined_symbols_match_versions_by_the_rule(bits: int, big: bool,
                                                      und: list[tuple[bytes, bool]],
                                                      versions: list[tuple[bytes, int]]) -> None:
    m = Module(bits=bits, big=big, undefined=und, versions=versions)
    names, weak, crcs = ElfModule(m.build()).undefined_symbols()
    assert (names, weak, crcs) == _expected_undefined(und, versions)


@variants
def test_undefined_symbols_order_weak_and_versions(bits: int, big: bool) -> None:
    m = Module(bits=bits, big=big, undefined=[(b"printk", False), (b"maybe", True),
                                              (b"kfree", False)],
               versions=[(b"module_layout", 7), (b"kfree", 3), (b"printk", 9), (b"kfree", 4)])
    names, weak, crcs = ElfModule(m.build()).undefined_symbols()
    # symtab order first with the first matching __versions CRC, then unmatched records
    assert names == [b"printk", b"maybe", b"kfree", b"module_layout", b"kfree"]
    assert weak == b"\x00\x01\x00\x00\x00"
    assert crcs == [9, 0, 3, 7, 4]


def test_sparc_register_symbols_are_skipped() -> None:
    m = Module(machine=EM_SPARCV9, undefined=[(b"printk", False)],
               raw_symbols=[(b"%g2", (STB_GLOBAL << 4) | STT_REGISTER, 0, 0)])
    assert ElfModule(m.build()).undefined_symbols()[0] == [b"printk"]


def test_versions_name_filling_whole_field() -> None:
    long = b"x" * 56
    m = Module(versions=[(long, 1)], undefined=[])
    assert ElfModule(m.build()).versions() == ([long], [1])


@variants
def test_modinfo_split_on_nul_runs(bits: int, big: bool) -> None:
    raw = b"\0\0alias=pci:v*\0\0\0softdep=pre: a\0noequals\0depends=\0last=x"
    m = Module(bits=bits, big=big, modinfo_raw=raw)
    assert ElfModule(m.build()).modinfo() == [
        (b"alias", b"pci:v*"), (b"softdep", b"pre: a"), (b"noequals", b""), (b"depends", b""),
        (b"last", b"x")]
    assert parse_image(m.build()).values(b"alias") == [b"pci:v*"]


@variants
def test_matches_pyelftools(bits: int, big: bool) -> None:
    m = Module(bits=bits, big=big, exports=[(b"e1", 5)], undefined=[(b"u1", False), (b"u2", True)],
               defined=[b"local_fn"])
    data = m.build()
    elf = ELFFile(io.BytesIO(data))
    symtab = elf.get_section_by_name(".symtab")
    assert isinstance(symtab, SymbolTableSection)
    undef = [s.name.encode() for s in symtab.iter_symbols()
             if s["st_shndx"] == "SHN_UNDEF" and s.name]
    assert ElfModule(data).undefined_symbols()[0] == undef
    assert ElfModule(data).modinfo_raw() == elf.get_section_by_name(".modinfo").data()


@pytest.mark.parametrize("data,errno_text", [
    (b"", "Invalid argument"),
    (b"\x7fEL", "Invalid argument"),
    (b"MZ" + b"\0" * 100, "Exec format error"),
    (b"\x7fELF\x03\x01" + b"\0" * 100, "Invalid argument"),
])
def test_bad_headers(data: bytes, errno_text: str) -> None:
    with pytest.raises(ElfError) as e:
        ElfModule(data, "x.ko")
    assert e.value.errno_text == errno_text or len(data) < 16
    assert "x.ko" in str(e.value)


def test_truncated_at_every_length_never_crashes() -> None:
    data = Module(exports=[(b"a", 1)], undefined=[(b"b", False)],
                  modinfo=[(b"alias", b"x")]).build()
    for n in range(0, len(data), 7):
        md = parse_image(data[:n], "t.ko")
        assert md.error is not None or md.modinfo_raw is not None


def test_section_headers_outside_file() -> None:
    data = bytearray(Module().build())
    data[0x28:0x30] = (len(data) + 100).to_bytes(8, "little")  # e_shoff
    with pytest.raises(ElfError, match="outside the file"):
        ElfModule(bytes(data), "bad.ko")


def test_read_module_reports_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert read_module(str(tmp_path / "none.ko").encode()).error == "No such file or directory"


@pytest.mark.parametrize("codec", ["xz", "zstd", "gzip"])
def test_compressed_by_magic(codec: str) -> None:
    data = Module(exports=[(b"z", 2)]).build()
    packed = compress(data, codec)
    assert detect(packed) is not None and detect(packed).name == codec  # type: ignore[union-attr]
    assert decompress(packed) == data
    with pytest.raises(CompressionError, match="truncated|does not decompress"):
        decompress(packed[: len(packed) // 2], "m.ko")
    with pytest.raises(CompressionError, match="beyond the limit"):
        decompress(packed, "m.ko", limit=100)


def test_unknown_content_is_read_as_is() -> None:
    assert decompress(b"\x7fELFplain") == b"\x7fELFplain"


def test_name_rules() -> None:
    assert modname_normalize(b"foo-bar.ko.xz") == b"foo_bar"
    assert path_to_modname(b"kernel/a/intel-uncore.ko") == b"intel_uncore"
    assert alias_normalize(b"pci:v-[a-b]-x") == b"pci:v_[a-b]_x"
    assert alias_normalize(b"a]b") is None and alias_normalize(b"a[b") is None
    assert parse_modinfo(b"a=1=2\0\0b") == [(b"a", b"1=2"), (b"b", b"")]


def test_shn_abs_constant() -> None:
    assert SHN_ABS == 0xFFF1


def test_reading_a_module_leaves_no_reference_cycle(tmp_path: Path) -> None:
    """depmod runs with the cyclic collector off, so an ElfModule (or a FileImage) caught in
    a cycle would keep every decompressed image alive until exit."""
    image = Module(exports=[(b"e", 1)], undefined=[(b"u", False)], versions=[(b"u", 2)],
                   modinfo=[(b"alias", b"x")]).build()
    path = tmp_path / "m.ko"
    path.write_bytes(image)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            elf = ElfModule(image)
            elf.exported_symbols(), elf.undefined_symbols(), elf.modinfo_raw()
            del elf
            read_keyed(bytes(path), known=PackIndex())
            read_module(bytes(path))
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_module_data_crc_words_keep_any_width() -> None:
    """CRCs travel as 32-bit words when they fit (the usual case), else as 64-bit ones; both
    unpack to the same values, also after pickling."""
    import pickle

    from moddep.model import ModuleData

    small = ModuleData.build(undefined=[b"a", b"b"], undefined_weak=b"\0\1",
                             undefined_crcs=[0xDEADBEEF, 7])
    wide = ModuleData.build(undefined=[b"a", b"b"], undefined_weak=b"\0\1",
                            undefined_crcs=[0x1DEADBEEF, 7])
    assert len(small.undefined_crc_words) == 8 and len(wide.undefined_crc_words) == 16
    for d, crcs in ((small, (0xDEADBEEF, 7)), (wide, (0x1DEADBEEF, 7))):
        assert d.undefined_crcs == crcs
        assert pickle.loads(pickle.dumps(d)).undefined_crcs == crcs
    assert ModuleData.build().undefined_crcs == ()


def test_module_data_values_follow_modinfo_strings() -> None:
    """values(key) is every string starting ``key=`` (from the start or after a NUL, up to
    the next NUL); a string without ``=`` has no value."""
    import re

    from moddep.model import ModuleData

    blobs = [b"", b"alias=a", b"\0\0alias=a\0\0alias=\0", b"x=alias=no\0aliasx=no\0alias=b=c",
             b"alias=first\0license=GPL\0alias=second", b"alias", b"alias=a\0alias",
             b"softdep=pre: x\0alias=y\0softdep=post: z\0"]
    for raw in blobs:
        d = ModuleData(modinfo_raw=raw)
        for key in (b"alias", b"softdep", b"license", b"x"):
            pattern = b"(?:^|\\0)" + re.escape(key) + b"=([^\\0]*)"
            assert d.values(key) == re.findall(pattern, raw), (raw, key)


@variants
def test_section_name_table_read_with_or_apart_from_the_header_table(bits: int, big: bool,
                                                                     tmp_path: Path) -> None:
    """The section name table is taken from the read of the section header table when it
    lies just before it, else read on its own: the same sections either way."""
    image = Module(bits=bits, big=big, exports=[(b"foo", 1)], modinfo=[(b"alias", b"x")],
                   undefined=[(b"printk", False)]).build()
    near = ElfModule(image)
    endian = "big" if big else "little"
    at, width = (0x28, 8) if bits == 64 else (0x20, 4)  # e_shoff
    shoff = int.from_bytes(image[at:at + width], endian)
    table = image[shoff:shoff + near.section_count * (64 if bits == 64 else 40)]
    moved = bytearray(image + bytes(5000) + table)
    moved[at:at + width] = (len(image) + 5000).to_bytes(width, endian)
    far = ElfModule(bytes(moved))
    for elf in (near, far):
        assert elf.section_names() == near.section_names()
        assert elf.exported_symbols() == ([b"foo"], [1])
        assert elf.modinfo_raw() == near.modinfo_raw()
    str_off, str_size = near._shstr_range
    assert 0 <= shoff - (str_off + str_size) < 64  # (the usual layout: taken with the table)
    for path_image in (image, bytes(moved)):
        assert parse_image(path_image) == parse_image(image)
        on_disk = tmp_path / "m.ko"
        on_disk.write_bytes(path_image)  # read through FileImage, keyed for the cache
        key, data, _layout, _how, _ident = read_keyed(bytes(on_disk), known=PackIndex())
        assert data == parse_image(image) and len(key) == 32
