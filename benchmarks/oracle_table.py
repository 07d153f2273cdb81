"""Fidelity table: moddep's depmod against kmod 30 and kmod 34.2 on full Debian trees.

    python3 benchmarks/oracle_table.py [--arches amd64,arm64,...] [--comps none,xz,zst]

Prints a Markdown table: tree x compression x kmod version -> files identical / compared
(the same comparison tests/test_oracle.py asserts), plus moddep's wall time per run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "tests"))
sys.path.insert(0, str(TOP))
import debcache  # noqa: E402

from moddep.cli import main as moddep_main  # noqa: E402


def compare(tree: debcache.KernelTree, kmod: int, work: Path) -> tuple[int, int, list[str], float]:
    ref = debcache.reference(tree, kmod)
    copy = debcache.copy_tree(tree, work / "root")
    conf = work / "conf"
    conf.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    rc = moddep_main(["moddep", "depmod", "-q", "--no-cache", "--kmod-version", str(kmod), "-b",
                      str(copy.root), "-C", str(conf), tree.kver])
    wall = time.perf_counter() - t0
    names = sorted(p.name for p in ref.iterdir() if p.name.startswith("modules."))
    differ = [n for n in names if rc != 0 or
              (copy.moddir / n).read_bytes() != (ref / n).read_bytes()]
    return len(names) - len(differ), len(names), differ, wall


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arches", default="amd64,arm64,armhf,s390x,i386,ppc64el,mips64el")
    ap.add_argument("--comps", default="none,xz,zst")
    ap.add_argument("--compressed-arches", default="amd64,arm64,armhf,s390x")
    opts = ap.parse_args()
    print("| tree | package | compression | kmod | identical / compared | moddep wall |")
    print("| --- | --- | --- | --- | --- | --- |")
    for arch in opts.arches.split(","):
        for comp in opts.comps.split(","):
            if comp != "none" and arch not in opts.compressed_arches.split(","):
                continue
            try:
                tree = debcache.kernel_tree(arch) if comp == "none" else \
                    debcache.compressed_tree(arch, comp)
            except debcache.Unavailable as e:
                print(f"| {arch} | - | {comp} | - | unavailable: {e} | |")
                continue
            for kmod in (30, 34):
                work = Path(tempfile.mkdtemp(prefix="moddep-oracle-"))
                try:
                    same, total, differ, wall = compare(tree, kmod, work)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                extra = f" (differ: {', '.join(differ)})" if differ else ""
                print(f"| {arch} | {tree.package} {tree.version} | {comp} | {kmod} | "
                      f"{same} / {total}{extra} | {wall:.2f} s |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
