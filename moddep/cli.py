"""Command-line entry point: subcommand and argv[0] dispatch.

``moddep SUBCOMMAND ...`` runs a subcommand; invoked through a symlink named like one of kmod's
tools (``depmod``, ``modprobe``, ``insmod``, ``rmmod``, ``lsmod``, ``modinfo``) it behaves as that
tool, kmod's multicall convention. Each command lives in ``moddep/tools/<name>.py`` with a
``main(argv, prog) -> int``; they are imported lazily so start-up stays cheap.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from typing import Optional, Sequence

# name -> (module, one-line help). Tools named like kmod's are also reachable via argv[0].
COMMANDS: dict[str, tuple[str, str]] = {
    "depmod": ("moddep.tools.depmod", "generate modules.dep and the other index files"),
    "modprobe": ("moddep.tools.modprobe", "add or remove modules, resolving dependencies"),
    "insmod": ("moddep.tools.insmod", "insert one module file into the kernel"),
    "rmmod": ("moddep.tools.rmmod", "remove one module from the kernel"),
    "lsmod": ("moddep.tools.lsmod", "list loaded modules"),
    "modinfo": ("moddep.tools.modinfo", "show information about a module"),
    "dump-index": ("moddep.tools.dump_index", "print the entries of a .bin index"),
    "who-uses": ("moddep.tools.who_uses", "tell what holds a module (sysfs, files, tracing)"),
    "verify": ("moddep.tools.verify", "check a module directory's indexes and modules"),
    "why": ("moddep.tools.why", "explain why a module needs another, or what matches an alias"),
    "graph": ("moddep.tools.graph", "draw a dependency closure (Graphviz)"),
    "diff": ("moddep.tools.diff", "semantic difference of two module directories' indexes"),
}

KMOD_TOOLS = ("depmod", "modprobe", "insmod", "rmmod", "lsmod", "modinfo")


def _available() -> dict[str, tuple[str, str]]:
    """Commands whose module exists in this installation."""
    import importlib.util  # only for the usage text: it costs start-up time

    found = {}
    for name, (modname, text) in COMMANDS.items():
        if importlib.util.find_spec(modname) is not None:
            found[name] = (modname, text)
    return found


def usage() -> str:
    lines = ["usage: moddep COMMAND [ARGS...]", "", "commands:"]
    for name, (_, text) in _available().items():
        lines.append(f"  {name:<11} {text}")
    lines += ["", "moddep COMMAND --help shows a command's options. Invoked through a symlink",
              "named " + ", ".join(KMOD_TOOLS) + " it behaves as that tool."]
    return "\n".join(lines)


def run(name: str, argv: Sequence[str], prog: Optional[str] = None) -> int:
    """Run command ``name`` with ``argv`` (without the command name)."""
    modname = COMMANDS[name][0]
    module = importlib.import_module(modname)
    return int(module.main(list(argv), prog or name))


def _installed(name: str) -> bool:
    """Whether command ``name``'s module is part of this installation (imports it)."""
    try:
        importlib.import_module(COMMANDS[name][0])
    except ModuleNotFoundError as e:
        if e.name is not None and COMMANDS[name][0].startswith(e.name):
            return False
        raise
    return True


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``moddep`` console script and of the kmod-named symlinks.

    Called without ``argv`` it is the process itself: once the command returns, the process
    leaves at once (output flushed, ``os._exit``) instead of freeing its heap object by object
    and collecting it, which costs a depmod run a few percent (tens of milliseconds).
    """
    if argv is None:
        _defer_imports(DEFERRED)
        from moddep.diag import leave_fast, reap_children

        leave_fast()
        try:
            code = _command(sys.argv)
        finally:
            reap_children()  # children finishing their own work (e.g. the cache)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed pipe, a closed stream
                pass
        os._exit(code)
    return _command(list(argv))


# Standard modules imported on every run but (almost) never used: dataclasses imports inspect
# (with ast, dis, tokenize: a tenth of a depmod re-run's start-up) only to name a class
# that has no docstring. Loaded on first use instead.
DEFERRED = ("inspect",)


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module not loaded yet; the first attribute it lacks
    loads the real module (which then replaces it there) and every later one is passed on.
    (importlib's LazyLoader cannot serve here: an ``import`` statement reads the module's
    ``__spec__``, and with LazyLoader that alone loads it.)"""

    def __getattr__(self, attr: str) -> object:
        real = self.__dict__.get("_real")
        if real is None:
            if sys.modules.get(self.__name__) is self:
                del sys.modules[self.__name__]
            real = self._real = importlib.import_module(self.__name__)
        return getattr(real, attr)


def _defer_imports(names: Sequence[str]) -> None:
    """Let the not yet imported modules ``names`` load on first use; only for the process
    itself (:func:`main` without arguments), never for a library caller."""
    for name in names:
        if name not in sys.modules:
            sys.modules[name] = _Deferred(name)


def _command(args: Sequence[str]) -> int:
    argv0 = os.path.basename(args[0]) if args else "moddep"
    if argv0 in KMOD_TOOLS:
        return run(argv0, args[1:], argv0)
    rest = args[1:]
    if not rest or rest[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if rest else 1
    if rest[0] in ("-V", "--version"):
        from moddep import __version__

        print(f"moddep {__version__}")
        return 0
    if rest[0] not in COMMANDS or not _installed(rest[0]):
        print(f"moddep: unknown command '{rest[0]}'\n\n{usage()}", file=sys.stderr)
        return 1
    return run(rest[0], rest[1:], rest[0])
