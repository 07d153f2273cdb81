"""Module discovery as kmod's depmod does it (``depmod_modules_search*``, KMOD_NOTES §4).

The module directory is walked recursively in readdir order, then each external directory
(last configured first). ``.``/``..``, ``build``, ``source`` and every ``exclude`` name are
skipped at every depth; symlinks are followed (with loop protection kmod lacks). A file is a
candidate when its name is longer than, and ends with, a module extension. Two files with the
same module name are resolved by :func:`new_wins`.

Paths are kept in two coordinates: ``kpath``, the path kmod would see (target-absolute in the
default target-root mode, host path in kmod-compatible host mode), which decides priorities and
what is written into the indexes; and ``fspath``, where the file really is on this machine.
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple, Optional

from moddep.compression import MODULE_EXTENSIONS
from moddep.config.depmod_d import SEARCH_BUILTIN, SEARCH_EXTERNAL, DepmodConfig
from moddep.diag import Log, fs
from moddep.errors import ModdepError
from moddep.modinfo import modname_normalize
from moddep.rootfs import EscapeError, Root

ALWAYS_SKIPPED = frozenset((b".", b"..", b"build", b"source"))
_new_file = tuple.__new__


class ModuleFile(NamedTuple):
    """One module file chosen by discovery."""

    name: bytes  # normalised module name
    kpath: bytes  # path as kmod sees it
    fspath: bytes  # path on this machine
    relpath: Optional[bytes]  # kpath relative to the module dir, None outside it
    basename: bytes  # file name as spelled

    @property
    def display(self) -> bytes:
        """What the indexes show: the relative path, or the absolute one outside the dir."""
        return self.relpath if self.relpath is not None else self.kpath

    @property
    def uncrelpath(self) -> Optional[bytes]:
        """The key modules.order lines are matched against (kmod's ``uncrelpath``).

        The relative path's directory part plus as many bytes of the file name as the
        normalised name has, plus ``.ko``: ``a/intel-uncore.ko.xz`` -> ``a/intel-uncore.ko``
        (and kmod's quirk: ``foo.bar.ko`` -> ``foo.ba``).
        """
        if self.relpath is None:
            return None
        slash = self.relpath.rfind(b"/")
        return self.relpath[:slash + 1 + len(self.name) + 3]


def is_module_name(name: bytes) -> bool:
    """kmod's path_ends_with_kmod_ext: longer than, and ending with, a module extension.

    (No extension ends with another, so a name ending with one is longer than it unless it
    is that very extension.)"""
    return name.endswith(MODULE_EXTENSIONS) and name not in MODULE_EXTENSIONS


def starts_dir(path: bytes, prefix: bytes) -> bool:
    """``path`` lies below directory ``prefix`` (kmod's depmod_is_path_starts_with)."""
    return len(path) > len(prefix) and path[len(prefix)] == 0x2F and path.startswith(prefix)


def new_wins(cfg: DepmodConfig, moddir: bytes, old: ModuleFile, new: ModuleFile) -> bool:
    """Whether ``new`` replaces ``old`` (the inverse of depmod_module_is_higher_priority).

    Overrides are checked newest first; then the search list from its lowest entry up, with
    counter i (an ``external`` entry spends one i per external dir, lowest first); a path
    matching nothing gets the ``built-in`` entry's i, or -1. Ties keep the old one. kmod quirk,
    kept: when both paths are under the same search dir only the new one gets its priority
    (an ``else if``), so the later-found file wins inside one search directory.
    """
    newrel = _prio_rel(new, moddir)
    oldrel = _prio_rel(old, moddir)
    for ov in reversed(cfg.overrides):
        if newrel is not None and newrel == ov:
            return True
        if oldrel is not None and oldrel == ov:
            return False
    bprio = oldprio = newprio = -1
    i = 0
    for se in reversed(cfg.effective_searches):
        if se.kind == SEARCH_BUILTIN:
            bprio = i
        elif se.kind == SEARCH_EXTERNAL:
            for ext in reversed(cfg.externals):
                if starts_dir(new.kpath[:_stemlen(new)], ext):
                    newprio = i
                if starts_dir(old.kpath[:_stemlen(old)], ext):
                    oldprio = i
                i += 1
        else:
            p = se.path
            if newrel is not None and starts_dir(newrel, p):
                newprio = i
            elif oldrel is not None and starts_dir(oldrel, p):
                oldprio = i
        i += 1
    if newprio < 0:
        newprio = bprio
    if oldprio < 0:
        oldprio = bprio
    return not newprio <= oldprio


def _stemlen(m: ModuleFile) -> int:
    """Length of kpath up to the directory part plus the normalised-name length."""
    return len(m.kpath) - len(m.basename) + len(m.name)


def _prio_rel(m: ModuleFile, moddir: bytes) -> Optional[bytes]:
    """``reldir/stem`` compared with overrides (relative to the module dir), else None."""
    if not m.kpath.startswith(moddir):
        return None
    return m.kpath[len(moddir) + 1:_stemlen(m)]


class Scanner:
    """Walks the module dir and external dirs, keeping the winning file per module name."""

    def __init__(self, cfg: DepmodConfig, moddir_k: bytes, moddir_fs: bytes,
                 ext_dirs: list[tuple[bytes, bytes]], log: Log,
                 root: Optional[Root] = None) -> None:
        self.cfg = cfg
        self.moddir_k = moddir_k
        self.moddir_fs = moddir_fs
        self.ext_dirs = ext_dirs  # (kpath, fspath), walk order
        self.log = log
        self.skip = ALWAYS_SKIPPED | cfg.excludes
        self.by_name: dict[bytes, ModuleFile] = {}
        # symlinks found below a staged root are followed inside it (moddep.rootfs)
        self.root = root if root is not None and root.confined else None

    def run(self) -> dict[bytes, ModuleFile]:
        try:
            self._walk_top(self.moddir_k, self.moddir_fs)
        except OSError as e:
            self.log.error(f"could not open directory {fs(self.moddir_fs)}: {e.strerror}")
            raise ModdepError(f"could not search modules: {e.strerror}") from None
        for kdir, fsdir in self.ext_dirs:
            try:
                self._walk_top(kdir, fsdir)
            except OSError as e:
                self.log.error(f"could not open directory {fs(fsdir)}: {e.strerror}")
        return self.by_name

    def _walk_top(self, kdir: bytes, fsdir: bytes) -> None:
        st = os.stat(fsdir)
        it = os.scandir(fsdir)  # raises for a missing dir, as opendir does
        self._walk(it, kdir + b"/", fsdir + b"/", {(st.st_dev, st.st_ino)})

    def _walk(self, it: os._ScandirIterator[bytes], kbase: bytes, fsbase: bytes,
              ancestors: set[tuple[int, int]]) -> None:
        with it:
            entries = list(it)
        confine = self.root is not None and self.root.contains(fsbase[:-1])
        moddir = self.moddir_k + b"/"
        relbase = kbase[len(moddir):] if kbase.startswith(moddir) else None
        for entry in entries:
            name = entry.name
            if name in self.skip:
                continue
            if confine and entry.is_symlink():
                self._symlink(kbase, fsbase, name, ancestors)
                continue
            try:
                if entry.is_dir():
                    is_dir = True
                elif entry.is_file():
                    is_dir = False
                else:
                    st = os.stat(entry.path)
                    self.log.error(f"unsupported file type {fs(fsbase + name)}: "
                                   f"{stat.S_IFMT(st.st_mode):o}")
                    continue
            except OSError as e:
                self.log.error(f"fstatat({fs(fsbase)}, {fs(name)}): {e.strerror}")
                continue
            if is_dir:
                try:
                    st = entry.stat()
                    key = (st.st_dev, st.st_ino)
                    if key in ancestors:
                        self.log.error(f"{fs(fsbase + name)}: symbolic link loop, skipped")
                        continue
                    sub = os.scandir(entry.path)
                except OSError as e:
                    self.log.error(f"openat({fs(fsbase)}, {fs(name)}, O_RDONLY): {e.strerror}")
                    continue
                self._walk(sub, kbase + name + b"/", fsbase + name + b"/", ancestors | {key})
            elif is_module_name(name):
                # (built as the plain tuple it is: thousands)
                mod = _new_file(ModuleFile, (modname_normalize(name), kbase + name,
                                             fsbase + name,
                                             None if relbase is None else relbase + name, name))
                old = self.by_name.get(mod.name)
                if old is None:
                    self.by_name[mod.name] = mod
                else:
                    self._keep(old, mod)

    def _symlink(self, kbase: bytes, fsbase: bytes, name: bytes,
                 ancestors: set[tuple[int, int]]) -> None:
        """A symlink below the root: followed as the target system will follow it."""
        assert self.root is not None
        link = fsbase + name
        try:
            real = self.root.resolve_host(link)
        except EscapeError as e:
            if is_module_name(name) or os.path.isdir(link):  # else nothing depmod would read
                self.log.error(f"{fs(link)}: {e.message}: skipped")
            return
        try:
            st = os.stat(real)
        except OSError as e:
            self.log.error(f"fstatat({fs(fsbase)}, {fs(name)}): {e.strerror}")
            return
        # the same file as the host would open: keep the path kmod prints
        if os.path.realpath(link) == os.path.realpath(real):
            real = link
        if stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in ancestors:
                self.log.error(f"{fs(link)}: symbolic link loop, skipped")
                return
            try:
                sub = os.scandir(real)
            except OSError as e:
                self.log.error(f"openat({fs(fsbase)}, {fs(name)}, O_RDONLY): {e.strerror}")
                return
            self._walk(sub, kbase + name + b"/", real + b"/", ancestors | {key})
        elif stat.S_ISREG(st.st_mode):
            if is_module_name(name):
                self._add(kbase + name, real, name)
        else:
            self.log.error(f"unsupported file type {fs(link)}: {stat.S_IFMT(st.st_mode):o}")

    def _add(self, kpath: bytes, fspath: bytes, basename: bytes) -> None:
        moddir = self.moddir_k
        rel = kpath[len(moddir) + 1:] if starts_dir(kpath, moddir) else None
        mod = ModuleFile(modname_normalize(basename), kpath, fspath, rel, basename)
        old = self.by_name.get(mod.name)
        if old is None:
            self.by_name[mod.name] = mod
        else:
            self._keep(old, mod)

    def _keep(self, old: ModuleFile, mod: ModuleFile) -> None:
        """Two files of one module name: keep the one of higher priority."""
        if not new_wins(self.cfg, self.moddir_k, old, mod):
            self.log.debug(f"Ignored lower priority: {fs(mod.fspath)}, higher: {fs(old.fspath)}")
            return
        self.by_name[mod.name] = mod
