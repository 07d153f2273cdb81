"""Crash safety: depmod killed with SIGKILL at hundreds of moments never leaves a torn index set.

The real command (``python3 -m moddep depmod``) runs on a copy of a small tree whose module
directory holds a complete *previous* index set (kmod 30 layout, one module fewer); the run
writes the *new* set (kmod 34 layout, all modules), so every index file differs between the
two. Nothing in moddep is instrumented: the test watches the directory from outside and kills
the process after a delay, on a grid of delays that covers the whole run and, more finely, the
publication window (from the first temporary file to the end), whose length is measured first.

After each kill:

* before recovery, every index file is byte-for-byte its previous or its new version (never a
  partial file), and a mix of the two only exists while a committed journal is there;
* after recovery (``moddep.publish.recover``, what the next depmod run does first) the
  directory holds exactly the previous set or exactly the new one, with no temporary files and
  no journal left.

A second test runs two depmods on the same tree at once (and kills one of them meanwhile): the
directory ends with one complete set. The number of kill points and where they landed is
printed (``-rA`` shows it) and asserted to reach the publication window many times.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Optional

from kofactory import Module

from moddep.publish import JOURNAL, TMP_MARK, recover

TOP = Path(__file__).resolve().parent.parent
KVER = "6.1.0-9-amd64"
KILL_POINTS = int(os.environ.get("MODDEP_CRASH_POINTS", "240"))
WORKERS = 2


def _module(name: str, needs: tuple[str, ...] = ()) -> bytes:
    minor = 100 + int(name[1:])
    return Module(modinfo=[(b"alias", f"{name}-alias".encode()), (b"license", b"GPL"),
                           (b"softdep", b"pre: m0"), (b"alias", f"devname:{name}".encode()),
                           (b"alias", f"char-major-10-{minor}".encode())],
                  exports=[(f"{name}_fn".encode(), 0x4000 + len(name))],
                  undefined=[(f"{n}_fn".encode(), False) for n in needs]).build()


def _env() -> dict[str, str]:
    env = dict(os.environ, MODDEP_NO_CACHE="1", PYTHONPATH=str(TOP))
    env.pop("MODDEP_KMOD_VERSION", None)
    return env


def _depmod(root: Path, kmod: int) -> list[str]:
    return [sys.executable, "-m", "moddep", "depmod", "-q", "-j", "1", "--kmod-version",
            str(kmod), "-b", str(root), KVER]


def _index_files(moddir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in moddir.iterdir()
            if p.name.startswith("modules.") and p.name not in INPUTS}


INPUTS = {"modules.order", "modules.builtin", "modules.builtin.modinfo"}


class Scenario:
    """A tree whose module directory can be reset to the previous index set."""

    def __init__(self, base: Path) -> None:
        self.root = base / "root"
        self.moddir = self.root / "lib/modules" / KVER
        kernel = self.moddir / "kernel"
        kernel.mkdir(parents=True)
        names = [f"m{i}" for i in range(8)]
        for i, name in enumerate(names):
            (kernel / f"{name}.ko").write_bytes(_module(name, tuple(names[:i][-2:])))
        (self.moddir / "modules.order").write_text(
            "".join(f"kernel/{n}.ko\n" for n in names))
        (self.moddir / "modules.builtin").write_text("kernel/lib/crc16.ko\nkernel/net/unix.ko\n")
        (self.moddir / "modules.builtin.modinfo").write_bytes(
            b"crc16.alias=crc-a\0crc16.alias=crc-b\0unix.alias=net-pf-1\0")
        # previous set: kmod 30 layout without m7; new set: kmod 34 layout with every module
        m7 = (kernel / "m7.ko").read_bytes()
        (kernel / "m7.ko").unlink()
        self._run(30)
        self.old = _index_files(self.moddir)
        (kernel / "m7.ko").write_bytes(m7)
        self._run(34)
        self.new = _index_files(self.moddir)
        assert set(self.new) - set(self.old) == {"modules.weakdep"}
        assert all(self.old[n] != self.new[n] for n in self.old), "sets must differ everywhere"

    def _run(self, kmod: int) -> None:
        subprocess.run(_depmod(self.root, kmod), env=_env(), check=True, capture_output=True)

    def reset(self) -> None:
        """Put the previous set back, exactly (and nothing else)."""
        for p in self.moddir.iterdir():
            if p.name.startswith(".moddep") or p.name in self.new and p.name not in self.old:
                p.unlink()
        for name, data in self.old.items():
            tmp = self.moddir / f".reset-{name}"
            tmp.write_bytes(data)
            os.replace(tmp, self.moddir / name)

    def state(self) -> str:
        """``old``, ``new`` or ``mixed``; fails on a file that is neither version."""
        names = set(self.old) | set(self.new)
        current = {n: (self.moddir / n).read_bytes() if (self.moddir / n).exists() else None
                   for n in names}
        for n, data in current.items():
            assert data in (self.old.get(n), self.new.get(n)), f"{n} is torn: {data!r:.80}"
        if all(current[n] == self.old.get(n) for n in names):
            return "old"
        if all(current[n] == self.new.get(n) for n in names):
            return "new"
        return "mixed"

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.moddir.iterdir() if p.name.startswith(".moddep"))

    def has_temporaries(self) -> bool:
        return any(n.startswith(TMP_MARK) or n == JOURNAL for n in os.listdir(self.moddir))


def _publication_started(moddir: Path) -> bool:
    return any(n.startswith(TMP_MARK) or n == JOURNAL for n in os.listdir(moddir))


def _run_and_kill(sc: Scenario, delay: float, anchor: str) -> tuple[str, str, bool]:
    """Run depmod, kill it ``delay`` s after spawn (anchor ``start``) or after its first
    temporary file appears (anchor ``publish``); return (state before recovery, after, whether
    it was still running when killed)."""
    sc.reset()
    proc = subprocess.Popen(_depmod(sc.root, 34), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    start = time.monotonic()
    if anchor == "publish":
        while proc.poll() is None and not _publication_started(sc.moddir):
            time.sleep(0.0002)
        start = time.monotonic()
    while proc.poll() is None and time.monotonic() - start < delay:
        time.sleep(0.0002)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    journal = (sc.moddir / JOURNAL).exists()
    before = sc.state()
    if before == "mixed":
        assert journal, "a mix of two sets without a committed journal"
    recover(str(sc.moddir))
    after = sc.state()
    assert after in ("old", "new") and sc.leftovers() == [], (before, after, sc.leftovers())
    if journal:
        assert after == "new", "a committed journal must roll forward"
    return before, after, alive


def _window(sc: Scenario) -> tuple[float, float]:
    """(whole run, publication window) in seconds, measured on undisturbed runs: the window
    runs from the first temporary file to the moment temporaries and journal are gone."""
    runs, windows = [], []
    for _ in range(3):
        sc.reset()
        t0 = time.monotonic()
        proc = subprocess.Popen(_depmod(sc.root, 34), env=_env())
        seen: Optional[float] = None
        done: Optional[float] = None  # temporaries and journal gone again
        while proc.poll() is None:
            busy = _publication_started(sc.moddir)
            if seen is None and busy:
                seen = time.monotonic()
            elif seen is not None and done is None and not busy:
                done = time.monotonic()
            time.sleep(0.0002)
        end = time.monotonic()
        assert proc.returncode == 0 and sc.state() == "new"
        runs.append(end - t0)
        windows.append((done or end) - (seen or end))
    return max(runs), max(max(windows), 0.005)


def test_sigkill_at_many_points_leaves_a_complete_set(tmp_path: Path) -> None:
    scenarios = [Scenario(tmp_path / f"w{i}") for i in range(WORKERS)]
    total, window = _window(scenarios[0])
    # a quarter of the kill points spread over the whole run, the rest over the publication
    # window (from the first temporary file to the process exit, with a margin)
    coarse = KILL_POINTS // 4
    points = [(total * 1.1 * k / coarse, "start") for k in range(coarse)]
    fine = KILL_POINTS - coarse
    points += [(window * 1.5 * k / fine, "publish") for k in range(fine)]
    results: list[tuple[str, str, bool]] = []
    lock = threading.Lock()

    def work(sc: Scenario, mine: list[tuple[float, str]]) -> None:
        for delay, anchor in mine:
            r = _run_and_kill(sc, delay, anchor)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=work, args=(sc, points[i::WORKERS]))
               for i, sc in enumerate(scenarios)]
    errors: list[BaseException] = []

    def guarded(t: threading.Thread) -> None:
        try:
            t.run()
        except BaseException as e:  # re-raised below, in the test's thread
            errors.append(e)

    runners = [threading.Thread(target=guarded, args=(t,)) for t in threads]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    if errors:
        raise errors[0]
    killed = [r for r in results if r[2]]
    before = Counter(r[0] for r in killed)
    after = Counter(r[1] for r in killed)
    print(f"crash safety: {len(results)} kill points ({len(killed)} while depmod ran; run "
          f"{total * 1000:.0f} ms, publication window {window * 1000:.1f} ms); before "
          f"recovery {dict(before)}, after recovery {dict(after)}")
    assert len(results) >= min(KILL_POINTS, 200) or KILL_POINTS < 200
    assert len(killed) >= len(results) // 2
    # the kills must really have hit the publication, on both sides of the commit point
    assert after["old"] >= 10 and after["new"] >= 10, (before, after)


def test_two_depmods_at_once_end_with_one_complete_set(tmp_path: Path) -> None:
    """kmod 30 and kmod 34 output for the same tree, written at the same time (one of the two
    killed in some rounds): the directory ends with one whole set, never a mix."""
    sc = Scenario(tmp_path)
    sc._run(30)
    new30 = _index_files(sc.moddir)
    outcomes = Counter()
    for rnd in range(8):
        sc.reset()
        a = subprocess.Popen(_depmod(sc.root, 30), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        b = subprocess.Popen(_depmod(sc.root, 34), env=_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if rnd % 2:  # kill the first one somewhere in its run
            time.sleep(0.06 * rnd)
            a.send_signal(signal.SIGKILL)
        a.wait()
        b.wait()
        assert b.returncode == 0 and (rnd % 2 or a.returncode == 0)
        for name, data in _index_files(sc.moddir).items():  # no torn file
            assert data in (sc.old.get(name), sc.new.get(name), new30.get(name)), name
        recover(str(sc.moddir))
        final = _index_files(sc.moddir)
        assert sc.leftovers() == []
        assert final in (sc.new, new30), f"round {rnd}: a mix of two sets"
        outcomes["kmod34" if final == sc.new else "kmod30"] += 1
    print(f"concurrent runs: final sets {dict(outcomes)}")
