"""``moddep graph``: draw the dependency closure of modules (Graphviz).

    moddep graph MODULE...                       DOT on stdout
    moddep graph -o deps.svg MODULE...           SVG (or PNG) through Graphviz's dot
    moddep graph -T png -o deps.png MODULE...

Edges go from a module to the module whose symbols it uses, labelled with the number of
symbols (``--symbols``: their names). Dependencies come from the installed indexes and the
module files along the way; without indexes, or with ``--compute``, from the modules.
Exit status: 0 drawn, 1 no such module, 2 usage or I/O error (or dot missing for SVG/PNG).
"""

from __future__ import annotations

import argparse
import os
import sys

from moddep.diag import ERROR
from moddep.errors import ModdepError, UsageError
from moddep.modinfo import path_to_modname
from moddep.tools._common import Printer
from moddep.tools.verify import EXIT_FINDINGS, EXIT_OK, Parser, guarded, help_text
from moddep.verify import dot, installed, target

FORMATS = ("dot", *dot.RENDERED)


def parser(prog: str) -> Parser:
    p = Parser(prog=prog, description=help_text(__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    target.add_options(p, version=False)
    target.add_compute_options(p)
    a = p.add_argument
    a("-T", "--format", choices=FORMATS,
      help="output format (default: from -o's extension, else dot)")
    a("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    a("--symbols", action="store_true", help="label edges with the symbols, not their count")
    a("--debug", action="store_true", help="show a traceback on errors")
    a("modules", nargs="+", metavar="MODULE")
    return p


def main(argv: list[str], prog: str = "graph") -> int:
    return guarded(prog, argv, parser(prog), _run)


def _run(opts: argparse.Namespace, printer: Printer) -> int:
    fmt = opts.format
    if fmt is None:
        ext = os.path.splitext(opts.output or "")[1].lstrip(".").lower()
        fmt = ext if ext in FORMATS else "dot"
    if fmt == "png" and opts.output is None and sys.stdout.isatty():
        raise UsageError("PNG on a terminal: give -o FILE")
    kver = target.kernel_version(opts.version)
    gen = target.generation(opts.kmod_version, b"")
    deps, _inst = installed.load(target.request(opts, kver, gen.gen), opts.compute, opts.jobs)
    roots = [path_to_modname(os.fsencode(m)) for m in opts.modules]
    unknown = [r for r in roots if r not in deps.paths]
    for r in unknown:
        what = "is built into the kernel" if r in deps.builtin else "is not installed"
        printer.message(ERROR, f"module {os.fsdecode(r)} {what}")
    if unknown:
        return EXIT_FINDINGS
    text = dot.to_dot(deps, roots, opts.symbols,
                      title=f"{', '.join(os.fsdecode(r) for r in roots)} ({kver.decode()})")
    data = text.encode("utf-8", "surrogateescape") if fmt == "dot" else dot.render(text, fmt)
    if opts.output is None or opts.output == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return EXIT_OK
    tmp = f"{opts.output}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, opts.output)
    except OSError as e:
        raise ModdepError(f"could not write {opts.output}: {e.strerror}") from None
    return EXIT_OK
