"""What index files say, and how two of them differ, in modules, dependencies, aliases, symbols.

Each index file (text or ``.bin``) decodes into records of one *kind* (KMOD_NOTES §9.2, §9.3):

============  ==========================================  ===================================
kind          records                                     files
============  ==========================================  ===================================
deps          (module, path, dependency paths)            modules.dep, modules.dep.bin
aliases       (pattern, module)                           modules.alias, modules.alias.bin
symbols       (symbol, module)                            modules.symbols, modules.symbols.bin
softdeps      (module, "pre: ... post: ...")              modules.softdep
weakdeps      (module, modules)                           modules.weakdep
devnames      (module, device name, "c10:200")            modules.devname
builtin       (module,)                                   modules.builtin(.bin)
builtin-alias (pattern, module)                           modules.builtin.modinfo, ...alias.bin
============  ==========================================  ===================================

The *facet* of a kind is its meaning as a set or mapping (order and duplicates dropped, alias
patterns normalised as modprobe looks them up). :func:`diff_facets` turns two facets into
:class:`Change` records; :func:`explain` does it for two versions of one file and, when the
meaning is the same, says what else differs (duplicates, order, priorities, trie layout).
:func:`describe` words changes for people, as verify ("the file lacks ...") or as diff
("+ ..."). ``verify`` compares a file on disk (old) with the recomputed one (new); ``diff``
compares two module directories' sets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Union

from moddep.compression import MODULE_EXTENSIONS
from moddep.diag import Log, fs
from moddep.errors import IndexFormatError
from moddep.index import trie
from moddep.index.outputs import builtin_alias_entries, builtin_entries
from moddep.modinfo import alias_normalize, path_to_modname

Record = tuple  # a decoded line or entry: tuple of bytes (deps: the last item is a tuple)
Facet = Union[dict, frozenset]

DEPS, ALIASES, SYMBOLS, SOFTDEPS, WEAKDEPS, DEVNAMES, BUILTIN, BUILTIN_ALIASES = (
    "deps", "aliases", "symbols", "softdeps", "weakdeps", "devnames", "builtin", "builtin-alias")
KINDS = (DEPS, ALIASES, SYMBOLS, SOFTDEPS, WEAKDEPS, DEVNAMES, BUILTIN, BUILTIN_ALIASES)


@dataclass(frozen=True)
class Decoded:
    """One file's records in file order (``.bin``: in priority order, then key order)."""

    kind: str
    records: tuple[Record, ...]
    priorities: Optional[tuple[int, ...]] = None  # .bin only, parallel to records
    layout: Optional[str] = None  # .bin only: "pre", "post" or None (cannot tell)


# -- decoders ---------------------------------------------------------------------------------

def _lines(data: bytes, name: str) -> Iterable[tuple[int, bytes]]:
    for n, line in enumerate(data.split(b"\n"), 1):
        if line and not line.startswith(b"#"):
            yield n, line


def _dep_line(line: bytes, name: str, where: str) -> Record:
    """``path: dep dep`` -> (module, path, (dep paths))."""
    deps: tuple[bytes, ...] = ()
    if line.endswith(b":"):
        path = line[:-1]
    else:
        i = line.find(b": ")
        if i < 0:
            raise IndexFormatError(f"{where}: no ':' after the module path in {fs(line)!r}",
                                   name)
        path, deps = line[:i], tuple(d for d in line[i + 2:].split(b" ") if d)
    return (path_to_modname(path), path, deps)


def _dep_text(data: bytes, name: str) -> Decoded:
    return Decoded(DEPS, tuple(_dep_line(line, name, f"line {n}")
                               for n, line in _lines(data, name)))


def _words(data: bytes, name: str, keyword: bytes, count: int) -> list[tuple[int, list[bytes]]]:
    out = []
    for n, line in _lines(data, name):
        words = line.split(b" ", count - 1)
        if len(words) != count or words[0] != keyword:
            raise IndexFormatError(f"line {n}: expected '{keyword.decode()} ...' with "
                                   f"{count - 1} fields, found {fs(line)!r}", name)
        out.append((n, words))
    return out


def _alias_text(data: bytes, name: str) -> Decoded:
    return Decoded(ALIASES, tuple((w[1], w[2]) for _n, w in _words(data, name, b"alias", 3)))


