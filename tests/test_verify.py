"""``moddep verify`` on synthetic trees: every check, every report format, exit codes.

One small tree (four modules, a built-in, kernel symbols, firmware in every supported form)
is verified clean, then each fault is injected into a fresh copy and the findings are
asserted exactly. Real Debian trees: tests/test_verify_debian.py.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
from pathlib import Path

import pytest
from synth import KVER
from verify_fixtures import (
    check_junit,
    cli,
    depmod,
    failing_cases,
    findings,
    install_symvers,
    mod,
    patch_file,
    replace_file,
    tree,
)

from moddep.verify import compare
from moddep.verify.findings import CHECKS, Finding, at_least

PRINTK = 0xAAAA0001
MODULES = {
    "kernel/net/core-a.ko": mod([b"fa"], [b"printk"], versions={b"printk": PRINTK},
                                depends=[b""]),
    "kernel/net/user-b.ko": mod([b"fb"], [b"fa", b"printk"],
                                versions={b"fa": 0x1000, b"printk": PRINTK},
                                depends=[b"core-a"], alias=[b"pci:v00001234d*sv*"],
                                firmware=[b"vendor/b.bin"]),
    "kernel/drivers/c.ko": mod([], [b"fb", b"fa"], versions={b"fb": 0x1000, b"fa": 0x1000},
                               depends=[b"user-b,core-a"], softdep=[b"pre: core-a"],
                               firmware=[b"c-fw-*.bin"], alias=[b"usb:v1234p*"]),
    "kernel/drivers/d.ko": mod([b"fd"], [], depends=[b""], firmware=[b"d.fw", b"rel.fw"],
                               alias=[b"char-major-10-200", b"devname:dd"]),
}
BUILTIN = b"kernel/lib/e.ko\n"
BUILTIN_MODINFO = b"e.alias=acpi*:E0001:*\0e.firmware=e/builtin.fw\0e.license=GPL\0"
SYMVERS = b"0xaaaa0001\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x00000000\tx\tdrivers/x\tEXPORT\t\n"


def _firmware(root: Path) -> None:
    """One file per supported form: .xz in /lib/firmware, .zst in /usr/lib/firmware (a
    pattern), an absolute link resolved in the root, a relative link, a built-in's file."""
    fw = root / "lib" / "firmware"
    (fw / "vendor").mkdir(parents=True)
    (fw / "vendor" / "b.bin.xz").write_bytes(lzma.compress(b"b"))
    (root / "usr" / "lib" / "firmware").mkdir(parents=True)
    (root / "usr" / "lib" / "firmware" / "c-fw-01.bin.zst").write_bytes(b"(\xb5/\xfd")
    (root / "opt" / "fw").mkdir(parents=True)
    (root / "opt" / "fw" / "d.fw").write_bytes(b"d")
    os.symlink("/opt/fw/d.fw", fw / "d.fw")
    (fw / "real").mkdir()
    (fw / "real" / "rel.fw").write_bytes(b"r")
    os.symlink("real/rel.fw", fw / "rel.fw")
    (fw / "e").mkdir()
    (fw / "e" / "builtin.fw").write_bytes(b"e")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verify") / "pristine"
    tree(root, MODULES, builtin=BUILTIN, builtin_modinfo=BUILTIN_MODINFO)
    install_symvers(root, KVER, SYMVERS)
    _firmware(root)
    depmod(root)
    return root


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "root"
    shutil.copytree(pristine, dst, symlinks=True)
    return dst


def moddir(root: Path) -> Path:
    return root / "lib" / "modules" / KVER


def verify(root: Path, *args: str) -> tuple[int, dict]:
    run = cli("verify", "--format", "json", "-b", str(root), *args, KVER)
    assert run.rc in (0, 1), run.err
    return run.rc, json.loads(run.out)


def statuses(doc: dict) -> dict[str, str]:
    return {f["name"]: f["status"] for f in doc["files"]}


