"""Target paths inside a staged root, with symlinks resolved as the target would see them.

An image's ``/lib/modules/KVER/build`` is typically an absolute link to
``/usr/src/linux-headers-KVER`` and firmware files are often links into other firmware
directories: followed on the build host those would leave the root, so every link is followed
component by component with ``/`` meaning the root.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Optional

MAX_LINKS = 40  # as the kernel's MAXSYMLINKS


@dataclass(frozen=True)
class Resolved:
    """Where a target path leads: ``host`` is the file on this machine; ``exists`` is False
    when a component is missing (a dangling link when ``via_link``)."""

    host: bytes
    target: bytes  # the resolved target path, below the root
    exists: bool
    via_link: bool
    is_dir: bool = False
    is_file: bool = False


def resolve(root: bytes, path: bytes) -> Resolved:
    """Resolve target ``path`` (absolute, ``/`` being ``root``; ``root`` b"" is the host's
    ``/``), following symlinks inside the root; ``..`` never climbs above the root."""
    pending = [p for p in path.split(b"/") if p and p != b"."]
    done: list[bytes] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == b"..":
            if done:
                done.pop()
            continue
        host = root + b"/" + b"/".join(done + [part])
        try:
            st = os.lstat(host)
        except OSError:
            target = b"/" + b"/".join(done + [part] + pending)
            return Resolved(root + target, target, False, links > 0)
        if stat.S_ISLNK(st.st_mode):
            links += 1
            if links > MAX_LINKS:
                return Resolved(host, b"/" + b"/".join(done + [part]), False, True)
            link = os.readlink(host)
            if link.startswith(b"/"):
                done = []
            pending = [p for p in link.split(b"/") if p and p != b"."] + pending
            continue
        done.append(part)
    target = b"/" + b"/".join(done)
    host = root + target
    try:
        st = os.stat(host)
    except OSError:
        return Resolved(host, target, False, links > 0)
    return Resolved(host, target, True, links > 0, stat.S_ISDIR(st.st_mode),
                    stat.S_ISREG(st.st_mode))


def existing_file(root: bytes, path: bytes) -> Optional[bytes]:
    """The host path of target file ``path`` if it exists (links followed in the root)."""
    r = resolve(root, path)
    return r.host if r.exists and r.is_file else None
