"""Lookups in a module directory's indexes, as libkmod makes them (KMOD_NOTES §12.1, §10.7).

libkmod looks names up in five ``.bin`` indexes::

    modules.dep.bin            exact   modname -> "relpath: dep dep ..."
    modules.alias.bin          wild    alias pattern -> modname   (lookups of any input)
    modules.symbols.bin        wild    "symbol:NAME" -> modname   (inputs starting symbol:)
    modules.builtin.bin        exact   modname -> ""               (built-in modules)
    modules.builtin.alias.bin  wild    alias pattern -> modname   (built-in, optional)

modprobe preloads them (``kmod_load_resources``, libkmod's mmap reader); if one of the four
mandatory ones cannot be opened, none is kept and every lookup opens its file on demand with
the stdio reader, whose value order differs for equal priorities (see
:mod:`moddep.index.trie`). modinfo never preloads. A missing index makes its lookup find
nothing (wild lookups report "unavailable", which libkmod treats like no match).

Text fallback (moddep only): when a ``.bin`` file is missing but its text source exists
(``modules.dep``, ``modules.alias``, ``modules.symbols``, ``modules.builtin``, or
``modules.builtin.modinfo`` for built-in aliases), the index is built in memory from the text,
with line order as priority, so trees indexed by tools that write only text still resolve.
kmod does not do this.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

from moddep.errors import IndexFormatError
from moddep.index.trie import Entry, Index, encode
from moddep.modinfo import alias_normalize, parse_modinfo, path_to_modname

DEP, ALIAS, SYMBOL, BUILTIN_ALIAS, BUILTIN = "dep", "alias", "symbols", "builtin.alias", "builtin"

#: index name -> file stem, in kmod_load_resources order (libkmod.c index_files[]).
INDEX_FILES: dict[str, bytes] = {
    DEP: b"modules.dep",
    ALIAS: b"modules.alias",
    SYMBOL: b"modules.symbols",
    BUILTIN_ALIAS: b"modules.builtin.alias",
    BUILTIN: b"modules.builtin",
}
#: indexes kmod_load_resources may fail to open without giving up preloading.
OPTIONAL = frozenset({BUILTIN_ALIAS})

BUILTIN_MODINFO = b"modules.builtin.modinfo"


def _text_dep(data: bytes) -> list[Entry]:
    out = []
    for line in data.splitlines():
        path, sep, _rest = line.partition(b":")
        if sep and path:
            out.append((path_to_modname(path), line, 0))
    return out


def _text_alias(data: bytes) -> list[Entry]:
    out = []
    for i, line in enumerate(data.splitlines()):
        words = line.split()
        if len(words) == 3 and words[0] == b"alias":
            key = alias_normalize(words[1])  # depmod normalises index keys
            if key is not None:
                out.append((key, words[2], i))
    return out


def _text_builtin(data: bytes) -> list[Entry]:
    return [(path_to_modname(line), b"", 0) for line in data.splitlines() if line.strip()]


def _text_builtin_alias(data: bytes) -> list[Entry]:
    out = []
    for i, item in enumerate(data.split(b"\0")):
        name, sep, value = item.partition(b"=")
        mod, dot, field = name.partition(b".")
        key = alias_normalize(value) if sep and dot and field == b"alias" else None
        if key:
            out.append((key, mod, i))
    return out


_TEXT_SOURCES = {
    DEP: (b"modules.dep", _text_dep),
    ALIAS: (b"modules.alias", _text_alias),
    SYMBOL: (b"modules.symbols", _text_alias),
    BUILTIN: (b"modules.builtin", _text_builtin),
    BUILTIN_ALIAS: (BUILTIN_MODINFO, _text_builtin_alias),
}


class ModuleDir:
    """The indexes of one module directory (``dirname`` as libkmod spells it)."""

    def __init__(self, dirname: bytes, preload: bool = False) -> None:
        self.dirname = dirname
        self._cache: dict[str, Optional[Index]] = {}
        self.preloaded = False
        if preload:
            loaded: dict[str, Optional[Index]] = {}
            for name in INDEX_FILES:
                idx = self._open_bin(name)
                if idx is None and name not in OPTIONAL:
                    break
                if idx is not None:
                    loaded[name] = idx
            else:
                self._cache = loaded
                self.preloaded = True

    @property
    def reader(self) -> str:
        """Which libkmod reader's value order applies: ``mmap`` when preloaded."""
        return "mmap" if self.preloaded else "stdio"

    def path(self, name: bytes) -> bytes:
        return self.dirname + b"/" + name

    def _open_bin(self, name: str) -> Optional[Index]:
        try:
            return Index.open(os.fsdecode(self.path(INDEX_FILES[name] + b".bin")))
        except (OSError, IndexFormatError):
            return None

    def _text(self, name: str) -> Optional[Index]:
        source, build = _TEXT_SOURCES[name]
        try:
            with open(self.path(source), "rb") as f:
                data = f.read()
        except OSError:
            return None
        try:
            return Index.from_bytes(encode(build(data)), os.fsdecode(self.path(source)))
        except (IndexFormatError, ValueError, TypeError):
            return None

    def index(self, name: str) -> Optional[Index]:
        """The index ``name`` (one of :data:`INDEX_FILES`), None when unavailable."""
        if name in self._cache:
            return self._cache[name]
        idx = self._open_bin(name)
        if idx is None and not os.path.exists(self.path(INDEX_FILES[name] + b".bin")):
            idx = self._text(name)
        self._cache[name] = idx
        return idx

    # -- lookups ------------------------------------------------------------------------------

    def exact(self, name: str, key: bytes) -> Optional[bytes]:
        idx = self.index(name)
        return idx.lookup(key, reader=self.reader) if idx is not None else None

    def wild(self, name: str, key: bytes) -> Optional[list[bytes]]:
        """Values of every pattern of index ``name`` matching ``key`` in libkmod's order;
        None when the index is unavailable."""
        idx = self.index(name)
        if idx is None:
            return None
        return [v for v, _prio in idx.search_wild(key, reader=self.reader)]

    def dep_line(self, modname: bytes) -> Optional[bytes]:
        """The modules.dep line of ``modname`` ("relpath: deps..."), or None."""
        return self.exact(DEP, modname)

    def is_builtin(self, modname: bytes) -> bool:
        return self.exact(BUILTIN, modname) is not None

    def dump(self, name: str) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of index ``name`` in libkmod's dump order (``modprobe -c``)."""
        idx = self.index(name)
        if idx is None:
            return
        for key, value, _prio in idx.entries(reader=self.reader):
            yield key, value

    def builtin_modinfo(self, modname: bytes) -> Optional[list[tuple[bytes, bytes]]]:
        """``.modinfo`` pairs of a built-in module from modules.builtin.modinfo.

        libkmod reads ``MOD.key=value`` strings until the run of strings for ``modname`` ends.
        None when the file cannot be read (a kernel too old to write it).
        """
        try:
            with open(self.path(BUILTIN_MODINFO), "rb") as f:
                data = f.read()
        except OSError:
            return None
        prefix = modname + b"."
        strings: list[bytes] = []
        for item in data.split(b"\0"):
            if item.startswith(prefix):
                strings.append(item[len(prefix):])
            elif strings:
                break
        return parse_modinfo(b"\0".join(strings))