def _symbols_text(data: bytes, name: str) -> Decoded:
    out = []
    for n, w in _words(data, name, b"alias", 3):
        if not w[1].startswith(b"symbol:"):
            raise IndexFormatError(f"line {n}: expected 'alias symbol:NAME MODULE', found "
                                   f"{fs(b' '.join(w))!r}", name)
        out.append((w[1][7:], w[2]))
    return Decoded(SYMBOLS, tuple(out))


def _softdep_text(data: bytes, name: str) -> Decoded:
    return Decoded(SOFTDEPS, tuple((w[1], w[2]) for _n, w in _words(data, name, b"softdep", 3)))


def _weakdep_text(data: bytes, name: str) -> Decoded:
    return Decoded(WEAKDEPS, tuple((w[1], w[2]) for _n, w in _words(data, name, b"weakdep", 3)))


def _devname_text(data: bytes, name: str) -> Decoded:
    out = []
    for n, line in _lines(data, name):
        w = line.split(b" ")
        if len(w) != 3:
            raise IndexFormatError(f"line {n}: expected 'MODULE DEVNAME TYPE:MAJOR:MINOR', "
                                   f"found {fs(line)!r}", name)
        out.append((w[0], w[1], w[2]))
    return Decoded(DEVNAMES, tuple(out))


def _builtin_text(data: bytes, name: str) -> Decoded:
    return Decoded(BUILTIN, tuple((k,) for k, _v, _p in builtin_entries(data, Log())))


def _builtin_modinfo(data: bytes, name: str) -> Decoded:
    return Decoded(BUILTIN_ALIASES,
                   tuple((k, v) for k, v, _p in builtin_alias_entries(data, Log())))


def read_bin(data: bytes, name: str) -> tuple[list[trie.Entry], Optional[str]]:
    """All entries of a ``.bin`` (a full walk: every node is decoded and checked) and its
    layout; :class:`IndexFormatError` names the file and the fault."""
    index = trie.Index.from_bytes(data, name)
    entries = list(index.entries())
    return entries, index.layout


def _bin(kind: str, convert: Callable[[bytes, bytes, str], Record]
         ) -> Callable[[bytes, str], Decoded]:
    def decode(data: bytes, name: str) -> Decoded:
        entries, layout = read_bin(data, name)
        # by priority (the module order), then key: the order the text file has
        ordered = sorted(range(len(entries)), key=lambda i: entries[i][2])
        recs = tuple(convert(entries[i][0], entries[i][1], name) for i in ordered)
        return Decoded(kind, recs, tuple(entries[i][2] for i in ordered), layout)
    return decode


def _dep_entry(key: bytes, value: bytes, name: str) -> Record:
    rec = _dep_line(value, name, f"entry {fs(key)}")
    return (key, rec[1], rec[2])


def _symbol_entry(key: bytes, value: bytes, name: str) -> Record:
    if not key.startswith(b"symbol:"):
        raise IndexFormatError(f"key {fs(key)!r} does not start with 'symbol:'", name)
    return (key[7:], value)


# file name -> decoder; the text files depmod reads (modules.builtin...) decode too
DECODERS: dict[str, Callable[[bytes, str], Decoded]] = {
    "modules.dep": _dep_text,
    "modules.dep.bin": _bin(DEPS, _dep_entry),
    "modules.alias": _alias_text,
    "modules.alias.bin": _bin(ALIASES, lambda k, v, n: (k, v)),
    "modules.softdep": _softdep_text,
    "modules.weakdep": _weakdep_text,
    "modules.symbols": _symbols_text,
    "modules.symbols.bin": _bin(SYMBOLS, _symbol_entry),
    "modules.builtin": _builtin_text,
    "modules.builtin.bin": _bin(BUILTIN, lambda k, v, n: (k,)),
    "modules.builtin.modinfo": _builtin_modinfo,
    "modules.builtin.alias.bin": _bin(BUILTIN_ALIASES, lambda k, v, n: (k, v)),
    "modules.devname": _devname_text,
}

# where each kind is best read from, preferred first (text is cheaper to decode)
SOURCES: dict[str, tuple[str, ...]] = {
    DEPS: ("modules.dep", "modules.dep.bin"),
    ALIASES: ("modules.alias", "modules.alias.bin"),
    SYMBOLS: ("modules.symbols", "modules.symbols.bin"),
    SOFTDEPS: ("modules.softdep",),
    WEAKDEPS: ("modules.weakdep",),
    DEVNAMES: ("modules.devname",),
    BUILTIN: ("modules.builtin", "modules.builtin.bin"),
    BUILTIN_ALIASES: ("modules.builtin.modinfo", "modules.builtin.alias.bin"),
}

