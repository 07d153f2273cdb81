"""Which module directory a command works on: the options verify, why, graph and diff share,
and the depmod :class:`~moddep.depmod.Request` that recomputes its indexes.

``-b ROOT [VERSION]`` names ``ROOT/lib/modules/VERSION`` (or ``usr/lib/modules``) with
depmod's rules; a bare module directory path (``diff``) is split into root and version when it
ends in ``lib/modules/VERSION``. The kmod generation compared against is, in order: the
``--kmod-version`` option, what the installed indexes show (the ``.bin`` node layout:
post-order up to kmod 33, pre-order since 34; ``modules.weakdep`` since 33: the files say who
wrote them), ``$MODDEP_KMOD_VERSION``, else kmod 34.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Optional

from moddep import compat
from moddep.compat import KmodGeneration
from moddep.depmod import DEFAULT_MODULE_DIRS, Request, is_version, module_dir_name
from moddep.errors import IndexFormatError, UsageError
from moddep.index import trie


def add_options(p: argparse.ArgumentParser, version: bool = True) -> None:
    """-b ROOT, -m, -C, --host-config, --kmod-version and the kernel version: a VERSION
    operand, or (``version=False``, for commands whose operands are modules) ``-k``."""
    a = p.add_argument
    a("-b", "--basedir", metavar="ROOT", help="the root (staged image) holding the modules")
    a("-m", "--moduledir", metavar="DIR",
      help="module directory below the root (default: lib/modules, or usr/lib/modules if only "
           "that exists)")
    a("-C", "--config", metavar="PATH", action="append",
      help="depmod.d file or directory instead of the root's; repeatable")
    a("--host-config", action="store_true",
      help="kmod's behaviour: read depmod.d and external dirs from the host, not the root")
    a("--kmod-version", type=int, metavar="N",
      help="kmod generation (30..34) whose depmod output to expect (default: what the "
           "installed .bin files show, else $MODDEP_KMOD_VERSION, else 34)")
    if version:
        a("version", nargs="?", metavar="VERSION",
          help="kernel version (default: the running kernel's)")
    else:
        a("-k", "--set-version", dest="version", metavar="VERSION",
          help="kernel version (default: the running kernel's)")


def add_compute_options(p: argparse.ArgumentParser) -> None:
    """--compute and -j, for commands that read the installed indexes (why, graph)."""
    a = p.add_argument
    a("--compute", action="store_true",
      help="compute the dependencies from the modules instead of reading the indexes")
    a("-j", "--jobs", type=int, metavar="N", help="worker processes for --compute")


def _abs(path: str) -> bytes:
    return os.fsencode(os.path.abspath(path))


def kernel_version(arg: Optional[str]) -> bytes:
    if arg is None:
        return os.fsencode(os.uname().release)
    kver = os.fsencode(arg)
    if not is_version(kver):
        raise UsageError(f"Bad version passed {arg}")
    return kver


def request(opts: argparse.Namespace, kver: bytes, gen: Optional[KmodGeneration] = None,
            text_only: bool = False, prefix: bytes = b"") -> Request:
    """The depmod request these options describe (all modules, no kernel symbols); without
    ``gen`` the default generation (enough to locate the module directory)."""
    return Request(
        kver=kver, gen=gen or compat.generation(compat.DEFAULT_VERSION), prefix=prefix,
        basedir=_abs(opts.basedir) if opts.basedir else b"",
        moduledir=os.fsencode(opts.moduledir) if opts.moduledir else None,
        config_paths=tuple(os.fsencode(c) for c in opts.config) if opts.config else None,
        host_config=opts.host_config, text_only=text_only)


def moddir_of(req: Request) -> bytes:
    """The module directory on this machine."""
    return req.basedir + b"/" + module_dir_name(req) + b"/" + req.kver


def moddir_target(req: Request) -> bytes:
    """The module directory as the target sees it (``/lib/modules/VERSION``)."""
    return b"/" + module_dir_name(req) + b"/" + req.kver


@dataclass(frozen=True)
class Generation:
    """The kmod generation a check uses, and why."""

    gen: KmodGeneration
    reason: str  # why this generation: for reports


def detect(moddir: bytes) -> Optional[tuple[int, str]]:
    """The kmod generation the installed indexes were written by, as far as they show."""
    weak = os.path.exists(moddir + b"/modules.weakdep")
    layout = None
    try:
        layout = trie.Index.open(os.fsdecode(moddir + b"/modules.dep.bin")).layout
    except (OSError, IndexFormatError):
        pass
    if layout == "pre":
        return 34, "the installed modules.dep.bin is in pre-order (kmod 34)"
    if layout == "post":
        if weak:
            return 33, "the installed modules.dep.bin is in post-order and modules.weakdep " \
                       "exists (kmod 33)"
        return 30, "the installed modules.dep.bin is in post-order, without modules.weakdep " \
                   "(kmod 30..32)"
    return None


def generation(explicit: Optional[int], moddir: bytes) -> Generation:
    """The generation to compare against (see the module documentation)."""
    if explicit is not None:
        return Generation(compat.generation(explicit), f"--kmod-version {explicit}")
    found = detect(moddir)
    if found is not None:
        return Generation(compat.generation(found[0]), found[1])
    env = os.environ.get(compat.ENV_VAR)
    if env:
        return Generation(compat.from_environment(None), f"${compat.ENV_VAR}={env}")
    return Generation(compat.generation(compat.DEFAULT_VERSION),
                      f"kmod {compat.DEFAULT_VERSION}, the default")


def request_for_dir(path: str, gen: KmodGeneration, text_only: bool = True) -> Request:
    """A request for the module directory at ``path``: ``R/lib/modules/V`` (or
    ``R/usr/lib/modules/V``) becomes root R and version V; any other directory is used as
    is, with no depmod.d."""
    full = _abs(path).rstrip(b"/")
    parent, _, kver = full.rpartition(b"/")
    for cand in sorted(DEFAULT_MODULE_DIRS, key=len, reverse=True):  # usr/lib/ first
        if parent.endswith(cand):
            return Request(kver=kver, gen=gen, basedir=parent[:-len(cand)],
                           moduledir=cand, text_only=text_only)
    return Request(kver=kver, gen=gen, basedir=b"", moduledir=parent, config_paths=(),
                   text_only=text_only)
