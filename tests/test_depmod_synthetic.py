"""depmod behaviour on synthetic trees, each case checked against real kmod 30 and 34.2.

Every case also asserts the expected facts directly, so it tests something even where the
kmod binaries cannot be had (those comparisons then skip).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import synth
from kofactory import Module
from synth import KVER, make_tree

KMODS = pytest.mark.parametrize("kv", [30, 34])


def mod(exports: list[bytes] = (), needs: list[bytes] = (), aliases: list[bytes] = (),
        weak: list[bytes] = (), **info: list[bytes]) -> bytes:  # type: ignore[assignment]
    modinfo = [(b"alias", a) for a in aliases]
    for key, values in info.items():
        modinfo += [(key.encode(), v) for v in values]
    return Module(exports=[(e, 0x1000 + i) for i, e in enumerate(exports)],
                  undefined=[(n, False) for n in needs] + [(n, True) for n in weak],
                  modinfo=modinfo).build()


def both(tmp_path: Path, kv: int, modules: dict[str, bytes], *args: str,
         host_config: bool = True, **tree: bytes) -> tuple[synth.Run, synth.Run]:
    """(moddep run, kmod run) on two identical copies of a tree."""
    a = tmp_path / "a"
    make_tree(a, modules, **tree)  # type: ignore[arg-type]
    b = synth.copy(a, tmp_path / "b")
    fix = [a if x == "@ROOT" else x for x in args]
    extra = ["--host-config"] if host_config else []
    ours = synth.moddep(a, *extra, *[str(x) for x in fix], kmod=kv)
    theirs = synth.kmod(kv, b, *[str(b) if x == "@ROOT" else x for x in args])
    return ours, theirs


def same_files(ours: synth.Run, theirs: synth.Run) -> None:
    diff = [n for n in synth.OUTPUTS if ours.files[n] != theirs.files[n]]
    assert diff == [], f"differing outputs: {diff}"
    assert ours.rc == theirs.rc


def norm(stderr: str, root: Path) -> list[str]:
    """Sorted lines with the root replaced; kmod's "Invalid symbol version X: %m" prints a
    stale errno, so that line is compared without its tail."""
    lines = stderr.replace(str(root), "ROOT").splitlines()
    return sorted(line.split(": ", 2)[0] + line.split(": ", 2)[1] if "Invalid symbol version"
                  in line else line for line in lines)


CHAIN = {
    "kernel/a/mod-a.ko": mod(exports=[b"fa"], needs=[b"fb", b"printk"], aliases=[b"pci:v1d*"]),
    "kernel/b/mod-b.ko": mod(exports=[b"fb"], needs=[b"fc"], softdep=[b"pre: mod-c"]),
    "kernel/c/mod_c.ko": mod(exports=[b"fc"], aliases=[b"char-major-10-200", b"devname:cdev"]),
    "kernel/d/mod-d.ko": mod(needs=[b"fa", b"fc"], weakdep=[b"mod-b"]),
}
ORDER = b"kernel/d/mod-d.ko\nkernel/c/mod_c.ko\nkernel/a/mod-a.ko\n"


@KMODS
def test_chain_order_aliases_devname(tmp_path: Path, kv: int) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, CHAIN, "-C", str(conf), order=ORDER)
    dep = ours.files["modules.dep"]
    assert dep == (b"kernel/d/mod-d.ko: kernel/a/mod-a.ko kernel/b/mod-b.ko kernel/c/mod_c.ko\n"
                   b"kernel/c/mod_c.ko:\n"
                   b"kernel/a/mod-a.ko: kernel/b/mod-b.ko kernel/c/mod_c.ko\n"
                   b"kernel/b/mod-b.ko: kernel/c/mod_c.ko\n")
    assert ours.files["modules.devname"].endswith(b"mod_c cdev c10:200\n")  # type: ignore
    assert (ours.files["modules.weakdep"] is not None) == (kv >= 33)
    same_files(ours, theirs)


@KMODS
def test_detect_loop_messages(tmp_path: Path, kv: int) -> None:
    """kmod's own testsuite fixture (test-depmod/detect-loop), built from synthetic modules."""
    loops = {"a": ["b"], "b": ["c"], "c": ["a"], "d": ["e"], "e": ["d"], "f": ["g"],
             "g": [], "h": ["i"], "i": ["j"], "j": ["k", "h"], "k": ["h"]}
    modules = {f"kernel/mod-loop-{m}.ko": mod(exports=[f"print{m.upper()}".encode()],
                                               needs=[f"print{d.upper()}".encode() for d in deps])
               for m, deps in loops.items()}
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, modules, "-C", str(conf), order=b"")
    assert ours.rc == 1
    assert ours.stderr.splitlines()[-1] == "depmod: ERROR: Found 9 modules in dependency cycles!"
    assert ours.files["modules.dep"] is None  # nothing written
    assert ours.stderr.replace("moddep", "depmod") == theirs.stderr
    assert theirs.rc == 1


