"""Oracle: moddep's modinfo and modprobe against the real kmod 30 and kmod 34.2 binaries.

Trees are Debian bookworm kernel packages (``debcache``), indexed by moddep's own depmod in a
per-session copy. Compared byte for byte, stdout, stderr and exit status:

* ``modinfo`` of every module file of each architecture, of every built-in module by name,
  and of compressed (xz, zstd) modules;
* ``modprobe -a -R`` and ``modprobe -a -D`` for modalias strings made from the tree's own
  alias patterns (PCI, USB, ACPI, OF, ...), hand-picked real device strings and module names;
* ``modprobe -c`` with a modprobe.d exercising every directive, ``--show-modversions`` and
  ``--show-exports``;
* ``modinfo`` of a module signed the way the kernel's sign-file signs (PKCS#7).

Both sides read the host's /proc/cmdline (kmod cannot be pointed elsewhere), so options from
the host's kernel command line appear identically in both outputs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import debcache
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "runtime"))

pytestmark = pytest.mark.oracle

ALL_ARCHES = ("amd64", "arm64", "armhf", "s390x", "i386", "ppc64el", "mips64el")
REPO = Path(__file__).resolve().parent.parent

#: Device strings as the kernel writes them in uevents/modalias files (real devices).
REAL_MODALIASES = (
    "pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00",  # QEMU e1000
    "pci:v00008086d00007113sv00001AF4sd00001100bc06sc80i00",  # PIIX4 ACPI
    "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",  # virtio-net (legacy)
    "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30",  # QEMU xHCI
    "pci:v000010DEd00001C82sv00001458sd00003764bc03sc00i00",  # GeForce GTX 1050 Ti
    "usb:v0403p6001d0600dc00dsc00dp00icFFiscFFipFFin00",  # FTDI FT232
    "usb:v0BDAp8153d3100dc00dsc00dp00icFFiscFFip00in00",  # Realtek RTL8153
    "usb:v046Dp C52Bd2410dc00dsc00dp00ic03isc01ip01in00".replace(" ", ""),  # Logitech
    "usb:v1D6Bp0003d0601dc09dsc00dp03ic09isc00ip00in00",  # root hub
    "acpi:PNP0A08:PNP0A03:",
    "acpi:ACPI0003:",
    "acpi:PNP0C0A:",
    "acpi:INT33A1:PNP0D80:",
    "of:NuartT(null)Carm,pl011Carm,primecell",
    "of:NpcieT(null)Cpci-host-ecam-generic",
    "of:Nvirtio_mmioT(null)Cvirtio,mmio",
    "virtio:d00000001v00001AF4",
    "virtio:d00000002v00001AF4",
    "platform:serial8250",
    "input:b0011v0001p0001eAB41-e0,1,4,11,14,k71,72,73,74,ramlsfw",
    "scsi:t-0x00",
    "hid:b0003g0001v0000046Dp0000C52B",
    "cpu:type:x86,ven0000fam0006mod009E:feature:,0000,0001,0002,00E5",
    "dmi:bvnSeaBIOS:bvr1.16.2:bd04/01/2014:svnQEMU:pnStandardPC(i440FX+PIIX,1996):",
    "net-pf-10", "fs-vfat", "char-major-10-200", "block-major-7-0", "crypto-sha256",
    "symbol:usb_register_driver", "rtnl-link-dummy", "devname:net/tun",
    "nosuch-thing", "a]b",
)


def _skip(e: debcache.Unavailable, what: str) -> None:
    pytest.skip(f"{what} unavailable: {e}")


def _tool(version: int, tool: str) -> list[str]:
    try:
        return debcache.kmod_tool(version, tool)
    except debcache.Unavailable as e:
        _skip(e, f"kmod {version}")
        raise


_INDEXED: dict[tuple[str, str], debcache.KernelTree] = {}


def indexed(arch: str, comp: str, tmp_factory: pytest.TempPathFactory) -> debcache.KernelTree:
    """A copy of the Debian tree indexed by moddep's depmod (once per session)."""
    key = (arch, comp)
    if key not in _INDEXED:
        try:
            tree = (debcache.kernel_tree(arch) if comp == "none"
                    else debcache.compressed_tree(arch, comp))
        except debcache.Unavailable as e:
            _skip(e, f"{arch}/{comp} tree")
        copy = debcache.copy_tree(tree, tmp_factory.mktemp(f"{arch}-{comp}") / "root")
        empty = copy.root / "empty-depmod.d"
        empty.mkdir()
        proc = subprocess.run([sys.executable, "-m", "moddep", "depmod", "-b", str(copy.root),
                               "-C", str(empty), copy.kver], cwd=REPO, capture_output=True)
        assert proc.returncode == 0, proc.stderr
        _INDEXED[key] = copy
    return _INDEXED[key]


