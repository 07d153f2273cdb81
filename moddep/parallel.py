"""Where module data comes from: extraction on several cores, and the content-keyed cache.

Output never depends on the number of workers: results come back in input order.
"""

from __future__ import annotations

import os
import sys
from array import array
from typing import Any, Callable, Optional, Sequence, TypeVar

from moddep.cache import PACK_PARTS, Cache, Known, PackIndex, stat_identity
from moddep.compression import DEFAULT_LIMIT
from moddep.extract import Keyed, read_keyed, read_module, rekey
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
              progress: Optional[Progress] = None,
              weights: Optional[Sequence[int]] = None,
              side: Optional[Callable[[], object]] = None) -> list[T]:
    """``[fn(p) for p in paths]`` on ``jobs`` processes, in order.

    The paths are cut into batches, by ``weights`` (e.g. file sizes) the heaviest first (else
    in order), and every process takes the next batch from a shared queue as it finishes
    the last: the processes finish together however fast each runs (on a shared machine one
    CPU can be much slower than the other). The queue is a pipe holding the batch numbers,
    written whole before forking: a 4-byte read takes one batch, end of file means none left.
    The parent works too, so only the children's results cross a process boundary: each
    batch as soon as it is done, taken in by the parent between its own batches. ``side``,
    if given, is run once by the parent before its first batch (the others take more
    batches meanwhile): work of the caller's own that needs no result of this map.
    """
    total = len(paths)
    if jobs <= 1 or total < MIN_PARALLEL or not hasattr(os, "fork"):
        if side is not None:
            side()
        out = []
        for n, p in enumerate(paths):
            out.append(fn(p))
            if progress and not n % 32:
                progress(n, total)
        if progress:
            progress(total, total)
        return out
    batches = _batches(total, jobs, weights)
    jobs = min(jobs, len(batches))
    rfd, wfd = os.pipe()
    try:
        os.write(wfd, array("I", range(len(batches))).tobytes())  # 4 bytes a batch
    finally:
        os.close(wfd)

    def take() -> Optional[tuple[int, list[T]]]:
        """The next batch from the queue, done; None when the queue is empty."""
        got = os.read(rfd, 4)
        if len(got) < 4:
            return None
        b = int.from_bytes(got, sys.byteorder)
        return b, [fn(paths[i]) for i in batches[b]]

    merged: list[Optional[T]] = [None] * total

    def place(b: int, res: list[T]) -> None:
        for i, r in zip(batches[b], res):
            merged[i] = r

    children: list[_Results] = []
    try:
        for _ in range(jobs - 1):
            children.append(_Results.fork(take, [c.fd for c in children]))
        if side is not None:
            side()
        done = 0
        while True:
            mine = take()
            if mine is None:
                break
            place(*mine)
            done += len(batches[mine[0]])
            if progress:  # the parent's count, times the processes
                progress(min(total - 1, done * jobs), total)
            for child in children:  # what the others finished meanwhile
                for b, res in child.receive(wait=False):
                    place(b, res)
        for child in children:
            for b, res in child.receive(wait=True):
                place(b, res)
    finally:
        os.close(rfd)
        for child in children:
            child.close()
    if progress:
        progress(total, total)
    return merged  # type: ignore[return-value]


