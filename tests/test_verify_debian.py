"""verify, why, graph and diff on real Debian kernel packages, with faults injected.

The tree is bookworm's linux-image-*-amd64 (debcache), its indexes written by moddep's depmod
as kmod 30 (bookworm's depmod), and the matching linux-headers package's Module.symvers
installed as Debian does (``/lib/modules/KVER/build`` -> ``/usr/src/linux-headers-KVER``).
Each test injects one fault into a hard-linked copy (files are replaced, never written in
place) and asserts the findings exactly. The diff test compares bookworm's 6.1 package with
trixie's 6.12 one. Network and apt are needed the first time (then cached); without them the
tests skip with the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import debcache
import pytest
from verify_fixtures import check_junit, cli, failing_cases, findings, patch_file, replace_file

from moddep import compat
from moddep.depmod import Request
from moddep.parallel import extract_all
from moddep.tools import diff
from moddep.verify import report
from moddep.verify.firmware import builtin_firmware
from moddep.verify.run import Options, Result
from moddep.verify.run import verify as run_verify

pytestmark = pytest.mark.oracle

FIRMWARE_NOT_CHECKED = ("info", "firmware-not-checked", None, "no firmware directory "
                        "(/lib/firmware, /usr/lib/firmware) in the root: firmware was not "
                        "checked")


@pytest.fixture(scope="module")
def amd64() -> debcache.KernelTree:
    try:
        return debcache.kernel_tree("amd64")
    except debcache.Unavailable as e:
        pytest.skip(f"amd64 kernel tree unavailable: {e}")


@pytest.fixture(scope="module")
def symvers(amd64: debcache.KernelTree) -> Path:
    """Module.symvers of the linux-headers package matching the image."""
    name = f"linux-headers-{amd64.kver}"
    try:
        (deb,) = debcache.download_debs([name], "amd64")
        dest = debcache.extract_deb(deb, debcache.CACHE / "work" / deb.stem)
    except debcache.Unavailable as e:
        pytest.skip(f"{name} unavailable: {e}")
    path = dest / "usr" / "src" / name / "Module.symvers"
    if not path.is_file():
        pytest.skip(f"{name} has no Module.symvers")
    return path


@pytest.fixture(scope="module")
def pristine(amd64: debcache.KernelTree, symvers: Path,
             tmp_path_factory: pytest.TempPathFactory) -> debcache.KernelTree:
    work = debcache.copy_tree(amd64, tmp_path_factory.mktemp("debian") / "pristine")
    assert cli("depmod", "--no-cache", "--kmod-version", "30", "-b", str(work.root),
               work.kver).rc == 0
    headers = work.root / "usr" / "src" / f"linux-headers-{work.kver}"
    headers.mkdir(parents=True)
    shutil.copy(symvers, headers / "Module.symvers")
    os.symlink(f"/usr/src/linux-headers-{work.kver}", work.moddir / "build")
    return work


@pytest.fixture
def tree(pristine: debcache.KernelTree, tmp_path: Path) -> debcache.KernelTree:
    return debcache.copy_tree(pristine, tmp_path / "root")


def verify(tree: debcache.KernelTree, *args: str) -> tuple[int, dict]:
    run = cli("verify", "--format", "json", "-b", str(tree.root), *args, tree.kver)
    assert run.rc in (0, 1), run.err
    return run.rc, json.loads(run.out)


def _result(tree: debcache.KernelTree) -> Result:
    """One verify run in-process (for several report formats of the same run)."""
    req = Request(kver=tree.kver.encode(), gen=compat.generation(30),
                  basedir=str(tree.root).encode())
    return run_verify(Options(req))


def _vmlinux_exports(symvers: Path) -> int:
    return sum(1 for line in symvers.read_text().splitlines() if line.split("\t")[2:3] ==
               ["vmlinux"])


def test_pristine_tree_is_clean(tree: debcache.KernelTree, symvers: Path) -> None:
    t0 = time.monotonic()
    rc, doc = verify(tree)
    elapsed = time.monotonic() - t0
    assert rc == 0
    assert {f["status"] for f in doc["files"]} == {"identical"} and len(doc["files"]) == 10
    assert findings(doc) == [FIRMWARE_NOT_CHECKED]
    assert doc["modules"] == 4022 or doc["modules"] > 3000
    assert doc["kmod_version"] == 30
    assert doc["kernel_symbols"] == (f"/lib/modules/{tree.kver}/build/Module.symvers "
                                     f"({_vmlinux_exports(symvers)} symbols, with CRCs)")
    print(f"\nverify on the full amd64 tree ({doc['modules']} modules): {doc['seconds']:.1f}s "
          f"inside, {elapsed:.1f}s with the CLI")
    assert elapsed < 120


def test_pristine_without_headers(tree: debcache.KernelTree) -> None:
    """Debian's own /boot/System.map is a placeholder: not used, said so."""
    os.unlink(tree.moddir / "build")
    rc, doc = verify(tree)
    assert rc == 0
    assert doc["kernel_symbols"] is None
    assert doc["notes"] == [f"/boot/System.map-{tree.kver} lists no exported kernel symbol (a "
                            "placeholder?): not used"]
    assert [f[1] for f in findings(doc)] == ["symbols-not-checked", "firmware-not-checked"]


