"""The fuzz targets: one function of the raw input bytes per parser, and what it may raise.

A target exercises every public way its parser is used on untrusted input and checks a few
invariants (lengths that must agree, limits that must hold, and for ``__versions`` and the
undefined-symbol columns a plain record-by-record reference implementation). ``allowed`` is the
tuple of exceptions that are a correct answer to bad input; anything else is a bug. Targets
take bytes only, so every failing input can be kept as a file and replayed.
"""

from __future__ import annotations

import os
import struct
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

from moddep import depmod as depmod_pipeline
from moddep.compression import decompress, detect
from moddep.config import depmod_d
from moddep.config.files import logical_lines, tokens
from moddep.diag import Log
from moddep.elf import ELFCLASS64, EM_SPARC, EM_SPARCV9, SHN_UNDEF, STB_WEAK, ElfModule
from moddep.errors import CompressionError, ElfError, IndexFormatError, KernelError
from moddep.extract import parse_image, read_module
from moddep.index.trie import Index, encode
from moddep.model import ModuleData
from moddep.modinfo import alias_normalize, modname_normalize, parse_modinfo, path_to_modname

#: decompression bound used by the fuzz targets (small, so bombs are cheap to refuse)
LIMIT = 1 << 20
SECTIONS = (b".modinfo", b"__versions", b"__ksymtab_strings", b".symtab", b".strtab",
            b"__kcrctab", b".shstrtab", b"")


@dataclass(frozen=True)
class Target:
    fn: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]
    what: str


def _tmpdir() -> str:
    global _TMP
    if _TMP is None or not os.path.isdir(_TMP):
        _TMP = tempfile.mkdtemp(prefix="moddep-fuzz-")
    return _TMP


_TMP: Optional[str] = None


def _tmpfile(name: str, data: bytes) -> bytes:
    path = os.path.join(_tmpdir(), name)
    with open(path, "wb") as f:
        f.write(data)
    return os.fsencode(path)


# --- reference implementations (record by record, as kmod's C loops) -------------------------


def ref_versions(elf: ElfModule) -> tuple[list[bytes], list[int]]:
    data = elf.section_data(b"__versions")
    if not data or len(data) % 64:
        return [], []
    width = 8 if elf.elfclass == ELFCLASS64 else 4
    fmt = elf.endian + ("Q" if width == 8 else "I")
    names, crcs = [], []
    for pos in range(0, len(data), 64):
        crcs.append(struct.unpack_from(fmt, data, pos)[0])
        names.append(data[pos + width:pos + 64].split(b"\0", 1)[0])
    return names, crcs


def ref_undefined(elf: ElfModule) -> tuple[list[bytes], bytes, list[int]]:
    symtab, count, strtab = elf._symtab()
    wide = elf.elfclass == ELFCLASS64
    entsize = 24 if wide else 16
    names: list[bytes] = []
    weak = bytearray()
    for i in range(1, count):
        base = i * entsize
        if wide:
            st_name, st_info, _o, st_shndx = struct.unpack_from(elf.endian + "IBBH", symtab, base)
        else:
            st_name, = struct.unpack_from(elf.endian + "I", symtab, base)
            st_info, _o, st_shndx = struct.unpack_from(elf.endian + "BBH", symtab, base + 12)
        if st_shndx != SHN_UNDEF:
            continue
        if elf.machine in (EM_SPARC, EM_SPARCV9) and st_info & 0xF == 13:
            continue
        name = strtab[st_name:].split(b"\0", 1)[0] if st_name < len(strtab) else b""
        if not name:
            continue
        names.append(name)
        weak.append(1 if st_info >> 4 == STB_WEAK else 0)
    vnames, vcrcs = ref_versions(elf)
    crcs = []
    used = set()
    for name in names:
        k = vnames.index(name) if name in vnames else None
        crcs.append(0 if k is None else vcrcs[k])
        used.add(k)
    if vnames:
        for k in range(len(vnames)):
            if k not in used:
                names.append(vnames[k])
                crcs.append(vcrcs[k])
                weak.append(0)
    return names, bytes(weak), crcs


