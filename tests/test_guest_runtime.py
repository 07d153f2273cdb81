"""moddep's runtime tools on a real kernel: Debian bookworm's, booted under QEMU (TCG).

One boot per architecture (x86_64 and arm64) runs every check with moddep's own tools only
(``/sbin/modprobe`` etc. are links to moddep; busybox has no module applets there), on a
module subset of the same kernel package, staged on the host and indexed by moddep's depmod:

* a dependency chain (pppox -> ppp_generic -> slhc) loads in order, per /proc/modules;
* a real USB modalias string loads ftdi_sio with usbserial, usbcore and usb-common;
* a real PCI modalias whose module (e1000) the kernel command line blacklists stays unloaded;
* ``options`` from modprobe.d and ``loop.max_loop=`` from the kernel command line reach
  /sys/module/loop/parameters;
* an alias of a blacklisted module (rtnl-link-dummy) is not loaded, ``-b`` by name neither,
  plain ``modprobe dummy`` runs the install command, which loads it with its options;
* ``softdep veth pre: ifb post: nlmon`` loads ifb, veth, nlmon in that order; the weakdep
  (bonding) is not loaded; ifb is .ko.xz and veth .ko.zst, decompressed in userspace when the
  kernel has no /sys/module/compression (Debian's 6.1 has none);
* ``lsmod`` matches /proc/modules;
* ``modprobe -r`` of a module held by an open /dev/net/tun fails with kmod's message and
  names the holder process; it succeeds once the holder is gone;
* ``modprobe -r`` removes the whole chain (and softdeps); ``modinfo`` reads a compressed
  module; insmod/rmmod work directly.

The guest's results come back as JSON and are asserted here.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guest"))

import debcache  # noqa: E402
import harness  # noqa: E402

from moddep.compression import compress, decompress  # noqa: E402
from moddep.elf import ElfModule  # noqa: E402
from moddep.modinfo import path_to_modname  # noqa: E402

pytestmark = pytest.mark.qemu

#: modules staged into the guest (their dependencies are added from depends=)
WANTED = ("pppox", "ftdi_sio", "e1000", "loop", "dummy", "veth", "ifb", "nlmon", "tun")
COMPRESS = {"ifb": "xz", "veth": "zst"}
USB_MODALIAS = "usb:v0403p6001d0600dc00dsc00dp00icFFiscFFipFFin00"
PCI_MODALIAS = "pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00"
CMDLINE = "loop.max_loop=4 modprobe.blacklist=e1000"

MODPROBE_CONF = """\
# moddep guest test
options loop max_part=7
blacklist dummy
options dummy numdummies=2
install dummy /sbin/modprobe --ignore-install dummy $CMDLINE_OPTS && \\
    echo "$MODPROBE_MODULE" > /tmp/install-ran
