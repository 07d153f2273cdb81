"""moddep depmod against kmod 34.2's depmod, side by side on the full Debian amd64 tree.

    python3 benchmarks/bench.py [--runs 5] [--arch amd64] [--cases none,xz,zst,rerun,reinstall]
                                [--in-place]

Fetches (cached, through tests/debcache.py) the Debian linux-image package, its xz- and
zstd-compressed variants and kmod 34.2, installs this checkout into a private virtualenv
(``~/.cache/moddep-bench/venv``: the console script as a user runs it, byte-compiled, without
whatever this machine's base Python loads at start-up; ``--in-place`` runs ``python -m moddep``
from the checkout instead), then for each case runs kmod and moddep alternately (``--runs``
each) and prints median wall times, the ratio moddep/kmod and peak RSS (the largest single
process: kmod is one process, moddep's workers are forked).

Each tool works on its own copy of the tree (so neither sees the other's files or inode
changes). Cases: ``none``/``xz``/``zst``: cold: the index files removed before every run of
either tool, and moddep's cache directory emptied; ``rerun``: the same tree again, cache warm;
``reinstall``: a fresh copy of the same files (new inodes and mtimes) before every run of
either tool, cache warm. Output is a Markdown table.
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


def fresh_copy(tree: debcache.KernelTree, dest: Path, keep_times: bool = True) -> Path:
    """A private copy of the tree: ``cp -a`` (same mtimes) or ``cp -r`` (new mtimes, as a
    package reinstall leaves them)."""
    if dest.exists():
        shutil.rmtree(dest)
    subprocess.run(["cp", "-a" if keep_times else "-r", str(tree.root), str(dest)], check=True)
    return dest


INPUTS = {"modules.order", "modules.builtin", "modules.builtin.modinfo"}


def remove_outputs(root: Path, kver: str) -> None:
    """Delete the index files depmod writes, so the next run starts from none."""
    for moddir in (root / "lib/modules" / kver, root / "usr/lib/modules" / kver):
        if moddir.is_dir():
            for p in moddir.glob("modules.*"):
                if p.name not in INPUTS:
                    p.unlink()


def installed_moddep() -> list[str]:
    """This checkout installed (non-editable) into the bench's private virtualenv."""
    venv = Path.home() / ".cache" / "moddep-bench" / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, str(TOP)], check=True)  # with its dependencies, once
    subprocess.run([*pip, "--no-deps", "--force-reinstall", str(TOP)], check=True)  # this code
    return [str(venv / "bin" / "moddep"), "depmod"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--arch", default="amd64")
    ap.add_argument("--cases", default="none,xz,zst,rerun,reinstall")
    ap.add_argument("--in-place", action="store_true",
                    help="run 'python -m moddep' from this checkout, not an installed copy")
    opts = ap.parse_args()
    kmod = debcache.kmod_depmod(34)
    env = dict(os.environ)
    if opts.in_place:
        moddep = [sys.executable, "-m", "moddep", "depmod"]
        env["PYTHONPATH"] = str(TOP)
        # an installed package has byte-compiled modules; make sure this checkout has them too
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(TOP / "moddep")],
                       check=True)
    else:
        moddep = installed_moddep()
    work = Path(tempfile.mkdtemp(prefix="moddep-bench-"))
    empty = work / "conf"
    empty.mkdir()
    rows = []
    try:
        for case in opts.cases.split(","):
            cold = case in ("none", "xz", "zst")
            comp = case if cold else "none"
            tree = debcache.kernel_tree(opts.arch) if comp == "none" else \
                debcache.compressed_tree(opts.arch, comp)
            cache = work / f"cache-{case}"
            kroot = fresh_copy(tree, work / "k")
            mroot = fresh_copy(tree, work / "m")
            k_times, m_times, k_rss, m_rss = [], [], [], []
            m_cmd = [*moddep, "-b", str(mroot), "-C", str(empty), "--cache-dir", str(cache),
                     tree.kver]
            if not cold:  # warm the cache once
                timed(m_cmd, env)
            for _ in range(opts.runs):
                if case == "reinstall":
                    fresh_copy(tree, kroot, keep_times=False)
                elif cold:
                    remove_outputs(kroot, tree.kver)
                wall, rss = timed([*kmod, "-b", str(kroot), "-C", str(empty), tree.kver], env)
                k_times.append(wall)
                k_rss.append(rss)
                if case == "reinstall":
                    fresh_copy(tree, mroot, keep_times=False)
                elif cold:
                    remove_outputs(mroot, tree.kver)
                    if cache.exists():
                        shutil.rmtree(cache)
                wall, rss = timed(m_cmd, env)
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
