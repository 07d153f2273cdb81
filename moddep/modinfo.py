"""``.modinfo`` parsing and kmod's name normalisation rules (``shared/util.c``).

All values are bytes: module names, aliases and paths are never decoded.
"""

from __future__ import annotations

from typing import Optional


def parse_modinfo(data: bytes) -> list[tuple[bytes, bytes]]:
    """Split a ``.modinfo`` blob into (key, value) pairs, in file order.

    Strings are separated by runs of NUL bytes (leading padding skipped, an unterminated last
    string counts); each is split at the first ``=``; no ``=`` means an empty value.
    """
    out = []
    for item in data.split(b"\0"):
        if item:
            key, _sep, value = item.partition(b"=")
            out.append((key, value))
    return out


def modname_normalize(name: bytes) -> bytes:
    """kmod's modname_normalize: ``-`` becomes ``_``, stopping at the first ``.``."""
    dot = name.find(b".")
    if dot >= 0:
        name = name[:dot]
    return name.replace(b"-", b"_")


def path_to_modname(path: bytes) -> bytes:
    """Module name of a file path: its last component, normalised (``foo-bar.ko.xz`` -> foo_bar)."""
    return modname_normalize(path.rpartition(b"/")[2])


def alias_normalize(alias: bytes) -> Optional[bytes]:
    """kmod's alias_normalize: ``-`` -> ``_`` outside ``[...]``; None on unmatched brackets."""
    if b"[" not in alias and b"]" not in alias:
        return alias.replace(b"-", b"_")
    out = bytearray()
    i = 0
    n = len(alias)
    while i < n:
        c = alias[i]
        if c == 0x5B:  # '['
            close = alias.find(b"]", i)
            if close < 0:
                return None
            out += alias[i:close + 1]
            i = close + 1
            continue
        if c == 0x5D:  # ']' outside a bracket
            return None
        out.append(0x5F if c == 0x2D else c)
        i += 1
    return bytes(out)


# modprobe.d names and kernel command line names follow the same bracket rule.
underscores = alias_normalize
