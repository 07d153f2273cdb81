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


_WORK: Optional[Callable[[bytes], object]] = None


def _chunk(paths: list[bytes]) -> list[object]:
    assert _WORK is not None
    return [_WORK(p) for p in paths]


def map_files(fn: Callable[[bytes], T], paths: Sequence[bytes], jobs: int,
              progress: Optional[Progress] = None) -> list[T]:
    """``[fn(p) for p in paths]`` on ``jobs`` forked processes, in order."""
    total = len(paths)
    if jobs <= 1 or total < MIN_PARALLEL:
        out = []
        for i, p in enumerate(paths):
            out.append(fn(p))
            if progress and not i % 64:
                progress(i, total)
        return out
    import multiprocessing

    global _WORK
    _WORK = fn  # inherited by the forked workers
    # interleaved chunks balance big and small modules across workers
    nchunks = min(total, jobs * 16)
    chunks = [list(paths[i::nchunks]) for i in range(nchunks)]
    results: list[Optional[T]] = [None] * total
    done = 0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        for i, res in enumerate(pool.imap(_chunk, chunks)):
            results[i::nchunks] = res  # type: ignore[assignment]
            done += len(res)
            if progress:
                progress(done, total)
    return results  # type: ignore[return-value]


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
