"""modprobe.d and kernel command line parsing, option splitting, getopt, the kernel seam's
tables: pure functions, checked against kmod 34's behaviour (KMOD_NOTES §12.2, §12.7)."""

from __future__ import annotations

import errno
import os
import struct
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "runtime"))

import kofactory  # noqa: E402

from moddep.diag import Log  # noqa: E402
from moddep.elf import SHF_ALLOC, ElfModule  # noqa: E402
from moddep.runtime import modprobe_d  # noqa: E402
from moddep.runtime.cmdline import parse_cmdline  # noqa: E402
from moddep.runtime.engine import substitute_options  # noqa: E402
from moddep.runtime.getopt import Getopt, GetoptError  # noqa: E402
from moddep.runtime.kernel import (  # noqa: E402
    SYSCALLS,
    DryRunViolation,
    RefusingLoader,
    StripError,
    strip_for_force,
    syscalls_for,
)
from moddep.tools.modprobe import LONG, SHORT, options_from_array, split_env_options  # noqa: E402


def parse(text: str, where: str = "/etc/modprobe.d/t.conf") -> tuple[modprobe_d.ModprobeConfig,
                                                                     list[str]]:
    b = modprobe_d._Builder()
    log = Log()
    modprobe_d.parse_file(text.encode(), where, b, log)
    return b.freeze(), [m.text for m in log.messages]


# --- modprobe.d ------------------------------------------------------------------------------

def test_directives_and_their_arguments() -> None:
    cfg, errors = parse(
        "# comment\n"
        "alias my-alias snd-card[-_]x\n"
        "alias pci:v*d* e1000-foo extra words ignored\n"
        "blacklist evbug-x\n"
        "options snd-hda  a=1\tb=\"x y\"  \n"
        "install foo-bar /sbin/modprobe --ignore-install foo-bar $CMDLINE_OPTS\n"
        "remove foo  /bin/true\n"
        "softdep m-x pre: a b post: c\n"
        "weakdep w x y\n"
        "\n"
        "   \n")
    assert errors == []
    assert [(a.pattern, a.modname) for a in cfg.aliases] == [
        (b"my_alias", b"snd_card[-_]x"), (b"pci:v*d*", b"e1000_foo")]
    assert cfg.blacklists == (b"evbug_x",)
    # the rest of the line after the one blank ending the name; tabs become spaces
    assert [(o.modname, o.options) for o in cfg.options] == [(b"snd_hda", b' a=1 b="x y"  ')]
    assert cfg.installs[0].pattern == b"foo_bar"
    assert cfg.installs[0].command == b"/sbin/modprobe --ignore-install foo-bar $CMDLINE_OPTS"
    assert cfg.removes[0].command == b" /bin/true"
    assert cfg.softdeps[0] == modprobe_d.Softdep(b"m_x", (b"a", b"b"), (b"c",))
    assert cfg.weakdeps[0] == modprobe_d.Weakdep(b"w", (b"x", b"y"))


def test_bad_lines_are_reported_with_file_and_line() -> None:
    _cfg, errors = parse(
        "foo bar\n"          # 1 unknown
        "alias onlyone\n"    # 2 missing module
        "options mod\n"      # 3 no options
        "options mod \n"     # 4 nothing after the blank
        "blacklist a]b\n"    # 5 bracket
        "include /etc/x\n"   # 6
        "alias a\\\n b\n"    # 7-8 continued line: fine
        "install x\n",       # 9
        where="/etc/modprobe.d/t.conf")
    p = "kmod_config_parse: /etc/modprobe.d/t.conf"
    assert errors == [
        f"{p} line 1: ignoring bad line starting with 'foo'",
        f"{p} line 2: ignoring bad line starting with 'alias'",
        f"{p} line 3: ignoring bad line starting with 'options'",
        f"{p} line 4: ignoring bad line starting with 'options'",
        f"{p} line 5: ignoring bad line starting with 'blacklist'",
        f"{p}: command include is deprecated and not parsed anymore",
        f"{p} line 9: ignoring bad line starting with 'install'",
    ]


