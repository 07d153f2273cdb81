"""The re-run cache: what a build system runs all day is depmod on the same modules again.

Keyed by content, never by time, so a changed module is never served stale and an identical
one is found again after a reinstall gave it a new mtime:

* a module's **content key** is the SHA-256 of the bytes its extraction depends on: for an
  uncompressed ELF module its size, every section's name and type, and every byte range the
  extractor reads (the ELF header, the section name table, the symbol, string, modinfo,
  version and CRC sections: about a seventh of a distro tree, so a reinstalled tree is
  re-keyed in a fraction of the time a whole-file hash takes); for a
  compressed file, or one that is not a readable ELF image, the whole file as stored. The
  key is computed in the same pass (and from the same reads) as the extraction itself;
* ``packs/`` holds, per module directory, the extracted :class:`~moddep.model.ModuleData` of
  its last run by content key (so a partly changed tree re-extracts only what changed), in
  parts written by the output processes at once, and an index of which pack holds each key
  (so a copy of a tree elsewhere is only re-keyed);
* ``paths/`` remembers, per module directory, each file's stat identity, key and the key's
  :func:`recipe`, so unchanged files are not even read, and a file rewritten with the same
  bytes (a reinstall: new inode and mtime) is re-keyed by its recipe without being parsed;
* ``runs/`` maps a run key — the hash of every input of a depmod run (options, kmod
  generation, configuration, modules.order, builtin files, kernel symbols, each module's path
  and content key) — to the finished output files and messages.

The cache lives outside the target root (default ``$XDG_CACHE_HOME/moddep`` or
``~/.cache/moddep``). Entries are written atomically; an unreadable entry is a miss.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from array import array
from itertools import chain
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence, Union

from moddep import __version__
from moddep.compression import DEFAULT_LIMIT
from moddep.elf import ELFDATA2MSB, ElfModule, TableBlock, header_size, section_table_columns
from moddep.model import ModuleData

# bump when ModuleData or the extraction changes meaning
FORMAT = f"moddep-cache-5 {__version__}".encode()
KEEP_RUNS = 16
KEEP_PACKS = 8
PACK_PARTS = 2  # a pack is written in parts, by as many processes at once


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "moddep")


def file_key(raw: bytes, limit: int = DEFAULT_LIMIT) -> bytes:
    """Key of a module file taken whole: compressed, or not a readable ELF image."""
    h = hashlib.sha256(FORMAT + b"file %d:" % limit)
    h.update(raw)
    return h.digest()


def layout_key(elf: ElfModule, limit: int = DEFAULT_LIMIT) -> hashlib._Hash:
    """Hash state over an uncompressed ELF module's size and the byte ranges extraction
    reads apart from CRC sections (:meth:`moddep.elf.ElfModule.depmod_inputs`), each with
    its position, and the section names and types (:meth:`~moddep.elf.ElfModule.section_columns`).
    Its digest names the module's *layout*: every input of extraction except the contents of
    the CRC sections, whose indices it decides."""
    ranges = elf.depmod_inputs()
    h = _layout_head(limit, elf.size, ranges, elf.section_columns())
    read = elf.read
    for off, size in ranges:
        h.update(read(off, size))
    return h


def content_key(layout: hashlib._Hash, elf: ElfModule, sections: tuple[int, ...]) -> bytes:
    """Key of an uncompressed ELF module: its :func:`layout_key` continued with the CRC
    sections (:meth:`~moddep.elf.ElfModule.crc_sections`), positions and contents.

    ``sections`` may come from the cache, stored under the layout's digest: a layout decides
    its CRC sections, so a stored list is the one a scan would find, and a wrong one can only
    give a key nothing is stored under.
    """
    h = layout.copy()
    if not sections:  # (most modules export nothing)
        h.update(_NO_CRC_HEAD)
        return h.digest()
    ranges = [elf.section_range(i) for i in sections]
    h.update(_crc_head(sections, ranges))
    read = elf.read
    for off, size in ranges:
        h.update(read(off, size))
    return h.digest()


def _layout_head(limit: int, size: int, ranges: Sequence[tuple[int, int]],
                 columns: bytes) -> hashlib._Hash:
    # the positions and the (fixed-size) columns first, so the contents that follow split
    # one way only; then the contents
    h = hashlib.sha256(b"%s elf %d %d %d:" % (FORMAT, limit, size, len(columns)))
    h.update(array("Q", chain.from_iterable(ranges)).tobytes())
    h.update(columns)
    return h


def _crc_head(sections: Sequence[int], ranges: Sequence[tuple[int, int]]) -> bytes:
    return b"crc %d:" % len(sections) + \
        array("Q", chain(sections, chain.from_iterable(ranges))).tobytes()


_NO_CRC_HEAD = _crc_head((), ())


def recipe(elf: ElfModule, sections: tuple[int, ...]) -> bytes:
    """How the content key of ``elf`` with CRC sections ``sections`` was computed: where the
    section header table is, the section name table's index, the indices of the sections
    :func:`layout_key` reads and of the CRC sections, as native 64-bit words. With it,
    :func:`key_by_recipe` computes the same key from the file's bytes without looking any
    section up by name (when the file comes back at the same path with a new mtime, as
    after a package reinstall)."""
    depmod = elf.depmod_sections()
    return array("Q", [*elf.section_table(), len(depmod), *depmod,
                       len(sections), *sections]).tobytes()


def key_by_recipe(read: Callable[[int, int], bytes], size: int, limit: int,
                  how: bytes) -> bytes:
    """The content key of a file of ``size`` bytes read by ``read(offset, size)``, taking
    the sections a :func:`recipe` names where the file's own section header table puts
    them (as :func:`layout_key` and :func:`content_key` do).

    Equal to the key a parse would compute whenever the file's ELF header, section names
    and types and section name table are the ones the recipe was taken from (all are
    hashed): a parse would then look up the same sections. For any other file it is a key
    no parse gives, so it is never found. Raises ValueError for a malformed recipe, or one
    the file does not fit.
    """
    try:
        words = array("Q")
        words.frombytes(how)
        table_off, table_size, shstrndx, n, *rest = words.tolist()
        depmod, m, crc = rest[:n], rest[n], rest[n + 1:]
        if len(depmod) != n or len(crc) != m:
            raise ValueError
        head = read(0, 64)
        block = TableBlock(read, table_off, table_size)  # (as ElfModule reads it)
        names, types, _flags, offs, sizes = section_table_columns(
            block.table, head[4], head[5] == ELFDATA2MSB)
        ranges = [(0, header_size(head))] + [(offs[i], sizes[i]) for i in (shstrndx, *depmod)]
        crc_ranges = [(offs[i], sizes[i]) for i in crc]
    except (ValueError, IndexError, KeyError, TypeError):
        raise ValueError("malformed cache recipe, or a file it does not fit") from None
    h = _layout_head(limit, size, ranges, names.tobytes() + types.tobytes())
    for off, length in ranges:
        got = block.before(off, length)
        h.update(read(off, length) if got is None else got)
    h.update(_crc_head(crc, crc_ranges))
    for off, length in crc_ranges:
        h.update(read(off, length))
    return h.digest()


def image_key(elf: ElfModule, limit: int = DEFAULT_LIMIT) -> bytes:
    """Key of an uncompressed ELF module, its CRC sections found by scanning ``.symtab``."""
    return content_key(layout_key(elf, limit), elf, elf.crc_sections())


Known = tuple[tuple[int, ...], bytes, bytes]
"""What the cache remembers of a file: stat identity, content key, the key's recipe."""