def run_both(kmod: list[str], ours: list[str], args: list[str], cwd: Path,
             chunk: int = 400) -> tuple[int, bytes, bytes]:
    """Run kmod and moddep on ``args`` in chunks; return (chunks, kmod output, ours)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MODPROBE_OPTIONS", "KMOD_LOG", "MODDEP_SYSROOT")}
    env["PYTHONPATH"] = str(REPO)
    outs: list[list[bytes]] = [[], []]
    n = 0
    for i in range(0, len(args), chunk):
        part = args[i:i + chunk]
        n += 1
        for k, prefix in enumerate((kmod, ours)):
            p = subprocess.run([*prefix, *part], capture_output=True, cwd=cwd, env=env)
            outs[k].append(b"rc=%d\n" % p.returncode + p.stdout + b"\n--stderr--\n" + p.stderr)
    return n, b"".join(outs[0]), b"".join(outs[1])


def _first_difference(a: bytes, b: bytes) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb)):
        if x != y:
            return f"line {i + 1}:\n kmod:   {x[:300]!r}\n moddep: {y[:300]!r}"
    return f"lengths differ: kmod {len(la)} lines, moddep {len(lb)} lines"


def assert_same(kmod_out: bytes, ours: bytes) -> None:
    assert ours == kmod_out, _first_difference(kmod_out, ours)


def ours(tool: str) -> list[str]:
    return [sys.executable, "-m", "moddep", tool]


# --- modinfo ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kmod", [30, 34])
@pytest.mark.parametrize("arch", ALL_ARCHES)
def test_modinfo_every_module(arch: str, kmod: int,
                              tmp_path_factory: pytest.TempPathFactory) -> None:
    tree = indexed(arch, "none", tmp_path_factory)
    files = sorted(str(p) for p in tree.moddir.rglob("*.ko"))
    n, theirs, mine = run_both(_tool(kmod, "modinfo"), ours("modinfo"), files, tree.root,
                               chunk=1000)
    assert_same(theirs, mine)
    builtin = [Path(line).name[:-3] for line in
               (tree.moddir / "modules.builtin").read_text().split()]
    b = ["-b", str(tree.root), "-k", tree.kver]
    _n, theirs_b, mine_b = run_both([*_tool(kmod, "modinfo"), *b], [*ours("modinfo"), *b],
                                    builtin, tree.root)
    assert_same(theirs_b, mine_b)
    # names and aliases through the indexes, fields, NUL separators
    names = [Path(f).name.split(".")[0] for f in files[::25]]
    for opts in (["-F", "alias"], ["-0"], ["-p"], ["-n"], ["-m"]):
        _n, t, m = run_both([*_tool(kmod, "modinfo"), *b, *opts],
                            [*ours("modinfo"), *b, *opts], names + list(REAL_MODALIASES),
                            tree.root)
        assert_same(t, m)
    print(f"{arch} kmod {kmod}: modinfo identical for {len(files)} module files, "
          f"{len(builtin)} built-ins, {len(names) + len(REAL_MODALIASES)} names/aliases x 5 "
          "option sets")


@pytest.mark.parametrize("comp", ["xz", "zst"])
def test_modinfo_compressed_modules(comp: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    tree = indexed("amd64", comp, tmp_path_factory)
    files = sorted(str(p) for p in tree.moddir.rglob(f"*.ko.{comp}"))[::4]
    _n, theirs, mine = run_both(_tool(34, "modinfo"), ours("modinfo"), files, tree.root)
    assert_same(theirs, mine)
    b = ["-b", str(tree.root), "-k", tree.kver]
    names = [Path(f).name.split(".")[0] for f in files[::10]]
    _n, theirs, mine = run_both([*_tool(34, "modinfo"), *b], [*ours("modinfo"), *b], names,
                                tree.root)
    assert_same(theirs, mine)
    print(f"amd64/{comp}: modinfo identical for {len(files)} files, {len(names)} names")


def test_modinfo_signed_module(tmp_path: Path) -> None:
    import rtree

    signed = rtree.signed_module(tmp_path)
    path = tmp_path / "signed.ko"
    path.write_bytes(signed)
    for kmod in (30, 34):
        _n, theirs, mine = run_both(_tool(kmod, "modinfo"), ours("modinfo"), [str(path)],
                                    tmp_path)
        assert_same(theirs, mine)
        assert b"sig_hashalgo:   sha256\n" in mine


# --- modprobe --------------------------------------------------------------------------------

def modalias_strings(moddir: Path, step: int) -> list[str]:
    """One concrete string per ``step``-th alias pattern of modules.alias ('*' -> '0',
    '?' -> 'X', a bracket -> its first member)."""
    out = []
    lines = (moddir / "modules.alias").read_text(errors="surrogateescape").splitlines()
    for line in lines[1::step]:
        words = line.split()
        if len(words) != 3:
            continue
        s = re.sub(r"\[([^\]]*)\]", lambda m: m.group(1)[:1] if m.group(1)[:1] not in "!^"
                   else "Z", words[1])
        out.append(s.replace("*", "0").replace("?", "X"))
    return out


CONFIG = """\
alias my-e1000 e1000
alias net-pf-* dummy
options e1000 debug=1\tcopybreak=64
options my-e1000 from_alias=1
install dummy /bin/true $CMDLINE_OPTS
remove dummy /bin/true
softdep e1000 pre: dummy loop post: tun
softdep  loop  pre: nosuch
blacklist evbug
weakdep e1000 bonding
bad line
"""


@pytest.mark.parametrize("kmod", [30, 34])
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_modprobe_resolution(arch: str, kmod: int, tmp_path: Path,
                             tmp_path_factory: pytest.TempPathFactory) -> None:
    tree = indexed(arch, "none", tmp_path_factory)
    conf = tmp_path / "conf"
    conf.mkdir()
    if kmod == 34:
        (conf / "test.conf").write_text(CONFIG)
    else:
        # kmod 30 rejects weakdep lines, and Debian built it with debug logging, so libkmod's
        # own messages carry source file:line: leave out the lines it would complain about
        (conf / "test.conf").write_text(CONFIG.replace("weakdep e1000 bonding\n", "")
                                        .replace("bad line\n", ""))
    common = ["-C", str(conf), "-d", str(tree.root), "-S", tree.kver]
    aliases = modalias_strings(tree.moddir, 15)
    names = [p.name.split(".")[0] for p in sorted(tree.moddir.rglob("*.ko"))][::8]
    builtin = [Path(x).name[:-3] for x in (tree.moddir / "modules.builtin").read_text().split()]
    queries = aliases + names + builtin[::5] + list(REAL_MODALIASES) + [
        "my-e1000", "net-pf-5", "e1000", "loop", "symbol:tun_get_socket"]
    for opts in (["-a", "-R"], ["-a", "-D"], ["-a", "-D", "-i"]):
        _n, theirs, mine = run_both([*_tool(kmod, "modprobe"), *common, *opts],
                                    [*ours("modprobe"), *common, *opts], queries, tmp_path)
        assert_same(theirs, mine)
    for single in (["-D", "e1000", "a=1", "b=x y"], ["-D", "my-e1000"], ["-c"],
                   ["-D", "nosuch"], ["-R", "nosuch"], ["-r", "-D", "e1000"]):
        _n, theirs, mine = run_both([*_tool(kmod, "modprobe"), *common],
                                    [*ours("modprobe"), *common], single, tmp_path)
        assert_same(theirs, mine)
    print(f"{arch} kmod {kmod}: modprobe -R/-D/-D -i identical for {len(queries)} queries "
          f"({len(aliases)} generated modalias strings, {len(names)} module names, "
          f"{len(builtin[::5])} built-ins, {len(REAL_MODALIASES)} real device strings), "
          "plus -c and single cases")


@pytest.mark.parametrize("kmod", [30, 34])
def test_modprobe_show_symbols(kmod: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    tree = indexed("amd64", "none", tmp_path_factory)
    files = sorted(str(p) for p in tree.moddir.rglob("*.ko"))[::200]
    for opt in ("--show-modversions", "--show-exports"):
        for f in files + ["/nonexistent.ko"]:
            _n, theirs, mine = run_both([*_tool(kmod, "modprobe"), opt],
                                        [*ours("modprobe"), opt], [f], tree.root)
            if kmod == 30:
                # kmod 5c004af (v31) reports a missing section as ENODATA, not ENOENT;
                # moddep follows kmod 34
                theirs = re.sub(rb"(could not get \w+ of \S+): No such file or directory",
                                rb"\1: No data available", theirs)
            assert_same(theirs, mine)