@pytest.mark.parametrize("rest,pre,post", [
    ("pre: a b post: c", (b"a", b"b"), (b"c",)),
    ("post: c pre: a", (b"a",), (b"c",)),
    ("ignored pre: a", (b"a",), ()),
    ("pre:a", (), ()),  # the marker must be a word of its own
    ("pre: a  b\t c ", (b"a", b"b", b"c"), ()),
    # kmod quirk: exactly one extra blank after the name stays part of the first word
    (" pre: a", (), ()),
    ("  pre: a", (b"a",), ()),
])
def test_softdep_words_as_kmod_scans_them(rest: str, pre: tuple, post: tuple) -> None:
    cfg, _ = parse(f"softdep m {rest}\n")
    assert (cfg.softdeps[0].pre, cfg.softdeps[0].post) == (pre, post)


def test_show_config_format_and_softdep_quirk() -> None:
    cfg, _ = parse("softdep m pre: a b post: c\nsoftdep n post: d\nsoftdep o x\n"
                   "options m  x=1\nweakdep w a b\nblacklist bl\nalias a m\n"
                   "install m /bin/true\nremove m /bin/false\n")
    assert b"".join(modprobe_d.show_config(cfg)) == (
        b"blacklist bl\ninstall m /bin/true\nremove m /bin/false\nalias a m\n"
        b"options m  x=1\n"
        b"softdep m pre: a bpost: c\nsoftdep n post: d\nsoftdep o \n"
        b"weakdep w a b\n")


def test_collection_precedence_and_generated_files(tmp_path: Path) -> None:
    root = tmp_path
    for d, name, text in (("etc/modprobe.d", "a.conf", "alias x etc\n"),
                          ("lib/modprobe.d", "a.conf", "alias x lib\n"),
                          ("lib/modprobe.d", "b.conf", "alias y lib\n"),
                          ("run/modprobe.d", "c.txt", "alias z run\n"),
                          ("usr/lib/modprobe.d", ".hidden.conf", "alias h h\n")):
        (root / d).mkdir(parents=True, exist_ok=True)
        (root / d / name).write_text(text)
    moddir = root / "lib/modules/1"
    moddir.mkdir(parents=True)
    (moddir / "modules.softdep").write_text(
        "softdep g pre: h\ninstall g /bin/evil\noptions g x=1\n")
    log = Log()
    cfg = modprobe_d.load(os.fsencode(moddir), None, os.fsencode(root), log,
                          b"foo.bar=1 modprobe.blacklist=q,r\n")
    # /etc wins over /lib for a.conf; .txt and hidden files are skipped
    assert [(a.pattern, a.modname) for a in cfg.aliases] == [(b"x", b"etc"), (b"y", b"lib")]
    # modules.softdep gives softdeps only, never commands or options (moddep's rule)
    assert cfg.softdeps == (modprobe_d.Softdep(b"g", (b"h",), ()),)
    assert cfg.installs == () and [o.modname for o in cfg.options] == [b"foo"]
    assert cfg.blacklists == (b"q", b"r")
    assert log.messages == []
    # -C replaces the directories
    only = root / "only.conf"
    only.write_text("alias only one\n")
    cfg2 = modprobe_d.load(os.fsencode(moddir), [os.fsencode(only)], os.fsencode(root),
                           Log())
    assert [a.pattern for a in cfg2.aliases] == [b"only"]


# --- kernel command line (the cases of kmod's test-modprobe param_kcmdline*) ------------------

