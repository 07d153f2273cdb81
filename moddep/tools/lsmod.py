"""``lsmod``: the loaded modules in kmod's format (``tools/lsmod.c`` of kmod 34).

One line per /proc/modules entry, in its order::

    Module                  Size  Used by
    tun                    61440  2 vhost_net,holder

``printf("%-19s %8ld  %d", name, size, refcnt)`` then the holders from
``/sys/module/NAME/holders`` (directory order), a blank before the first and commas between.
Size is sysfs ``coresize`` (else /proc/modules), use count sysfs ``refcnt``; an unreadable
value prints as kmod prints it, a negative errno.
"""

from __future__ import annotations

import errno
import os
import sys

from moddep.diag import ERROR
from moddep.runtime.state import KernelState
from moddep.tools.modprobe import Output, guarded, simple_options, sysroot

HELP = """\
Usage:
\t{p} [options]
Options:
\t-s, --syslog      print to syslog, not stderr
\t-v, --verbose     enables more messages
\t-V, --version     show version
\t-h, --help        show this help
"""


def render(state: KernelState, out: Output) -> bytes:
    """lsmod's stdout for ``state`` (libkmod's errors go to ``out``)."""
    mods = state.proc_modules()
    if mods is None:
        out.log(ERROR, "could not open /proc/modules: No such file or directory")
        out.log(ERROR, "could not get list of modules: No such file or directory")
        raise LookupError
    lines = [b"Module                  Size  Used by\n"]
    for m in mods:
        size = state.size(m.name)
        refcnt = state.refcnt(m.name)
        line = b"%-19s %8d  %d" % (m.name, size if size is not None else -errno.ENOENT,
                                    refcnt if refcnt is not None else -errno.ENOENT)
        holders = state.holders(m.name)
        if holders is None:
            out.log(ERROR, f"could not open '/sys/module/{os.fsdecode(m.name)}/holders': "
                           "No such file or directory")
            holders = []
        if holders:
            line += b" " + b",".join(holders)
        lines.append(line + b"\n")
    return b"".join(lines)


def main(argv: list[str], prog: str = "lsmod") -> int:
    return guarded(prog, argv, lambda: _main(argv, prog))


def _main(argv: list[str], prog: str) -> int:
    opts = simple_options(argv, prog, HELP)
    if isinstance(opts, int):
        return opts
    verbose, syslog = opts.verbose, opts.syslog
    root = sysroot()
    out = Output(prog, verbose, root, syslog)
    if opts.operands:
        out.log(ERROR, "too many arguments provided.")
        return 1
    try:
        text = render(KernelState(root), out)
    except LookupError:
        return 1
    sys.stdout.buffer.write(text)
    sys.stdout.buffer.flush()
    return 0
