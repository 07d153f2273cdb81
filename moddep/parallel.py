"""Running :func:`moddep.extract.read_module` over many files, on several cores.

Output never depends on the number of workers: results come back in input order.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from moddep.compression import DEFAULT_LIMIT
from moddep.extract import read_module
from moddep.model import ModuleData

# below this many files a process pool costs more than it saves
MIN_PARALLEL = 64


def default_jobs() -> int:
    """Available CPUs (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _chunk(args: tuple[list[bytes], int]) -> list[ModuleData]:
    paths, limit = args
    return [read_module(p, limit) for p in paths]


def extract_all(paths: Sequence[bytes], jobs: Optional[int] = None,
                limit: int = DEFAULT_LIMIT) -> list[ModuleData]:
    """ModuleData of every path, in order, using ``jobs`` processes (default: all CPUs)."""
    jobs = default_jobs() if jobs is None else max(1, jobs)
    if jobs == 1 or len(paths) < MIN_PARALLEL:
        return [read_module(p, limit) for p in paths]
    import multiprocessing

    # interleaved chunks balance big and small modules across workers
    nchunks = jobs * 8
    chunks = [list(paths[i::nchunks]) for i in range(nchunks)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(jobs) as pool:
        results = pool.map(_chunk, [(c, limit) for c in chunks], chunksize=1)
    out: list[Optional[ModuleData]] = [None] * len(paths)
    for i, res in enumerate(results):
        out[i::nchunks] = res
    return out  # type: ignore[return-value]