@pytest.mark.parametrize("cmdline,expected", [
    ("quiet mod.param root=/dev/sda1\n", [("options", b"mod", b"param")]),
    ("mod-a.p=1 other=2 mod_b.q=1.5G\n",
     [("options", b"mod_a", b"p=1"), ("options", b"mod_b", b"q=1.5G")]),
    ('mod.p="a b c" x.y=z', [("options", b"mod", b'p="a b c"'), ("options", b"x", b"y=z")]),
    # GRUB quoting: re-quoted as param="value"
    ('"parport.dyndbg=file drivers/parport/ieee1284_ops.c +mpf" quiet',
     [("options", b"parport", b'dyndbg="file drivers/parport/ieee1284_ops.c +mpf"')]),
    # garbage that must be ignored: a second dot in the param, quotes out of place
    ("ivrs_acpihid[00:14.5]=AMD0020:0 a.b.c=1 m.p=\"x\" q\"x.y=1",
     [("options", b"m", b'p="x"')]),
    ("modprobe.blacklist=a,b modprobe.blacklist=c", [
        ("blacklist", b"a", b""), ("blacklist", b"b", b""), ("blacklist", b"c", b"")]),
    ("", []),
])
def test_kernel_command_line(cmdline: str, expected: list) -> None:
    assert parse_cmdline(cmdline.encode(), Log()) == expected


def test_kernel_command_line_bad_module_name_is_reported() -> None:
    log = Log()
    assert parse_cmdline(b"a]b.c=1", log) == []
    assert [m.text for m in log.messages] == [
        "kcmdline_parse_result: Ignoring bad option on kernel command line while parsing "
        "module name: 'a]b'"]


# --- command line helpers --------------------------------------------------------------------

@pytest.mark.parametrize("value,expected", [
    ("-v -q", ["-v", "-q"]),
    ("-v  -q", ["-v", "", "-q"]),  # kmod keeps the empty word between two blanks
    # a quoted word ends at its closing quote, so the blank after it makes an empty word
    ("-C '/a b/c' -v", ["-C", "/a b/c", "", "-v"]),
    ('-Cx"y z"w', ['-Cxy zw']),
    ("-v ", ["-v"]),
    ("", []),
])
def test_modprobe_options_environment(value: str, expected: list[str]) -> None:
    assert split_env_options(value) == expected


def test_options_from_array_quotes_values_with_blanks() -> None:
    assert options_from_array([b"a=1", b"b=x y", b"c='q r'", b"d", b'e="s t"']) == (
        b"a=1 b=\"x y\" c='q r' d e=\"s t\"")
    assert options_from_array([]) is None


def test_getopt_permutes_abbreviates_and_reports_like_glibc() -> None:
    p = Getopt(["mod", "-vq", "--show-dep", "x=1", "-Cconf", "--dirname=/r", "--", "-v"],
               SHORT, LONG)
    assert list(p) == [("v", None), ("q", None), ("D", None), ("C", "conf"), ("d", "/r")]
    assert p.operands == ["mod", "x=1", "-v"]
    for argv, message in (
            (["-Z"], "invalid option -- 'Z'"),
            (["-C"], "option requires an argument -- 'C'"),
            (["--bogus"], "unrecognized option '--bogus'"),
            (["--config"], "option '--config' requires an argument"),
            (["--all=1"], "option '--all' doesn't allow an argument"),
            (["--show-"], "option '--show-' is ambiguous; possibilities: '--show-depends' "
                          "'--show-config' '--show-modversions' '--show-exports'")):
        with pytest.raises(GetoptError) as e:
            list(Getopt(argv, SHORT, LONG))
        assert str(e.value) == message
    # an exact name wins over longer ones; same-meaning prefixes are not ambiguous
    assert list(Getopt(["--show", "--ignore-"], SHORT, LONG)) == [("n", None), ("i", None)]


def test_cmdline_opts_substitution_never_makes_shell_syntax() -> None:
    cmd = b"/sbin/modprobe --ignore-install foo $CMDLINE_OPTS; echo $CMDLINE_OPTS"
    # words split as the kernel splits parameters, each quoted for the shell
    assert substitute_options(cmd, b'a=1 b="x y" c=$(touch /tmp/pwned)') == (
        b"/sbin/modprobe --ignore-install foo a=1 'b=\"x y\"' 'c=$(touch' '/tmp/pwned)'; "
        b"echo a=1 'b=\"x y\"' 'c=$(touch' '/tmp/pwned)'")
    assert substitute_options(b"x $CMDLINE_OPTS y", None) == b"x  y"
    assert substitute_options(b"x", b"it's") == b"x"