ALL_IDENTICAL = {n: "identical" for n in (
    "modules.dep", "modules.dep.bin", "modules.alias", "modules.alias.bin", "modules.softdep",
    "modules.weakdep", "modules.symbols", "modules.symbols.bin", "modules.builtin.bin",
    "modules.builtin.alias.bin", "modules.devname")}


# -- clean ------------------------------------------------------------------------------------

def test_clean_tree_has_no_finding(root: Path) -> None:
    rc, doc = verify(root)
    assert rc == 0
    assert statuses(doc) == ALL_IDENTICAL
    assert findings(doc) == []
    assert doc["kernel_symbols"] == (f"/lib/modules/{KVER}/build/Module.symvers (1 symbols, "
                                     "with CRCs)")
    assert doc["firmware_dirs"] == ["/lib/firmware", "/usr/lib/firmware"]
    assert doc["kmod_version"] == 34 and "pre-order" in doc["generation_reason"]
    assert doc["result"] == "pass"


def test_clean_text_report(root: Path) -> None:
    run = cli("verify", "-b", str(root), KVER)
    assert run.rc == 0 and run.err == ""
    lines = run.out.splitlines()
    assert lines[0] == f"moddep verify: {moddir(root)}"
    assert "index files: 11 identical" in lines
    assert "findings: 0 errors, 0 warnings, 0 infos" in lines
    assert lines[-1].startswith("result: PASS (--fail-on error); ")


# -- symbols ----------------------------------------------------------------------------------

def test_module_deleted_that_others_need(root: Path) -> None:
    (moddir(root) / "kernel/net/core-a.ko").unlink()
    rc, doc = verify(root)
    assert rc == 1
    st = statuses(doc)
    assert {n for n, s in st.items() if s != "identical"} == {
        "modules.dep", "modules.dep.bin", "modules.alias.bin", "modules.symbols",
        "modules.symbols.bin"}
    assert findings(doc) == [
        ("error", "index-different", None, "modules.dep does not match the modules: 1 module, "
         "2 dependencies differ"),
        ("error", "index-different", None, "modules.dep.bin does not match the modules: "
         "1 module, 2 dependencies differ"),
        ("error", "index-different", None, "modules.alias.bin does not match the modules: same "
         "entries, but 4 have other priorities (module positions): a module was added or "
         "removed, or the module order changed"),
        ("error", "index-different", None, "modules.symbols does not match the modules: "
         "1 symbol differs"),
        ("error", "index-different", None, "modules.symbols.bin does not match the modules: "
         "1 symbol differs"),
        ("error", "unresolved-symbol", "c", "needs 1 unknown symbol: fa"),
        ("error", "unresolved-symbol", "user_b", "needs 1 unknown symbol: fa"),
        ("warning", "depends-mismatch", "c", "modinfo depends= lists core_a, not installed"),
        ("warning", "depends-mismatch", "user_b",
         "modinfo depends= lists core_a, not installed"),
        ("info", "order-stale", None, "modules.order lists 1 module not installed: "
         "kernel/net/core-a.ko"),
    ]
    dep = next(f for f in doc["findings"] if f["file"] == "modules.dep" if "file" in f)
    assert dep["details"] == [
        "lists module core_a (kernel/net/core-a.ko), which is not in the tree",
        "c: lists dependency core_a that the modules do not give",
        "user_b: lists dependency core_a that the modules do not give"]
    unres = next(f for f in doc["findings"] if f["code"] == "unresolved-symbol")
    assert unres["items"] == ["fa"]
    assert unres["details"] == ["the installed modules.symbols gives fa to core_a, which is "
                                "not in the tree"]


def test_unresolved_without_kernel_symbols_uses_installed_index(root: Path) -> None:
    os.unlink(moddir(root) / "build")
    (moddir(root) / "kernel/net/core-a.ko").unlink()
    _rc, doc = verify(root)
    got = [f for f in findings(doc) if f[1] in ("unresolved-symbol", "symbols-not-checked")]
    assert got == [
        ("error", "unresolved-symbol", "c", "needs 1 unknown symbol: fa"),
        ("error", "unresolved-symbol", "user_b", "needs 1 unknown symbol: fa"),
        ("info", "symbols-not-checked", None, "no kernel symbol list (Module.symvers, "
         "vmlinux.symvers, System.map) found in the root or given with -E/-F: unresolved "
         "symbols were checked only against the installed modules.symbols, kernel CRCs not at "
         "all")]  # printk is not reported: without kernel symbols it cannot be judged


