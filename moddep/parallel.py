"""Where module data comes from: extraction on several cores, and the content-keyed cache.

Output never depends on the number of workers: results come back in input order.
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence, TypeVar

from moddep.cache import Cache, content_key, stat_identity
from moddep.compression import DEFAULT_LIMIT
from moddep.extract import read_module
from moddep.model import ModuleData

T = TypeVar("T")
Progress = Callable[[int, int], None]  # (done, total)

# below this many files a process pool costs more than it saves
MIN_PARALLEL = 64


def default_jobs() -> int:
    """Available CPUs (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def map_files(fn: Callable[[bytes], T], paths: Sequence[bytes], jobs: int,
              progress: Optional[Progress] = None) -> list[T]:
    """``[fn(p) for p in paths]`` on ``jobs`` processes, in order.

    The paths are dealt out round-robin (neighbours in module order are alike in size); the
    parent works through the first share itself while forked children do the others, so
    only the children's results cross a process boundary.
    """
    total = len(paths)
    if jobs <= 1 or total < MIN_PARALLEL:
        jobs = 1
    shares = [list(paths[i::jobs]) for i in range(jobs)]

    def task(share: list[bytes], report: bool) -> Callable[[], list[T]]:
        def run() -> list[T]:
            out = []
            for n, p in enumerate(share):
                out.append(fn(p))
                if report and progress and not n % 32:
                    progress(min(total, n * jobs), total)
            return out
        return run

    results = fork_join([task(share, i == 0) for i, share in enumerate(shares)], jobs)
    if progress:
        progress(total, total)
    merged: list[Optional[T]] = [None] * total
    for i, res in enumerate(results):
        merged[i::jobs] = res  # type: ignore[assignment]
    return merged  # type: ignore[return-value]


class ModuleSource:
    """Module data for a list of files: extracted, or served from the cache by content."""

    def __init__(self, jobs: Optional[int] = None, cache: Optional[Cache] = None,
                 limit: int = DEFAULT_LIMIT, progress: Optional[Progress] = None) -> None:
        self.jobs = default_jobs() if jobs is None else max(1, jobs)
        self.cache = cache
        self.limit = limit
        self.progress = progress

    def keys(self, moddir: bytes, paths: Sequence[bytes]) -> Optional[list[bytes]]:
        """Content keys of ``paths`` (None without a cache); unchanged files are not read."""
        if self.cache is None:
            return None
        known = self.cache.known_keys(moddir)
        keys: list[Optional[bytes]] = []
        ids = []
        todo = []
        for i, p in enumerate(paths):
            try:
                ident = stat_identity(os.stat(p))
            except OSError:
                ident = ()
            ids.append(ident)
            hit = known.get(p)
            if hit is not None and ident and hit[0] == ident:
                keys.append(hit[1])
            else:
                keys.append(None)
                todo.append(i)
        if todo:
            limit = self.limit
            fresh = map_files(lambda p: content_key(p, limit), [paths[i] for i in todo],
                              self.jobs)
            for i, k in zip(todo, fresh):
                keys[i] = k
            self.cache.save_keys(moddir, {p: (ident, k) for p, ident, k in
                                          zip(paths, ids, keys) if ident and k})
        return keys  # type: ignore[return-value]

    def data(self, paths: Sequence[bytes], keys: Optional[Sequence[bytes]],
             moddir: bytes = b"") -> list[ModuleData]:
        """ModuleData of every path, in order (cached data reused, the new set stored)."""
        out: list[Optional[ModuleData]] = [None] * len(paths)
        todo = list(range(len(paths)))
        pack: dict[bytes, ModuleData] = {}
        if self.cache is not None and keys is not None:
            pack = self.cache.load_pack(moddir)
            todo = []
            for i, k in enumerate(keys):
                d = pack.get(k)
                if d is None:
                    todo.append(i)
                else:
                    out[i] = d
        limit = self.limit
        fresh = map_files(lambda p: read_module(p, limit), [paths[i] for i in todo], self.jobs,
                          self.progress)
        for i, d in zip(todo, fresh):
            out[i] = d
        if self.cache is not None and keys is not None and todo:
            self.cache.save_pack(moddir, dict(zip(keys, out)))  # type: ignore[arg-type]
        return out  # type: ignore[return-value]


def extract_all(paths: Sequence[bytes], jobs: Optional[int] = None,
                limit: int = DEFAULT_LIMIT) -> list[ModuleData]:
    """ModuleData of every path, in order, without a cache."""
    return ModuleSource(jobs, None, limit).data(paths, None)


def fork_join(tasks: Sequence[Callable[[], T]], jobs: int) -> list[T]:
    """Run ``tasks`` and return their results in order, using up to ``jobs`` processes.

    The parent runs the first share itself; each forked child runs its share on the memory
    it inherited and sends the results back pickled. An exception in a child is re-raised here.
    """
    if jobs <= 1 or len(tasks) <= 1 or not hasattr(os, "fork"):
        return [t() for t in tasks]
    import pickle

    nproc = min(jobs, len(tasks))
    shares = [list(range(i, len(tasks), nproc)) for i in range(nproc)]
    children = []
    for share in shares[1:]:
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            try:
                payload: object = ("ok", [tasks[i]() for i in share])
            except BaseException as e:  # noqa: BLE001 - sent to the parent
                payload = ("error", e)
            try:
                with os.fdopen(wfd, "wb") as w:
                    pickle.dump(payload, w, protocol=pickle.HIGHEST_PROTOCOL)
            finally:
                os._exit(0)
        os.close(wfd)
        children.append((pid, rfd, share))
    results: list[Optional[T]] = [None] * len(tasks)
    for i in shares[0]:
        results[i] = tasks[i]()
    for pid, rfd, share in children:
        with os.fdopen(rfd, "rb") as r:
            kind, value = pickle.load(r)
        os.waitpid(pid, 0)
        if kind == "error":
            raise value
        for i, v in zip(share, value):
            results[i] = v
    return results  # type: ignore[return-value]