softdep veth pre: ifb post: nlmon
weakdep veth bonding
"""

GUEST_SCRIPT = r'''
import json, os, platform, re, subprocess, sys, time
import guestlib

P = json.load(open("/guest/params.json"))
R = {"machine": platform.machine(), "release": os.uname().release}
T0 = time.monotonic()


def run(*argv):
    t = time.monotonic()
    rc, out, err = guestlib.run(list(argv), timeout=120)
    return {"rc": rc, "out": out, "err": err, "secs": round(time.monotonic() - t, 2)}


def mods():
    return guestlib.proc_modules()


def param(mod, name):
    try:
        return open(f"/sys/module/{mod}/parameters/{name}").read().strip()
    except OSError as e:
        return f"unreadable: {e}"


R["compression_file"] = (open("/sys/module/compression").read().strip()
                         if os.path.exists("/sys/module/compression") else None)
R["zstandard"] = subprocess.run([sys.executable, "-c", "import zstandard"]).returncode == 0
R["cmdline"] = open("/proc/cmdline").read().strip()

# 1. chain
R["chain"] = run("modprobe", "-v", "pppox")
R["chain"]["loaded"] = mods()
# 2. USB modalias: -R then load
R["usb_resolve"] = run("modprobe", "-R", P["usb"])
R["usb"] = run("modprobe", P["usb"])
R["usb"]["loaded"] = mods()
# 3. PCI modalias of a module blacklisted on the kernel command line
R["pci_resolve"] = run("modprobe", "-R", P["pci"])
R["pci"] = run("modprobe", "-v", P["pci"])
R["pci"]["loaded"] = mods()
# 4. options from modprobe.d and the kernel command line
R["loop"] = run("modprobe", "-v", "loop")
R["loop"]["max_part"] = param("loop", "max_part")
R["loop"]["max_loop"] = param("loop", "max_loop")
# 5. blacklist: by alias, and by name with -b
R["bl_alias"] = run("modprobe", "-v", "rtnl-link-dummy")
R["bl_alias"]["loaded"] = "dummy" in mods()
R["bl_b"] = run("modprobe", "-v", "-b", "dummy")
R["bl_b"]["loaded"] = "dummy" in mods()
# 6. install command (by name: the blacklist does not apply)
R["install"] = run("modprobe", "-v", "dummy")
R["install"]["loaded"] = "dummy" in mods()
R["install"]["ran"] = (open("/tmp/install-ran").read().strip()
                       if os.path.exists("/tmp/install-ran") else None)
R["install"]["dummy1"] = os.path.isdir("/sys/class/net/dummy1")
# 7. softdep order, weakdep, compressed modules (-vvv shows how each went in)
R["softdep"] = run("modprobe", "-vvv", "veth")
R["softdep"]["loaded"] = mods()
# 8. lsmod against /proc/modules
R["lsmod"] = run("lsmod")
R["proc_modules"] = open("/proc/modules").read()
R["sysfs_refcnt"] = {m: open(f"/sys/module/{m}/refcnt").read().strip() for m in mods()}
# 9. in use: a process holds /dev/net/tun open
R["tun"] = run("modprobe", "tun")
holder = subprocess.Popen([sys.executable, "-c",
                           "import os, sys, time\n"
                           "fd = os.open('/dev/net/tun', os.O_RDWR)\n"
                           "print('ready', flush=True)\n"
                           "time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
R["holder_ready"] = holder.stdout.readline().strip()
R["holder_pid"] = holder.pid
R["tun_refcnt"] = open("/sys/module/tun/refcnt").read().strip()
R["inuse"] = run("modprobe", "-r", "tun")
R["inuse_rmmod"] = run("rmmod", "tun")
R["inuse"]["loaded"] = "tun" in mods()
holder.kill()
holder.wait()
R["after_holder"] = run("modprobe", "-r", "tun")
R["after_holder"]["loaded"] = "tun" in mods()
# 10. removal of chains
R["rm_chain"] = run("modprobe", "-r", "-v", "pppox")
R["rm_chain"]["loaded"] = mods()
R["rm_usb"] = run("modprobe", "-r", "ftdi_sio")
R["rm_usb"]["loaded"] = mods()
R["rm_softdep"] = run("modprobe", "-r", "-v", "veth")
R["rm_softdep"]["loaded"] = mods()
# 11. modinfo of a compressed module, insmod/rmmod directly
R["modinfo"] = run("modinfo", "-F", "name", P["ifb_path"])
R["insmod"] = run("insmod", P["nlmon_path"])
R["insmod"]["loaded"] = "nlmon" in mods()
R["rmmod"] = run("rmmod", "nlmon")
R["rmmod"]["loaded"] = "nlmon" in mods()
R["notfound"] = run("modprobe", "no-such-module")
R["total_secs"] = round(time.monotonic() - T0, 1)
guestlib.report(**R)
'''


def _depends(path: Path) -> list[str]:
    image = decompress(path.read_bytes())
    fields = dict(ElfModule(image).modinfo())
    return [d.decode() for d in fields.get(b"depends", b"").split(b",") if d]


def stage(tree: debcache.KernelTree, dest: Path) -> dict[str, str]:
    """Copy WANTED (and what they depend on) from ``tree`` into ``dest`` and index it with
    moddep's depmod; returns guest paths of some modules."""
    paths = stage_modules(tree, dest, WANTED, COMPRESS)
    conf = dest / "etc" / "modprobe.d"
    conf.mkdir(parents=True)
    (conf / "moddep-test.conf").write_text(MODPROBE_CONF)
    return paths