def stat_identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PackIndex:
    """What the packs hold: content key -> name of the pack holding its ModuleData, and
    layout digest -> (CRC sections, pack that taught it) (:func:`content_key`)."""

    def __init__(self, where: Optional[dict[bytes, str]] = None,
                 layouts: Optional[dict[bytes, tuple[tuple[int, ...], str]]] = None) -> None:
        self.where = where if where is not None else {}
        self.layouts = layouts if layouts is not None else {}

    def __contains__(self, key: object) -> bool:
        return key in self.where

    def sections(self, layout: bytes, count: int) -> Optional[tuple[int, ...]]:
        """The CRC sections of a layout seen before (of an image with ``count`` sections),
        else None; a malformed entry (a damaged cache) is no entry."""
        got = self.layouts.get(layout)
        if type(got) is not tuple or len(got) != 2 or type(got[0]) is not tuple:
            return None
        for i in got[0]:
            if type(i) is not int or not 0 < i < count:
                return None
        return got[0]


class RunResult(NamedTuple):
    """A finished run as the cache stores it: output files, messages, stdout lines."""

    outputs: dict[str, bytes]
    messages: list[tuple[int, str]]
    stdout: list[bytes]


class Cache:
    """One cache directory (created on first write)."""

    def __init__(self, directory: Union[str, os.PathLike[str]]) -> None:
        self.dir = os.fspath(directory)

    # -- helpers ---------------------------------------------------------------------------
    def _read(self, path: str) -> Any:
        try:
            with open(path, "rb") as f:
                return pickle.load(f)
        except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError,
                TypeError, IndexError):
            return None

    def _write(self, path: str, obj: Any) -> None:
        # a private temporary name per process (a live process's pid is unique), renamed
        # into place: readers see the old entry or the new one, never half of one
        parent, name = os.path.split(path)
        tmp = os.path.join(parent, f".tmp-{os.getpid()}-{name}")
        try:
            os.makedirs(parent, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as f:
                # without the memo: nothing written is shared or recursive, and the memo
                # would take a reference to every object pickled (writing to each page that
                # holds one: after a fork, every such page is copied)
                pickler = pickle.Pickler(f, protocol=pickle.HIGHEST_PROTOCOL)
                pickler.fast = True
                pickler.dump(obj)
            os.replace(tmp, path)
        except (OSError, pickle.PicklingError):
            try:  # a cache that cannot be written is just a slower run
                os.unlink(tmp)
            except OSError:
                pass

    # -- path index ------------------------------------------------------------------------
    def _paths_file(self, moddir: bytes) -> str:
        # (per format: keys of another format are never served)
        return os.path.join(self.dir, "paths", hashlib.sha256(FORMAT + moddir).hexdigest()[:32])

    def known_keys(self, moddir: bytes) -> dict[bytes, Known]:
        """path -> (stat identity, content key, its :func:`recipe` or ``b""``) of the files
        the last run over ``moddir`` saw; a damaged file is an empty one."""
        got = self._read(self._paths_file(moddir))
        if not isinstance(got, dict) or not all(
                type(v) is tuple and len(v) == 3 for v in got.values()):
            return {}
        return got

    def save_keys(self, moddir: bytes, keys: dict[bytes, Known]) -> None:
        self._write(self._paths_file(moddir), keys)

    # -- module data -----------------------------------------------------------------------
    def _pack(self, name: str) -> str:
        return os.path.join(self.dir, "packs", name)

    @staticmethod
    def pack_name(moddir: bytes) -> str:
        return hashlib.sha256(moddir).hexdigest()[:32]

    def pack_index(self) -> PackIndex:
        """Which pack holds each content key (every module directory's last run), so a tree
        copied elsewhere is found again without extracting it; and the layouts seen."""
        obj = self._read(os.path.join(self.dir, "packs", "index"))
        if isinstance(obj, tuple) and len(obj) == 2 and all(isinstance(d, dict) for d in obj):
            return PackIndex(*obj)
        return PackIndex()

    def _pack_part(self, name: str, part: int) -> str:
        return self._pack(name if part == 0 else f"{name}.{part}")

    def load_packs(self, names: Iterable[str]) -> dict[bytes, ModuleData]:
        """Content key -> ModuleData, from the named packs (all their parts)."""
        out: dict[bytes, ModuleData] = {}
        for name in sorted(set(names)):
            for part in range(PACK_PARTS):
                obj = self._read(self._pack_part(name, part))
                if isinstance(obj, dict):
                    out.update(obj)
        return out

    def save_pack(self, moddir: bytes, data: dict[bytes, ModuleData], part: int = 0) -> None:
        """Store part ``part`` (of :data:`PACK_PARTS`, written by as many processes at once)
        of ``moddir``'s module data, replacing that of its last pack; :meth:`index_pack`
        makes it found."""
        self._write(self._pack_part(self.pack_name(moddir), part), data)

    def index_pack(self, moddir: bytes, keys: Iterable[bytes],
                   layouts: dict[bytes, tuple[int, ...]]) -> None:
        """Index ``moddir``'s pack under ``keys`` (all its parts' keys), with the layouts
        learnt, and keep only the :data:`KEEP_PACKS` most recent packs (this one among them,
        whether or not its parts are written yet). An index entry whose pack was lost to a
        concurrent run is only a miss: the module is extracted again (and a part left from an
        earlier run holds data by content key: never wrong)."""
        name = self.pack_name(moddir)
        packs = os.path.join(self.dir, "packs")
        others = _keep_newest(packs, KEEP_PACKS - 1, lambda n: len(n) == 32 and n != name)
        if others is None:
            others = set()
        keep = others | {name}
        try:
            entries = os.listdir(packs)
        except OSError:
            entries = []
        for entry in entries:  # the other parts of packs no longer kept
            if len(entry) > 33 and entry[32] == "." and entry[:32] not in keep:
                try:
                    os.unlink(os.path.join(packs, entry))
                except OSError:
                    pass
        old = self.pack_index()
        where = {k: v for k, v in old.where.items() if v in keep and v != name}
        where.update(dict.fromkeys(keys, name))
        learnt = {k: v for k, v in old.layouts.items() if v[1] in keep}
        learnt.update((k, (v, name)) for k, v in layouts.items())
        self._write(os.path.join(packs, "index"), (where, learnt))

    # -- whole runs ------------------------------------------------------------------------
    def _run(self, key: bytes) -> str:
        return os.path.join(self.dir, "runs", key.hex())

    def load_run(self, key: bytes) -> Optional[RunResult]:
        obj = self._read(self._run(key))
        return obj if isinstance(obj, RunResult) else None

    def save_run(self, key: bytes, result: RunResult) -> None:
        self._write(self._run(key), result)
        _keep_newest(os.path.join(self.dir, "runs"), KEEP_RUNS, lambda n: not n.startswith("."))


def _keep_newest(directory: str, count: int,
                 select: Callable[[str], bool] = lambda name: True) -> Optional[set[str]]:
    """Delete all but the ``count`` most recently written of the entries whose name is
    selected; the names kept, or None when the directory cannot be listed."""
    try:
        with os.scandir(directory) as it:
            entries = sorted((e for e in it if select(e.name)), key=lambda e: e.stat().st_mtime)
    except OSError:
        return None
    for old in entries[:-count]:
        try:
            os.unlink(old.path)
        except OSError:
            pass
    return {e.name for e in entries[-count:]}


def run_key(parts: Sequence[bytes]) -> bytes:
    """Hash of a run's inputs (their count and lengths first, so they split one way only)."""
    h = hashlib.sha256(FORMAT + b"run %d:" % len(parts))
    h.update(array("Q", map(len, parts)).tobytes())  # the lengths, then the parts
    h.update(b"".join(parts))
    return h.digest()