def test_unknown_kernel_symbol_and_crc_mismatch(root: Path) -> None:
    bad = b"0xaaaa0002\tprintk\tvmlinux\tEXPORT_SYMBOL\t\n0x00000001\tkfree\tvmlinux\tE\t\n"
    replace_file(root / f"usr/src/linux-headers-{KVER}/Module.symvers", bad)
    replace_file(moddir(root) / "kernel/drivers/d.ko",
                 mod([b"fd"], [b"kmalloc"], depends=[b""], firmware=[b"d.fw", b"rel.fw"],
                     alias=[b"char-major-10-200", b"devname:dd"]))
    _rc, doc = verify(root)
    assert [f for f in findings(doc) if f[1] in ("unresolved-symbol", "crc-mismatch")] == [
        ("error", "unresolved-symbol", "d", "needs 1 unknown symbol: kmalloc"),
        ("error", "crc-mismatch", "core_a", "disagrees about the version of 1 symbol of "
         f"vmlinux (/lib/modules/{KVER}/build/Module.symvers): printk"),
        ("error", "crc-mismatch", "user_b", "disagrees about the version of 1 symbol of "
         f"vmlinux (/lib/modules/{KVER}/build/Module.symvers): printk")]
    crc = next(f for f in doc["findings"] if f["code"] == "crc-mismatch")
    assert crc["details"] == ["printk: built for 0xaaaa0001, vmlinux has 0xaaaa0002"]


def test_crc_mismatch_between_modules(root: Path) -> None:
    replace_file(moddir(root) / "kernel/net/core-a.ko",
                 mod([b"fa"], [b"printk"], versions={b"printk": PRINTK}, depends=[b""],
                     crcs={b"fa": 0x2000}))
    depmod(root)
    _rc, doc = verify(root)
    assert findings(doc) == [
        ("error", "crc-mismatch", "c", "disagrees about the version of 1 symbol of core_a: fa"),
        ("error", "crc-mismatch", "user_b",
         "disagrees about the version of 1 symbol of core_a: fa")]


