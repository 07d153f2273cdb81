"""Guest-side helpers for scripts run by tests/guest/harness.py (installed as ``guestlib``).

This file runs inside the QEMU guest (Debian's Python 3.11, standard library only); the
host never imports it.  A guest script typically does::

    import guestlib
    guestlib.report(machine=platform.machine())
    rc, out, err = guestlib.run(["modprobe", "-v", "dummy"])
    guestlib.report(loaded="dummy" in guestlib.proc_modules())

Results are merged into the JSON object at ``$GUEST_RESULTS``; /init prints it on the
console after the script exits and the harness returns it as ``GuestResult.results``.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import subprocess
from typing import Any, Optional, Sequence

RESULTS = os.environ.get("GUEST_RESULTS", "/guest/results.json")

#: platform.machine() -> (finit_module, init_module, delete_module) syscall numbers.
SYSCALLS: dict[str, tuple[int, int, int]] = {
    "x86_64": (313, 175, 176),
    "aarch64": (273, 105, 106),
}


def report(**values: Any) -> dict[str, Any]:
    """Merge ``values`` into the results file; return the whole result object."""
    try:
        with open(RESULTS, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        data = {}
    data.update(values)
    tmp = RESULTS + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, sort_keys=True)
    os.replace(tmp, RESULTS)
    return data


def run(argv: Sequence[str], *, input: Optional[str] = None,
        timeout: float = 60) -> tuple[int, str, str]:
    """Run ``argv``; return (exit status, stdout, stderr) as text (undecodable bytes escaped)."""
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                          errors="backslashreplace", timeout=timeout, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def proc_modules() -> list[str]:
    """Names of the loaded modules, in /proc/modules order."""
    with open("/proc/modules", encoding="utf-8") as fh:
        return [line.split()[0] for line in fh if line.strip()]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def finit_module(path: str, params: str = "", flags: int = 0) -> int:
    """Load ``path`` with the finit_module syscall; return 0 or the errno (positive)."""
    nr = SYSCALLS[platform.machine()][0]
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc = _libc()
        libc.syscall.restype = ctypes.c_long
        ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(fd), ctypes.c_char_p(params.encode()),
                           ctypes.c_int(flags))
        return 0 if ret == 0 else ctypes.get_errno()
    finally:
        os.close(fd)


def delete_module(name: str, flags: int = os.O_NONBLOCK) -> int:
    """Unload module ``name`` with the delete_module syscall; return 0 or the errno."""
    nr = SYSCALLS[platform.machine()][2]
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_char_p(name.encode()), ctypes.c_uint(flags))
    return 0 if ret == 0 else ctypes.get_errno()
