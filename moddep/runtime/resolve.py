"""Names to modules, modules to probe lists: libkmod's resolution without the kernel.

A :class:`Resolver` is libkmod's context minus the kernel: the module directory's indexes and
the modprobe.d configuration, plus a pool of :class:`Module` objects keyed like libkmod's
(``name`` for modules made from a name or a path, ``name\\alias`` for modules found through an
alias), so that one module's lazily computed path, dependencies and flags are shared by every
route that reaches it. Nothing here reads /proc or /sys or calls the kernel.

Resolution order of :meth:`Resolver.lookup` (KMOD_NOTES §12.3, ``kmod_module_new_from_lookup``);
the input is alias_normalize'd first, and the first step finding anything wins:

1. modprobe.d ``alias`` lines whose pattern fnmatch-es the input (all of them, config order);
2. modules.dep.bin, exact (skipped when the input has a ``:``);
3. modules.symbols.bin, wildcard (only for ``symbol:...``);
4. the first ``install`` line naming exactly the input, else the first such ``remove`` line;
5. modules.alias.bin, wildcard (all matches, priority order);
6. modules.builtin.bin, exact (the module is built in);
7. modules.builtin.alias.bin, wildcard (built in).

:meth:`Resolver.probe_list` is kmod_module_get_probe_list (§12.4): the target's dependencies
(deepest first), each framed by its own softdep ``pre:``/``post:`` modules, then the target
framed by its softdeps, recursing through softdeps with a visited mark. A module that has
softdeps is marked ``ignorecmd`` (its install command is not run, kmod's rule), dependencies and
the target are ``required`` (their load errors count; softdep-only modules' errors do not).
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

from moddep.diag import DEBUG, ERROR
from moddep.index.trie import fnmatch
from moddep.modinfo import alias_normalize, modname_normalize, path_to_modname
from moddep.runtime.index import ALIAS, BUILTIN_ALIAS, SYMBOL, ModuleDir
from moddep.runtime.modprobe_d import ModprobeConfig

#: (level, text) -> None: where libkmod's own messages go.
Emit = Callable[[int, str], None]


def _quiet(level: int, text: str) -> None:
    pass


def fs(b: bytes) -> str:
    return os.fsdecode(b)


class ResolveError(Exception):
    """A module could not be made (``errno`` as libkmod returns it, positive)."""

    def __init__(self, err: int) -> None:
        super().__init__(os.strerror(err))
        self.errno = err


@dataclass(eq=False)
class Module:
    """One module as libkmod's ``struct kmod_module`` knows it."""

    name: bytes
    alias: Optional[bytes] = None  # the pattern or input it was found through
    path: Optional[bytes] = None  # absolute file path, None for built-ins and unknown
    builtin: Optional[bool] = None  # None: not looked up yet
    deps: list[Module] = field(default_factory=list)  # deepest first
    deps_done: bool = False
    install: Optional[bytes] = None
    install_done: bool = False
    remove: Optional[bytes] = None
    remove_done: bool = False
    options: Optional[bytes] = None
    options_done: bool = False
    # probe-list marks
    visited: bool = False
    required: bool = False
    ignorecmd: bool = False

    def __repr__(self) -> str:
        alias = f" alias={self.alias!r}" if self.alias is not None else ""
        return f"Module({self.name!r}{alias})"


def absolute(path: bytes) -> bytes:
    """kmod's path_make_absolute_cwd: ``path`` if absolute, else cwd + "/" + path, where cwd
    is ``$PWD`` when it names the current directory (glibc's get_current_dir_name)."""
    if path.startswith(b"/"):
        return path
    cwd = os.getcwdb()
    pwd = os.environb.get(b"PWD")
    if pwd and pwd.startswith(b"/"):
        try:
            if os.path.samestat(os.stat(pwd), os.stat(b".")):
                cwd = pwd
        except OSError:
            pass
    return cwd + b"/" + path