@KMODS
def test_duplicates_search_override_exclude(tmp_path: Path, kv: int) -> None:
    modules = {
        "kernel/x/dup.ko": mod(exports=[b"k1"]),
        "updates/dup.ko": mod(exports=[b"u1"]),
        "extra/dup.ko": mod(exports=[b"e1"]),
        "foo/over.ko": mod(exports=[b"f1"]),
        "override/over.ko": mod(exports=[b"o1"]),
        "skipme/gone.ko": mod(),
        "kernel/build/nope.ko": mod(),
    }
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.conf").write_text("search extra updates built-in\n"
                                 f"override over {KVER} override\nexclude skipme\n"
                                 "bogus line\n  # indented comment is a bad line\n")
    (conf / "b.conf").write_text("override over 9.9.* foo\nsearch foo\n")
    ours, theirs = both(tmp_path, kv, modules, "-C", str(conf))
    dep = ours.files["modules.dep"] or b""
    assert b"extra/dup.ko:" in dep and b"override/over.ko:" in dep
    assert b"gone" not in dep and b"nope" not in dep
    same_files(ours, theirs)
    assert norm(ours.stderr, tmp_path / "a") == norm(theirs.stderr, tmp_path / "b")


@KMODS
def test_modules_order_quirks(tmp_path: Path, kv: int) -> None:
    modules = {f"kernel/m{i}.ko": mod(aliases=[f"a{i}".encode()]) for i in range(6)}
    order = b"kernel/m3.ko\nkernel/m1.ko\n# comment\n\nkernel/m3.ko\nkernel/m9.ko\nkernel/m0.ko\n"
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, modules, "-C", str(conf), order=order)
    dep = (ours.files["modules.dep"] or b"").splitlines()
    first = [b"kernel/m1.ko:", b"kernel/m3.ko:"] if kv < 34 else [b"kernel/m3.ko:",
                                                                   b"kernel/m1.ko:"]
    assert dep[:2] == first  # v30: a repeated line's last position wins; v34: its first
    same_files(ours, theirs)


@KMODS
def test_modules_order_without_final_newline(tmp_path: Path, kv: int) -> None:
    modules = {f"kernel/m{i}.ko": mod() for i in range(4)}
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, modules, "-C", str(conf),
                        order=b"kernel/m2.ko\nkernel/m1.ko")
    assert "corrupted line misses" in ours.stderr
    same_files(ours, theirs)


@KMODS
def test_builtin_inputs_quirks(tmp_path: Path, kv: int) -> None:
    builtin = b"kernel/fs/ext4.ko\n1bad\nnodot\nkernel/net/unix.ko\n"
    bmodinfo = (b"ext4.alias=fs-ext4\0ext4.alias=char-major-[\0nodot\0unix.license=GPL\0"
                b"unix.alias=net-pf-1\0unix.alias=\0keyonly\0unix.alias=skipped-by-quirk\0"
                b"unix.alias=net-pf-1\0")
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, {"kernel/m.ko": mod()}, "-C", str(conf),
                        builtin=builtin, builtin_modinfo=bmodinfo)
    assert "Invalid modules.builtin line: 1bad" in ours.stderr
    assert "Unmatched bracket in char-major-[" in ours.stderr
    same_files(ours, theirs)


@KMODS
def test_missing_builtin_files_give_empty_indexes(tmp_path: Path, kv: int) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, {"kernel/m.ko": mod()}, "-C", str(conf),
                        builtin=None, builtin_modinfo=None)
    assert ours.files["modules.builtin.bin"] == b""
    assert ours.files["modules.builtin.alias.bin"] == b""
    assert ours.files["modules.devname"] == b""
    same_files(ours, theirs)


