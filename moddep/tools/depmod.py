"""``depmod``: kmod's options with kmod's meaning, plus moddep's own (see --help)."""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Optional

from moddep import __version__, compat
from moddep.cache import Cache, default_dir
from moddep.compression import DEFAULT_LIMIT
from moddep.depmod import Request, compute, is_version, module_dir_name, up_to_date
from moddep.diag import DEBUG, ERROR, WARNING, Log, keep_until_exit, mark
from moddep.errors import DependencyCycleError, UsageError
from moddep.parallel import ModuleSource, Progress
from moddep.publish import publish
from moddep.tools._common import HelpFormatter, Printer, run_guarded

DESCRIPTION = """\
Generate modules.dep, modules.alias, modules.symbols ... and their .bin indexes for the
modules of kernel VERSION, byte-identical to kmod's depmod of the chosen generation.

Differences from kmod, on purpose: with -b ROOT, depmod.d is read from ROOT (the target), not
from the host, and 'external' directories are taken inside ROOT; --host-config restores kmod's
behaviour. Files are fsynced and the whole set is published atomically.
"""


def parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    a = p.add_argument
    a("-a", "--all", action="store_true", help="probe all modules (default without FILES)")
    a("-A", "--quick", action="store_true",
      help="only rebuild if a module is newer than modules.dep")
    a("-b", "--basedir", metavar="DIR", help="use DIR as the root (staged image)")
    a("-o", "--outdir", metavar="DIR", help="write output under DIR instead of the root")
    a("-m", "--moduledir", metavar="DIR",
      help="module directory below the root (default: lib/modules, or usr/lib/modules if only "
           "that exists)")
    a("-C", "--config", metavar="PATH", action="append",
      help="use PATH (file or directory) instead of the depmod.d directories; repeatable")
    a("-e", "--errsyms", action="store_true", help="report unresolved symbols (needs -E or -F)")
    a("-E", "--symvers", metavar="FILE", help="kernel symbols and CRCs from Module.symvers")
    a("-F", "--filesyms", metavar="FILE", help="kernel symbols from System.map")
    a("-n", "--show", "--dry-run", dest="show", action="store_true",
      help="write the text indexes to stdout instead of files")
    a("-P", "--symbol-prefix", metavar="C", help="architecture symbol prefix to strip")
    a("-w", "--warn", action="store_true", help="warn on duplicate index entries")
    a("-v", "--verbose", action="count", default=0, help="more messages (repeatable)")
    a("-q", "--quiet", action="store_true", help="only errors")
    a("-V", "--version", action="store_true", help="print the version and exit")
    a("-u", "--unresolved-error", action="store_true", help=argparse.SUPPRESS)
    a("-r", "--root", action="store_true", help=argparse.SUPPRESS)
    a("--kmod-version", type=int, metavar="N",
      help="kmod generation whose output to reproduce, 30..34 (default 34, or "
           "$MODDEP_KMOD_VERSION); 30..33 write the older post-order .bin layout")
    a("--host-config", action="store_true",
      help="kmod's behaviour: read depmod.d and external dirs from the host, not the root")
    a("-j", "--jobs", type=int, metavar="N", help="worker processes (default: all CPUs)")
    a("--cache-dir", metavar="DIR",
      help="re-run cache location (default: $MODDEP_CACHE_DIR, else $XDG_CACHE_HOME/moddep or "
           "~/.cache/moddep); never inside the root")
    a("--no-cache", action="store_true", help="do not read or write the re-run cache")
    a("--max-module-size", type=_size, metavar="SIZE", default=DEFAULT_LIMIT,
      help="refuse a compressed module that decompresses to more than SIZE bytes (suffix K, M "
           f"or G; default {DEFAULT_LIMIT >> 20}M)")
    a("--debug", action="store_true", help="show a traceback on errors")
    a("args", nargs="*", metavar="[VERSION] [FILES...]")
    return p


def _size(text: str) -> int:
    """A byte count with an optional K/M/G (binary) suffix, at least 1."""
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:].upper(), 1)
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid size '{text}'")
    return value


def _abs(path: str) -> bytes:
    return os.fsencode(os.path.abspath(path))


def main(argv: list[str], prog: str = "depmod") -> int:
    # The run allocates hundreds of thousands of small objects and frees them all at the end;
    # none of them form reference cycles, so the cyclic collector's repeated scans are pure
    # overhead (about a tenth of a run).
    gc.disable()
    try:
        return _main(argv, prog)
    finally:
        gc.enable()


