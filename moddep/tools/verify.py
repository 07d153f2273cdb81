"""``moddep verify``: check a module directory's indexes and modules, for package CI.

    moddep verify [-b ROOT] [VERSION]            text report on stdout
    moddep verify --format junit -o report.xml   JUnit XML for CI (json too)

The indexes are recomputed in memory (no cache) and compared with the files on disk; every
``.bin`` is decoded completely and checked against its text file; the modules are linted
(unresolved symbols, CRCs, vermagic, firmware, duplicates, depends=, modules.order, cycles).

Exit status: 0 clean, 1 findings at or above ``--fail-on`` (default: error), 2 bad command
line or a module directory that cannot be read. ``why``, ``graph`` and ``diff`` share the
helpers here (argument errors, the one catch point with exit status 2).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Callable, NoReturn, Optional

from moddep.diag import ERROR
from moddep.errors import ModdepError, UsageError
from moddep.tools._common import Printer
from moddep.verify import report, target
from moddep.verify.run import Options, verify

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    """argparse raising UsageError (exit 2 through :func:`guarded`), ``--help`` exits 0."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def guarded(prog: str, argv: list[str], parser: Parser,
            body: Callable[[argparse.Namespace, Printer], int]) -> int:
    """Parse ``argv`` and run ``body``: ModdepError (usage, I/O) -> ``prog: ERROR: ...``
    and exit 2; ``--debug`` shows the traceback."""
    printer = Printer(prog)
    try:
        opts = parser.parse_args(argv)
    except SystemExit as e:  # --help
        return EXIT_OK if not e.code else EXIT_USAGE
    except UsageError as e:
        parser.print_usage(sys.stderr)
        printer.message(ERROR, str(e))
        return EXIT_USAGE
    try:
        return body(opts, printer)
    except ModdepError as e:
        if getattr(opts, "debug", False):
            traceback.print_exc()
        printer.message(ERROR, str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def write_out(text: str, path: Optional[str]) -> None:
    """``text`` to ``path`` (atomically) or stdout; undecodable bytes come back as they were."""
    data = text.encode("utf-8", "surrogateescape")
    if path is None or path == "-":
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise ModdepError(f"could not write {path}: {e.strerror}") from None


def help_text(doc: str) -> str:
    """A tool's --help description: its docstring after the title, without the exit-status
    paragraph when it stands alone (the epilog says it), rst quotes dropped."""
    paras = [p for p in doc.strip().split("\n\n")[1:] if not p.startswith("Exit status")]
    return "\n\n".join(paras).replace("``", "")


def parser(prog: str) -> Parser:
    p = Parser(prog=prog, description=help_text(__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog="Exit status: 0 clean, 1 findings at or above --fail-on, 2 usage or "
                      "I/O error.")
    target.add_options(p)
    a = p.add_argument
    a("-E", "--symvers", metavar="FILE",
      help="kernel symbols and CRCs from Module.symvers or vmlinux.symvers (default: found "
           "under the module dir's build/, the module dir or ROOT/boot)")
    a("-F", "--filesyms", metavar="FILE",
      help="kernel symbols from System.map (default: ROOT/boot/System.map-VERSION)")
    a("-P", "--symbol-prefix", metavar="C", help="architecture symbol prefix to strip")
    a("--no-firmware", action="store_true", help="do not check firmware files")
    a("--format", choices=sorted(report.FORMATS), default="text", help="report format")
    a("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    a("--fail-on", choices=("error", "warning", "never"), default="error",
      help="exit 1 when there are findings of this severity or worse (default: error)")
    a("-j", "--jobs", type=int, metavar="N", help="worker processes (default: all CPUs)")
    a("--debug", action="store_true", help="show a traceback on errors")
    return p


def main(argv: list[str], prog: str = "verify") -> int:
    return guarded(prog, argv, parser(prog), _run)


def _run(opts: argparse.Namespace, printer: Printer) -> int:
    kver = target.kernel_version(opts.version)
    prefix = b""
    if opts.symbol_prefix is not None:
        prefix = os.fsencode(opts.symbol_prefix)
        if len(prefix) != 1:
            raise UsageError("-P only takes a single char")
    gen = target.generation(opts.kmod_version, target.moddir_of(target.request(opts, kver)))
    req = target.request(opts, kver, gen.gen, prefix=prefix)
    result = verify(Options(
        req, gen.reason,
        symvers=os.fsencode(opts.symvers) if opts.symvers else None,
        sysmap=os.fsencode(opts.filesyms) if opts.filesyms else None,
        firmware=not opts.no_firmware, jobs=opts.jobs))
    write_out(report.FORMATS[opts.format](result, opts.fail_on), opts.output)
    return EXIT_FINDINGS if report.failed(result, opts.fail_on) else EXIT_OK
