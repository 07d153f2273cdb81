"""``moddep why``: why a module needs another, or what matches an alias.

    moddep why MODULE DEPENDENCY    the symbols MODULE uses from DEPENDENCY, or the chain of
                                    direct dependencies (with symbols) for an indirect one
    moddep why MODULE               everything MODULE needs, and how
    moddep why --alias MODALIAS     the modules matching MODALIAS, through which patterns

Answers come from the installed indexes (as modprobe sees them) and the module files along
the way; without indexes, or with ``--compute``, from the modules themselves.
Exit status: 0 yes, 1 no (not needed, no match, no such module), 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import os

from moddep.errors import UsageError
from moddep.modinfo import path_to_modname
from moddep.tools._common import Printer
from moddep.tools.verify import EXIT_FINDINGS, EXIT_OK, Parser, guarded, help_text, write_out
from moddep.verify import installed, target, why


def parser(prog: str) -> Parser:
    p = Parser(prog=prog, description=help_text(__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    target.add_options(p, version=False)
    target.add_compute_options(p)
    a = p.add_argument
    a("--alias", metavar="MODALIAS", help="which modules match MODALIAS, and through which "
                                          "patterns")
    a("--debug", action="store_true", help="show a traceback on errors")
    a("modules", nargs="*", metavar="MODULE [DEPENDENCY]")
    return p


def main(argv: list[str], prog: str = "why") -> int:
    return guarded(prog, argv, parser(prog), _run)


def _run(opts: argparse.Namespace, printer: Printer) -> int:
    if opts.alias is None and not 1 <= len(opts.modules) <= 2:
        raise UsageError("give MODULE [DEPENDENCY], or --alias MODALIAS")
    if opts.alias is not None and opts.modules:
        raise UsageError("--alias takes no MODULE")
    kver = target.kernel_version(opts.version)
    gen = target.generation(opts.kmod_version, b"")
    deps, inst = installed.load(target.request(opts, kver, gen.gen), opts.compute, opts.jobs)
    if opts.alias is not None:
        modalias = os.fsencode(opts.alias)
        lines, yes = why.alias(installed.match_alias(inst, modalias), modalias)
    else:
        names = [path_to_modname(os.fsencode(m)) for m in opts.modules]
        if len(names) == 2:
            lines, yes = why.pair(deps, names[0], names[1])
        else:
            lines, yes = why.module(deps, names[0])
    write_out("\n".join(lines) + "\n", None)
    return EXIT_OK if yes else EXIT_FINDINGS