def stage_modules(tree: debcache.KernelTree, dest: Path, wanted: tuple[str, ...],
                  compressions: dict[str, str] | None = None) -> dict[str, str]:
    """Copy ``wanted`` modules and their dependencies, index them with moddep's depmod."""
    compressions = compressions or {}
    by_name = {path_to_modname(p.name.encode()).decode(): p
               for p in tree.moddir.rglob("*.ko*")}
    todo = list(wanted)
    chosen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in chosen:
            continue
        chosen.add(name)
        todo.extend(d.replace("-", "_") for d in _depends(by_name[name]))
    moddir = dest / "lib" / "modules" / tree.kver
    paths = {}
    for name in sorted(chosen):
        src = by_name[name]
        rel = src.relative_to(tree.moddir)
        data = src.read_bytes()
        if name in compressions:
            data = compress(data, {"zst": "zstd"}.get(compressions[name], compressions[name]))
            rel = rel.with_name(rel.name + "." + compressions[name])
        out = moddir / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        paths[name] = f"/lib/modules/{tree.kver}/{rel.as_posix()}"
    for extra in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (tree.moddir / extra).exists():
            shutil.copy(tree.moddir / extra, moddir / extra)
    empty = dest / "empty-depmod.d"
    empty.mkdir()
    from moddep.cli import main

    assert main(["moddep", "depmod", "-b", str(dest), "-C", str(empty), tree.kver]) == 0
    assert (moddir / "modules.dep.bin").exists()
    return paths


@pytest.mark.parametrize("arch", sorted(harness.ARCHES))
def test_runtime_tools_on_a_real_kernel(arch: str, tmp_path: Path) -> None:
    reason = harness.qemu_available(arch)
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    try:
        tree = debcache.kernel_tree(arch)
        paths = stage(tree, tmp_path / "root")
        params = {"usb": USB_MODALIAS, "pci": PCI_MODALIAS, "ifb_path": paths["ifb"],
                  "nlmon_path": paths["nlmon"]}
        initramfs = harness.build_initramfs(
            arch, modules_root=tmp_path / "root",
            extra_files={"guest/params.json": json.dumps(params)},
            extra_debs=["python3-zstandard", "libzstd1"])
    except debcache.Unavailable as exc:
        pytest.skip(f"Debian packages for the {arch} guest unavailable: {exc}")
    prepared = time.monotonic() - t0
    res = harness.run_guest(arch, GUEST_SCRIPT, initramfs=initramfs, timeout=600,
                            kernel_cmdline_extra=CMDLINE)
    r = res.results
    print(f"{arch}: prepare {prepared:.1f}s, boot {res.boot_seconds:.1f}s, checks "
          f"{r.get('total_secs')}s, boot+run {res.elapsed:.1f}s")
    print(json.dumps({k: v for k, v in r.items() if k not in ("proc_modules",)}, indent=1))
    assert res.rc == 0, res.output[-4000:]
    check(arch, tree, r, paths)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line]


