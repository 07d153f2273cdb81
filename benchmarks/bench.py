"""moddep depmod against kmod 34.2's depmod, side by side on the full Debian amd64 tree.

    python3 benchmarks/bench.py [--runs 5] [--arch amd64] [--cases none,xz,zst,rerun,reinstall]

Fetches (cached, through tests/debcache.py) the Debian linux-image package, its xz- and
zstd-compressed variants and kmod 34.2, then for each case runs kmod and moddep alternately
(``--runs`` each) on hard-link copies of the tree and prints median wall times, the ratio
moddep/kmod and peak RSS (the largest single process: kmod is one process, moddep's workers
are forked).

Cases: ``none``/``xz``/``zst``: cold (moddep with an empty cache directory each run);
``rerun``: the same tree again with a warm cache; ``reinstall``: a fresh copy of the same
files (new inodes and mtimes) before every run, warm cache. Output is a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TOP / "tests"))
import debcache  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int]:
    """(wall seconds, peak RSS in KiB of the process) of one run."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _pid, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else b""
    if status != 0:
        raise SystemExit(f"failed ({status}): {' '.join(cmd)}\n{err.decode(errors='replace')}")
    return wall, ru.ru_maxrss


def fresh_copy(tree: debcache.KernelTree, dest: Path, hardlink: bool = True) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    if hardlink:
        subprocess.run(["cp", "-al", str(tree.root), str(dest)], check=True)
    else:  # new inodes and mtimes, same contents (a reinstall)
        subprocess.run(["cp", "-r", str(tree.root), str(dest)], check=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--cases", default="none,xz,zst,rerun,reinstall")
    opts = ap.parse_args()
    kmod = debcache.kmod_depmod(34)
    moddep = [sys.executable, "-m", "moddep", "depmod"]
    # an installed package has byte-compiled modules; make sure this checkout has them too
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(TOP / "moddep")], check=True)
    work = Path(tempfile.mkdtemp(prefix="moddep-bench-"))
    empty = work / "conf"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(TOP)}
    rows = []
    try:
        for case in opts.cases.split(","):
            comp = case if case in ("none", "xz", "zst") else "none"
            tree = debcache.kernel_tree(opts.arch) if comp == "none" else \
                debcache.compressed_tree(opts.arch, comp)
            cache = work / f"cache-{case}"
            k_times, m_times, k_rss, m_rss = [], [], [], []
            if case in ("rerun", "reinstall"):  # warm the cache once
                root = fresh_copy(tree, work / "m")
                timed([*moddep, "-b", str(root), "-C", str(empty), "--cache-dir", str(cache),
                       tree.kver], env)
            for _ in range(opts.runs):
                kroot = fresh_copy(tree, work / "k", hardlink=case != "reinstall")
                wall, rss = timed([*kmod, "-b", str(kroot), "-C", str(empty), tree.kver], env)
                k_times.append(wall)
                k_rss.append(rss)
                if case == "reinstall" or not (work / "m").exists() or case in ("none", "xz",
                                                                                  "zst"):
                    mroot = fresh_copy(tree, work / "m", hardlink=case != "reinstall")
                else:
                    mroot = work / "m"
                if case in ("none", "xz", "zst") and cache.exists():
                    shutil.rmtree(cache)
                wall, rss = timed([*moddep, "-b", str(mroot), "-C", str(empty), "--cache-dir",
                                   str(cache), tree.kver], env)
                m_times.append(wall)
                m_rss.append(rss)
            km, mm = statistics.median(k_times), statistics.median(m_times)
            rows.append((case, km, mm, mm / km, max(k_rss), max(m_rss)))
            print(f"{case}: kmod {km:.3f}s moddep {mm:.3f}s ratio {mm / km:.2f}", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"Debian {opts.arch} {tree.package} {tree.version}; {opts.runs} alternated runs each; "
          f"{os.cpu_count()} CPUs\n")
    print("| case | kmod 34.2 median | moddep median | ratio | kmod peak RSS | moddep peak RSS "
          "| RSS ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for case, km, mm, ratio, kr, mr in rows:
        print(f"| {case} | {km:.3f} s | {mm:.3f} s | {ratio:.2f} | {kr // 1024} MB | "
              f"{mr // 1024} MB | {mr / kr:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
