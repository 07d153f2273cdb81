"""The QEMU guest harness itself: boot Debian bookworm's kernel with Python inside.

For each architecture the guest reports its machine and kernel release, whether tracefs has
the ``module`` events, that moddep's CLI runs there, and loads and unloads one small module
of the same kernel package through the raw ``finit_module``/``delete_module`` syscalls
(ctypes), checking ``/proc/modules`` and ``/sys/module``.  This proves the pieces the
runtime-tool and who-uses end-to-end tests stand on; it uses no moddep module code.
"""

from __future__ import annotations

import lzma
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guest"))

import debcache  # noqa: E402
import harness  # noqa: E402

pytestmark = pytest.mark.qemu

#: A small module that Debian's 6.1 config builds as a module on both architectures and
#: that depends on nothing (checked below from its own .modinfo).
MODULE = "dummy"

GUEST_SCRIPT = r"""
import os, platform, subprocess, guestlib

path = open("/guest/module_path").read().strip()
name = os.path.basename(path).split(".")[0]
res = dict(
    machine=platform.machine(),
    release=os.uname().release,
    module_events=os.path.isdir("/sys/kernel/tracing/events/module"),
    module_dir=os.path.isdir("/lib/modules/" + os.uname().release),
    loaded_before=name in guestlib.proc_modules(),
)
rc, out, err = guestlib.run(["moddep", "--version"])
res["moddep_version"] = dict(rc=rc, out=out.strip(), err=err.strip()[-500:])
res["modprobe_link"] = os.path.realpath("/sbin/modprobe")
res["finit_errno"] = guestlib.finit_module(path)
res["loaded"] = name in guestlib.proc_modules()
res["sysfs"] = os.path.isdir("/sys/module/" + name)
res["delete_errno"] = guestlib.delete_module(name)
res["unloaded"] = name not in guestlib.proc_modules()
guestlib.report(**res)
print("guest results:", res)
"""


def _modinfo_depends(path: Path) -> list[str]:
    """The ``depends=`` value of a module's .modinfo (modules are NUL-separated key=value)."""
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        data = lzma.decompress(data)
    for item in data.split(b"\0"):
        if item.startswith(b"depends="):
            return [d for d in item[len(b"depends="):].decode().split(",") if d]
    raise AssertionError(f"{path}: no depends= in .modinfo")


@pytest.mark.parametrize("arch", sorted(harness.ARCHES))
def test_guest_boots_and_loads_a_module(arch: str) -> None:
    reason = harness.qemu_available(arch)
    if reason:
        pytest.skip(reason)
    t0 = time.monotonic()
    try:
        tree = debcache.kernel_tree(arch)
        (ko,) = tree.moddir.rglob(f"{MODULE}.ko*")
        assert _modinfo_depends(ko) == [], f"{ko} is expected to need no other module"
        guest_ko = f"/lib/modules/{tree.kver}/{ko.relative_to(tree.moddir).as_posix()}"
        initramfs = harness.build_initramfs(
            arch, modules_root=tree.root, modules_filter=harness.only_modules(MODULE),
            extra_files={"guest/module_path": guest_ko + "\n"})
    except debcache.Unavailable as exc:
        pytest.skip(f"Debian packages for the {arch} guest unavailable: {exc}")
    prepared = time.monotonic() - t0

    res = harness.run_guest(arch, GUEST_SCRIPT, initramfs=initramfs, timeout=300)
    print(f"{arch}: prepare {prepared:.1f}s, boot {res.boot_seconds:.1f}s, "
          f"boot+run {res.elapsed:.1f}s, initramfs {initramfs.stat().st_size / 1e6:.1f} MB")
    r = res.results
    assert res.rc == 0, res.output[-3000:]
    assert r["machine"] == harness.ARCHES[arch].uname_machine
    assert r["release"] == tree.kver
    assert r["module_events"] is True
    assert r["module_dir"] is True
    assert r["moddep_version"]["rc"] == 0, r["moddep_version"]
    assert r["moddep_version"]["out"].startswith("moddep ")
    assert r["modprobe_link"] == "/usr/bin/moddep"
    assert r["loaded_before"] is False
    assert r["finit_errno"] == 0, res.output[-3000:]
    assert r["loaded"] is True
    assert r["sysfs"] is True
    assert r["delete_errno"] == 0
    assert r["unloaded"] is True
