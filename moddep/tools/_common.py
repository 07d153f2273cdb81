"""What every command-line tool shares: kmod-style messages and the one error catch point."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, TextIO

from moddep.diag import DEBUG, ERROR, FATAL, LEVEL_NAMES, WARNING, Log
from moddep.errors import ModdepError


class Printer:
    """Prints ``prog: LEVEL: text`` for messages at or above the threshold (kmod's log.c)."""

    def __init__(self, prog: str, threshold: int = WARNING,
                 stream: Optional[TextIO] = None) -> None:
        self.prog = prog
        self.threshold = threshold
        self.stream = stream

    def message(self, level: int, text: str) -> None:
        if level <= self.threshold:
            stream = self.stream or sys.stderr
            stream.write(f"{self.prog}: {LEVEL_NAMES[level]}: {text}\n")

    def flush_log(self, log: Log) -> None:
        for m in log.messages:
            self.message(m.level, m.text)
        log.messages.clear()
        if log.stdout:
            out = sys.stdout.buffer
            for line in log.stdout:
                out.write(line)
            out.flush()
            log.stdout.clear()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's raw-description formatter, sized without importing :mod:`shutil`.

    argparse builds a formatter for every ``add_argument`` call, and the stock one imports
    shutil (and with it bz2, lzma and fnmatch) for the terminal width: a few percent of a
    depmod re-run. The width is found the same way: ``$COLUMNS``, else the terminal's, else 80.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: Optional[int] = None) -> None:
        if width is None:
            width = terminal_columns() - 2  # the margin argparse leaves
        super().__init__(prog, indent_increment, max_help_position, width)


def terminal_columns() -> int:
    """shutil.get_terminal_size().columns: ``$COLUMNS``, the terminal's width, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        stdout = sys.__stdout__
        try:
            columns = os.get_terminal_size(stdout.fileno()).columns if stdout else 0
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def run_guarded(prog: str, debug: bool, body: Callable[[], int], printer: Printer) -> int:
    """Run ``body``; a ModdepError becomes ``prog: FATAL/ERROR: msg`` and exit 1."""
    try:
        return body()
    except ModdepError as e:
        if debug:
            import traceback  # only here: it costs start-up time

            traceback.print_exc()
        printer.message(ERROR if printer.threshold >= ERROR else FATAL, str(e))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: say so in one line; --debug shows where
        if debug:
            raise
        printer.message(ERROR, f"internal error: {type(e).__name__}: {e} (run with --debug "
                               "for a traceback)")
        return 1


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("MODDEP_DEBUG") == "1"


__all__ = ["Printer", "run_guarded", "debug_requested", "FATAL", "ERROR", "WARNING", "DEBUG"]