def _main(argv: list[str], prog: str) -> int:
    p = parser(prog)
    try:
        opts = p.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 1
    threshold = ERROR if opts.quiet else min(WARNING + opts.verbose, DEBUG)
    printer = Printer(prog, threshold)
    return run_guarded(prog, opts.debug, lambda: _run(opts, printer), printer)


def _run(opts: argparse.Namespace, printer: Printer) -> int:
    if opts.version:
        print(f"moddep {__version__} (depmod compatible with kmod 30..34)\n+ZSTD +XZ +ZLIB")
        return 0
    gen = compat.from_environment(opts.kmod_version)
    for flag, name in ((opts.unresolved_error, "-u"), (opts.root, "-r")):
        if flag:
            printer.message(WARNING, f"Ignored deprecated option {name}")
    args = [os.fsencode(a) for a in opts.args]
    if args:
        if not is_version(args[0]):
            raise UsageError(f"Bad version passed {os.fsdecode(args[0])}")
        kver = args.pop(0)
    else:
        kver = os.fsencode(os.uname().release)
    prefix = b""
    if opts.symbol_prefix is not None:
        if len(os.fsencode(opts.symbol_prefix)) != 1:
            raise UsageError("-P only takes a single char")
        prefix = os.fsencode(opts.symbol_prefix)
    files = () if (opts.all or not args) else tuple(args)
    req = Request(
        kver=kver, gen=gen,
        basedir=_abs(opts.basedir) if opts.basedir else b"",
        outdir=_abs(opts.outdir) if opts.outdir else None,
        moduledir=os.fsencode(opts.moduledir) if opts.moduledir else None,
        config_paths=tuple(os.fsencode(c) for c in opts.config) if opts.config else None,
        host_config=opts.host_config,
        symvers=os.fsencode(opts.symvers) if opts.symvers else None,
        sysmap=os.fsencode(opts.filesyms) if opts.filesyms else None,
        errsyms=opts.errsyms, prefix=prefix, warn_dups=opts.warn,
        verbose=opts.verbose > 0, files=files, text_only=opts.show,
    )
    log = Log()
    if opts.quick:
        if opts.show:
            return 0
        moddir = req.basedir + b"/" + module_dir_name(req) + b"/" + kver
        uptodate = up_to_date(moddir, log)
        printer.flush_log(log)
        if uptodate:
            return 0
    source = ModuleSource(opts.jobs, _cache(opts, req, printer), opts.max_module_size,
                          progress=None if opts.quiet else progress_bar(printer.prog))
    try:
        result = compute(req, source, log)
    except DependencyCycleError as e:
        printer.flush_log(log)
        for line in e.lines:
            printer.message(ERROR, line)
        printer.message(ERROR, e.message)
        return 1
    finally:
        printer.flush_log(log)
    if opts.show:
        out = sys.stdout.buffer
        for data in result.outputs.values():
            out.write(data)
        out.flush()
        return 0
    publish(os.fsdecode(result.outdir), result.outputs)
    mark("published")
    keep_until_exit(result)
    return 0


def _cache(opts: argparse.Namespace, req: Request, printer: Printer) -> Optional[Cache]:
    """The cache to use, or None (--no-cache, or a location inside the target root)."""
    if opts.no_cache or os.environ.get("MODDEP_NO_CACHE") == "1":
        return None
    where = opts.cache_dir or os.environ.get("MODDEP_CACHE_DIR")
    directory = where if where else default_dir()
    root = os.fsdecode(req.basedir)
    if root and root != "/":
        resolved = os.path.realpath(directory)
        if resolved == os.path.realpath(root) or resolved.startswith(
                os.path.realpath(root) + os.sep):
            printer.message(WARNING, f"cache directory {directory} is inside the root "
                                     f"{root}: not using a cache")
            return None
    return Cache(directory)


def progress_bar(prog: str, delay: float = 1.0) -> Optional[Progress]:
    """A progress bar on stderr for long runs (only when stderr is a terminal)."""
    if not sys.stderr.isatty():
        return None
    start = time.monotonic()
    shown = False

    def show(done: int, total: int) -> None:
        nonlocal shown
        if time.monotonic() - start < delay and not shown:
            return
        shown = True
        width = 30
        filled = width * done // max(total, 1)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{prog}: [{'#' * filled}{' ' * (width - filled)}] "
                         f"{done}/{total} modules{end}")
        sys.stderr.flush()

    return show
