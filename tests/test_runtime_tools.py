"""lsmod, rmmod, insmod and modinfo on the synthetic tree and a simulated kernel, plus the
pieces under them: /proc and /sys reading, index lookups (with the text fallback), module
signatures. Expected texts are kmod 34's."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "runtime"))

import rtree  # noqa: E402

from moddep.runtime.fake import FakeKernel, split_params  # noqa: E402
from moddep.runtime.index import ALIAS, BUILTIN_ALIAS, ModuleDir  # noqa: E402
from moddep.runtime.kernel import (  # noqa: E402
    MODULE_INIT_IGNORE_MODVERSIONS,
    MODULE_INIT_IGNORE_VERMAGIC,
)
from moddep.runtime.modprobe_d import ModprobeConfig  # noqa: E402
from moddep.runtime.resolve import Resolver  # noqa: E402
from moddep.runtime.signature import hex_colons, signature_info  # noqa: E402
from moddep.runtime.state import KernelState  # noqa: E402

KVER = rtree.KVER


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rtree.make_tree(tmp_path_factory.mktemp("pristine") / "root").root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    r = tmp_path / "root"
    shutil.copytree(pristine, r, symlinks=True)
    FakeKernel.open(os.fsencode(r))
    return r


def run(tool: str, root: Path, capfd: pytest.CaptureFixture[str],
        *argv: str) -> tuple[int, str, str]:
    return rtree.run_tool(tool, list(argv), root, capfd)


def kernel(root: Path) -> FakeKernel:
    return FakeKernel.open(os.fsencode(root))


# --- lsmod -----------------------------------------------------------------------------------

def test_lsmod_format(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    k = kernel(root)
    k.preload(b"slhc", size=20480)
    k.preload(b"ppp_generic", deps=(b"slhc",), size=53248)
    k.preload(b"a_module_with_a_long_name", deps=(b"slhc",), size=123456789)
    k.hold(b"ppp_generic", 2)
    rc, out, err = run("lsmod", root, capfd)
    assert (rc, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == "Module                  Size  Used by"
    assert lines[1] == "a_module_with_a_long_name 123456789  0"
    assert lines[2] == "ppp_generic            53248  2"
    # holders in directory order, comma separated
    assert lines[3].startswith("slhc                   20480  2 ")
    assert sorted(lines[3].split()[3].split(",")) == ["a_module_with_a_long_name",
                                                      "ppp_generic"]
    assert run("lsmod", root, capfd, "x") == (1, "", "lsmod: ERROR: too many arguments "
                                                     "provided.\n")


def test_lsmod_falls_back_to_proc_modules(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    k = kernel(root)
    k.preload(b"m", size=8192)
    os.unlink(root / "sys/module/m/coresize")
    os.unlink(root / "sys/module/m/refcnt")
    rc, out, _ = run("lsmod", root, capfd)
    assert out.splitlines()[1] == "m                       8192  -2"
    shutil.rmtree(root / "proc")
    assert run("lsmod", root, capfd)[0] == 1


# --- rmmod -----------------------------------------------------------------------------------

def test_rmmod(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    k = kernel(root)
    k.preload(b"slhc")
    k.preload(b"ppp_generic", deps=(b"slhc",))
    # kmod prints the holders with one ERROR: prefix per piece
    rc, out, err = run("rmmod", root, capfd, "slhc")
    assert (rc, out) == (1, "")
    assert err.startswith("rmmod: ERROR: Module slhc is in use by:rmmod: ERROR:  ppp_generic"
                          "rmmod: ERROR: \n")
    k.hold(b"ppp_generic")
    rc, _, err = run("rmmod", root, capfd, "ppp_generic")
    assert rc == 1 and err.startswith("rmmod: ERROR: Module ppp_generic is in use\n")
    assert "ppp_generic: refcnt 1" in err
    assert run("rmmod", root, capfd, "nosuch") == (
        1, "", "rmmod: ERROR: Module nosuch is not currently loaded\n")
    # -f: no checks, O_TRUNC to the kernel
    assert run("rmmod", root, capfd, "-f", "ppp_generic") == (0, "", "")
    assert kernel(root).loaded() == [b"slhc"]
    # a path names the module by its file name
    assert run("rmmod", root, capfd, str(rtree.Tree(root, KVER).path_of("slhc"))) == (0, "", "")
    assert kernel(root).loaded() == []
    assert run("rmmod", root, capfd) == (1, "", "rmmod: ERROR: missing module name.\n")


def test_rmmod_builtin(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    release = os.uname().release
    link = root / "lib" / "modules" / release
    link.symlink_to(KVER)
    assert run("rmmod", root, capfd, "unix") == (1, "", "rmmod: ERROR: Module unix is builtin.\n")


# --- insmod ----------------------------------------------------------------------------------

def test_insmod(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    tree = rtree.Tree(root, KVER)
    path = str(tree.path_of("dummy"))
    assert run("insmod", root, capfd, path, "numdummies=3", "x=a b") == (0, "", "")
    call = kernel(root).calls[-1]
    assert (call.syscall, call.params, call.flags) == ("finit_module",
                                                       b'numdummies=3 x="a b"', 0)
    assert run("insmod", root, capfd, path) == (
        1, "", f"insmod: ERROR: could not insert module {path}: File exists\n")
    # no dependency handling: the kernel reports the unknown symbols
    chain = str(tree.path_of("pppox"))
    assert run("insmod", root, capfd, chain) == (
        1, "", f"insmod: ERROR: could not insert module {chain}: Unknown symbol in module\n")
    k = kernel(root)
    k.vermagic = b"other"
    k.save()
    tun = str(tree.path_of("tun"))
    assert run("insmod", root, capfd, tun) == (
        1, "", f"insmod: ERROR: could not insert module {tun}: Invalid module format\n")
    assert run("insmod", root, capfd, "-f", tun) == (0, "", "")
    assert kernel(root).calls[-1].flags == (MODULE_INIT_IGNORE_VERMAGIC |
                                            MODULE_INIT_IGNORE_MODVERSIONS)
    # compressed (userspace decompression), missing file, stdin, nothing
    k = kernel(root)
    k.vermagic = None
    k.save()
    assert run("insmod", root, capfd, str(tree.path_of("veth"))) == (0, "", "")
    assert kernel(root).calls[-1].syscall == "init_module"
    assert run("insmod", root, capfd, "/nonexistent.ko") == (
        1, "", "insmod: ERROR: could not load module /nonexistent.ko: No such file or "
               "directory\n")
    assert run("insmod", root, capfd, "-") == (
        1, "", "insmod: ERROR: this tool does not support loading from stdin!\n")
    assert run("insmod", root, capfd) == (1, "", "insmod: ERROR: missing filename.\n")


# --- modinfo ---------------------------------------------------------------------------------

def test_modinfo_synthetic(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    b = ["-b", str(root), "-k", KVER]
    path = rtree.Tree(root, KVER).path_of("loop")
    rc, out, err = run("modinfo", root, capfd, *b, "loop")
    assert (rc, err) == (0, "")
    assert out == (
        f"filename:       {path}\n"
        "license:        GPL\n"
        "alias:          block-major-7-*\n"
        "alias:          devname:loop-control\n"
        "depends:        \n"
        "retpoline:      Y\n"
        "intree:         Y\n"
        "name:           loop\n"
        f"vermagic:       {rtree.VERMAGIC.decode()}\n"
        # parameters gathered, the last new one first (kmod prepends)
        "parm:           max_part:Maximum number of partitions per loop device (int)\n"
        "parm:           max_loop:Maximum number of loop devices (int)\n")
    assert run("modinfo", root, capfd, *b, "-p", "loop")[1] == (
        "max_part:Maximum number of partitions per loop device (int)\n"
        "max_loop:Maximum number of loop devices (int)\n")
    assert run("modinfo", root, capfd, *b, "-F", "alias", "-0", "loop")[1] == (
        "block-major-7-*\0devname:loop-control\0")
    assert run("modinfo", root, capfd, *b, "-n", "block-major-7-3")[1] == f"{path}\n"
    # a compressed file, by path
    veth = rtree.Tree(root, KVER).path_of("veth")
    assert run("modinfo", root, capfd, "-F", "name", str(veth)) == (0, "veth\n", "")


def test_modinfo_builtin_and_errors(root: Path, capfd: pytest.CaptureFixture[str]) -> None:
    b = ["-b", str(root), "-k", KVER]
    assert run("modinfo", root, capfd, *b, "net-pf-1") == (
        0, "name:           unix\nfilename:       (builtin)\nlicense:        GPL\n"
           "alias:          net-pf-1\nfile:           net/unix/unix\n", "")
    assert run("modinfo", root, capfd, *b, "-m", "crc16", "-F", "file") == (
        0, "lib/crc16\n", "")
    assert run("modinfo", root, capfd, *b, "nosuch") == (
        1, "", "modinfo: ERROR: Module nosuch not found.\n")
    assert run("modinfo", root, capfd, *b, "-m", "nosuch") == (
        1, "", "modinfo: ERROR: Module name nosuch not found.\n")
    assert run("modinfo", root, capfd, *b, "a]b") == (
        1, "", "modinfo: ERROR: Module alias a]b not found.\n")
    assert run("modinfo", root, capfd) == (
        1, "", "modinfo: ERROR: missing module or filename.\n")
    # an old kernel without modules.builtin.modinfo: only name and filename
    os.unlink(root / "lib/modules" / KVER / "modules.builtin.modinfo")
    assert run("modinfo", root, capfd, *b, "unix") == (
        0, "name:           unix\nfilename:       (builtin)\n", "")
    # not an ELF file
    bad = root / "bad.ko"
    bad.write_bytes(b"\x7fELF" + bytes(60))
    rc, _, err = run("modinfo", root, capfd, str(bad))
    assert rc == 1 and err.startswith("modinfo: ERROR: could not get modinfo from 'bad': ")


def test_signature_fields(tmp_path: Path, root: Path,
                          capfd: pytest.CaptureFixture[str]) -> None:
    signed = rtree.signed_module(tmp_path)
    info = signature_info(signed)
    assert info is not None
    assert info.id_type == "PKCS#7" and info.signer == b"moddep test signing key"
    assert info.hash_algo == "sha256"
    assert info.key_id == bytes(range(1, 0x16))
    assert len(info.signature) == 256
    path = tmp_path / "signed.ko"
    path.write_bytes(signed)
    rc, out, _ = run("modinfo", root, capfd, str(path))
    assert rc == 0
    assert ("sig_id:         PKCS#7\nsigner:         moddep test signing key\n"
            "sig_key:        01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14:\n"
            "\t\t15\nsig_hashalgo:   sha256\nsignature:      ") in out
    assert signature_info(signed[:-1]) is None
    assert signature_info(b"") is None
    assert hex_colons(b"") == b""


# --- state, index, fake kernel ----------------------------------------------------------------

def test_kernel_state_reading(tmp_path: Path) -> None:
    k = FakeKernel(os.fsencode(tmp_path), compression="zstd")
    k.preload(b"a", params={b"p": b"1"})
    k.preload(b"b", deps=(b"a",))
    s = KernelState(os.fsencode(tmp_path))
    assert s.initstate(b"a") == "live" and s.initstate(b"zz") is None
    os.unlink(tmp_path / "sys/module/b/initstate")
    assert s.initstate(b"b") == "coming"  # a directory without initstate
    (tmp_path / "sys/module/a/initstate").write_text("weird\n")
    assert s.initstate(b"a") == "?"
    assert s.refcnt(b"a") == 1 and s.holders(b"a") == [b"b"] and s.holders(b"zz") is None
    assert s.parameters(b"a") == {b"p": b"1"}
    assert s.kernel_compression() == "zstd"
    assert [m.name for m in s.proc_modules() or []] == [b"b", b"a"]
    assert (s.proc_modules() or [])[1].used_by == (b"b",)
    (tmp_path / "sys/module/compression").write_text("lz4\n")
    assert s.kernel_compression() is None


def test_fake_kernel_persists_between_openings(tmp_path: Path) -> None:
    k = FakeKernel(os.fsencode(tmp_path), vermagic=b"v", fail_load={b"x": errno.EPERM})
    k.preload(b"a")
    k2 = FakeKernel.open(os.fsencode(tmp_path))
    assert k2.loaded() == [b"a"] and k2.vermagic == b"v" and k2.fail_load == {b"x": 1}
    assert split_params(b'a=1 b="x y" c  d=') == [(b"a", b"1"), (b"b", b"x y"), (b"c", b""),
                                                   (b"d", b"")]


def test_text_index_fallback(pristine: Path, tmp_path: Path) -> None:
    root = tmp_path / "r"
    shutil.copytree(pristine, root, symlinks=True)
    moddir = root / "lib/modules" / KVER
    binary = Resolver(ModuleDir(os.fsencode(moddir), preload=True), ModprobeConfig())
    for name in ("modules.dep.bin", "modules.alias.bin", "modules.symbols.bin",
                 "modules.builtin.bin", "modules.builtin.alias.bin"):
        os.unlink(moddir / name)
    md = ModuleDir(os.fsencode(moddir), preload=True)
    assert not md.preloaded
    text = Resolver(md, ModprobeConfig())
    for query in (b"pppox", b"usb:v0403p6001d0600dc00dsc00dp00icFFiscFFipFFin00",
                  b"symbol:slhc_fn", b"unix", b"net-pf-1", b"rtnl-link-dummy", b"nosuch"):
        want = [(m.name, binary.path(m)) for m in binary.lookup(query) or []]
        got = [(m.name, text.path(m)) for m in text.lookup(query) or []]
        assert got == want, query
    assert [m.name for m in text.dependencies(text.from_name(b"pppox"))] == [
        b"slhc", b"ppp_generic"]
    assert md.wild(ALIAS, b"rtnl_link_ifb") == [b"ifb"]
    assert md.wild(BUILTIN_ALIAS, b"net_pf_1") == [b"unix"]
    os.unlink(moddir / "modules.alias")
    assert ModuleDir(os.fsencode(moddir)).wild(ALIAS, b"x") is None