# text file -> the .bin that must say the same (verify checks their agreement on disk)
TEXT_BIN_PAIRS = (
    ("modules.dep", "modules.dep.bin"),
    ("modules.alias", "modules.alias.bin"),
    ("modules.symbols", "modules.symbols.bin"),
    ("modules.builtin", "modules.builtin.bin"),
    ("modules.builtin.modinfo", "modules.builtin.alias.bin"),
)


def decode(name: str, data: bytes) -> Decoded:
    """Records of index file ``name``; IndexFormatError when it cannot be decoded."""
    return DECODERS[name](data, name)


def _norm_alias(pattern: bytes) -> bytes:
    n = alias_normalize(pattern)
    return pattern if n is None else n


def facet(dec: Decoded) -> Facet:
    """The meaning of the records: deps and symbols as mappings, the others as sets."""
    if dec.kind == DEPS:
        deps: dict[bytes, tuple[bytes, tuple[bytes, ...]]] = {}
        for name, path, dpaths in dec.records:
            deps.setdefault(name, (path, dpaths))
        return deps
    if dec.kind == SYMBOLS:
        return {sym: mod for sym, mod in dec.records}
    if dec.kind in (ALIASES, BUILTIN_ALIASES):
        return frozenset((_norm_alias(p), m) for p, m in dec.records)
    return frozenset(dec.records)


# -- changes ----------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Change:
    """One semantic difference. ``op``: ``+`` only new has it, ``-`` only old, ``~`` changed.

    facet: module, path, dependency, alias, symbol, softdep, weakdep, devname, builtin,
    builtin-alias. ``module`` is the module concerned; ``item`` the dependency, alias, symbol
    or text; ``old``/``new`` the two values of a ``~`` change (and the path of a module).
    """

    facet: str
    module: str
    op: str
    item: str = ""
    old: str = ""
    new: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"facet": self.facet, "op": self.op, "module": self.module}
        for k in ("item", "old", "new"):
            v = getattr(self, k)
            if v:
                out[k] = v
        return out


FACET_ORDER = ("module", "path", "compression", "dependency", "builtin", "alias",
               "builtin-alias", "symbol", "softdep", "weakdep", "devname")


def _split_ext(path: bytes) -> tuple[bytes, bytes]:
    """``a/b.ko.xz`` -> (``a/b``, ``.ko.xz``): the module extension, compression included."""
    for ext in sorted(MODULE_EXTENSIONS, key=len, reverse=True):
        if path.endswith(ext):
            return path[:-len(ext)], ext
    return path, b""


def _sorted(changes: list[Change]) -> list[Change]:
    # modules: added ones first, then removed ones; other facets grouped by module
    return sorted(changes, key=lambda c: (FACET_ORDER.index(c.facet),
                                          c.op if c.facet == "module" else "", c.module, c.op,
                                          c.item))


def _set_changes(name: str, old: frozenset, new: frozenset,
                 split: Callable[[Record], tuple[bytes, str]]) -> list[Change]:
    out = []
    for op, recs in (("+", new - old), ("-", old - new)):
        for rec in recs:
            module, item = split(rec)
            out.append(Change(name, fs(module), op, item))
    return out


