"""``insmod FILE [params]``: insert one module file, as kmod's insmod (``tools/insmod.c``, 34).

No dependencies, no configuration: the file goes to the kernel through
:func:`moddep.runtime.kernel.insert_file` (``finit_module``, or ``init_module`` after
userspace decompression), with ``-f`` ignoring version magic and symbol versions. Failures
print ``could not insert module FILE: <text>`` with insmod's texts for some errnos.
"""

from __future__ import annotations

import errno
import os

from moddep.diag import ERROR, INFO
from moddep.errors import KernelError
from moddep.runtime.kernel import INSMOD_MESSAGES, StripError, insert_file, message
from moddep.runtime.resolve import absolute
from moddep.runtime.state import KernelState
from moddep.tools.modprobe import (
    Output,
    guarded,
    kernel_loader,
    options_from_array,
    simple_options,
    sysroot,
)

HELP = """\
Usage:
\t{p} [options] filename [module options]
Options:
\t-f, --force       DANGEROUS: forces a module load, may cause
\t                  data corruption and crash your machine
\t-s, --syslog      print to syslog, not stderr
\t-v, --verbose     enables more messages
\t-V, --version     show version
\t-h, --help        show this help
"""


def main(argv: list[str], prog: str = "insmod") -> int:
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
        out.log(ERROR, "missing filename.")
        return 1
    filename = opts.operands[0]
    if filename == "-":
        out.log(ERROR, "this tool does not support loading from stdin!")
        return 1
    params = options_from_array([os.fsencode(a) for a in opts.operands[1:]]) or b""
    path = absolute(os.fsencode(filename))
    try:
        os.stat(path)
    except OSError as e:
        out.log(ERROR, f"could not load module {filename}: {e.strerror}")
        return 1
    state = KernelState(root)
    try:
        insert_file(kernel_loader(root), path, params, force_modversion=force,
                    force_vermagic=force, kernel_compression=state.kernel_compression())
    except KernelError as e:
        err = e.errno or errno.EINVAL
        if isinstance(e, StripError):
            out.log(ERROR, e.message)
        out.log(INFO, f"Failed to insert module '{os.fsdecode(path)}': {os.strerror(err)}")
        out.log(ERROR, f"could not insert module {filename}: {message(err, INSMOD_MESSAGES)}")
        return 1
    return 0