class Resolver:
    """libkmod's lookups over ``moddir`` and ``config``."""

    def __init__(self, moddir: ModuleDir, config: ModprobeConfig, emit: Emit = _quiet) -> None:
        self.moddir = moddir
        self.config = config
        self.emit = emit
        self._pool: dict[bytes, Module] = {}

    @property
    def dirname(self) -> bytes:
        return self.moddir.dirname

    # -- making modules ---------------------------------------------------------------------

    def _get(self, key: bytes, name: bytes, alias: Optional[bytes]) -> Module:
        mod = self._pool.get(key)
        if mod is None:
            mod = self._pool[key] = Module(name, alias)
        return mod

    def from_name(self, name: bytes) -> Module:
        n = modname_normalize(name)
        return self._get(n, n, None)

    def from_alias(self, alias: bytes, name: bytes) -> Module:
        return self._get(name + b"\\" + alias, name, alias)

    def from_path(self, path: bytes) -> Module:
        """A module for the file ``path`` (must exist); ResolveError otherwise."""
        abspath = absolute(path)
        try:
            os.stat(abspath)
        except OSError as e:
            raise ResolveError(e.errno or errno.ENOENT) from None
        name = path_to_modname(path)
        if not name:
            raise ResolveError(errno.ENOENT)
        mod = self._get(name, name, None)
        if mod.path is None:
            mod.path = abspath
        elif mod.path != abspath:
            self.emit(ERROR, f"kmod_module '{fs(name)}' already exists with different path: "
                             f"new-path='{fs(abspath)}' old-path='{fs(mod.path)}'")
            raise ResolveError(errno.EEXIST)
        mod.builtin = False
        return mod

    # -- lookup -----------------------------------------------------------------------------

    def lookup(self, given: bytes) -> Optional[list[Module]]:
        """Modules for a name, alias or ``symbol:`` string; None when the input is invalid
        (unbalanced brackets: libkmod's -EINVAL), [] when nothing matches."""
        alias = alias_normalize(given)
        if alias is None:
            self.emit(DEBUG, f"invalid alias: {fs(given)}")
            return None
        for step in (self._from_config, self._from_moddep, self._from_symbols,
                     self._from_commands, self._from_aliases, self._from_builtin,
                     self._from_builtin_aliases):
            found = step(alias)
            if found:
                return found
        return []

    def lookup_name(self, given: bytes) -> Optional[Module]:
        """kmod_module_new_from_name_lookup (modinfo -m): modules.dep, then built-ins."""
        name = modname_normalize(given)
        for step in (self._from_moddep, self._from_builtin, self._from_builtin_aliases):
            found = step(name)
            if found:
                return found[0]
        return None

    def _from_config(self, alias: bytes) -> list[Module]:
        return [self.from_alias(a.pattern, a.modname) for a in self.config.aliases
                if fnmatch(a.pattern, alias)]

    def _from_moddep(self, alias: bytes) -> list[Module]:
        if b":" in alias:
            return []
        line = self.moddir.dep_line(alias)
        if line is None:
            return []
        mod = self.from_name(alias)
        self._parse_depline(mod, line)
        return [mod]

    def _wild(self, index: str, alias: bytes) -> list[Module]:
        names = self.moddir.wild(index, alias)
        return [self.from_alias(alias, n) for n in names or ()]

    def _from_symbols(self, alias: bytes) -> list[Module]:
        return self._wild(SYMBOL, alias) if alias.startswith(b"symbol:") else []

    def _from_commands(self, alias: bytes) -> list[Module]:
        for c in self.config.installs:
            if c.pattern == alias:
                mod = self.from_name(c.pattern)
                mod.install, mod.install_done = c.command, True
                return [mod]
        for c in self.config.removes:
            if c.pattern == alias:
                mod = self.from_name(c.pattern)
                mod.remove, mod.remove_done = c.command, True
                return [mod]
        return []

    def _from_aliases(self, alias: bytes) -> list[Module]:
        return self._wild(ALIAS, alias)

    def _from_builtin(self, alias: bytes) -> list[Module]:
        if not self.moddir.is_builtin(alias):
            return []
        mod = self.from_name(alias)
        mod.builtin = True
        return [mod]

    def _from_builtin_aliases(self, alias: bytes) -> list[Module]:
        mods = self._wild(BUILTIN_ALIAS, alias)
        for m in mods:
            m.builtin = True
        return mods

    # -- module properties ------------------------------------------------------------------

    def _join(self, rel: bytes) -> bytes:
        return rel if rel.startswith(b"/") else self.dirname + b"/" + rel

    def _parse_depline(self, mod: Module, line: bytes) -> None:
        if mod.deps_done:
            return
        mod.deps_done = True
        relpath, sep, rest = line.partition(b":")
        if not sep:
            return
        if mod.path is None:
            mod.path = self._join(relpath)
        deps: list[Module] = []
        for word in rest.replace(b"\t", b" ").split(b" "):
            if not word:
                continue
            path = self._join(word)
            try:
                dep = self.from_path(path)
            except ResolveError as e:
                self.emit(ERROR, f"path={fs(path)} error={os.strerror(e.errno)}")
                mod.deps_done = False
                return
            deps.insert(0, dep)  # libkmod prepends: the list ends up deepest first
        mod.deps = deps

    def dependencies(self, mod: Module) -> list[Module]:
        """modules.dep dependencies of ``mod``, deepest first (loading order)."""
        if not mod.deps_done:
            line = self.moddir.dep_line(mod.name)
            if line is not None:
                self._parse_depline(mod, line)
        return list(mod.deps)

    def path(self, mod: Module) -> Optional[bytes]:
        if mod.path is not None or mod.deps_done:
            return mod.path
        self.dependencies(mod)
        return mod.path

    def is_builtin(self, mod: Module) -> bool:
        if mod.builtin is None:
            mod.builtin = self.moddir.is_builtin(mod.name)
        return mod.builtin

    def is_blacklisted(self, mod: Module) -> bool:
        return mod.name in self.config.blacklists

    def options(self, mod: Module) -> Optional[bytes]:
        """Configured options for ``mod``: entries naming it, or the alias it came from."""
        if not mod.options_done:
            parts = [o.options for o in self.config.options
                     if o.options and (o.modname == mod.name or
                                       (mod.alias is not None and o.modname == mod.alias))]
            mod.options = b" ".join(parts) if parts else None
            mod.options_done = True
        return mod.options

    def install_command(self, mod: Module) -> Optional[bytes]:
        if not mod.install_done:
            mod.install = next((c.command for c in self.config.installs
                                if fnmatch(c.pattern, mod.name)), None)
            mod.install_done = True
        return mod.install

    def remove_command(self, mod: Module) -> Optional[bytes]:
        if not mod.remove_done:
            mod.remove = next((c.command for c in self.config.removes
                               if fnmatch(c.pattern, mod.name)), None)
            mod.remove_done = True
        return mod.remove

    def _lookup_deps(self, names: tuple[bytes, ...]) -> list[Module]:
        out: list[Module] = []
        for name in names:
            found = self.lookup(name)
            if found is None:
                self.emit(ERROR, f"failed to lookup dependency '{fs(name)}', continuing anyway.")
                continue
            out.extend(found)
        return out

    def softdeps(self, mod: Module) -> tuple[list[Module], list[Module]]:
        """(pre, post) modules of the first softdep line matching ``mod``'s name."""
        for s in self.config.softdeps:
            if fnmatch(s.pattern, mod.name):
                return self._lookup_deps(s.pre), self._lookup_deps(s.post)
        return [], []

    def weakdeps(self, mod: Module) -> list[Module]:
        """Modules of the first weakdep line matching (informational: never loaded)."""
        for w in self.config.weakdeps:
            if fnmatch(w.pattern, mod.name):
                return self._lookup_deps(w.deps)
        return []

    # -- probe list -------------------------------------------------------------------------

    def probe_list(self, mod: Module, ignorecmd: bool = False) -> list[Module]:
        """What to load for ``mod``, in order (may list a module twice, as libkmod)."""
        for m in self._pool.values():
            m.visited = False
            m.required = False
        out: list[Module] = []
        self._probe(mod, True, ignorecmd, out)
        return out

    def _probe(self, mod: Module, required: bool, ignorecmd: bool, out: list[Module]) -> None:
        if mod.visited:
            return
        mod.visited = True
        deps = self.dependencies(mod)
        if required:
            mod.required = True
            for d in deps:
                d.required = True
        for d in deps:
            self._with_softdeps(d, out)
        if ignorecmd:
            out.append(mod)
            mod.ignorecmd = True
        else:
            self._with_softdeps(mod, out)

    def _with_softdeps(self, mod: Module, out: list[Module]) -> None:
        pre, post = self.softdeps(mod)
        for m in pre:
            self._probe(m, False, False, out)
        out.append(mod)
        mod.ignorecmd = bool(pre or post)
        for m in post:
            self._probe(m, False, False, out)