@KMODS
def test_unknown_symbols_and_crcs_with_symvers(tmp_path: Path, kv: int) -> None:
    symvers = tmp_path / "Module.symvers"
    symvers.write_text("0x00000009\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n"
                       "0x0000000a\tkfree\tvmlinux\tEXPORT_SYMBOL\t\n"
                       "0xzz\tbroken\tvmlinux\tEXPORT_SYMBOL\t\n")
    m = Module(undefined=[(b"printk", False), (b"kfree", False), (b"nowhere", False),
                          (b"weakling", True), (b"__this_module", False)],
               versions=[(b"printk", 9), (b"kfree", 11)]).build()
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, {"kernel/m.ko": m}, "-C", str(conf), "-e",
                        "-E", str(symvers))
    assert "needs unknown symbol nowhere" in ours.stderr
    assert "disagrees about version of symbol kfree" in ours.stderr
    assert "weakling" not in ours.stderr and "__this_module" not in ours.stderr
    same_files(ours, theirs)
    assert norm(ours.stderr, tmp_path / "a") == norm(theirs.stderr, tmp_path / "b")


@KMODS
def test_system_map_prefix_dot_symbols_weak_deps(tmp_path: Path, kv: int) -> None:
    sysmap = tmp_path / "System.map"
    sysmap.write_text("c0000000 R ___ksymtab_printk\nc0000001 T _start\nbad-line\n")
    modules = {
        "kernel/p.ko": mod(exports=[b"_provided", b"_other"]),
        "kernel/u.ko": mod(needs=[b".provided", b"_printk", b"_missing"], weak=[b"other"]),
    }
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, modules, "-C", str(conf), "-e", "-F", str(sysmap),
                        "-P", "_")
    assert ours.files["modules.dep"] == b"kernel/u.ko: kernel/p.ko\nkernel/p.ko:\n" or \
        b"kernel/u.ko: kernel/p.ko" in (ours.files["modules.dep"] or b"")
    assert "needs unknown symbol _missing" in ours.stderr
    same_files(ours, theirs)


@KMODS
def test_last_exporter_wins_and_corrupt_modules_stay(tmp_path: Path, kv: int) -> None:
    good = mod(exports=[b"shared"])
    modules = {
        "kernel/one.ko": good, "kernel/two.ko": good, "kernel/three.ko": good,
        "kernel/user.ko": mod(needs=[b"shared"]),
        "kernel/empty.ko": b"",
        "kernel/garbage.ko": b"this is not an ELF file at all" * 4,
        "kernel/trunc.ko": good[:200],
    }
    conf = tmp_path / "conf"
    conf.mkdir()
    order = b"kernel/one.ko\nkernel/three.ko\nkernel/two.ko\nkernel/user.ko\n"
    ours, theirs = both(tmp_path, kv, modules, "-C", str(conf), order=order)
    assert b"kernel/user.ko: kernel/two.ko\n" in (ours.files["modules.dep"] or b"")
    for bad in ("empty", "garbage", "trunc"):
        assert f"kernel/{bad}.ko:\n".encode() in (ours.files["modules.dep"] or b"")
        assert f"failed to load symbols from {tmp_path / 'a'}/lib/modules/{KVER}/kernel/{bad}.ko" \
            in ours.stderr
    assert ours.rc == 0
    same_files(ours, theirs)


def test_non_ascii_alias_is_fatal_in_v34_only(tmp_path: Path) -> None:
    make_tree(tmp_path / "r", {"kernel/m.ko": mod(aliases=[b"caf\xc3\xa9"])})
    conf = tmp_path / "conf"
    conf.mkdir()
    run = synth.moddep(tmp_path / "r", "-C", str(conf), kmod=34)
    assert run.rc == 1 and "only 7-bit ASCII is supported" in run.stderr
    assert run.files["modules.dep"] is None  # a failed run publishes nothing


def test_failed_run_leaves_previous_indexes(tmp_path: Path) -> None:
    root = tmp_path / "r"
    moddir = make_tree(root, {"kernel/a.ko": mod(exports=[b"x"], needs=[b"y"]),
                              "kernel/b.ko": mod(exports=[b"y"])})
    conf = tmp_path / "conf"
    conf.mkdir()
    first = synth.moddep(root, "-C", str(conf))
    assert first.rc == 0
    (moddir / "kernel/b.ko").write_bytes(mod(exports=[b"y"], needs=[b"x"]))  # now a cycle
    second = synth.moddep(root, "-C", str(conf))
    assert second.rc == 1 and "Cycle detected: b -> a -> b" in second.stderr
    assert second.files == first.files
    assert not [p for p in moddir.iterdir() if p.name.startswith(".moddep")]


