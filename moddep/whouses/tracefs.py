"""Live module tracing through tracefs, leaving tracefs exactly as it was found.

What :class:`TraceSession` does, in order (every change is journalled and undone in reverse
order on the way out, also on error and Ctrl-C):

1. Find tracefs: ``/sys/kernel/tracing``, else ``/sys/kernel/debug/tracing``, else mount
   ``tracefs`` on ``/sys/kernel/tracing`` (and unmount it at the end). Found means
   ``trace_pipe`` exists there.
2. Use a private ring buffer when the kernel has instances (Linux 3.10+): ``mkdir
   instances/moddep-who-uses-PID``. The global buffer, its ``tracing_on``, its events, filters
   and any other user's ``trace_pipe`` reader are then untouched; ``rmdir`` discards the
   instance at the end. Without instances (or if the new instance has no ``events/module``)
   the global buffer is used: reading its ``trace_pipe`` consumes what it holds, so the
   report notes when other events or a tracer were active. The ``trace`` buffer is never
   cleared.
3. For each ``events/<subsystem>/<event>/``: set ``filter`` (per event, not the subsystem
   ``filter`` file, so the subsystem's own filter string stays as it was), then ``enable``.
   The filter is read back: a rejected filter disables filtering in the kernel, so it is an
   error. ``tracing_on`` of the buffer used is set to 1 if it was 0.
4. Read ``trace_pipe`` opened ``O_NONBLOCK`` until the deadline or Ctrl-C, then drain it.

Filter syntax: the seeds write ``name == testmod``. Since the filter parser rewrite (Linux
4.17, "tracing: Rewrite filter logic to be simpler and faster") an unquoted string is
refused ("Invalid value (did you forget quotes)?"), so the value is always double-quoted:
``name == "testmod"``, which older kernels accept too. Module names never contain quotes.

How each file reads and how its old value is written back (:func:`restore_value`):

=================  ===============================  =====================================
file               reads                            written back as
=================  ===============================  =====================================
<event>/filter     ``none`` or the filter string;   ``0`` (clears) for ``none`` or an
                   after a rejected write the        error text, else the string
                   string, ``^`` and parse_error
<event>/enable     ``0``/``1``, ``*`` in soft mode  the digit (only if we changed it)
tracing_on         ``0``/``1``                      the digit (only if we changed it)
=================  ===============================  =====================================

The subsystem ``enable`` file (``0``, ``1`` or ``X``) is derived from the events' files by the
kernel and is never written.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

from moddep.errors import ModdepError

TRACEFS_PLACES = ("sys/kernel/tracing", "sys/kernel/debug/tracing")
MOUNT_POINT = "sys/kernel/tracing"
INSTANCE_PREFIX = "moddep-who-uses-"
POLL_INTERVAL = 0.1
ROOT_NEEDED = ("tracing needs root: CAP_SYS_ADMIN to mount tracefs, and write access to"
               " its files (run as root, e.g. with sudo)")


class TracefsError(ModdepError):
    """Live tracing could not be set up, or tracefs could not be put back as it was."""


class TracingPermissionError(TracefsError):
    """tracefs refused us: not root."""


def module_filter(module: str) -> str:
    """The tracefs filter selecting one module's events (quoted: see the module docstring)."""
    return f'name == "{module}"'


def restore_value(rel: str, old: str) -> str:
    """What to write to ``rel`` to bring back a file that read ``old``."""
    text = old.strip()
    if rel.endswith("filter"):
        if not text or text == "none" or "parse_error" in text or "\n^" in old:
            return "0"
        return text
    return text.rstrip("*")


class TraceFs:
    """File operations on one mounted tracefs; the seam tests replace with kernel semantics."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, rel: str) -> str:
        with open(self.path / rel, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")

    def write(self, rel: str, value: str) -> None:
        fd = os.open(self.path / rel, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode("utf-8", "surrogateescape") + b"\n")
        finally:
            os.close(fd)

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path / rel)

    def listdir(self, rel: str) -> list[str]:
        return sorted(os.listdir(self.path / rel))

    def mkdir(self, rel: str) -> None:
        os.mkdir(self.path / rel)

    def rmdir(self, rel: str) -> None:
        os.rmdir(self.path / rel)

    def open_pipe(self, rel: str) -> int:
        return os.open(self.path / rel, os.O_RDONLY | os.O_NONBLOCK)


class Mounter(Protocol):
    """Mounts and unmounts tracefs on a directory."""

    def mount(self, target: Path) -> None: ...

    def umount(self, target: Path) -> None: ...


class LibcMounter:
    """mount(2)/umount2(2) through the C library (ctypes: standard library only)."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)

    def mount(self, target: Path) -> None:
        if self._libc.mount(b"tracefs", os.fsencode(target), b"tracefs", 0, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(target))

    def umount(self, target: Path) -> None:
        if self._libc.umount2(os.fsencode(target), 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(target))


