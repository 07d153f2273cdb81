"""Module order, symbol ownership, dependencies and cycles (KMOD_NOTES §5, §7, §8).

Pure functions over the scanned modules: they take module names/paths and per-module data and
return the :class:`DepModel` every index writer reads.
"""

from __future__ import annotations

from itertools import repeat
from typing import NamedTuple, Optional, Sequence

from moddep import kmodhash
from moddep.compat import KmodGeneration
from moddep.diag import Log, fs
from moddep.errors import DependencyCycleError
from moddep.kmodhash import MODULE_BUCKETS, SYMBOL_BUCKETS
from moddep.model import ModuleData
from moddep.scan import ModuleFile

# fgets(line, PATH_MAX) in depmod_modules_sort: longer lines arrive in pieces
FGETS_MAX = 4095

# Symbols kmod adds as "kernel" symbols when -E or -F is given, so that they never show up as
# unknown (tools/depmod.c depmod_add_fake_syms); TOC. only when not already known.
FAKE_SYMBOLS = (b"__this_module", b"_GLOBAL_OFFSET_TABLE_")


def _fgets_lines(data: bytes) -> list[bytes]:
    """Lines as successive fgets(…, PATH_MAX) calls return them (newline kept)."""
    out = []
    for line in data.splitlines(keepends=True):
        while len(line) > FGETS_MAX:
            out.append(line[:FGETS_MAX])
            line = line[FGETS_MAX:]
        out.append(line)
    return out


def module_order(files: dict[bytes, ModuleFile], order: Optional[bytes],
                 order_path: str, gen: KmodGeneration, log: Log) -> list[ModuleFile]:
    """The module array: name-hash order, then stably sorted by ``modules.order``.

    ``order`` is the content of modules.order (None when missing: no sorting). A line without
    its newline makes kmod report a corrupted line and skip the sort altogether.
    """
    names = list(files)
    mods = [files[names[i]] for i in kmodhash.order(names, MODULE_BUCKETS)]
    if order is None:
        return mods
    by_unc = {m.uncrelpath: m for m in mods if m.uncrelpath is not None}
    lines = _fgets_lines(order)
    keys: dict[bytes, int] = {}
    for n, raw in enumerate(lines, 1):
        line = raw.split(b"\0", 1)[0]
        if not line:
            continue
        if not line.endswith(b"\n"):
            log.error(f"{order_path}:{n} corrupted line misses '\\n'")
            return mods
        m = by_unc.get(line[:-1])
        if m is None:
            continue
        if gen.order_first_wins:
            # kmod >= 34 (commits 19c0df1, a1186fa): first line wins, keys -count, -count+1...
            keys.setdefault(m.name, -len(mods) + len(keys))
        else:
            # kmod <= 33: two passes, key = line - (lines + 1); the last line of a path wins
            keys[m.name] = n - (len(lines) + 1)
    if len(mods) > 1 or not gen.order_first_wins:
        mods.sort(key=lambda m: keys.get(m.name, 1))
    return mods


class KernelSymbols(NamedTuple):
    """Symbols preloaded from Module.symvers (-E, with CRCs) or System.map (-F)."""

    crcs: dict[bytes, int]
    check_crcs: bool  # -E given: compare CRCs


class DepModel:
    """The resolved module set every output is generated from (array order throughout);
    never changed once built. (A plain class: depmod is the only module on a depmod run that
    would import dataclasses, and generating a frozen one costs milliseconds.)"""

    __slots__ = ("files", "data", "deps", "closure", "symbols", "prefix", "_via")

    def __init__(self, files: tuple[ModuleFile, ...], data: tuple[ModuleData, ...],
                 deps: tuple[tuple[int, ...], ...], closure: tuple[tuple[int, ...], ...],
                 symbols: tuple[tuple[bytes, int], ...], prefix: bytes = b"") -> None:
        self.files = files
        self.data = data
        self.deps = deps  # direct dependencies, sorted by dep order
        self.closure = closure  # modules.dep line: all dependencies, sorted
        self.symbols = symbols  # (symbol, owner index) in kmod hash order
        self.prefix = prefix  # the symbol prefix stripped (-P)
        self._via: Optional[dict[tuple[int, int], tuple[bytes, ...]]] = None

    def __repr__(self) -> str:
        return f"DepModel({len(self.files)} modules, prefix={self.prefix!r})"

    @property
    def via(self) -> dict[tuple[int, int], tuple[bytes, ...]]:
        """(user, provider) -> the symbols the user takes from the provider, in the user's
        order (what ``why`` and verify explain; depmod's outputs never need it)."""
        if self._via is None:
            self._via = self._providers()
        return self._via

    def _providers(self) -> dict[tuple[int, int], tuple[bytes, ...]]:
        owner_of = dict(self.symbols)
        get = owner_of.get
        out: dict[tuple[int, int], list[bytes]] = {}
        for i, d in enumerate(self.data):
            for name in d.undefined:
                key = _lookup_key(name, self.prefix)
                owner = get(key)
                if owner is not None:
                    out.setdefault((i, owner), []).append(key)
        return {k: tuple(v) for k, v in out.items()}

    @property
    def names(self) -> list[bytes]:
        return [f.name for f in self.files]