def diff_facets(kind: str, old: Facet, new: Facet) -> list[Change]:
    """The changes from facet ``old`` to facet ``new`` (both of ``kind``), sorted."""
    out: list[Change] = []
    if kind == DEPS:
        assert isinstance(old, dict) and isinstance(new, dict)
        for name in new.keys() - old.keys():
            out.append(Change("module", fs(name), "+", new=fs(new[name][0])))
        for name in old.keys() - new.keys():
            out.append(Change("module", fs(name), "-", old=fs(old[name][0])))
        for name in old.keys() & new.keys():
            (opath, odeps), (npath, ndeps) = old[name], new[name]
            if opath != npath:
                ostem, oext = _split_ext(opath)
                nstem, next_ = _split_ext(npath)
                if ostem == nstem:  # only the compression changed
                    out.append(Change("compression", fs(name), "~", old=fs(oext),
                                      new=fs(next_)))
                else:
                    out.append(Change("path", fs(name), "~", old=fs(opath), new=fs(npath)))
            if odeps != ndeps:
                on = {path_to_modname(p) for p in odeps}
                nn = {path_to_modname(p) for p in ndeps}
                out += [Change("dependency", fs(name), "+", fs(d)) for d in nn - on]
                out += [Change("dependency", fs(name), "-", fs(d)) for d in on - nn]
    elif kind == SYMBOLS:
        assert isinstance(old, dict) and isinstance(new, dict)
        for sym in new.keys() - old.keys():
            out.append(Change("symbol", fs(new[sym]), "+", fs(sym)))
        for sym in old.keys() - new.keys():
            out.append(Change("symbol", fs(old[sym]), "-", fs(sym)))
        for sym in old.keys() & new.keys():
            if old[sym] != new[sym]:
                out.append(Change("symbol", fs(new[sym]), "~", fs(sym), fs(old[sym]),
                                  fs(new[sym])))
    else:
        assert isinstance(old, frozenset) and isinstance(new, frozenset)
        if kind in (ALIASES, BUILTIN_ALIASES):
            out = _set_changes("alias" if kind == ALIASES else "builtin-alias", old, new,
                               lambda r: (r[1], fs(r[0])))
        elif kind in (SOFTDEPS, WEAKDEPS):
            out = _set_changes(kind[:-1], old, new, lambda r: (r[0], fs(r[1])))
        elif kind == DEVNAMES:
            out = _set_changes("devname", old, new, lambda r: (r[0], fs(r[1] + b" " + r[2])))
        elif kind == BUILTIN:
            out = _set_changes("builtin", old, new, lambda r: (r[0], ""))
    return _sorted(out)


@dataclass
class FileDiff:
    """How two versions of one index file differ: semantic changes, or else notes saying
    what differs when the meaning is the same."""

    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _layout_name(layout: Optional[str]) -> str:
    return {"pre": "pre-order (kmod 34)", "post": "post-order (kmod 30..33)"}.get(
        layout or "", "undetermined")


def explain(name: str, old: bytes, new: bytes) -> FileDiff:
    """Why ``old`` and ``new`` versions of index file ``name`` differ (they do, bytewise).

    Raises IndexFormatError when either cannot be decoded.
    """
    return explain_decoded(decode(name, old), decode(name, new))