PVPANIC = "kernel/drivers/misc/pvpanic/pvpanic.ko"


def test_module_deleted_that_others_need(tree: debcache.KernelTree) -> None:
    (tree.moddir / PVPANIC).unlink()
    rc, doc = verify(tree)
    assert rc == 1
    assert {f["name"]: f["status"] for f in doc["files"] if f["status"] != "identical"} == {
        "modules.dep": "different", "modules.dep.bin": "different",
        "modules.alias.bin": "different", "modules.symbols": "different",
        "modules.symbols.bin": "different"}
    shifted = next(f["message"] for f in doc["findings"] if f.get("file") == "modules.alias.bin")
    assert re.fullmatch(r"modules.alias.bin does not match the modules: same entries, but \d+ "
                        r"have other priorities \(module positions\): a module was added or "
                        r"removed, or the module order changed", shifted)
    assert [f for f in findings(doc) if f[3] != shifted] == [
        ("error", "index-different", None, "modules.dep does not match the modules: 1 module, "
         "2 dependencies differ"),
        ("error", "index-different", None, "modules.dep.bin does not match the modules: "
         "1 module, 2 dependencies differ"),
        ("error", "index-different", None, "modules.symbols does not match the modules: "
         "2 symbols differ"),
        ("error", "index-different", None, "modules.symbols.bin does not match the modules: "
         "2 symbols differ"),
        ("error", "unresolved-symbol", "pvpanic_mmio",
         "needs 2 unknown symbols: pvpanic_dev_groups, devm_pvpanic_probe"),
        ("error", "unresolved-symbol", "pvpanic_pci",
         "needs 2 unknown symbols: pvpanic_dev_groups, devm_pvpanic_probe"),
        ("warning", "depends-mismatch", "pvpanic_mmio",
         "modinfo depends= lists pvpanic, not installed"),
        ("warning", "depends-mismatch", "pvpanic_pci",
         "modinfo depends= lists pvpanic, not installed"),
        ("info", "order-stale", None, f"modules.order lists 1 module not installed: {PVPANIC}"),
        FIRMWARE_NOT_CHECKED]
    dep = next(f for f in doc["findings"] if f.get("file") == "modules.dep")
    assert dep["details"] == [
        f"lists module pvpanic ({PVPANIC}), which is not in the tree",
        "pvpanic_mmio: lists dependency pvpanic that the modules do not give",
        "pvpanic_pci: lists dependency pvpanic that the modules do not give"]
    syms = next(f for f in doc["findings"] if f.get("file") == "modules.symbols")
    assert syms["details"] == ["gives pvpanic 2 symbols no module exports: devm_pvpanic_probe, "
                               "pvpanic_dev_groups"]
    unres = next(f for f in doc["findings"] if f["code"] == "unresolved-symbol")
    assert unres["details"] == ["the installed modules.symbols gives pvpanic_dev_groups, "
                                "devm_pvpanic_probe to pvpanic, which is not in the tree"]
    # the same run as people and CI see it (the reports of one in-process run)
    result = _result(tree)
    lines = report.text(result).splitlines()
    assert "error: unresolved-symbol (2)" in lines
    assert "  pvpanic_pci: needs 2 unknown symbols: pvpanic_dev_groups, devm_pvpanic_probe" \
        in lines
    xml = check_junit(report.junit(result))
    assert failing_cases(xml) == {
        "indexes": [(n, "index-different") for n in ("modules.dep", "modules.dep.bin",
                                                     "modules.alias.bin", "modules.symbols",
                                                     "modules.symbols.bin")],
        "symbols": [("pvpanic_mmio", "unresolved-symbol"),
                    ("pvpanic_pci", "unresolved-symbol")]}


