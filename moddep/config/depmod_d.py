"""depmod.d: ``search``, ``override``, ``external``, ``exclude`` (kmod ``tools/depmod.c``).

kmod keeps each list newest-first (it prepends), and priorities follow from that: the first
``search`` token of the first file has the highest priority, the *last* configured override is
checked first, the *last* configured external directory is walked first.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

from moddep.config.files import collect, conf_filter, logical_lines, tokens
from moddep.diag import Log, fs

SEARCH_PATH, SEARCH_BUILTIN, SEARCH_EXTERNAL = "path", "built-in", "external"


class Search(NamedTuple):
    """One entry of depmod.d's ``search`` list."""

    kind: str  # SEARCH_PATH | SEARCH_BUILTIN | SEARCH_EXTERNAL
    path: bytes = b""


class DepmodConfig(NamedTuple):
    """Parsed depmod.d, each list in configuration order (first configured first)."""

    searches: tuple[Search, ...] = ()
    overrides: tuple[bytes, ...] = ()  # "SUBDIR/MOD" as written
    externals: tuple[bytes, ...] = ()  # directories as written (target or host paths)
    excludes: frozenset[bytes] = frozenset()

    @property
    def effective_searches(self) -> tuple[Search, ...]:
        """The search list; kmod uses just ``updates`` when no search line exists."""
        return self.searches or (Search(SEARCH_PATH, b"updates"),)


def kernel_matches(pattern: bytes, kver: bytes) -> bool:
    """kmod's cfg_kernel_matches: ``*``, else an unanchored POSIX extended regex search."""
    if pattern == b"*":
        return True
    try:
        return re.search(pattern, kver) is not None
    except (re.error, RecursionError, OverflowError):  # e.g. "((((...))))", "a{99999999999}"
        return False


def parse(files: list[tuple[bytes, bytes]], kver: bytes, log: Log) -> DepmodConfig:
    """Parse the collected files (basename order) into a :class:`DepmodConfig`."""
    searches: list[Search] = []
    overrides: list[bytes] = []
    externals: list[bytes] = []
    excludes: set[bytes] = set()
    for _name, path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            log.error(f"file parse {fs(path)}: {e.strerror}")
            continue
        where = fs(path)
        for lineno, line in logical_lines(data):
            if not line or line.startswith(b"#"):
                continue
            words = tokens(line)
            if not words:
                continue
            cmd, args = words[0], words[1:]
            if cmd == b"search":
                for tok in args:
                    if tok == b"built-in":
                        searches.append(Search(SEARCH_BUILTIN))
                    elif tok == b"external":
                        searches.append(Search(SEARCH_EXTERNAL))
                    else:
                        searches.append(Search(SEARCH_PATH, tok))
            elif cmd == b"override" and len(args) >= 3:
                modname, version, subdir = args[:3]
                if not kernel_matches(version, kver):
                    log.info(f"{where}:{lineno}: override kernel did not match {fs(version)}")
                    continue
                overrides.append(subdir + b"/" + modname)
            elif cmd == b"external" and len(args) >= 2:
                version, directory = args[:2]
                if not kernel_matches(version, kver):
                    log.info(f"{where}:{lineno}: external directory did not match "
                             f"{fs(version)}")
                    continue
                externals.append(directory)
            elif cmd == b"exclude":
                excludes.update(args)
            elif cmd in (b"include", b"make_map_files"):
                log.info(f"{where}:{lineno}: command {fs(cmd)} not implemented yet")
            else:
                log.error(f"{where}:{lineno}: ignoring bad line starting with '{fs(cmd)}'")
    return DepmodConfig(tuple(searches), tuple(overrides), tuple(externals), frozenset(excludes))


def load(paths: list[bytes], kver: bytes, log: Log,
         root: Optional[bytes] = None) -> DepmodConfig:
    """Collect and parse depmod.d from ``paths``; with ``root``, each path is under that root
    and every symlink on the way (directory or file) is followed inside it; a path leading
    out of the root is reported and skipped (moddep.rootfs)."""
    if root is None:
        return parse(collect(paths, conf_filter(), log), kver, log)
    from moddep.rootfs import EscapeError, Root

    staged = Root(root)
    inside = []
    for p in paths:
        try:
            inside.append(staged.resolve(p))
        except EscapeError as e:
            log.error(f"configuration directory {e.message}: skipped")
    files = []
    for name, path in collect(inside, conf_filter(), log):
        try:
            files.append((name, staged.resolve_host(path)))
        except EscapeError as e:
            log.error(f"configuration file {e.message}: skipped")
    return parse(files, kver, log)