def _error(exc: OSError, what: str) -> TracefsError:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return TracingPermissionError(f"{what}: {exc.strerror}: {ROOT_NEEDED}")
    return TracefsError(f"{what}: {exc.strerror or exc}")


class TraceSession:
    """Context manager: tracing of ``subsystem`` events set up on enter, undone on exit.

    ``events`` defaults to every event directory of the subsystem. ``tracefs_factory`` and
    ``mounter`` are the seams to the kernel; ``use_instance=False`` forces the global buffer.
    After the block, ``notes`` tell what was done (mounted, buffer used, what was consumed).
    """

    def __init__(self, root: Path = Path("/"), subsystem: str = "module",
                 filter_expr: Optional[str] = None, events: Optional[list[str]] = None,
                 *, use_instance: bool = True,
                 tracefs_factory: Callable[[Path], TraceFs] = TraceFs,
                 mounter: Optional[Mounter] = None) -> None:
        self.root = root
        self.subsystem = subsystem
        self.filter_expr = filter_expr
        self.events = events
        self.use_instance = use_instance
        self.tracefs_factory = tracefs_factory
        self.mounter = mounter
        self.fs: Optional[TraceFs] = None
        self.mounted: Optional[Path] = None
        self.instance: Optional[str] = None
        self.base = ""  # "" or "instances/NAME/": prefix of the buffer's files
        self.notes: list[str] = []
        self.interrupted = False
        self._journal: list[tuple[str, str]] = []  # (file, value to write back)
        self._pipe: Optional[int] = None

    # -- setup --------------------------------------------------------------------------
    def __enter__(self) -> TraceSession:
        try:
            self._setup()
        except BaseException as exc:
            problems = self._teardown()
            if isinstance(exc, (TracefsError, OSError)):
                error = exc if isinstance(exc, TracefsError) else _error(exc, "tracefs")
                if problems:
                    error = TracefsError(f"{error}; restoring tracefs also failed: "
                                         + "; ".join(problems))
                if error is not exc:
                    raise error from exc
            raise
        return self

    def _locate(self) -> Path:
        for rel in TRACEFS_PLACES:
            path = self.root / rel
            try:
                os.stat(path / "trace_pipe")
                return path
            except PermissionError as exc:
                raise _error(exc, f"/{rel}") from exc
            except OSError:
                continue
        target = self.root / MOUNT_POINT
        if not target.is_dir():
            raise TracefsError(f"no tracefs: neither /{TRACEFS_PLACES[0]} nor "
                               f"/{TRACEFS_PLACES[1]} has trace_pipe, and /{MOUNT_POINT} "
                               "does not exist to mount it (kernel without CONFIG_TRACING?)")
        mounter: Mounter = self.mounter or LibcMounter()
        self.mounter = mounter
        try:
            mounter.mount(target)
        except OSError as exc:
            raise _error(exc, f"mount -t tracefs tracefs /{MOUNT_POINT}") from exc
        self.mounted = target
        self.notes.append(f"tracefs was not mounted: mounted it on /{MOUNT_POINT} and"
                          " unmounted it afterwards")
        if not (target / "trace_pipe").exists():
            raise TracefsError(f"/{MOUNT_POINT}: mounted tracefs has no trace_pipe")
        return target

    def _setup(self) -> None:
        path = self._locate()
        fs = self.fs = self.tracefs_factory(path)
        shown = "/" + str(path.relative_to(self.root)) if path != self.root else "/"
        events_dir = f"events/{self.subsystem}"
        if not fs.exists(events_dir):
            raise TracefsError(f"{shown}/{events_dir}: no such directory: this kernel has no"
                               f" {self.subsystem} trace events (built without"
                               " CONFIG_MODULES or CONFIG_TRACEPOINTS?)")
        if self.use_instance and fs.exists("instances"):
            name = f"{INSTANCE_PREFIX}{os.getpid()}"
            try:
                fs.mkdir(f"instances/{name}")
            except OSError as exc:
                raise _error(exc, f"{shown}/instances/{name}: mkdir") from exc
            self.instance = name
            if fs.exists(f"instances/{name}/{events_dir}"):
                self.base = f"instances/{name}/"
                self.notes.append(f"traced in a private instance, {shown}/instances/{name},"
                                  " removed afterwards")
            else:
                self._remove_instance()
        if not self.base:
            self._note_global_readers(fs, shown)
        events = self.events
        if events is None:
            events = [e for e in fs.listdir(self.base + events_dir)
                      if fs.exists(f"{self.base}{events_dir}/{e}/enable")]
        for event in events:
            rel = f"{self.base}{events_dir}/{event}/"
            if self.filter_expr is not None:
                self._set(rel + "filter", self.filter_expr, always=True)
                got = self._read(rel + "filter").strip()
                if got != self.filter_expr:
                    raise TracefsError(f"{shown}/{rel}filter: the kernel did not take filter"
                                       f" '{self.filter_expr}': {got}")
            self._set(rel + "enable", "1")
        self._set(self.base + "tracing_on", "1")
        try:
            self._pipe = fs.open_pipe(self.base + "trace_pipe")
        except OSError as exc:
            raise _error(exc, f"{shown}/{self.base}trace_pipe") from exc

    def _note_global_readers(self, fs: TraceFs, shown: str) -> None:
        try:
            others = [e for e in self._read("set_event").split()
                      if not e.startswith(self.subsystem + ":")]
            tracer = self._read("current_tracer").strip()
        except TracefsError:
            return
        if others or tracer not in ("", "nop"):
            self.notes.append(f"used the global buffer of {shown}: reading its trace_pipe"
                              f" consumed entries of the tracer '{tracer}' and of"
                              f" {len(others)} other enabled events")

    def _read(self, rel: str) -> str:
        assert self.fs is not None
        try:
            return self.fs.read(rel)
        except OSError as exc:
            raise _error(exc, f"{rel}: read") from exc

    def _set(self, rel: str, value: str, always: bool = False) -> None:
        """Write ``value`` to ``rel``, journalling how to undo it."""
        assert self.fs is not None
        old = self._read(rel)
        if not always and old.strip().rstrip("*") == value:
            return
        self._journal.append((rel, restore_value(rel, old)))
        try:
            self.fs.write(rel, value)
        except OSError as exc:
            raise _error(exc, f"{rel}: write '{value}'") from exc

    # -- capture ------------------------------------------------------------------------
    def read(self, seconds: Optional[float] = None,
             sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic) -> str:
        """Text from ``trace_pipe`` for ``seconds`` (None: until Ctrl-C), then drained.

        Ctrl-C (KeyboardInterrupt) ends the capture normally and sets ``interrupted``.
        """
        assert self._pipe is not None
        chunks: list[bytes] = []
        deadline = None if seconds is None else clock() + seconds
        try:
            while deadline is None or clock() < deadline:
                data = self._read_pipe()
                if data:
                    chunks.append(data)
                    continue
                left = POLL_INTERVAL if deadline is None else deadline - clock()
                sleep(max(0.0, min(POLL_INTERVAL, left)))
        except KeyboardInterrupt:
            self.interrupted = True
        while True:  # drain what is left: events already in the buffer
            data = self._read_pipe()
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks).decode("utf-8", "surrogateescape")

    def _read_pipe(self) -> bytes:
        assert self._pipe is not None
        try:
            return os.read(self._pipe, 65536)
        except BlockingIOError:
            return b""
        except InterruptedError:
            return b""

    # -- teardown -----------------------------------------------------------------------
    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        problems = self._teardown()
        if problems:
            message = "could not put tracefs back as it was: " + "; ".join(problems)
            if isinstance(exc, BaseException):
                raise TracefsError(f"{exc}; and {message}") from exc
            raise TracefsError(message)

    def _teardown(self) -> list[str]:
        """Undo everything, in reverse; returns what could not be undone."""
        with _sigint_ignored():
            return self._undo()

    def _undo(self) -> list[str]:
        problems: list[str] = []
        if self._pipe is not None:
            try:
                os.close(self._pipe)
            except OSError:
                pass
            self._pipe = None
        inside: list[str] = []  # problems inside our instance: moot once it is removed
        while self._journal:
            rel, value = self._journal.pop()
            try:
                assert self.fs is not None
                self.fs.write(rel, value)
            except (OSError, KeyboardInterrupt) as exc:
                problem = f"{rel}: could not write back '{value}': {exc!r}"
                (inside if self.base and rel.startswith(self.base) else problems).append(problem)
        if self.instance is not None:
            try:
                self._remove_instance()
            except OSError as exc:
                problems += inside
                problems.append(f"instances/{self.instance}: rmdir: {exc}")
        if self.mounted is not None:
            try:
                assert self.mounter is not None
                self.mounter.umount(self.mounted)
                self.mounted = None
            except OSError as exc:
                problems.append(f"umount {self.mounted}: {exc}")
        return problems

    def _remove_instance(self) -> None:
        assert self.fs is not None and self.instance is not None
        self.fs.rmdir(f"instances/{self.instance}")
        self.instance = None
        self.base = ""


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Keep a second Ctrl-C from cutting the restoration short (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def trace_module(module: str, seconds: Optional[float], root: Path = Path("/"), *,
                 use_instance: bool = True,
                 tracefs_factory: Callable[[Path], TraceFs] = TraceFs,
                 mounter: Optional[Mounter] = None,
                 sleep: Callable[[float], None] = time.sleep,
                 ) -> tuple[str, list[str], bool]:
    """Trace ``module``'s events live: ``(trace text, notes, interrupted by Ctrl-C)``."""
    session = TraceSession(root, "module", module_filter(module), use_instance=use_instance,
                           tracefs_factory=tracefs_factory, mounter=mounter)
    with session:
        text = session.read(seconds, sleep=sleep)
    return text, session.notes, session.interrupted