# --- ELF and extraction ----------------------------------------------------------------------


def elf_target(data: bytes) -> None:
    try:
        elf = ElfModule(data, "fuzz.ko")
    except ElfError:
        return
    elf.section_names()
    for name in SECTIONS:
        try:
            hdr = elf.section_header(name)
            elf.section_data(name)
            if hdr is not None:
                elf.section_header_offset(hdr[0])
        except ElfError:
            pass
    try:
        pairs = elf.modinfo()
        assert all(isinstance(k, bytes) and isinstance(v, bytes) for k, v in pairs)
    except ElfError:
        pass
    try:
        names, crcs = elf.exported_symbols()
        assert len(names) == len(crcs)
        assert all(0 <= c < 1 << 64 for c in crcs)
    except ElfError:
        pass
    try:
        vn, vc = elf.versions()
        assert (vn, vc) == ref_versions(elf), "__versions differs from the reference reader"
    except ElfError:
        pass
    try:
        un, weak, uc = elf.undefined_symbols()
    except ElfError:
        return
    assert len(un) == len(weak) == len(uc)
    assert set(weak) <= {0, 1}
    assert (un, weak, uc) == ref_undefined(elf), "undefined symbols differ from the reference"


def extract_target(data: bytes) -> None:
    md = parse_image(data, "fuzz.ko")  # must never raise
    assert isinstance(md, ModuleData)
    assert len(md.exports) == len(md.export_crcs)
    assert len(md.undefined) == len(md.undefined_weak) == len(md.undefined_crcs)
    md.modinfo  # noqa: B018 (parsed on first use)
    md.values(b"alias")
    md.values(b"depends")


def read_module_target(data: bytes) -> None:
    md = read_module(_tmpfile("m.ko", data), LIMIT)  # must never raise
    assert isinstance(md, ModuleData)
    if md.error is None:
        assert len(md.undefined) == len(md.undefined_weak) == len(md.undefined_crcs)


def decompress_target(data: bytes) -> None:
    out = decompress(data, "fuzz.ko.x", LIMIT)
    if detect(data) is None:
        assert out is data
    else:
        assert len(out) <= LIMIT


def modinfo_target(data: bytes) -> None:
    pairs = parse_modinfo(data)
    assert len(pairs) == len([s for s in data.split(b"\0") if s])
    for key in (b"alias", b"depends", b"softdep", b"name"):
        # values() answers "key=value" strings (a bare "key" has no value in kmod)
        expect = [s[len(key) + 1:] for s in data.split(b"\0") if s.startswith(key + b"=")]
        assert ModuleData(modinfo_raw=data).values(key) == expect, key
    name = modname_normalize(data)
    assert b"." not in name and b"-" not in name
    path_to_modname(data)
    norm = alias_normalize(data)
    assert norm is None or len(norm) == len(data)


def strip_target(data: bytes) -> None:
    from moddep.runtime.kernel import strip_for_force

    for mv, vm in ((True, False), (False, True), (True, True)):
        try:
            out = strip_for_force(data, mv, vm)
            assert len(out) == len(data)
        except (ElfError, KernelError):
            pass


def signature_target(data: bytes) -> None:
    from moddep.runtime.signature import MAGIC, info_fields, signature_info

    for content in (data, data + MAGIC):
        sig = signature_info(content)
        if sig is not None:
            info_fields(sig)


# --- indexes -----------------------------------------------------------------------------------

KEYS = (b"", b"a", b"dummy", b"tun", b"fuse", b"e1000", b"pci:v00008086d0000100Esv*",
        b"symbol:jbd2_journal_start", b"char-major-10-229", b"fs-fuse", b"*", b"[", b"?",
        b"x" * 300, b"usb:v0403p6001d0600dc00dsc00dp00icFFiscFFipFFin00")


