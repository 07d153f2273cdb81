"""What every command-line tool shares: kmod-style messages and the one error catch point."""

from __future__ import annotations

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