IGB = "kernel/drivers/net/ethernet/intel/igb/igb.ko"


def test_stale_modules_dep(tree: debcache.KernelTree) -> None:
    dep = tree.moddir / "modules.dep"
    line = (f"{IGB}: kernel/drivers/dca/dca.ko kernel/drivers/i2c/algos/i2c-algo-bit.ko\n"
            .encode())
    text = dep.read_bytes()
    assert text.count(line) == 1
    replace_file(dep, text.replace(line, f"{IGB}: kernel/drivers/dca/dca.ko\n".encode()))
    rc, doc = verify(tree)
    assert rc == 1
    assert findings(doc) == [
        ("error", "index-different", None, "modules.dep does not match the modules: "
         "1 dependency differs"),
        ("error", "index-disagree", None, "modules.dep.bin and modules.dep disagree: "
         "1 dependency differs"),
        FIRMWARE_NOT_CHECKED]
    assert doc["findings"][0]["details"] == ["igb: lacks dependency i2c_algo_bit"]
    assert doc["findings"][1]["details"] == ["+ only in modules.dep, - only in modules.dep.bin:",
                                             "igb: - i2c_algo_bit"]


def test_corrupt_bin(tree: debcache.KernelTree) -> None:
    path = tree.moddir / "modules.symbols.bin"
    data = path.read_bytes()
    half = data[:len(data) // 2]  # post-order (kmod 30): the root node was at the end
    replace_file(path, half)
    rc, doc = verify(tree)
    assert rc == 1
    root = int.from_bytes(data[8:12], "big")
    assert findings(doc) == [
        ("error", "index-corrupt", None, f"modules.symbols.bin is corrupt: node reference "
         f"0x{root:08x} (root reference at offset 8) points to offset {root & 0x0FFFFFFF}, "
         f"outside the node area 12..{len(half) - 1}"),
        FIRMWARE_NOT_CHECKED]


def _install_all_firmware(tree: debcache.KernelTree) -> None:
    """/lib/firmware with every file a module or built-in names: plain, .xz, .zst, absolute
    links into another directory; patterns get one matching name."""
    paths = sorted(str(p).encode() for p in tree.moddir.rglob("*.ko"))
    names: set[bytes] = set()
    for d in extract_all(paths):
        names.update(d.values(b"firmware"))
    for fws in builtin_firmware((tree.moddir / "modules.builtin.modinfo").read_bytes()).values():
        names.update(fws)
    fw = tree.root / "lib" / "firmware"
    for i, name in enumerate(sorted(names)):
        concrete = re.sub(rb"\[[^]]*\]", b"x", name).replace(b"*", b"x").replace(b"?", b"x")
        path = fw / os.fsdecode(concrete)
        path.parent.mkdir(parents=True, exist_ok=True)
        if i % 4 == 1:
            path = path.with_name(path.name + ".xz")
        elif i % 4 == 2:
            path = path.with_name(path.name + ".zst")
        elif i % 4 == 3:
            real = tree.root / "usr" / "share" / "fw" / os.fsdecode(concrete)
            real.parent.mkdir(parents=True, exist_ok=True)
            real.write_bytes(b"")
            os.symlink("/usr/share/fw/" + os.fsdecode(concrete), path)
            continue
        path.write_bytes(b"")


def test_firmware_file_removed(tree: debcache.KernelTree) -> None:
    _install_all_firmware(tree)
    rc, doc = verify(tree)
    assert rc == 0 and findings(doc) == []
    assert doc["firmware_dirs"] == ["/lib/firmware"]
    typhoon = [p for p in (tree.root / "lib/firmware/3com").iterdir()
               if p.name.startswith("typhoon.bin")]
    assert len(typhoon) == 1
    typhoon[0].unlink()
    rc, doc = verify(tree)
    assert rc == 0  # a warning: below --fail-on error
    assert findings(doc) == [("warning", "firmware-missing", "typhoon",
                              "1 firmware file named by the module not found: 3com/typhoon.bin")]


def test_vermagic_rewritten(tree: debcache.KernelTree) -> None:
    kver = tree.kver.encode()
    other = re.sub(rb"-(\d+)-", lambda m: b"-%d-" % (int(m.group(1)) - 1), kver, count=1)
    patch_file(tree.moddir / "kernel/drivers/net/dummy.ko", b"vermagic=" + kver + b" ",
               b"vermagic=" + other + b" ")
    rc, doc = verify(tree)
    assert rc == 1
    assert findings(doc) == [
        ("error", "vermagic-mismatch", "dummy", f"vermagic '{other.decode()} SMP preempt "
         f"mod_unload modversions' is for kernel {other.decode()}, not {tree.kver}"),
        FIRMWARE_NOT_CHECKED]


def test_depends_mismatch(tree: debcache.KernelTree) -> None:
    patch_file(tree.moddir / IGB, b"depends=dca,i2c-algo-bit\0", b"depends=dcb,i2c-algo-bit\0")
    rc, doc = verify(tree)
    assert rc == 0
    assert findings(doc) == [
        ("warning", "depends-mismatch", "igb",
         "modinfo depends= does not list dca; lists dcb, not installed"),
        FIRMWARE_NOT_CHECKED]
    assert doc["findings"][0]["details"] == [
        "uses dca's dca_remove_requester, dca_add_requester, dca_unregister_notify, "
        "dca_register_notify, dca3_get_tag"]


def test_duplicate_module(tree: debcache.KernelTree) -> None:
    (tree.moddir / "updates").mkdir()
    os.link(tree.moddir / "kernel/drivers/net/dummy.ko", tree.moddir / "updates/dummy.ko")
    assert cli("depmod", "--no-cache", "--kmod-version", "30", "-b", str(tree.root),
               tree.kver).rc == 0
    rc, doc = verify(tree)
    assert rc == 0
    assert findings(doc) == [
        ("warning", "duplicate-module", "dummy", "2 files have this module name: "
         "kernel/drivers/net/dummy.ko, updates/dummy.ko; depmod uses updates/dummy.ko"),
        ("info", "not-in-order", "dummy", "updates/dummy.ko is not in modules.order"),
        FIRMWARE_NOT_CHECKED]


def test_why_and_graph(pristine: debcache.KernelTree, tmp_path: Path) -> None:
    base = ["-b", str(pristine.root), "-k", pristine.kver]
    run = cli("why", *base, "snd-hda-intel", "soundcore")
    assert run.rc == 0
    lines = run.out.splitlines()
    assert lines[0] == "snd_hda_intel needs soundcore indirectly: snd_hda_intel -> snd -> " \
                       "soundcore"
    assert lines[1].startswith("  snd_hda_intel uses snd's ") and "snd_card_new" in lines[1]
    assert lines[2].startswith("  snd uses soundcore's ") and "sound_class" in lines[2]
    run = cli("why", *base, "igb", "i2c_algo_bit")
    assert run.out == ("igb needs i2c_algo_bit directly: it uses 1 symbol of i2c_algo_bit:\n"
                       "  i2c_bit_add_bus\n")
    run = cli("why", *base, "--alias", "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00")
    assert run.out == ("pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00 matches 1 "
                       "module:\n  e1000e  pci:v00008086d000010D3sv*sd*bc*sc*i*\n")
    if shutil.which("dot") is None:
        pytest.skip("Graphviz 'dot' is not installed: graph not rendered")
    svg = tmp_path / "snd.svg"
    assert cli("graph", *base, "-o", str(svg), "snd_hda_intel").rc == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    for name in ("snd_hda_intel", "snd_hda_codec", "snd_pcm", "soundcore"):
        assert f">{name}</text>" in text


def _trixie_tree() -> tuple[Path, str]:
    """trixie's amd64 kernel package (a newer major version), unpacked (not indexed)."""
    try:
        fields = debcache._package_fields("linux-image-amd64", "amd64", "trixie")
        image = next(n for n in debcache._depends_names(fields.get("depends", ""))
                     if n.startswith("linux-image-"))
        name = f"{image}-unsigned"
        (deb,) = debcache.download_debs([name], "amd64", "trixie")
        root = debcache.extract_deb(deb, debcache.CACHE / "work" / deb.stem)
    except (debcache.Unavailable, StopIteration) as e:
        pytest.skip(f"trixie's amd64 kernel unavailable: {e}")
    (moddir,) = [p for p in (root / "usr" / "lib" / "modules").iterdir() if p.is_dir()]
    return moddir, image


def test_diff_two_kernel_package_versions(amd64: debcache.KernelTree) -> None:
    new_dir, image = _trixie_tree()
    # in-process, to compute each side once (the CLI is tested on synthetic trees)
    old = diff.load(str(amd64.moddir), False, None, None)
    new = diff.load(str(new_dir), False, None, None)
    assert (old.how, new.how) == ("computed from the modules", "computed from the modules")
    changes = diff.changes(old, new)
    doc = json.loads(diff.to_json(old, new, changes))
    added = {c["module"] for c in doc["changes"] if c["facet"] == "module" and c["op"] == "+"}
    removed = {c["module"] for c in doc["changes"] if c["facet"] == "module" and c["op"] == "-"}
    # drivers that arrived after 6.1, and drivers dropped before 6.12
    assert {"bcachefs", "ath12k", "amd_pmf", "btintel_pcie"} <= added
    assert {"airo", "atmel", "act_ipt"} <= removed
    assert "fuse: module -> built-in" in doc["transitions"]
    assert doc["old"]["modules"] == 4022 or doc["old"]["modules"] > 3000
    recompressed = [c for c in doc["changes"] if c["facet"] == "compression"]
    assert recompressed and {(c["old"], c["new"]) for c in recompressed} == {(".ko", ".ko.xz")}
    gained = {c["item"] for c in doc["changes"] if c["facet"] == "alias" and c["op"] == "+"
              and c["module"] == "ath12k"}
    assert any(a.startswith("pci:v000017CBd00001107") for a in gained), sorted(gained)[:5]
    text = diff.text(old, new, changes, None, summary=True)
    assert re.search(r"^modules: \d+ added, \d+ removed", text, re.M)
    assert re.search(r"^aliases \(hardware support\): \d+ gained, \d+ lost$", text, re.M)
    assert "  + bcachefs (kernel/fs/bcachefs/bcachefs.ko.xz)" in \
        diff.text(old, new, changes, None).splitlines()
    print(f"\n{image}: {len(added)} modules added, {len(removed)} removed since {amd64.kver}")
