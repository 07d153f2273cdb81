"""Maintainer script: (re)build ``sample_trees/`` from Debian kernel packages.

Each sample tree is a small real module tree: chosen modules of a Debian linux-image package
plus their dependency closure, the package's modules.builtin and modules.builtin.modinfo, a
filtered modules.order, optional depmod.d configuration, and the outputs of kmod 30 and kmod
34.2 (run on the tree, ``expected/kmod30/`` and ``expected/kmod34/``) for the golden tests.

    python3 tests/make_sample_trees.py            # all trees
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import debcache  # noqa: E402

TOP = Path(__file__).resolve().parent.parent / "sample_trees"

TREES = {
    "amd64-basic": dict(
        arch="amd64",
        modules=["fuse", "cuse", "loop", "tun", "vhost_net", "macvtap", "uinput", "jbd2",
                 "crc32c_generic", "uas", "ehci-pci", "usbhid", "hid-generic", "sr_mod", "isofs",
                 "nls_utf8", "virtio_net", "dummy", "veth", "e1000"],
        what="dependency chains (usb-storage/uas, usbhid, vhost_net, macvtap), aliases of real "
             "PCI/USB/virtio drivers, a softdep (jbd2), devnames (fuse, cuse, loop, tun, uinput, "
             "vhost-net), the kernel's modules.builtin and modules.builtin.modinfo",
    ),
    "arm64-basic": dict(
        arch="arm64",
        modules=["fuse", "loop", "tun", "uas", "virtio_net", "dummy", "jbd2", "nls_utf8"],
        what="the same kinds of modules for a second architecture (AArch64)",
    ),
    "amd64-depmod-d": dict(
        arch="amd64",
        modules=["dummy", "veth", "loop", "tun"],
        updates={"updates/dummy.ko": "dummy", "override/tun.ko": "tun"},
        depmod_d="# search order: updates first, then the kernel's own modules\n"
                 "search updates built-in\n"
                 "override tun * override\n",
        what="depmod.d inside the root: 'search updates built-in' makes updates/dummy.ko win "
             "over kernel/drivers/net/dummy.ko, and 'override tun * override' picks "
             "override/tun.ko over kernel/drivers/net/tun.ko (both copies of the same files)",
    ),
}


def closure(dep: dict[str, list[str]], names: list[str], byname: dict[str, str]) -> list[str]:
    out: list[str] = []
    for n in names:
        rel = byname[n.replace("-", "_")]
        for r in [rel, *dep[rel]]:
            if r not in out:
                out.append(r)
    return out


def build(name: str, spec: dict) -> None:
    tree = debcache.kernel_tree(spec["arch"])
    ref = debcache.reference(tree, 34)
    dep: dict[str, list[str]] = {}
    for line in (ref / "modules.dep").read_text().splitlines():
        mod, _, rest = line.partition(":")
        dep[mod] = rest.split()
    byname = {Path(r).name.split(".")[0].replace("-", "_"): r for r in dep}
    rels = closure(dep, spec["modules"], byname)
    dest = TOP / name
    if dest.exists():
        shutil.rmtree(dest)
    moddir = dest / "lib" / "modules" / tree.kver
    moddir.mkdir(parents=True)
    for rel in rels:
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree.moddir / rel, moddir / rel)
    for rel, mod in spec.get("updates", {}).items():
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tree.moddir / byname[mod], moddir / rel)
    order = [ln for ln in (tree.moddir / "modules.order").read_text().splitlines(True)
             if ln.strip() in rels]
    (moddir / "modules.order").write_text("".join(order))
    for f in ("modules.builtin", "modules.builtin.modinfo"):
        shutil.copyfile(tree.moddir / f, moddir / f)
    # Only a tree with a depmod.d file gets an etc/: git keeps no empty directories, so an
    # empty etc/depmod.d here would be missing from every checkout.
    if "depmod_d" in spec:
        conf = dest / "etc" / "depmod.d"
        conf.mkdir(parents=True)
        (conf / "moddep-sample.conf").write_text(spec["depmod_d"])
    for v in (30, 34):
        work = dest.parent / f".work-{name}-{v}"
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(dest, work, symlinks=True)
        (work / "etc" / "depmod.d").mkdir(parents=True, exist_ok=True)
        cmd = [*debcache.kmod_depmod(v), "-b", str(work), "-C", str(work / "etc/depmod.d"),
               tree.kver]
        proc = subprocess.run(cmd, capture_output=True, check=True)
        out = dest / "expected" / f"kmod{v}"
        out.mkdir(parents=True)
        wdir = work / "lib" / "modules" / tree.kver
        for f in sorted(wdir.iterdir()):
            if f.name.startswith("modules.") and f.name not in (
                    "modules.order", "modules.builtin", "modules.builtin.modinfo"):
                shutil.copyfile(f, out / f.name)
        (out / "stderr.txt").write_bytes(proc.stderr.replace(str(work).encode(), b"ROOT"))
        shutil.rmtree(work)
    size = sum(p.stat().st_size for p in moddir.rglob("*.ko"))
    (dest / "README.md").write_text(f"""# {name}

Modules from Debian's `{tree.package}` package, version `{tree.version}`
(architecture {spec['arch']}, kernel release `{tree.kver}`); {len(rels)} modules
({size // 1024} KiB), copied unmodified with their paths below `lib/modules/{tree.kver}/`.
License: GPL-2.0 (the Linux kernel; source in Debian's `linux` source package, same version).

What it shows: {spec['what']}.

`modules.order` keeps the package's lines for these modules; `modules.builtin` and
`modules.builtin.modinfo` are the package's own. `etc/depmod.d/`, where present, is the tree's
depmod configuration (moddep reads it from the root by default; kmod was given it with `-C`).

`expected/kmod30/` and `expected/kmod34/` hold what kmod 30 (Debian bookworm) and kmod 34.2
(Debian trixie) depmod wrote for this tree (`depmod -b ROOT -C ROOT/etc/depmod.d {tree.kver}`),
with their stderr (root path replaced by ROOT). kmod 30..33 write the .bin files in post-order,
kmod 34 in pre-order. Regenerate with `python3 tests/make_sample_trees.py`.
""")
    print(f"{name}: {len(rels)} modules, {size // 1024} KiB")


if __name__ == "__main__":
    for n, s in TREES.items():
        if len(sys.argv) == 1 or n in sys.argv[1:]:
            build(n, s)
