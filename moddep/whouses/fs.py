"""Small readers for sysfs and procfs under a root directory (``/`` or a fake tree).

Files in /sys and /proc vanish while we read them (processes exit, devices go): every reader
returns ``None`` for a missing file and lets the caller decide. Permission errors are kept
apart (:class:`Denied`) so the report can say what could not be examined.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


class Denied(Exception):
    """Reading a file or directory was refused (EACCES/EPERM)."""


def shown(root: Path, path: Path) -> str:
    """``path`` as the running system names it: relative to ``root``, with a leading ``/``."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return "/" + str(rel) if str(rel) != "." else "/"


def read_text(path: Path) -> Optional[str]:
    """Content of a small text file, ``None`` if it does not exist (any more)."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "surrogateescape")
    except PermissionError as exc:
        raise Denied(str(path)) from exc
    except (FileNotFoundError, NotADirectoryError, ProcessLookupError):
        return None
    except OSError:
        return None


def readlink(path: Path) -> Optional[str]:
    """Target text of a symlink, ``None`` if it is not one or is gone."""
    try:
        return os.readlink(path)
    except PermissionError as exc:
        raise Denied(str(path)) from exc
    except OSError:
        return None


def listdir(path: Path) -> list[str]:
    """Sorted entries of a directory; empty if it does not exist."""
    try:
        return sorted(os.listdir(path))
    except PermissionError as exc:
        raise Denied(str(path)) from exc
    except OSError:
        return []


def resolve_within(root: Path, path: Path) -> Optional[Path]:
    """Follow symlinks of ``path``; ``None`` if it is missing or lands outside ``root``."""
    real = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    if real != base and base not in real.parents:
        return None
    if not os.path.lexists(real):
        return None
    return real


def pids(root: Path) -> list[int]:
    """Process ids listed in ``<root>/proc``, ascending."""
    return sorted(int(name) for name in listdir(root / "proc") if name.isdigit())
