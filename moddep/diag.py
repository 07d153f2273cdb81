"""Diagnostics collected by the pure pipeline; the CLI prints them (kmod's levels and format)."""

from __future__ import annotations

from typing import NamedTuple, Optional

# syslog priorities, as kmod's tools/log.c uses them
FATAL, ERROR, WARNING, NOTICE, INFO, DEBUG = 2, 3, 4, 5, 6, 7
LEVEL_NAMES = {FATAL: "FATAL", ERROR: "ERROR", WARNING: "WARNING", NOTICE: "NOTICE",
               INFO: "INFO", DEBUG: "DEBUG"}


class Message(NamedTuple):
    """One diagnostic: kmod's log level and its text."""

    level: int
    text: str


class Log:
    """An append-only list of messages (and of depmod -v's stdout lines), in emission order."""

    __slots__ = ("messages", "stdout")

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.stdout: list[bytes] = []

    def error(self, text: str) -> None:
        self.messages.append(Message(ERROR, text))

    def warning(self, text: str) -> None:
        self.messages.append(Message(WARNING, text))

    def notice(self, text: str) -> None:
        self.messages.append(Message(NOTICE, text))

    def info(self, text: str) -> None:
        self.messages.append(Message(INFO, text))

    def debug(self, text: str) -> None:
        self.messages.append(Message(DEBUG, text))

    def show(self, line: bytes) -> None:
        """A line kmod writes to stdout with -v (``SHOW``)."""
        self.stdout.append(line)


def fs(path: bytes) -> str:
    """A byte path for a message, without loss (surrogateescape)."""
    import os

    return os.fsdecode(path)


class _Timing:
    """``MODDEP_TIMING=1`` (unset, empty or ``0``: off): each :func:`mark` prints the seconds
    since the process started to stderr (for profiling a run's phases; the benchmarks' figures
    come from outside)."""

    def __init__(self) -> None:
        import os

        self.on = os.environ.get("MODDEP_TIMING", "") not in ("", "0")
        self.start = 0.0
        if self.on:
            import time

            # the process's start time (field 22 of /proc/self/stat, clock ticks since boot)
            try:
                with open("/proc/self/stat", "rb") as f:
                    ticks = int(f.read().rpartition(b")")[2].split()[19])
                self.start = ticks / os.sysconf("SC_CLK_TCK")
            except (OSError, ValueError, IndexError):
                self.start = time.clock_gettime(time.CLOCK_BOOTTIME)

    def mark(self, label: str) -> None:
        if self.on:
            import os
            import sys
            import time

            now = time.clock_gettime(time.CLOCK_BOOTTIME) - self.start
            print(f"moddep timing [{os.getpid()}] {now:7.3f}s {label}", file=sys.stderr)


_timing = _Timing()
mark = _timing.mark


# what the process holds until it leaves with os._exit (None: it will not, e.g. as a library)
_kept_until_exit: Optional[list[object]] = None


def keep_until_exit(obj: object) -> None:
    """When the process leaves with ``os._exit``, hold ``obj`` until then so it is never
    freed object by object (a depmod result is ~10^5 objects); otherwise (called as a
    library, as the tests do) let it go as usual."""
    if _kept_until_exit is not None:
        _kept_until_exit.append(obj)


def leave_fast() -> None:
    """Declare that the process ends with ``os._exit`` once the command returns."""
    global _kept_until_exit
    _kept_until_exit = []


# child processes still finishing work of their own (e.g. writing the cache) when the
# process leaves with os._exit, waited for then (:func:`reap_children`)
_to_reap: list[int] = []


def reap_before_exit(pid: int) -> None:
    """Wait for child ``pid`` when the process leaves with ``os._exit`` (so that nothing it
    started outlives it), or now when it will not."""
    import os

    if _kept_until_exit is not None:
        _to_reap.append(pid)
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass


def reap_children() -> None:
    """Wait for the children :func:`reap_before_exit` was given."""
    import os

    while _to_reap:
        try:
            os.waitpid(_to_reap.pop(), 0)
        except ChildProcessError:
            pass