def _times(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def explain_decoded(a: Decoded, b: Decoded,
                    labels: tuple[str, str] = ("in the old file", "in the new one")) -> FileDiff:
    """:func:`explain` for two decoded versions of one file (``labels`` name them in notes)."""
    out = FileDiff(diff_facets(a.kind, facet(a), facet(b)))
    if out.changes:
        return out
    ca, cb = Counter(a.records), Counter(b.records)
    if ca != cb:
        for rec in sorted((ca - cb) | (cb - ca)):
            out.notes.append(f"{_record_text(a.kind, rec)} is listed {_times(ca[rec])} "
                             f"{labels[0]}, {_times(cb[rec])} {labels[1]}")
        return out
    if a.records != b.records:
        out.notes.append("same entries in a different order (modules.order changed?)")
        return out
    if a.priorities != b.priorities:
        moved = sum(1 for x, y in zip(a.priorities or (), b.priorities or ()) if x != y)
        out.notes.append(f"same entries, but {moved} have other priorities (module positions): "
                         "a module was added or removed, or the module order changed")
        return out
    if a.layout != b.layout:
        out.notes.append(f"same entries, different trie layout: {_layout_name(a.layout)} "
                         f"versus {_layout_name(b.layout)}")
        return out
    out.notes.append("same entries; comments, blank lines or the encoding differ")
    return out


def _record_text(kind: str, rec: Record) -> str:
    if kind == DEPS:
        return f"module {fs(rec[0])}"
    if kind in (ALIASES, BUILTIN_ALIASES):
        return f"alias {fs(rec[0])} of {fs(rec[1])}"
    if kind == SYMBOLS:
        return f"symbol {fs(rec[0])} of {fs(rec[1])}"
    return " ".join(fs(x) for x in rec if isinstance(x, bytes))


# -- index sets -------------------------------------------------------------------------------

def content(files: dict[str, bytes]) -> dict[str, Facet]:
    """The facets a set of index files gives, each read from its preferred source."""
    out: dict[str, Facet] = {}
    for kind, names in SOURCES.items():
        for name in names:
            if name in files:
                out[kind] = facet(decode(name, files[name]))
                break
    return out


def diff_content(old: dict[str, Facet], new: dict[str, Facet]) -> list[Change]:
    """All changes between two index sets (kinds present in both)."""
    out: list[Change] = []
    for kind in KINDS:
        if kind in old and kind in new:
            out += diff_facets(kind, old[kind], new[kind])
    return _sorted(out)


# -- wording ----------------------------------------------------------------------------------

def _word(stem: str, n: int) -> str:
    """dependenc -> dependency/dependencies, alias -> alias/aliases, softdep -> softdeps."""
    if stem.endswith("c"):
        return stem + ("y" if n == 1 else "ies")
    if n == 1:
        return stem
    return stem + ("es" if stem.endswith("s") else "s")


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _names(items: list[str], limit: Optional[int]) -> str:
    if limit is None or len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _group(changes: list[Change]) -> dict[tuple[str, str], list[Change]]:
    groups: dict[tuple[str, str], list[Change]] = {}
    for c in changes:
        groups.setdefault((c.facet, c.module), []).append(c)
    return groups


def describe(changes: list[Change], voice: str = "verify",
             limit: Optional[int] = 10) -> list[str]:
    """Lines for people. ``voice="verify"``: old is the file found, new what the modules
    give ("lacks ...", "has ... which ..."); ``voice="diff"``: old -> new ("+", "-")."""
    lines: list[str] = []
    verify = voice == "verify"
    builtin: dict[str, list[str]] = {"+": [], "-": []}
    recompressed: dict[tuple[str, str], list[str]] = {}
    for (fct, module), group in _group(changes).items():
        plus = [c.item for c in group if c.op == "+"]
        minus = [c.item for c in group if c.op == "-"]
        if fct == "module":
            c = group[0]
            if verify:
                lines.append(f"lacks module {module} ({c.new})" if c.op == "+" else
                             f"lists module {module} ({c.old}), which is not in the tree")
            else:
                lines.append(f"{c.op} {module} ({c.new or c.old})")
        elif fct == "path":
            c = group[0]
            lines.append(f"has {module} at {c.old}; the tree has it at {c.new}" if verify
                         else f"~ {module} moved: {c.old} -> {c.new}")
        elif fct == "compression":
            c = group[0]
            recompressed.setdefault((c.old, c.new), []).append(module)
        elif fct == "builtin":
            builtin["+"] += [module for _ in plus]
            builtin["-"] += [module for _ in minus]
        elif fct == "symbol":
            moved = [c for c in group if c.op == "~"]
            if verify:
                if plus:
                    lines.append(f"lacks {_count(len(plus), 'symbol')} of {module}: "
                                 f"{_names(plus, limit)}")
                if minus:
                    lines.append(f"gives {module} {_count(len(minus), 'symbol')} no module "
                                 f"exports: {_names(minus, limit)}")
                for c in moved:
                    lines.append(f"gives symbol {c.item} to {c.old}; {c.new} exports it")
            else:
                parts = [f"+ {s}" for s in plus] + [f"- {s}" for s in minus]
                parts += [f"~ {c.item} (from {c.old})" for c in moved]
                lines.append(f"{module}: {_names(parts, limit)}")
        else:
            what = {"dependency": "dependenc", "alias": "alias", "builtin-alias": "built-in alias",
                    "softdep": "softdep", "weakdep": "weakdep", "devname": "device name"}[fct]
            if verify:
                parts = []
                if plus:
                    parts.append(f"lacks {_word(what, len(plus))} {_names(plus, limit)}")
                if minus:
                    parts.append(f"lists {_word(what, len(minus))} {_names(minus, limit)} that "
                                 "the modules do not give")
                lines.append(f"{module}: " + "; ".join(parts))
            else:
                parts = [f"+ {s}" for s in plus] + [f"- {s}" for s in minus]
                lines.append(f"{module}: {_names(parts, limit)}")
    for (oext, next_), mods in recompressed.items():
        if verify:
            lines.append(f"has {_count(len(mods), 'module')} as {oext}; the tree has them as "
                         f"{next_}: {_names(mods, limit)}")
        else:
            lines.append(f"~ {_count(len(mods), 'module')} now {next_} instead of {oext}: "
                         f"{_names(mods, limit)}")
    for op, names in builtin.items():
        if names:
            if verify:
                lines.append(f"lacks built-in modules {_names(names, limit)}" if op == "+" else
                             f"lists built-in modules {_names(names, limit)}, which "
                             "modules.builtin does not")
            else:
                lines.append(f"{op} built-in {_names(names, limit)}")
    return lines