class _Results:
    """A forked worker of :func:`map_files` and the pipe its results come back through.

    The worker sends each batch as it finishes it (a length-prefixed pickle), and the parent
    takes in what has arrived between its own batches: at the end of the map only the last
    batches are left to cross, instead of all of them."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd
        self.buf = bytearray()
        self.finished = False

    @classmethod
    def fork(cls, take: Callable[[], Optional[tuple[int, list[Any]]]],
             inherited: Sequence[int]) -> _Results:
        import pickle

        rfd, wfd = os.pipe()
        _widen(wfd)
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                os.close(rfd)
                for fd in inherited:  # the other workers' pipes
                    os.close(fd)
                while True:
                    got = take()
                    if got is None:
                        break
                    _send(wfd, pickle.dumps(got, protocol=pickle.HIGHEST_PROTOCOL))
                _send(wfd, pickle.dumps(None))
            except BaseException as e:  # noqa: BLE001 - sent to the parent
                try:
                    _send(wfd, pickle.dumps(("error", e), protocol=pickle.HIGHEST_PROTOCOL))
                except BaseException:  # noqa: BLE001 - an unpicklable error: EOF tells
                    pass
            finally:
                os._exit(0)
        os.close(wfd)
        os.set_blocking(rfd, False)
        return cls(pid, rfd)

    def receive(self, wait: bool) -> list[tuple[int, list[Any]]]:
        """The batches that arrived (with ``wait``: all the rest, until the worker's end)."""
        import pickle

        if self.finished:
            return []
        if wait:
            os.set_blocking(self.fd, True)
        out: list[tuple[int, list[Any]]] = []
        buf = self.buf
        while True:
            try:
                chunk = os.read(self.fd, PIPE_SIZE)
            except BlockingIOError:
                chunk = None
            if chunk:
                buf += chunk
            while len(buf) >= 8:
                size = int.from_bytes(buf[:8], "little")
                if len(buf) < 8 + size:
                    break
                got = pickle.loads(memoryview(buf)[8:8 + size])
                del buf[:8 + size]
                if got is None:
                    self.finished = True
                    return out
                if got[0] == "error":
                    self.finished = True
                    raise got[1]
                out.append(got)
            if chunk is None and not wait:
                return out
            if chunk == b"":
                raise RuntimeError(f"worker process {self.pid} ended without its results")

    def close(self) -> None:
        os.close(self.fd)
        os.waitpid(self.pid, 0)


def _send(fd: int, data: bytes) -> None:
    view = memoryview(len(data).to_bytes(8, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _batches(total: int, jobs: int, weights: Optional[Sequence[int]]) -> list[list[int]]:
    """Indices 0..total-1 in batches of about equal weight, heaviest files first; many
    per process (so the last ones even out), few enough that taking one costs nothing, and
    whose numbers fit in a pipe's buffer (written before any process reads them)."""
    count = min(total, jobs * 24, 4096)
    if weights is None:
        return [list(range(i * total // count, (i + 1) * total // count)) for i in range(count)]
    order = sorted(range(total), key=weights.__getitem__, reverse=True)
    cost = [weights[i] + 4096 for i in order]  # every file has a fixed cost too
    step = sum(cost) / count
    batches: list[list[int]] = [[]]
    load = 0
    for i, c in zip(order, cost):
        if load >= step and len(batches) < count:
            batches.append([])
            load = 0
        batches[-1].append(i)
        load += c
    return batches


Seen = tuple[list[tuple[int, ...]], list[bytes], list[bytes], dict[bytes, Known]]
"""The files' stat identities, keys and recipes as a run found them, with what the cache
knew (:meth:`Loaded.store_keys` saves the difference)."""


class Loaded:
    """The module data of one run's files: keys known up front, data on demand."""

    def __init__(self, source: ModuleSource, moddir: bytes, paths: Sequence[bytes],
                 keys: Optional[list[bytes]], data: list[Optional[ModuleData]],
                 packed: Optional[PackIndex] = None,
                 layouts: Optional[dict[bytes, tuple[int, ...]]] = None,
                 seen: Optional[Seen] = None) -> None:
        self.source = source
        self.seen = seen  # the files' stat identities and keys, unless the cache has them
        self.packed = packed  # where the data of earlier runs is (None: not read yet)
        self.layouts = layouts or {}  # layouts learnt by this run's extraction
        self.moddir = moddir
        self.paths = paths
        self.keys = keys  # content keys (None: no cache, or a file could not be read)
        self._data = data
        self._changed = False

    def data(self) -> list[ModuleData]:
        """ModuleData of every path, in order: extracted in the key pass, else from the
        packs of earlier runs (else extracted now). :meth:`store` saves a changed set."""
        out = self._data
        missing = [i for i, d in enumerate(out) if d is None]
        self._changed = len(missing) < len(out)  # something was extracted in the key pass
        cache = self.source.cache
        keys = self.keys
        if missing and cache is not None and keys is not None:
            if self.packed is None:
                self.packed = cache.pack_index()
            where = self.packed.where
            pack = cache.load_packs(where[keys[i]] for i in missing if keys[i] in where)
            for i in missing:
                out[i] = pack.get(keys[i])
            missing = [i for i in missing if out[i] is None]
        if missing:
            fresh = self.source.extract([self.paths[i] for i in missing])
            for i, d in zip(missing, fresh):
                out[i] = d
            self._changed = True
        return out  # type: ignore[return-value]

    def store_keys(self) -> None:
        """Save the files' stat identities and keys, if they changed (once)."""
        cache = self.source.cache
        if self.seen is not None and cache is not None:
            ids, keys, recipes, known = self.seen
            seen = {p: (ident, k, how)
                    for p, ident, k, how in zip(self.paths, ids, keys, recipes) if ident and k}
            if seen != known:
                cache.save_keys(self.moddir, seen)
            self.seen = None

    def store(self, part: int) -> None:
        """Save part ``part`` (of :data:`~moddep.cache.PACK_PARTS`: other processes write the
        others at the same time) of this run's module data as the module directory's pack,
        if it changed."""
        cache = self.source.cache
        if not self._changed or cache is None or self.keys is None:
            return
        data = dict(zip(self.keys[part::PACK_PARTS], self._data[part::PACK_PARTS]))
        cache.save_pack(self.moddir, data, part)  # type: ignore[arg-type]

    def store_index(self) -> None:
        """Index the pack :meth:`store` writes (its keys, the layouts learnt), if it changed;
        in any process, before or after the parts are written."""
        cache = self.source.cache
        if not self._changed or cache is None or self.keys is None:
            return
        cache.index_pack(self.moddir, self.keys, self.layouts)


class ModuleSource:
    """Module data for a list of files: extracted, or served from the cache by content."""

    def __init__(self, jobs: Optional[int] = None, cache: Optional[Cache] = None,
                 limit: int = DEFAULT_LIMIT, progress: Optional[Progress] = None) -> None:
        self.jobs = default_jobs() if jobs is None else max(1, jobs)
        self.cache = cache
        self.limit = limit
        self.progress = progress

    def extract(self, paths: Sequence[bytes],
                side: Optional[Callable[[], object]] = None) -> list[ModuleData]:
        """ModuleData of every path, in order, extracted (no cache); ``side`` as in
        :func:`map_files`."""
        limit = self.limit
        return map_files(lambda p: read_module(p, limit), paths, self.jobs, self.progress,
                         side=side)

    def load(self, moddir: bytes, paths: Sequence[bytes],
             prepare: Optional[Callable[[], object]] = None) -> Loaded:
        """Keys of ``paths`` and whatever data computing them yielded.

        A file whose stat identity the cache knows keeps its key unread. The others are
        read once, in parallel: key first, then extraction unless some pack (the last run
        over any module directory) holds that key, so a reinstalled or copied tree is only
        re-keyed. When many files are new, the workers stat them too.

        ``prepare`` (the caller's work for a run that computes its outputs) is run during the
        pass (:func:`map_files`'s ``side``) when this is likely such a run: no cache, or one
        that knows nothing of this module directory.
        """
        cache = self.cache
        if cache is None:
            return Loaded(self, moddir, paths, None, list(self.extract(paths, prepare)))
        known = cache.known_keys(moddir)
        side = None if known else prepare
        packed: Optional[PackIndex] = None  # read only if some file must be read (not a re-run)
        limit = self.limit

        def identity(path: bytes) -> tuple[tuple[int, ...], Optional[bytes]]:
            """The file's stat identity, and its key if the cache knows that identity."""
            try:
                ident = stat_identity(os.stat(path))
            except OSError:
                return (), None
            hit = known.get(path)
            return ident, hit[1] if hit is not None and hit[0] == ident else None

        def key(path: bytes) -> Keyed:
            hit = known.get(path)
            if hit is not None and hit[2]:
                # known, with its key's recipe: the same identity, or the same bytes where
                # the key reads them (a reinstall), keep the key without parsing the file
                ident, k = rekey(path, limit, hit[2], hit[0])
                if ident == hit[0] or k == hit[1]:
                    return hit[1], None, None, hit[2], ident
            elif hit is not None:
                ident, k = identity(path)
                if k is not None:
                    return k, None, None, b"", ident
            assert packed is not None  # (read before the pass)
            return read_keyed(path, limit, packed)  # (a path never seen: no stat first)

        total = len(paths)
        keys: list[bytes] = [b""] * total
        ids: list[tuple[int, ...]] = [()] * total
        recipes: list[bytes] = [b""] * total
        data: list[Optional[ModuleData]] = [None] * total
        # A re-run finds every identity known: stat here, nothing to fork for. Once a few
        # files are new (a reinstall, a first run), the workers stat the rest themselves.
        todo: list[int] = []
        for i, path in enumerate(paths):
            if len(todo) > 16:
                todo += range(i, total)
                break
            ident, k = identity(path)
            if k is not None:
                keys[i], ids[i], recipes[i] = k, ident, known[path][2]
            else:
                todo.append(i)
        layouts: dict[bytes, tuple[int, ...]] = {}
        if todo:
            packed = cache.pack_index()
            # file sizes, as the last run saw them, put the big files first
            weights = [hit[0][2] if hit is not None and hit[0] else 0
                       for hit in map(known.get, (paths[i] for i in todo))] if known else None
            fresh = map_files(key, [paths[i] for i in todo], self.jobs, self.progress, weights,
                              side)
            for i, (k, d, layout, how, ident) in zip(todo, fresh):
                keys[i], data[i], recipes[i], ids[i] = k, d, how, ident
                if layout is not None:
                    layouts[layout[0]] = layout[1]
        # (what to save is worked out when saving, by the process that saves it; a run whose
        # every path the cache knew, with its identity, has nothing to save)
        unchanged = not todo and len(known) == total
        return Loaded(self, moddir, paths, keys if all(keys) else None, data, packed, layouts,
                      None if unchanged else (ids, keys, recipes, known))


def extract_all(paths: Sequence[bytes], jobs: Optional[int] = None,
                limit: int = DEFAULT_LIMIT) -> list[ModuleData]:
    """ModuleData of every path, in order, without a cache."""
    return ModuleSource(jobs, None, limit).extract(paths)


def fork_join(tasks: Sequence[Callable[[], T]], jobs: int,
              then: Optional[Sequence[Optional[Callable[[], object]]]] = None) -> list[T]:
    """Run ``tasks`` and return their results in order, using up to ``jobs`` processes.

    The parent runs the first share itself; each forked child runs its share on the memory
    it inherited and sends the results back pickled. An exception in a child is re-raised here.

    ``then[i]``, if given, runs after task ``i`` in the same process, once its result has been
    handed over (work whose outcome nobody waits for, such as writing a cache): a child goes
    on with it while the parent carries on. The parent waits for its children only when the
    process leaves (:func:`moddep.diag.reap_before_exit`), or at once when called as a
    library.
    """
    after = list(then) if then is not None else [None] * len(tasks)

    def follow_up(share: Sequence[int]) -> None:
        for i in share:
            work = after[i]
            if work is not None:
                work()

    if jobs <= 1 or len(tasks) <= 1 or not hasattr(os, "fork"):
        done = [t() for t in tasks]
        follow_up(range(len(tasks)))
        return done
    import pickle

    from moddep.diag import reap_before_exit

    nproc = min(jobs, len(tasks))
    shares = [list(range(i, len(tasks), nproc)) for i in range(nproc)]
    children = []
    for share in shares[1:]:
        rfd, wfd = os.pipe()
        _widen(wfd)
        pid = os.fork()
        if pid == 0:  # child
            os.close(rfd)
            try:
                try:
                    payload: object = ("ok", [tasks[i]() for i in share])
                except BaseException as e:  # noqa: BLE001 - sent to the parent
                    payload = ("error", e)
                with os.fdopen(wfd, "wb") as w:
                    pickle.dump(payload, w, protocol=pickle.HIGHEST_PROTOCOL)
                if payload[0] == "ok":  # type: ignore[index]
                    follow_up(share)
            finally:
                os._exit(0)
        os.close(wfd)
        children.append((pid, rfd, share))
    results: list[Optional[T]] = [None] * len(tasks)
    unread = {rfd for _pid, rfd, _share in children}
    try:
        for i in shares[0]:
            results[i] = tasks[i]()
        for _pid, rfd, share in children:
            unread.discard(rfd)
            with os.fdopen(rfd, "rb") as r:
                kind, value = pickle.load(r)
            if kind == "error":
                raise value
            for i, v in zip(share, value):
                results[i] = v
        follow_up(shares[0])
    finally:
        # (a result not read, as when this process's own task failed: closing its pipe ends
        # the child's write, which could otherwise wait for a reader forever)
        for rfd in unread:
            os.close(rfd)
        for pid, _rfd, _share in children:
            reap_before_exit(pid)
    return results  # type: ignore[return-value]


# a pipe's buffer, if the system lets it grow (Linux: up to /proc/sys/fs/pipe-max-size, 1 MiB
# by default even unprivileged): a child's results then cross in a few large writes instead
# of a wake-up of each side per 64 KiB
PIPE_SIZE = 1 << 20


def _widen(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    except (ImportError, OSError):
        pass  # another system, or a lower limit: the default buffer
