"""Configuration file collection and line reading shared by depmod.d and modprobe.d.

Collection (kmod ``cfg_files_list``/``conf_files_list``): each configured path is a file or a
directory; files from all directories are merged into one list sorted by basename (``strcmp``);
a basename already taken by an earlier (higher precedence) path is ignored; unreadable paths are
skipped silently. Reading (``freadline_wrapped``): backslash-newline joins physical lines, a
backslash before any other character is dropped; line numbers are physical.
"""

from __future__ import annotations

import os
import stat
from typing import Callable, Iterator, Optional

from moddep.diag import Log, fs

# accept(dir, name, log) -> bool: whether a directory entry is a config file
Filter = Callable[[bytes, bytes, Log], bool]


def collect(paths: list[bytes], accept: Filter, log: Log,
            extra: Optional[list[tuple[bytes, bytes]]] = None) -> list[tuple[bytes, bytes]]:
    """(basename, path) of every config file, sorted by basename, first path winning a name.

    ``extra`` lists (name, path) pairs inserted as if found in a directory (modprobe puts the
    module dir's modules.softdep/weakdep there).
    """
    files: dict[bytes, bytes] = {}
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            files.setdefault(os.path.basename(path), path)
            continue
        try:
            names = os.listdir(path)
        except OSError as e:
            log.error(f"could not open directory {fs(path)}: {e.strerror}")
            continue
        for name in names:
            if accept(path, name, log):
                files.setdefault(name, os.path.join(path, name))
    for name, path in extra or ():
        files.setdefault(name, path)
    return sorted(files.items())


def conf_filter(quiet: bool = False) -> Filter:
    """The ``.conf`` rule of depmod.d (``quiet``=False: INFO for other names) and modprobe.d."""

    def accept(directory: bytes, name: bytes, log: Log) -> bool:
        if name.startswith(b"."):
            return False
        if len(name) < 6 or not name.endswith(b".conf"):
            if not quiet:
                log.info(f"All cfg files need .conf: {fs(directory)}/{fs(name)}")
            return False
        full = os.path.join(directory, name)
        if os.path.isdir(full):
            log.error(f"Directories inside directories are not supported: "
                      f"{fs(directory)}/{fs(name)}")
            return False
        return True

    return accept


def logical_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """(physical line number of the last line, joined line) as ``freadline_wrapped`` reads them."""
    lineno = 0
    buf = bytearray()
    i = 0
    n = len(data)
    while i < n:
        nl = data.find(b"\n", i)
        end = n if nl < 0 else nl
        chunk = data[i:end]
        lineno += 1
        i = end + 1
        if b"\\" in chunk:
            # a backslash drops itself and keeps the next character; one at the end joins lines
            j = 0
            while j < len(chunk):
                c = chunk[j]
                if c == 0x5C:
                    if j + 1 < len(chunk):
                        buf.append(chunk[j + 1])
                        j += 2
                        continue
                    break  # backslash-newline: continue on the next physical line
                buf.append(c)
                j += 1
            else:
                yield lineno, bytes(buf)
                buf.clear()
                continue
            if nl < 0:
                yield lineno, bytes(buf)
                buf.clear()
            continue
        buf += chunk
        yield lineno, bytes(buf)
        buf.clear()


def tokens(line: bytes) -> list[bytes]:
    """Split on spaces and tabs as ``strtok_r(line, "\\t ")`` does."""
    return line.replace(b"\t", b" ").split()