# --- kernel seam tables ----------------------------------------------------------------------

def test_syscall_table_covers_the_required_architectures() -> None:
    want = {("x86_64", 8): (175, 176, 313), ("i686", 4): (128, 129, 350),
            ("aarch64", 8): (105, 106, 273), ("armv7l", 4): (128, 129, 379),
            ("ppc64le", 8): (128, 129, 353), ("s390x", 8): (128, 129, 344),
            ("mips64", 8): (5168, 5169, 5307), ("riscv64", 8): (105, 106, 273),
            ("x86_64", 4): (128, 129, 350)}
    for key, numbers in want.items():
        s = SYSCALLS[key]
        assert (s.init_module, s.delete_module, s.finit_module) == numbers, key
    assert syscalls_for("x86_64", 8).finit_module == 313
    with pytest.raises(Exception) as e:
        syscalls_for("vax", 4)
    assert getattr(e.value, "errno", None) == errno.ENOSYS


def test_refusing_loader_refuses_everything() -> None:
    loader = RefusingLoader()
    with pytest.raises(DryRunViolation):
        loader.finit_module(0, b"", 0)
    with pytest.raises(DryRunViolation):
        loader.init_module(b"", b"")
    with pytest.raises(DryRunViolation):
        loader.delete_module(b"x", 0)


@pytest.mark.parametrize("bits,big", kofactory.VARIANTS)
def test_force_strips_versions_flag_and_vermagic(bits: int, big: bool) -> None:
    image = kofactory.Module(bits=bits, big=big, modinfo=[
        (b"name", b"m"), (b"vermagic", b"6.1.0 SMP"), (b"license", b"GPL")],
        versions=[(b"module_layout", 1)]).build()
    elf = ElfModule(image)
    idx = elf.section_header(b"__versions")[0]
    off = elf.section_header_offset(idx) + 8
    fmt = elf.endian + ("Q" if bits == 64 else "I")
    patched = bytearray(image)
    struct.pack_into(fmt, patched, off, SHF_ALLOC | 0x40)
    out = strip_for_force(bytes(patched), modversion=True, vermagic=True)
    e2 = ElfModule(out)
    assert e2.section_header(b"__versions")[2] == 0x40
    assert dict(e2.modinfo()) == {b"name": b"m", b"license": b"GPL"}
    assert len(out) == len(image)
    only_magic = strip_for_force(bytes(patched), modversion=False, vermagic=True)
    assert ElfModule(only_magic).section_header(b"__versions")[2] == SHF_ALLOC | 0x40
    no_magic = kofactory.Module(bits=bits, big=big, modinfo=[(b"name", b"m")]).build()
    with pytest.raises(StripError) as err:
        strip_for_force(no_magic, modversion=False, vermagic=True)
    assert err.value.errno == errno.ENODATA
    assert err.value.message == "Failed to strip version information: No data available"


def test_kernel_loader_reaches_this_kernel_harmlessly() -> None:
    """The real seam on the host: deleting a module that does not exist changes nothing and
    proves the syscall plumbing (ENOENT; EPERM without the capability or under seccomp)."""
    from moddep.errors import KernelError
    from moddep.runtime.kernel import REMOVE_NOWAIT, KernelLoader

    try:
        loader = KernelLoader()
    except KernelError as e:
        pytest.skip(f"no syscall numbers for this host: {e}")
    with pytest.raises(KernelError) as e:
        loader.delete_module(b"moddep_no_such_module_xyz", REMOVE_NOWAIT)
    assert e.value.errno in (errno.ENOENT, errno.EPERM, errno.ENOSYS)