def index_target(data: bytes) -> None:
    idx = Index(data, "fuzz.bin")
    keys = list(KEYS)
    try:
        idx.validate()
        for reader in ("mmap", "stdio"):
            for n, (key, _value, _prio) in enumerate(idx.entries(reader=reader)):
                if n < 40:
                    keys.append(key)
        idx.layout  # noqa: B018
    except IndexFormatError:
        pass
    for key in keys:
        for reader in ("mmap", "stdio"):
            try:
                idx.lookup(key, reader=reader)
                idx.lookup_all(key, reader=reader)
                idx.search_wild(key, reader=reader)
            except IndexFormatError:
                pass


def text_index_target(data: bytes) -> None:
    from moddep.runtime import index as rindex

    for build in (rindex._text_dep, rindex._text_alias, rindex._text_builtin,
                  rindex._text_builtin_alias):
        entries = build(data)
        try:
            Index(encode(entries)).validate()
        except (IndexFormatError, ValueError):
            pass  # ModuleDir._text treats these as "index unavailable"


# --- configuration and other text inputs -----------------------------------------------------


def depmod_d_target(data: bytes) -> None:
    path = _tmpfile("fuzz.conf", data)
    for kver in (b"6.1.0-50-amd64", b""):
        log = Log()
        with warnings.catch_warnings():  # re's FutureWarning on "[[:digit:]]" (reported)
            warnings.simplefilter("ignore")
            cfg = depmod_d.parse([(b"fuzz.conf", path)], kver, log)
        cfg.effective_searches  # noqa: B018
        assert all(isinstance(m.text, str) for m in log.messages)
    for _n, line in logical_lines(data):
        tokens(line)


def modprobe_d_target(data: bytes) -> None:
    from moddep.runtime import modprobe_d

    log = Log()
    out = modprobe_d._Builder()
    modprobe_d.parse_file(data, "fuzz.conf", out, log)
    config = out.freeze()
    for line in modprobe_d.show_config(config):
        assert line.endswith(b"\n")
    for c in config.installs + config.removes:
        assert c.command  # never an empty shell command
    allowed = modprobe_d._Builder()
    modprobe_d.parse_file(data, "modules.softdep", allowed, log,
                          frozenset((b"softdep", b"weakdep")))
    assert not allowed.installs and not allowed.removes


def cmdline_target(data: bytes) -> None:
    from moddep.runtime.cmdline import parse_cmdline

    for kind, name, value in parse_cmdline(data, Log()):
        assert kind in ("options", "blacklist")
        assert isinstance(name, bytes) and isinstance(value, bytes)


def kernel_symbols_target(data: bytes) -> None:
    for prefix in (b"", b"_"):
        depmod_pipeline._read_symvers(b"Module.symvers", data, prefix, Log())
        depmod_pipeline._read_system_map(b"System.map", data, prefix, Log())


def env_options_target(data: bytes) -> None:
    from moddep.tools.modprobe import options_from_array, split_env_options

    words = split_env_options(data.decode("utf-8", "surrogateescape"))
    options_from_array([os.fsencode(w) for w in words])


TARGETS: dict[str, Target] = {
    "elf": Target(elf_target, (ElfError,), "ElfModule: sections, modinfo, symbols, __versions"),
    "extract": Target(extract_target, (), "extract.parse_image (never raises)"),
    "read_module": Target(read_module_target, (), "extract.read_module on a file"),
    "decompress": Target(decompress_target, (CompressionError,), "xz/zstd/gzip containers"),
    "modinfo": Target(modinfo_target, (), ".modinfo parsing and name normalisation"),
    "strip": Target(strip_target, (), "runtime.kernel.strip_for_force"),
    "signature": Target(signature_target, (), "runtime.signature (appended PKCS#7)"),
    "index": Target(index_target, (IndexFormatError,), "index.trie.Index reader"),
    "text_index": Target(text_index_target, (), "runtime.index text fallbacks"),
    "depmod_d": Target(depmod_d_target, (), "config.depmod_d"),
    "modprobe_d": Target(modprobe_d_target, (), "runtime.modprobe_d"),
    "cmdline": Target(cmdline_target, (), "runtime.cmdline (kernel command line)"),
    "kernel_symbols": Target(kernel_symbols_target, (), "Module.symvers and System.map"),
    "env_options": Target(env_options_target, (), "MODPROBE_OPTIONS splitting"),
}
