"""``rmmod``: remove modules from the kernel, as kmod's rmmod (``tools/rmmod.c``, kmod 34).

Each argument is a module name, or a module file when it exists as a path. Unless ``-f``, a
module that is built in, not loaded, or in use is refused with kmod's messages; kmod's
"in use by" report is kept byte for byte (each holder is a separate ``ERROR:`` print, so the
holders run on one line), and moddep adds who holds the module. Removal is
``delete_module(name, O_NONBLOCK [| O_TRUNC with -f])``.
"""

from __future__ import annotations

import errno
import os

from moddep.diag import ERROR
from moddep.errors import KernelError
from moddep.modinfo import modname_normalize, path_to_modname
from moddep.runtime.index import ModuleDir
from moddep.runtime.kernel import REMOVE_FORCE, REMOVE_NOWAIT
from moddep.runtime.state import KernelState
from moddep.tools.modprobe import (
    Output,
    guarded,
    kernel_loader,
    module_dirname,
    simple_options,
    sysroot,
)

HELP = """\
Usage:
\t{p} [options] [list of modulenames]
Options:
\t-f, --force       DANGEROUS: forces a module unload and may
\t                  crash your machine
\t-s, --syslog      print to syslog, not stderr
\t-v, --verbose     enables more messages
\t-V, --version     show version
\t-h, --help        show this help
"""


class _RawErr:
    """kmod's ERR() for messages printed in pieces (no newline of their own)."""

    def __init__(self, out: Output) -> None:
        self.out = out

    def piece(self, text: str) -> None:
        if ERROR <= self.out.threshold:
            self.out.stderr.write(os.fsencode(f"{self.out.prog}: ERROR: {text}"))
            self.out.stderr.flush()


def check_in_use(name: bytes, state: KernelState, moddir: ModuleDir, out: Output) -> int:
    """kmod's check_module_inuse: 0 when ``name`` may be removed, else -errno (reported)."""
    n = os.fsdecode(name)
    if moddir.is_builtin(name):
        out.log(ERROR, f"Module {n} is builtin.")
        return -errno.ENOENT
    if state.initstate(name) is None:
        out.log(ERROR, f"Module {n} is not currently loaded")
        return -errno.ENOENT
    holders = state.holders(name)
    if holders is None:
        out.log(ERROR, f"could not open '/sys/module/{n}/holders': No such file or directory")
    elif holders:
        raw = _RawErr(out)
        raw.piece(f"Module {n} is in use by:")
        for h in holders:
            raw.piece(f" {os.fsdecode(h)}")
        raw.piece("\n")
        _holders_hint(name, out)
        return -errno.EBUSY
    refcnt = state.refcnt(name)
    if refcnt is not None and refcnt > 0:
        out.log(ERROR, f"Module {n} is in use", name)
        return -errno.EBUSY
    if refcnt is None:
        out.log(ERROR, "Module unloading is not supported")
        return -errno.ENOENT
    return refcnt


def _holders_hint(name: bytes, out: Output) -> None:
    if ERROR <= out.threshold and not out.syslog:
        from pathlib import Path

        from moddep.whouses import short_answer

        answer = short_answer(os.fsdecode(name), Path(os.fsdecode(out.root)))
        out.stderr.write(os.fsencode(answer.rstrip("\n") + "\n"))
        out.stderr.flush()


def main(argv: list[str], prog: str = "rmmod") -> int:
    return guarded(prog, argv, lambda: _main(argv, prog))


def _main(argv: list[str], prog: str) -> int:
    opts = simple_options(argv, prog, HELP, force=True)
    if isinstance(opts, int):
        return opts
    verbose, syslog = opts.verbose, opts.syslog
    force = opts.force
    root = sysroot()
    out = Output(prog, verbose, root, syslog)
    if not opts.operands:
        out.log(ERROR, "missing module name.")
        return 1
    state = KernelState(root)
    moddir = ModuleDir(module_dirname(None, None, root))
    loader = kernel_loader(root)
    rc = 0
    for arg in opts.operands:
        raw = os.fsencode(arg)
        name = path_to_modname(raw) if os.path.exists(raw) else modname_normalize(raw)
        if not name:
            out.log(ERROR, f"could not use module {arg}: {os.strerror(errno.ENOENT)}")
            rc = 1
            break
        if not force and check_in_use(name, state, moddir, out) < 0:
            rc = 1
            continue
        flags = REMOVE_NOWAIT | (REMOVE_FORCE if force else 0)
        try:
            loader.delete_module(name, flags)
        except KernelError as e:
            out.log(ERROR, f"could not remove '{os.fsdecode(name)}': {os.strerror(e.errno)}")
            out.log(ERROR, f"could not remove module {arg}: {os.strerror(e.errno)}")
            rc = 1
    return rc
