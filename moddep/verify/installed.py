"""A module directory as modprobe sees it: its index files, plus the few module files a
question needs (``why``, ``graph``, ``diff``).

:class:`Deps` is what those commands ask: each module's path, its modules.dep line
(``closure``), the modules it uses directly and through which symbols (``direct``), softdeps
and built-ins. :func:`from_installed` answers from the installed indexes, reading only the
module files on the way (a dependency chain needs the ELF symbols of the modules along it);
:func:`from_model` answers from a depmod model computed in memory (no indexes needed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from moddep.depmod import Request, compute, module_dir_name
from moddep.diag import fs
from moddep.errors import IndexFormatError, ModdepError
from moddep.extract import read_module
from moddep.graph import DepModel
from moddep.index import trie
from moddep.modinfo import alias_normalize, path_to_modname
from moddep.parallel import ModuleSource
from moddep.verify import compare

Direct = dict[bytes, tuple[bytes, ...]]  # provider -> symbols used, in dependency order


@dataclass
class Deps:
    """Dependencies of a module set (names are normalised module names)."""

    paths: dict[bytes, bytes]  # name -> path as modules.dep shows it
    closure: dict[bytes, tuple[bytes, ...]]  # name -> modules.dep line, as names
    direct_of: Callable[[bytes], Direct]
    softdeps: dict[bytes, list[bytes]] = field(default_factory=dict)
    builtin: frozenset[bytes] = frozenset()
    source: str = ""  # "installed indexes" or "computed from the modules"
    _direct: dict[bytes, Direct] = field(default_factory=dict)

    def direct(self, name: bytes) -> Direct:
        got = self._direct.get(name)
        if got is None:
            got = self._direct[name] = self.direct_of(name)
        return got

    def resolve_name(self, arg: str) -> bytes:
        """A module name, file name or path as the user typed it -> the normalised name."""
        return path_to_modname(os.fsencode(arg))

    def chain(self, start: bytes, goal: bytes) -> Optional[list[bytes]]:
        """A shortest chain of direct dependencies from ``start`` to ``goal`` (breadth
        first, dependencies in modules.dep order), or None."""
        allowed = set(self.closure.get(start, ())) | {start}
        parent: dict[bytes, Optional[bytes]] = {start: None}
        frontier = [start]
        while frontier:
            nxt = []
            for m in frontier:
                for d in self.direct(m):
                    if d in parent or d not in allowed:
                        continue
                    parent[d] = m
                    if d == goal:
                        out = [d]
                        p = parent[d]
                        while p is not None:
                            out.append(p)
                            p = parent[p]
                        return out[::-1]
                    nxt.append(d)
            frontier = nxt
        return None


def from_model(model: DepModel, builtin: Optional[bytes] = None) -> Deps:
    """Deps of a computed model (``builtin``: modules.builtin content, if any)."""
    names = [f.name for f in model.files]
    direct: dict[bytes, Direct] = {}
    for i, deps in enumerate(model.deps):
        direct[names[i]] = {names[d]: model.via.get((i, d), ()) for d in deps}
    soft = {names[i]: d.values(b"softdep") for i, d in enumerate(model.data)
            if d.values(b"softdep")}
    return Deps({f.name: f.display for f in model.files},
                {names[i]: tuple(names[d] for d in c) for i, c in enumerate(model.closure)},
                lambda n: direct.get(n, {}), soft, _builtin(builtin),
                "computed from the modules")


def _builtin(content: Optional[bytes]) -> frozenset[bytes]:
    if not content:
        return frozenset()
    return frozenset(r[0] for r in compare.decode("modules.builtin", content).records)


class Installed:
    """The index files of an installed module directory, read and decoded on demand."""

    def __init__(self, moddir: bytes, root: bytes = b"") -> None:
        self.moddir = moddir
        self.root = root  # where absolute paths in modules.dep (external modules) live
        self._files: dict[str, Optional[bytes]] = {}

    @classmethod
    def from_files(cls, moddir: bytes, files: dict[str, bytes], root: bytes = b"") -> Installed:
        """Index files held in memory (computed), for the module directory ``moddir``."""
        inst = cls(moddir, root)
        inst._files = {name: files.get(name) for name in compare.DECODERS}
        for name in ("modules.builtin", "modules.builtin.modinfo"):  # inputs: on disk
            inst._files.pop(name)
        return inst

    def read(self, name: str) -> Optional[bytes]:
        if name not in self._files:
            try:
                with open(self.moddir + b"/" + os.fsencode(name), "rb") as f:
                    self._files[name] = f.read()
            except FileNotFoundError:
                self._files[name] = None
            except OSError as e:
                raise ModdepError(f"could not read {fs(self.moddir)}/{name}: "
                                  f"{e.strerror}") from None
        return self._files[name]

    def has_indexes(self) -> bool:
        return self.read("modules.dep") is not None or self.read("modules.dep.bin") is not None

    def files(self) -> dict[str, bytes]:
        """Every index (and builtin input) file present."""
        out = {}
        for name in compare.DECODERS:
            data = self.read(name)
            if data is not None:
                out[name] = data
        return out

    def decoded(self, kind: str) -> Optional[compare.Decoded]:
        """The records of ``kind`` from its preferred file present."""
        for name in compare.SOURCES[kind]:
            data = self.read(name)
            if data is not None:
                return compare.decode(name, data)
        return None

    def host_path(self, path: bytes) -> bytes:
        return self.root + path if path.startswith(b"/") else self.moddir + b"/" + path

    def alias_index(self, name: str) -> Optional[trie.Index]:
        data = self.read(name)
        if not data:
            return None
        return trie.Index.from_bytes(data, name)


def from_installed(inst: Installed) -> Deps:
    """Deps from installed indexes: modules.dep for paths and closures, modules.symbols for
    symbol owners, module files (read as asked) for the symbols each one needs."""
    dec = inst.decoded(compare.DEPS)
    if dec is None:
        raise ModdepError(f"{fs(inst.moddir)} has no modules.dep (run depmod, or --compute)")
    facet = compare.facet(dec)
    assert isinstance(facet, dict)
    paths = {n: p for n, (p, _d) in facet.items()}
    closure = {n: tuple(path_to_modname(p) for p in d) for n, (_p, d) in facet.items()}
    sym_dec = inst.decoded(compare.SYMBOLS)
    owners = compare.facet(sym_dec) if sym_dec is not None else {}
    assert isinstance(owners, dict)

    def direct(name: bytes) -> Direct:
        path = paths.get(name)
        if path is None:
            return {}
        data = read_module(inst.host_path(path))
        if data.error is not None:
            raise ModdepError(f"{fs(inst.host_path(path))}: {data.error}")
        out: dict[bytes, list[bytes]] = {}
        for sym in data.undefined:
            key = sym[1:] if sym[:1] == b"." else sym
            owner = owners.get(key)
            if owner is not None and owner != name:
                out.setdefault(owner, []).append(sym)
        order = {n: i for i, n in enumerate(closure.get(name, ()))}
        return {o: tuple(out[o]) for o in sorted(out, key=lambda o: order.get(o, len(order)))}

    soft: dict[bytes, list[bytes]] = {}
    sdec = inst.decoded(compare.SOFTDEPS)
    for mod, text in (sdec.records if sdec else ()):
        soft.setdefault(mod, []).append(text)
    bdec = inst.decoded(compare.BUILTIN)
    builtin = frozenset(r[0] for r in bdec.records) if bdec else frozenset()
    return Deps(paths, closure, direct, soft, builtin, "installed indexes")


@dataclass(frozen=True)
class AliasMatch:
    """A module whose alias patterns match a modalias."""

    module: bytes
    patterns: tuple[bytes, ...]
    builtin: bool = False


def match_alias(inst: Installed, modalias: bytes) -> list[AliasMatch]:
    """Modules (then built-ins) whose alias patterns match ``modalias``, in the order
    modprobe gets them from the .bin index (libkmod's wildcard search), with the patterns."""
    key = alias_normalize(modalias)
    if key is None:
        raise ModdepError(f"{fs(modalias)}: unmatched bracket")
    out: list[AliasMatch] = []
    for binary, kind, builtin in (("modules.alias.bin", compare.ALIASES, False),
                                  ("modules.builtin.alias.bin", compare.BUILTIN_ALIASES, True)):
        try:
            index = inst.alias_index(binary)
        except IndexFormatError as e:
            raise ModdepError(f"{binary} is corrupt: {e.message}") from None
        dec = inst.decoded(kind)
        if index is not None:
            mods = list(dict.fromkeys(v for v, _p in index.search_wild(key)))
        elif dec is not None:  # no .bin: match the text ourselves, in file order
            mods = list(dict.fromkeys(m for p, m in dec.records
                                      if trie.fnmatch(_norm(p), key)))
        else:
            continue
        pats: dict[bytes, list[bytes]] = {m: [] for m in mods}
        for p, m in (dec.records if dec is not None else ()):
            if m in pats and trie.fnmatch(_norm(p), key):
                pats[m].append(p)
        out += [AliasMatch(m, tuple(dict.fromkeys(pats[m])), builtin) for m in mods]
    return out


def _norm(pattern: bytes) -> bytes:
    n = alias_normalize(pattern)
    return pattern if n is None else n


def load(req: Request, compute_always: bool = False, jobs: Optional[int] = None
         ) -> tuple[Deps, Installed]:
    """The dependencies of ``req``'s module directory: from its installed indexes, or
    computed in memory (text indexes only, no cache) when it has none or when asked."""
    moddir = req.basedir + b"/" + module_dir_name(req) + b"/" + req.kver
    if not os.path.isdir(moddir):
        raise ModdepError(f"{fs(moddir)}: no such module directory")
    inst = Installed(moddir, req.basedir)
    if not compute_always and inst.has_indexes():
        return from_installed(inst), inst
    req = req._replace(text_only=True)
    res = compute(req, ModuleSource(jobs, None))
    assert res.model is not None
    return (from_model(res.model, inst.read("modules.builtin")),
            Installed.from_files(moddir, res.outputs, req.basedir))