def resolve(files: Sequence[ModuleFile], data: Sequence[ModuleData], *,
            kernel: Optional[KernelSymbols], prefix: bytes, errsyms: bool,
            verbose: bool, log: Log) -> DepModel:
    """Symbol ownership, dependency edges, topological order and closures."""
    n = len(files)
    # name -> owner index or -1 for the kernel (a later hash_add replaces); the CRCs beside,
    # only when they are compared
    check = kernel is not None and kernel.check_crcs and errsyms
    owner_of: dict[bytes, int] = {}
    crc_of: dict[bytes, int] = {}
    if kernel is not None:
        owner_of.update(dict.fromkeys(kernel.crcs, -1))
        if check:
            crc_of.update(kernel.crcs)
        for fake in FAKE_SYMBOLS:
            owner_of[fake] = -1
            crc_of[fake] = 0
        if b"TOC." not in owner_of:
            owner_of[b"TOC."] = -1
            crc_of[b"TOC."] = 0
    plen = len(prefix)
    for i, d in enumerate(data):
        if not plen:
            owner_of.update(zip(d.exports, repeat(i)))
            if check:
                crc_of.update(zip(d.exports, d.export_crcs))
            continue
        for name, crc in zip(d.exports, d.export_crcs):
            if name.startswith(prefix):
                name = name[plen:]
            owner_of[name] = i
            crc_of[name] = crc

    deps: list[list[int]] = []
    users = [0] * n
    get = owner_of.get
    for i, d in enumerate(data):
        # split here rather than through d.undefined: the names are fresh objects, dropped
        # after this module, instead of a cached tuple whose thousands of names every later
        # lookup writes a reference count into (after a fork, each such page is copied)
        blob = d.undefined_blob
        und = blob.split(b"\0") if d.undefined_weak else []
        keys: Sequence[bytes] = und
        if plen or blob[:1] == b"." or b"\0." in blob:
            keys = [_lookup_key(k, prefix) for k in und]
        if not (errsyms or verbose):
            # providers in first-use order (kmod adds a dependency once, on its first symbol)
            mine = [o for o in dict.fromkeys(map(get, keys)) if o is not None and o >= 0]
        else:
            hits = list(map(get, keys))
            found = [j for j, o in enumerate(hits) if o is not None]
            if errsyms:
                weak = d.undefined_weak
                for j, o in enumerate(hits):
                    if o is None and not weak[j]:
                        log.warning(f"{fs(files[i].fspath)} needs unknown symbol {fs(und[j])}")
                if check:
                    for j in found:
                        if crc_of[keys[j]] != d.undefined_crcs[j] and not weak[j]:
                            log.warning(f"{fs(files[i].fspath)} disagrees about version of "
                                        f"symbol {fs(und[j])}")
            owners = [o for o in hits if o is not None]
            mine = [o for o in dict.fromkeys(owners) if o >= 0]
            if verbose:
                first = dict(zip(reversed(owners), reversed(found)))
                for o in mine:
                    log.show(b'%s needs "%s": %s\n' % (files[i].fspath, keys[first[o]],
                                                       files[o].fspath))
        deps.append(mine)
        for o in mine:
            users[o] += 1

    dep_order = _toposort(deps, users, files, log)
    sorted_deps = tuple(tuple(sorted(ds, key=dep_order.__getitem__)) for ds in deps)
    closure = _closures(sorted_deps, dep_order)
    owned_all = [(name, owner) for name, owner in owner_of.items() if owner >= 0]
    owned = [owned_all[i] for i in kmodhash.order([n for n, _o in owned_all], SYMBOL_BUCKETS)]
    return DepModel(tuple(files), tuple(data), sorted_deps, closure, tuple(owned), prefix)