def test_placeholder_system_map_is_not_used(root: Path) -> None:
    os.unlink(moddir(root) / "build")
    (root / "boot").mkdir()
    (root / "boot" / f"System.map-{KVER}").write_bytes(
        b"ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
    _rc, doc = verify(root)
    assert doc["kernel_symbols"] is None
    assert doc["notes"][0] == (f"/boot/System.map-{KVER} lists no exported kernel symbol (a "
                               "placeholder?): not used")
    (root / "boot" / f"System.map-{KVER}").write_bytes(
        b"ffffffff81000000 T printk\nffffffff82000000 r __ksymtab_printk\n")
    _rc, doc = verify(root)
    assert doc["kernel_symbols"] == f"/boot/System.map-{KVER} (1 symbols, names only, no CRCs)"
    assert findings(doc) == []


def test_explicit_symbol_files(root: Path, tmp_path: Path) -> None:
    sysmap = tmp_path / "System.map"
    sysmap.write_bytes(b"0 r __ksymtab_other\n")
    _rc, doc = verify(root, "-F", str(sysmap))
    assert doc["kernel_symbols"] == f"{sysmap} (1 symbols, names only, no CRCs)"
    assert [f[2:] for f in findings(doc)] == [("core_a", "needs 1 unknown symbol: printk"),
                                              ("user_b", "needs 1 unknown symbol: printk")]
    run = cli("verify", "-b", str(root), "-E", str(tmp_path / "nope"), KVER)
    assert run.rc == 2
    assert run.err == (f"verify: ERROR: could not read kernel symbols from {tmp_path}/nope: "
                       "No such file or directory\n")


# -- modules ----------------------------------------------------------------------------------

def test_vermagic_rewritten_and_missing(root: Path) -> None:
    patch_file(moddir(root) / "kernel/net/user-b.ko", b"vermagic=4.4.4 ", b"vermagic=4.4.5 ")
    replace_file(moddir(root) / "kernel/drivers/d.ko",
                 mod([b"fd"], [], depends=[b""], firmware=[b"d.fw", b"rel.fw"],
                     alias=[b"char-major-10-200", b"devname:dd"], vermagic=None))
    rc, doc = verify(root)
    assert rc == 1
    assert findings(doc) == [
        ("error", "vermagic-mismatch", "user_b", "vermagic '4.4.5 SMP mod_unload modversions' "
         "is for kernel 4.4.5, not 4.4.4"),
        ("warning", "vermagic-missing", "d", "kernel/drivers/d.ko has no vermagic")]


def test_unreadable_module(root: Path) -> None:
    replace_file(moddir(root) / "kernel/drivers/d.ko", b"\x7fELF garbage")
    _rc, doc = verify(root)
    got = [f for f in findings(doc) if f[1] not in ("index-different",)]
    assert got[0][:3] == ("error", "module-unreadable", "d")
    assert got[0][3].startswith("kernel/drivers/d.ko cannot be read as a module: ")


def test_duplicate_module_names(root: Path) -> None:
    (moddir(root) / "updates").mkdir()
    shutil.copy(moddir(root) / "kernel/drivers/d.ko", moddir(root) / "updates/d.ko")
    depmod(root)  # indexes now name updates/d.ko (depmod's default search: updates first)
    rc, doc = verify(root)
    assert rc == 0
    assert findings(doc) == [
        ("warning", "duplicate-module", "d", "2 files have this module name: "
         "kernel/drivers/d.ko, updates/d.ko; depmod uses updates/d.ko"),
        ("info", "not-in-order", "d", "updates/d.ko is not in modules.order")]
    rc, doc = verify(root, "--fail-on", "warning")
    assert rc == 1 and doc["result"] == "fail"


def test_modules_order(root: Path) -> None:
    order = moddir(root) / "modules.order"
    replace_file(order, b"kernel/net/core-a.ko\nkernel/net/user-b.ko\nkernel/drivers/c.ko\n"
                        b"kernel/gone.ko\n")
    depmod(root)
    _rc, doc = verify(root)
    assert findings(doc) == [
        ("warning", "not-in-order", "d", "kernel/drivers/d.ko is not in modules.order"),
        ("info", "order-stale", None,
         "modules.order lists 1 module not installed: kernel/gone.ko")]
    order.unlink()
    depmod(root)
    _rc, doc = verify(root)
    assert findings(doc) == [("warning", "order-missing", None, "modules.order is missing: "
                              "depmod orders modules by name hash only")]


def test_depends_disagreeing_with_symbols(root: Path) -> None:
    patch_file(moddir(root) / "kernel/drivers/c.ko", b"depends=user-b,core-a",
               b"depends=user-b,core-d")
    replace_file(moddir(root) / "kernel/drivers/d.ko",
                 mod([b"fd"], [], depends=[b"c"], firmware=[b"d.fw", b"rel.fw"],
                     alias=[b"char-major-10-200", b"devname:dd"]))
    _rc, doc = verify(root)
    assert findings(doc) == [
        ("warning", "depends-mismatch", "c",
         "modinfo depends= does not list core_a; lists core_d, not installed"),
        ("warning", "depends-mismatch", "d",
         "modinfo depends= lists c, whose symbols it does not use")]
    c = next(f for f in doc["findings"] if f.get("module") == "c")
    assert c["details"] == ["uses core_a's fa"] and c["items"] == ["core_a", "core_d"]


def test_dependency_cycle(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tree(root, {"kernel/a.ko": mod([b"fa"], [b"fb"], depends=[b"b"]),
                "kernel/b.ko": mod([b"fb"], [b"fa"], depends=[b"a"]),
                "kernel/c.ko": mod([], [b"fa"], depends=[b"a"])})
    rc, doc = verify(root, "--no-firmware")
    assert rc == 1
    assert doc["files"] == []  # depmod wrote nothing, and nothing could be compared
    assert findings(doc) == [
        ("error", "dependency-cycle", "a", "dependency cycle: a -> b -> a"),
        ("info", "symbols-not-checked", None, "no kernel symbol list (Module.symvers, "
         "vmlinux.symvers, System.map) found in the root or given with -E/-F: unresolved "
         "symbols were checked only against the installed modules.symbols, kernel CRCs not at "
         "all")]
    assert doc["findings"][0]["details"] == ["a uses b's fb", "b uses a's fa"]
    assert doc["notes"] == ["depmod refuses this tree (dependency cycles): the index files were "
                            "not compared"]
    run = cli("verify", "-b", str(root), "--no-firmware", KVER)
    assert "index files: not compared (depmod refuses this tree)" in run.out.splitlines()


# -- firmware ---------------------------------------------------------------------------------

def test_firmware_removed(root: Path) -> None:
    (root / "lib/firmware/vendor/b.bin.xz").unlink()
    (root / "opt/fw/d.fw").unlink()  # the link /lib/firmware/d.fw now leads nowhere
    (root / "lib/firmware/e/builtin.fw").unlink()
    rc, doc = verify(root)
    assert rc == 0  # warnings only
    assert findings(doc) == [
        ("warning", "firmware-missing", "d",
         "1 firmware file named by the module not found: d.fw"),
        ("warning", "firmware-missing", "e",
         "1 firmware file named by the built-in module not found: e/builtin.fw"),
        ("warning", "firmware-missing", "user_b",
         "1 firmware file named by the module not found: vendor/b.bin")]
    d = next(f for f in doc["findings"] if f.get("module") == "d")
    assert d["details"] == ["/lib/firmware/d.fw is a link to a file that does not exist"]
    assert cli("verify", "-b", str(root), "--fail-on", "warning", KVER).rc == 1


def test_firmware_not_checked_without_firmware_dirs(root: Path) -> None:
    shutil.rmtree(root / "lib" / "firmware")
    shutil.rmtree(root / "usr" / "lib" / "firmware")
    _rc, doc = verify(root)
    assert findings(doc) == [("info", "firmware-not-checked", None, "no firmware directory "
                              "(/lib/firmware, /usr/lib/firmware) in the root: firmware was "
                              "not checked")]
    _rc, doc = verify(root, "--no-firmware")
    assert findings(doc) == []


# -- index files ------------------------------------------------------------------------------

def test_stale_modules_dep(root: Path) -> None:
    dep = moddir(root) / "modules.dep"
    text = dep.read_bytes()
    line = b"kernel/drivers/c.ko: kernel/net/user-b.ko "
    assert line + b"kernel/net/core-a.ko\n" in text
    replace_file(dep, text.replace(line + b"kernel/net/core-a.ko", line + b"kernel/drivers/d.ko"))
    rc, doc = verify(root)
    assert rc == 1
    assert findings(doc) == [
        ("error", "index-different", None, "modules.dep does not match the modules: "
         "2 dependencies differ"),
        ("error", "index-disagree", None, "modules.dep.bin and modules.dep disagree: "
         "2 dependencies differ")]
    diff, disagree = doc["findings"]
    assert diff["details"] == ["c: lacks dependency core_a; lists dependency d that the "
                               "modules do not give"]
    assert disagree["details"] == ["+ only in modules.dep, - only in modules.dep.bin:",
                                   "c: + d, - core_a"]


def test_corrupt_bin(root: Path) -> None:
    path = moddir(root) / "modules.alias.bin"
    data = bytearray(path.read_bytes())
    data[8:12] = (0x20000000 | len(data) + 100).to_bytes(4, "big")  # root beyond the end
    replace_file(path, bytes(data))
    rc, doc = verify(root)
    assert rc == 1
    assert statuses(doc)["modules.alias.bin"] == "different"
    assert findings(doc) == [
        ("error", "index-corrupt", None, "modules.alias.bin is corrupt: node reference "
         f"0x{0x20000000 | len(data) + 100:08x} (root reference at offset 8) points to offset "
         f"{len(data) + 100}, outside the node area 12..{len(data) - 1}")]


def test_missing_and_extra_index_files(root: Path) -> None:
    (moddir(root) / "modules.symbols.bin").unlink()
    rc, doc = verify(root)
    assert rc == 1
    assert findings(doc) == [("error", "index-missing", None, "modules.symbols.bin is missing")]
    assert statuses(doc)["modules.symbols.bin"] == "missing"
    depmod(root, kmod=30)  # kmod 30 writes no modules.weakdep: kmod 34's one stays
    rc, doc = verify(root)
    assert doc["kmod_version"] == 33 and findings(doc) == []  # post-order, modules.weakdep
    rc, doc = verify(root, "--kmod-version", "30")
    assert findings(doc) == [("warning", "index-extra", None, "modules.weakdep exists, but "
                              "kmod 30's depmod does not write it")]
    assert rc == 0


def test_layout_only_difference_is_a_warning(root: Path) -> None:
    rc, doc = verify(root, "--kmod-version", "30")  # files written as kmod 34 (pre-order)
    got = findings(doc)
    assert {f[0] for f in got} == {"warning"} and rc == 0
    assert [f[3].split(":")[0] for f in got if f[1] == "index-different"] == [
        "modules.dep.bin does not match the modules", "modules.alias.bin does not match the "
        "modules", "modules.symbols.bin does not match the modules", "modules.builtin.bin does "
        "not match the modules", "modules.builtin.alias.bin does not match the modules"]
    assert got[0][3] == ("modules.dep.bin does not match the modules: same entries, different "
                         "trie layout: pre-order (kmod 34) versus post-order (kmod 30..33)")
    assert got[-1] == ("warning", "index-extra", None, "modules.weakdep exists, but kmod 30's "
                       "depmod does not write it")


# -- reports ----------------------------------------------------------------------------------

def test_junit_report_valid_and_precise(root: Path, tmp_path: Path) -> None:
    (moddir(root) / "kernel/net/core-a.ko").unlink()
    (root / "lib/firmware/vendor/b.bin.xz").unlink()
    out = tmp_path / "report.xml"
    run = cli("verify", "-b", str(root), "--format", "junit", "-o", str(out), KVER)
    assert run.rc == 1 and run.out == ""
    xml = check_junit(out.read_text())
    assert [s.attrib["name"] for s in xml] == ["indexes", "symbols", "modules", "dependencies",
                                               "firmware"]
    assert failing_cases(xml) == {
        "indexes": [("modules.dep", "index-different"), ("modules.dep.bin", "index-different"),
                    ("modules.alias.bin", "index-different"),
                    ("modules.symbols", "index-different"),
                    ("modules.symbols.bin", "index-different")],
        "symbols": [("c", "unresolved-symbol"), ("user_b", "unresolved-symbol")]}
    firmware = xml[4]
    assert firmware.attrib["failures"] == "0"  # a warning is below --fail-on error
    assert "user_b: warning: firmware-missing" in (firmware.findtext("system-out") or "")
    run = cli("verify", "-b", str(root), "--format", "junit", "--fail-on", "warning", KVER)
    xml = check_junit(run.out)
    assert failing_cases(xml)["firmware"] == [("user_b", "firmware-missing")]
    assert ("c", "depends-mismatch") in failing_cases(xml)["dependencies"]


def test_junit_skipped_checks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    tree(root, {"kernel/a.ko": mod([b"fa"], [b"fb"]), "kernel/b.ko": mod([b"fb"], [b"fa"])})
    run = cli("verify", "-b", str(root), "--format", "junit", KVER)
    xml = check_junit(run.out)
    skipped = {(s.attrib["name"], c.attrib["classname"]) for s in xml
               for c in s.findall("testcase") if c.find("skipped") is not None}
    assert skipped == {("indexes", "moddep.verify.indexes"),
                       ("symbols", "moddep.verify.symbols.crc-mismatch"),
                       ("firmware", "moddep.verify.firmware.firmware-missing")}
    assert failing_cases(xml) == {"dependencies": [("a", "dependency-cycle")]}


def test_json_report_shape(root: Path) -> None:
    patch_file(moddir(root) / "kernel/net/user-b.ko", b"vermagic=4.4.4 ", b"vermagic=4.4.5 ")
    rc, doc = verify(root)
    assert rc == 1
    assert doc["counts"] == {"error": 1, "warning": 0, "info": 0}
    assert doc["findings"] == [{
        "severity": "error", "code": "vermagic-mismatch", "group": "modules",
        "message": "vermagic '4.4.5 SMP mod_unload modversions' is for kernel 4.4.5, not 4.4.4",
        "module": "user_b", "file": "kernel/net/user-b.ko", "items": ["4.4.5"]}]
    assert set(doc) == {"moddir", "kernel_version", "kmod_version", "generation_reason",
                        "modules", "kernel_symbols", "firmware_dirs", "notes", "files",
                        "findings", "counts", "fail_on", "result", "seconds"}


def test_fail_on_thresholds(root: Path) -> None:
    (root / "lib/firmware/vendor/b.bin.xz").unlink()  # one warning
    assert cli("verify", "-b", str(root), KVER).rc == 0
    assert cli("verify", "-b", str(root), "--fail-on", "warning", KVER).rc == 1
    patch_file(moddir(root) / "kernel/net/user-b.ko", b"vermagic=4.4.4 ", b"vermagic=4.4.5 ")
    assert cli("verify", "-b", str(root), KVER).rc == 1
    assert cli("verify", "-b", str(root), "--fail-on", "never", KVER).rc == 0


def test_usage_and_io_errors(tmp_path: Path) -> None:
    run = cli("verify", "--fail-on", "sometimes")
    assert run.rc == 2 and "verify: ERROR: argument --fail-on: invalid choice" in run.err
    run = cli("verify", "-b", str(tmp_path), "notaversion")
    assert run.rc == 2 and run.err.endswith("verify: ERROR: Bad version passed notaversion\n")
    run = cli("verify", "-b", str(tmp_path), KVER)
    assert run.rc == 2
    assert run.err == f"verify: ERROR: {tmp_path}/lib/modules/{KVER}: no such module directory\n"
    assert cli("verify", "--help").rc == 0


# -- units ------------------------------------------------------------------------------------

def test_every_finding_code_has_a_known_severity_and_group() -> None:
    for code, check in CHECKS.items():
        f = Finding(code, "m")
        assert f.severity == check.severity and f.group == check.group
    with pytest.raises(ValueError):
        Finding("no-such-code", "m")
    assert at_least("error", "warning") and not at_least("info", "warning")
    assert not at_least("error", "never")


def test_explain_each_kind() -> None:
    e = compare.explain("modules.softdep", b"softdep a pre: b\n", b"softdep a pre: c\n")
    assert compare.describe(e.changes) == ["a: lacks softdep pre: c; lists softdep pre: b that "
                                           "the modules do not give"]
    e = compare.explain("modules.alias", b"alias x a\nalias y a\n", b"alias y a\nalias x a\n")
    assert e.changes == [] and e.notes == ["same entries in a different order (modules.order "
                                           "changed?)"]
    e = compare.explain("modules.alias", b"alias x a\nalias x a\n", b"alias x a\n")
    assert e.notes == ["alias x of a is listed 2 times in the old file, once in the new one"]
    e = compare.explain("modules.devname", b"a dd c10:200\n", b"")
    assert compare.describe(e.changes, "diff") == ["a: - dd c10:200"]
    e = compare.explain("modules.dep", b"kernel/a.ko:\n", b"kernel/a.ko.xz:\n")
    assert compare.describe(e.changes, "diff") == ["~ 1 module now .ko.xz instead of .ko: a"]
    e = compare.explain("modules.symbols", b"alias symbol:s a\n", b"alias symbol:s b\n")
    assert compare.describe(e.changes) == ["gives symbol s to a; b exports it"]
    with pytest.raises(Exception, match="line 1: no ':' after the module path"):
        compare.explain("modules.dep", b"nonsense\n", b"")