def check(arch: str, tree: debcache.KernelTree, r: dict, paths: dict[str, str]) -> None:
    assert r["machine"] == harness.ARCHES[arch].uname_machine
    assert r["release"] == tree.kver
    assert CMDLINE in r["cmdline"]
    moddir = f"/lib/modules/{tree.kver}"

    # 1. chain: dependencies first; /proc/modules lists the newest first
    c = r["chain"]
    assert c["rc"] == 0, c
    assert _lines(c["out"]) == [f"insmod {paths[m]} " for m in ("slhc", "ppp_generic", "pppox")]
    loaded = c["loaded"]
    assert loaded.index("pppox") < loaded.index("ppp_generic") < loaded.index("slhc")

    # 2. USB modalias
    assert r["usb_resolve"]["rc"] == 0 and r["usb_resolve"]["out"] == "ftdi_sio\n"
    assert r["usb"]["rc"] == 0, r["usb"]
    assert {"ftdi_sio", "usbserial", "usbcore", "usb_common"} <= set(r["usb"]["loaded"])

    # 3. PCI modalias blacklisted on the kernel command line: skipped, success
    assert r["pci_resolve"]["out"] == "e1000\n"
    assert r["pci"]["rc"] == 0 and r["pci"]["out"] == "" and r["pci"]["err"] == ""
    assert "e1000" not in r["pci"]["loaded"]

    # 4. options: modprobe.d and kernel command line, in that order
    lp = r["loop"]
    assert lp["rc"] == 0, lp
    assert _lines(lp["out"]) == [f"insmod {paths['loop']} max_part=7 max_loop=4 "]
    assert lp["max_part"] == "7" and lp["max_loop"] == "4"

    # 5. blacklist
    assert r["bl_alias"]["rc"] == 0 and not r["bl_alias"]["loaded"], r["bl_alias"]
    assert r["bl_alias"]["out"] == ""
    assert r["bl_b"]["rc"] == 0 and not r["bl_b"]["loaded"], r["bl_b"]

    # 6. install command, with $CMDLINE_OPTS and MODPROBE_MODULE
    ins = r["install"]
    assert ins["rc"] == 0, ins
    # a continued line: the backslash drops out, the indentation stays
    assert _lines(ins["out"])[0] == (
        "install /sbin/modprobe --ignore-install dummy $CMDLINE_OPTS &&     echo "
        '"$MODPROBE_MODULE" > /tmp/install-ran numdummies=2 ')
    assert ins["loaded"] and ins["ran"] == "dummy" and ins["dummy1"], ins

    # 7. softdep order, weakdep never loaded, compressed modules
    sd = r["softdep"]
    assert sd["rc"] == 0, sd
    assert _lines(sd["out"]) == [f"insmod {paths[m]} " for m in ("ifb", "veth", "nlmon")]
    order = sd["loaded"]
    assert order.index("nlmon") < order.index("veth") < order.index("ifb")
    assert "bonding" not in order
    assert r["compression_file"] is None, "bookworm's 6.1 kernel has no in-kernel decompression"
    assert r["zstandard"] is True
    assert (f"modprobe: DEBUG: inserted xz-compressed {paths['ifb']} with init_module, "
            "decompressed in userspace") in sd["err"]
    assert (f"modprobe: DEBUG: inserted zstd-compressed {paths['veth']} with init_module, "
            "decompressed in userspace") in sd["err"]
    assert f"modprobe: DEBUG: inserted {paths['nlmon']} with finit_module" in sd["err"]

    # 8. lsmod == /proc/modules (names in order, size, use count, holders)
    ls = _lines(r["lsmod"]["out"])
    assert r["lsmod"]["rc"] == 0 and ls[0] == "Module                  Size  Used by"
    proc = [line.split() for line in _lines(r["proc_modules"])]
    assert [row.split()[0] for row in ls[1:]] == [p[0] for p in proc]
    for row, p in zip(ls[1:], proc):
        f = row.split()
        assert f[1] == p[1] and f[2] == p[2] == r["sysfs_refcnt"][p[0]], (row, p)
        used = set(p[3].rstrip(",").split(",")) - {"-", ""}
        assert (set(f[3].split(",")) if len(f) > 3 else set()) == used, (row, p)
        assert row == f"{p[0]:<19} {int(p[1]):>8}  {p[2]}" + (
            " " + f[3] if len(f) > 3 else "")

    # 9. in use: kmod's message, then who holds it (the process)
    assert r["tun"]["rc"] == 0 and r["holder_ready"] == "ready"
    assert int(r["tun_refcnt"]) >= 1
    inuse = r["inuse"]
    assert inuse["rc"] == 1 and inuse["loaded"] is True, inuse
    err = _lines(inuse["err"])
    assert err[0] == "modprobe: FATAL: Module tun is in use.", inuse
    assert f"pid {r['holder_pid']}" in inuse["err"], inuse
    assert r["inuse_rmmod"]["rc"] == 1
    assert _lines(r["inuse_rmmod"]["err"])[0] == "rmmod: ERROR: Module tun is in use"
    assert f"pid {r['holder_pid']}" in r["inuse_rmmod"]["err"]
    assert r["after_holder"]["rc"] == 0 and r["after_holder"]["loaded"] is False

    # 10. removal takes what became unused, never what is still used
    rc = r["rm_chain"]
    assert rc["rc"] == 0 and _lines(rc["out"]) == ["rmmod pppox", "rmmod ppp_generic",
                                                   "rmmod slhc"], rc
    assert not {"pppox", "ppp_generic", "slhc"} & set(rc["loaded"])
    assert r["rm_usb"]["rc"] == 0
    assert not {"ftdi_sio", "usbserial", "usbcore", "usb_common"} & set(r["rm_usb"]["loaded"])
    rs = r["rm_softdep"]
    assert rs["rc"] == 0 and _lines(rs["out"]) == ["rmmod nlmon", "rmmod veth", "rmmod ifb"]
    assert not {"nlmon", "veth", "ifb"} & set(rs["loaded"])

    # 11. modinfo, insmod, rmmod, not found
    assert r["modinfo"]["rc"] == 0 and r["modinfo"]["out"] == "ifb\n"
    assert r["insmod"]["rc"] == 0 and r["insmod"]["loaded"]
    assert r["rmmod"]["rc"] == 0 and not r["rmmod"]["loaded"]
    nf = r["notfound"]
    assert nf["rc"] == 1
    assert nf["err"] == (f"modprobe: FATAL: Module no-such-module not found in directory "
                         f"{moddir}\n")
    assert os.environ.get("MODDEP_SYSROOT") is None