def _lookup_key(name: bytes, prefix: bytes) -> bytes:
    """depmod_symbol_find: drop one leading ``.`` (ppc64 ELFv1 dot symbols), then the prefix."""
    if name[:1] == b".":
        name = name[1:]
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    return name


def _toposort(deps: list[list[int]], users: list[int], files: Sequence[ModuleFile],
              log: Log) -> list[int]:
    """kmod's Kahn sort with a LIFO stack seeded in index order; raises on cycles."""
    n = len(deps)
    left = list(users)
    stack = [i for i in range(n) if left[i] == 0]
    order = [0] * n
    k = 0
    while stack:
        m = stack.pop()
        order[m] = k
        k += 1
        for d in deps[m]:
            left[d] -= 1
            if left[d] == 0:
                stack.append(d)
    if k < n:
        lines, count = _report_cycles(deps, left, files)
        raise DependencyCycleError(lines, count)
    return order


def _closures(deps: tuple[tuple[int, ...], ...], order: list[int]) -> tuple[tuple[int, ...], ...]:
    """All (transitive) dependencies of each module, sorted by dependency order."""
    n = len(deps)
    memo: list[Optional[frozenset[int]]] = [None] * n
    # Process deepest first: ascending users-first order means reverse dep order visits
    # providers before their users.
    for m in sorted(range(n), key=order.__getitem__, reverse=True):
        acc: set[int] = set()
        for d in deps[m]:
            acc.add(d)
            sub = memo[d]
            if sub:
                acc |= sub
        memo[m] = frozenset(acc)
    key = order.__getitem__
    return tuple(tuple(sorted(s, key=key)) if s else () for s in memo)  # type: ignore[arg-type]


def _report_cycles(deps: list[list[int]], left: list[int],
                   files: Sequence[ModuleFile]) -> tuple[list[str], int]:
    """kmod's depmod_report_cycles: the cycle lines it prints and the count of modules.

    kmod's walk from a root re-enters cycles that do not contain the root forever (a known
    hang in v30..v34.2); here a module already expanded from the same root is not expanded
    again when that would loop, so the report always terminates.
    """
    roots = [i for i in range(len(deps)) if left[i] > 0]
    visited = [False] * len(deps)
    in_loops: set[int] = set()
    lines: list[str] = []
    while roots:
        root = roots.pop(0)
        # vertices: (module, parent vertex index)
        verts: list[tuple[int, int]] = [(root, -1)]
        stack = [0]
        expanded: set[int] = set()
        hazardous = _loops_without(root, deps)
        while stack:
            vi = stack.pop()
            m = verts[vi][0]
            if visited[m] and m == root:
                path = []
                p = verts[vi][1]
                while p >= 0:
                    path.append(verts[p][0])
                    p = verts[p][1]
                path.reverse()
                for x in path:
                    in_loops.add(x)
                    if x in roots:
                        roots.remove(x)
                names = [files[x].name for x in path] + [files[m].name]
                lines.append("Cycle detected: " + " -> ".join(fs(x) for x in names))
                continue
            visited[m] = True
            if not deps[m]:
                if m in roots:
                    roots.remove(m)
                continue
            if hazardous and m in expanded:
                continue
            expanded.add(m)
            for d in deps[m]:
                verts.append((d, vi))
                stack.append(len(verts) - 1)
    return lines, len(in_loops)


def _loops_without(root: int, deps: list[list[int]]) -> bool:
    """Whether the graph reachable from ``root``, with ``root`` as a sink, has a cycle."""
    state: dict[int, int] = {}  # 1 on path, 2 done
    stack: list[tuple[int, int]] = [(root, 0)]
    state[root] = 1
    while stack:
        m, i = stack[-1]
        ds = deps[m]
        if i < len(ds):
            stack[-1] = (m, i + 1)
            d = ds[i]
            if d == root:
                continue
            s = state.get(d)
            if s == 1:
                return True
            if s is None:
                state[d] = 1
                stack.append((d, 0))
        else:
            state[m] = 2
            stack.pop()
    return False