def test_target_root_config_and_externals(tmp_path: Path) -> None:
    """Default mode reads depmod.d inside the root and re-roots external dirs into it."""
    root = tmp_path / "r"
    make_tree(root, {"kernel/dup.ko": mod(exports=[b"k"]),
                     "/opt/ext/dup.ko": mod(exports=[b"e"]),
                     "/opt/ext/only-ext.ko": mod()})
    d = root / "etc/depmod.d"
    d.mkdir(parents=True)
    (d / "ext.conf").write_text(f"search external built-in\nexternal {KVER} /opt/ext\n")
    run = synth.moddep(root)
    dep = run.files["modules.dep"] or b""
    assert b"/opt/ext/dup.ko:" in dep and b"/opt/ext/only-ext.ko:" in dep
    assert b"kernel/dup.ko" not in dep


def test_bad_version_and_prefix_usage(tmp_path: Path) -> None:
    from moddep.cli import main
    assert main(["depmod", "-b", str(tmp_path), "notaversion"]) == 1
    assert main(["depmod", "-P", "ab", "-b", str(tmp_path), "1.2"]) == 1


@KMODS
def test_module_alias_brackets_and_dashes(tmp_path: Path, kv: int) -> None:
    """Index keys: '-' becomes '_' outside brackets only; an alias with an unmatched bracket
    is left out of modules.alias.bin with a warning (but stays in modules.alias), whichever
    module and position it has among the others."""
    mods = {
        "kernel/a/m-a.ko": mod(aliases=[b"usb:v1-2d0[0-2]*x-y", b"plain-one", b"bad[-open"]),
        "kernel/b/m-b.ko": mod(aliases=[b"close]-bad", b"pci:v-[a-c]-[-]-z"]),
        "kernel/c/m-c.ko": mod(aliases=[b"no-brackets-here", b"[x-y]", b"]"]),
        "kernel/d/m-d.ko": mod(),
    }
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, mods, "-C", str(conf))
    for bad in ("bad[-open", "close]-bad", "]"):
        assert f"Unmatched bracket in {bad}\n" in ours.stderr
    assert ours.stderr.count("Unmatched bracket") == 3
    from moddep.index.trie import Index

    keys = {k for k, _v, _p in Index(ours.files["modules.alias.bin"]).entries()}
    assert keys == {b"usb:v1_2d0[0-2]*x_y", b"plain_one", b"pci:v_[a-c]_[-]_z",
                    b"no_brackets_here", b"[x-y]"}
    assert b"alias bad[-open m_a\n" in ours.files["modules.alias"]
    same_files(ours, theirs)


@KMODS
def test_verbose_needs_lines_in_first_use_order(tmp_path: Path, kv: int) -> None:
    """-v prints one line per (user, provider), at the user's first symbol from it, in the
    order the user first needs each provider."""
    modules = {
        "kernel/a/pa.ko": mod(exports=[b"a1", b"a2"]),
        "kernel/b/pb.ko": mod(exports=[b"b1"]),
        "kernel/c/pc.ko": mod(exports=[b"c1"], needs=[b"a2"]),
        "kernel/u/user.ko": mod(needs=[b"b1", b"a2", b"nowhere", b"a1", b"c1", b"b1"]),
    }
    conf = tmp_path / "conf"
    conf.mkdir()
    ours, theirs = both(tmp_path, kv, modules, "-C", str(conf), "-v")
    lines = [line for line in ours.stdout.splitlines() if b" needs " in line]
    user = [line for line in lines if b"user.ko needs" in line]
    assert [line.split(b'"')[1] for line in user] == [b"b1", b"a2", b"c1"]
    assert ours.stdout.replace(bytes(tmp_path / "a"), b"ROOT") == \
        theirs.stdout.replace(bytes(tmp_path / "b"), b"ROOT")
    same_files(ours, theirs)


def test_cycle_with_outputs_larger_than_a_pipe(tmp_path: Path) -> None:
    """Symbol resolution fails on a cycle while the other output half, in a child, has more
    to hand over than a pipe holds: the run ends with the cycle error instead of waiting."""
    import time

    root = tmp_path / "r"
    many = [b"pci:v%08Xd%08Xsv*sd*bc*sc*i*" % (i, i) for i in range(40000)]
    make_tree(root, {"kernel/a.ko": mod(exports=[b"x"], needs=[b"y"]),
                     "kernel/b.ko": mod(exports=[b"y"], needs=[b"x"]),
                     "kernel/c.ko": mod(aliases=many)})
    conf = tmp_path / "conf"
    conf.mkdir()
    start = time.monotonic()
    run = synth.moddep(root, "-C", str(conf), "-j", "2")
    assert run.rc == 1 and "Cycle detected: b -> a -> b" in run.stderr
    assert time.monotonic() - start < 60
