"""``moddep who-uses``: tell what holds a module, with the evidence for each holder.

    moddep who-uses MODULE                       sysfs and procfs: holders, processes with
                                                 its devices open, mounts, block devices...
    moddep who-uses --trace [SECONDS] MODULE     the same, after tracing the module's
                                                 get/put events live (root; Ctrl-C stops)
    moddep who-uses --from-trace FILE [MODULE]   attribute the references in a saved
                                                 trace-cmd report / trace / trace_pipe text

Exit status: 0 when the answer was printed, 1 on any error (as kmod's tools, also for a bad
command line), 130 on Ctrl-C before tracing started (during tracing, Ctrl-C just ends it).
The only place of the who-uses feature that prints or reads argv.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import NoReturn, Optional

from moddep.errors import ModdepError, UsageError
from moddep.tools._common import Printer, debug_requested, run_guarded
from moddep.whouses.evidence import gather, process_names
from moddep.whouses.model import module_name
from moddep.whouses.report import render_json, render_text
from moddep.whouses.trace import analyze, parse_trace, unknown_pids
from moddep.whouses.tracefs import trace_module


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _parser(prog: str) -> _Parser:
    p = _Parser(prog=prog, description="Tell what holds a kernel module: holder modules,"
                " processes with its devices open, mounts, block devices, sockets; live"
                " through the kernel's module events, or from a saved trace.")
    p.add_argument("module", nargs="?", metavar="MODULE", help="module name (vkms, fuse...)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--trace", nargs="?", const="", default=None, metavar="SECONDS",
                     help="trace the module's get/put events live for SECONDS (default: until"
                     " Ctrl-C) and attribute them to tasks; needs root")
    src.add_argument("--from-trace", metavar="FILE",
                     help="analyse a saved 'trace-cmd report', trace or trace_pipe text"
                     " ('-' for stdin); MODULE then only filters")
    p.add_argument("--save-trace", metavar="FILE",
                   help="with --trace: also write the raw trace text to FILE")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people (default), json for tools")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="read /sys, /proc and /lib/modules under DIR (tests, chroots)")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    return p


def _seconds(text: str) -> Optional[float]:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value > 0 else None


def _sigterm(signum: int, frame: Optional[FrameType]) -> None:
    raise KeyboardInterrupt


def _read_trace_file(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    try:
        with open(name, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except OSError as exc:
        raise ModdepError(f"could not read trace: {exc.strerror}", path=name) from exc


def _run(args: argparse.Namespace, prog: str) -> int:
    root = Path(args.root)
    module: Optional[str] = args.module
    seconds: Optional[float] = None
    if args.trace is not None and args.trace != "":
        seconds = _seconds(args.trace)
        if seconds is None:
            if module is not None:
                raise UsageError(f"--trace: '{args.trace}' is not a number of seconds")
            module = args.trace  # "--trace vkms": SECONDS omitted
    if args.save_trace and args.trace is None:
        raise UsageError("--save-trace needs --trace")

    render = render_json if args.format == "json" else render_text
    if args.from_trace is not None:
        analysis = analyze(parse_trace(_read_trace_file(args.from_trace)),
                           args.from_trace, module)
        sys.stdout.write(render(module, None, analysis))
        return 0

    if module is None:
        raise UsageError("missing module name")
    name = module_name(module)
    if args.trace is not None:
        how = f"for {seconds:g} s" if seconds else "until Ctrl-C"
        print(f"{prog}: tracing module events of {name} {how}...", file=sys.stderr)
        previous = signal.signal(signal.SIGTERM, _sigterm)
        try:
            text, notes, interrupted = trace_module(name, seconds, root)
        finally:
            signal.signal(signal.SIGTERM, previous)
        if interrupted:
            notes.append("stopped by Ctrl-C")
        if args.save_trace:
            try:
                Path(args.save_trace).write_text(text, errors="surrogateescape")
            except OSError as exc:
                raise ModdepError(f"could not write trace: {exc.strerror}",
                                  path=args.save_trace) from exc
        parsed = parse_trace(text)
        live = analyze(parsed, "live tracefs", name,
                       process_names(root, unknown_pids(parsed)))
        evidence = gather(name, root)
        sys.stdout.write(render(name, evidence, live, notes))
        return 0

    evidence = gather(name, root)
    if evidence.state == "not loaded":
        if args.format == "json":
            sys.stdout.write(render(name, evidence, None))
        raise ModdepError(f"Module {name} is not currently loaded")
    sys.stdout.write(render(name, evidence, None))
    return 0


def main(argv: list[str], prog: str = "who-uses") -> int:
    """Entry point: ``argv`` without the command name; ``prog`` names us in messages."""
    printer = Printer(prog)

    def body() -> int:
        try:
            args = _parser(prog).parse_args(argv)
        except SystemExit as exc:  # --help
            return 0 if exc.code in (0, None) else 1
        return _run(args, prog)

    return run_guarded(prog, debug_requested(argv), body, printer)
