"""modprobe.d: the configuration libkmod reads for modprobe (KMOD_NOTES §12.2).

Files are collected like depmod.d (basename order, the first directory providing a name wins;
only ``*.conf`` names, others skipped silently: kmod 30..32 also read ``*.alias``, dropped in
kmod 33, and moddep follows kmod 34) from kmod's directories, or from the ``-C`` paths instead.
The module directory's ``modules.softdep`` and ``modules.weakdep`` join the list under those
names. Each list keeps configuration order, which decides every "first match".

Directives (kmod 34 ``libkmod/libkmod-config.c``)::

    alias PATTERN MODNAME         both through underscores()
    blacklist MODNAME             underscores()
    options MODNAME REST          REST: the line after the one blank ending MODNAME, tabs -> spaces
    install MODNAME REST          REST kept as written (a shell command)
    remove MODNAME REST
    softdep MODNAME REST          REST split into words; words after ``pre:``/``post:`` count
    weakdep MODNAME REST          (kmod >= 33) every word counts; never loaded
    include / config              "command X is deprecated and not parsed anymore"

Anything else, or a directive missing its arguments or with unbalanced brackets, is reported as
``FILE line N: ignoring bad line starting with 'CMD'``. Messages carry libkmod's function name
(``kmod_config_parse: ...``); the CLI prints them as libkmod does, before its own logging.

Deliberate difference from kmod: ``modules.softdep``/``modules.weakdep`` are generated files in
the module directory, so only ``softdep``/``weakdep`` lines are taken from them. kmod parses
them as full configuration files, so an ``install`` line there would run a shell command; here
shell commands come from modprobe.d files only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterator, Optional

from moddep.config.files import collect, conf_filter, logical_lines
from moddep.diag import Log, fs
from moddep.modinfo import underscores

#: kmod's default configuration directories, highest precedence first (sysconfdir, run,
#: /usr/local/lib since kmod 29, DISTCONFDIR since kmod 32, /lib).
DEFAULT_DIRS: tuple[bytes, ...] = (
    b"/etc/modprobe.d",
    b"/run/modprobe.d",
    b"/usr/local/lib/modprobe.d",
    b"/usr/lib/modprobe.d",
    b"/lib/modprobe.d",
)

#: Files of the module directory read as configuration (kmod_config_new).
MODULE_DIR_FILES: tuple[bytes, ...] = (b"modules.softdep", b"modules.weakdep")

_BLANKS = b" \t"
# isspace() of the C locale: what kmod's softdep/weakdep word scanner splits on
_SPACE = frozenset(b" \t\n\v\f\r")


@dataclass(frozen=True)
class Alias:
    """An ``alias PATTERN MODULE`` line."""

    pattern: bytes
    modname: bytes


@dataclass(frozen=True)
class Options:
    """An ``options MODULE ...`` line."""

    modname: bytes
    options: bytes


@dataclass(frozen=True)
class Command:
    """An ``install`` or ``remove`` line: a shell command for modules matching ``pattern``."""

    pattern: bytes
    command: bytes


@dataclass(frozen=True)
class Softdep:
    """A ``softdep MODULE pre: ... post: ...`` line."""

    pattern: bytes
    pre: tuple[bytes, ...]
    post: tuple[bytes, ...]

    def text(self) -> bytes:
        """The value ``modprobe -c`` prints (kmod's softdep_to_char, including its quirk:
        no blank between the last pre: word and ``post:``)."""
        out = b""
        if self.pre:
            out += b"pre: " + b" ".join(self.pre)
        if self.post:
            out += b"post: " + b" ".join(self.post)
        return out


@dataclass(frozen=True)
class Weakdep:
    """A ``weakdep MODULE ...`` line."""

    pattern: bytes
    deps: tuple[bytes, ...]


@dataclass(frozen=True)
class ModprobeConfig:
    """Every directive in configuration order (files first, then the kernel command line)."""

    aliases: tuple[Alias, ...] = ()
    blacklists: tuple[bytes, ...] = ()
    options: tuple[Options, ...] = ()
    installs: tuple[Command, ...] = ()
    removes: tuple[Command, ...] = ()
    softdeps: tuple[Softdep, ...] = ()
    weakdeps: tuple[Weakdep, ...] = ()


@dataclass
class _Builder:
    """The configuration collected so far, in file order."""

    aliases: list[Alias] = field(default_factory=list)
    blacklists: list[bytes] = field(default_factory=list)
    options: list[Options] = field(default_factory=list)
    installs: list[Command] = field(default_factory=list)
    removes: list[Command] = field(default_factory=list)
    softdeps: list[Softdep] = field(default_factory=list)
    weakdeps: list[Weakdep] = field(default_factory=list)

    def freeze(self) -> ModprobeConfig:
        return ModprobeConfig(tuple(self.aliases), tuple(self.blacklists), tuple(self.options),
                              tuple(self.installs), tuple(self.removes), tuple(self.softdeps),
                              tuple(self.weakdeps))


def _next_token(line: bytes, pos: int) -> tuple[Optional[bytes], int]:
    """``strtok_r(..., " \\t")``: the next word from ``pos`` and the position after the one
    delimiter that ended it (the rest of the line starts there)."""
    n = len(line)
    while pos < n and line[pos] in _BLANKS:
        pos += 1
    if pos >= n:
        return None, n
    end = pos
    while end < n and line[end] not in _BLANKS:
        end += 1
    return line[pos:end], min(end + 1, n)


def _rest(line: bytes, pos: int) -> Optional[bytes]:
    """``strtok_r(NULL, "\\0", ...)``: the rest of the line, None when nothing is left."""
    rest = line[pos:]
    return rest or None


def _dep_words(rest: bytes) -> Iterator[bytes]:
    """The words of a softdep/weakdep line as kmod's scanner finds them.

    Words are separated by isspace() runs; one quirk is kept: when the rest of the line starts
    with exactly one blank, that blank stays part of the first word (so ``softdep m  pre: a``
    with two blanks after the name yields " pre:", which is not a marker).
    """
    p = 0
    was_space = False
    n = len(rest)
    i = 0
    while True:
        at_end = i >= n
        if not at_end:
            if rest[i] not in _SPACE:
                was_space = False
                i += 1
                continue
            if was_space:
                p = i + 1
                i += 1
                continue
            was_space = True
            if p >= i:
                i += 1
                continue
        if not (at_end and was_space):  # a trailing blank ends no word
            yield rest[p:i]
        p = i + 1
        if at_end:
            return
        i += 1


def _softdep(modname: bytes, rest: bytes) -> Softdep:
    pre: list[bytes] = []
    post: list[bytes] = []
    mode: Optional[list[bytes]] = None
    for word in _dep_words(rest):
        if word == b"pre:":
            mode = pre
        elif word == b"post:":
            mode = post
        elif mode is not None:
            mode.append(word)
    return Softdep(modname, tuple(pre), tuple(post))


def parse_file(data: bytes, where: str, out: _Builder, log: Log,
               allowed: Optional[frozenset[bytes]] = None) -> None:
    """Parse one configuration file into ``out``; ``allowed`` limits the directives taken."""
    for lineno, raw in logical_lines(data):
        line = raw.split(b"\0", 1)[0]  # C strings end at the first NUL
        if not line or line.startswith(b"#"):
            continue
        cmd, pos = _next_token(line, 0)
        if cmd is None:
            continue
        if allowed is not None and cmd not in allowed:
            continue
        ok = True
        if cmd == b"alias":
            pattern, pos = _next_token(line, pos)
            modname, pos = _next_token(line, pos)
            p = underscores(pattern) if pattern is not None else None
            m = underscores(modname) if modname is not None else None
            if p is None or m is None:
                ok = False
            else:
                out.aliases.append(Alias(p, m))
        elif cmd == b"blacklist":
            modname, pos = _next_token(line, pos)
            m = underscores(modname) if modname is not None else None
            if m is None:
                ok = False
            else:
                out.blacklists.append(m)
        elif cmd in (b"options", b"install", b"remove", b"softdep", b"weakdep"):
            modname, pos = _next_token(line, pos)
            m = underscores(modname) if modname is not None else None
            rest = _rest(line, pos)
            if m is None or rest is None:
                ok = False
            elif cmd == b"options":
                out.options.append(Options(m, rest.replace(b"\t", b" ")))
            elif cmd == b"install":
                out.installs.append(Command(m, rest))
            elif cmd == b"remove":
                out.removes.append(Command(m, rest))
            elif cmd == b"softdep":
                out.softdeps.append(_softdep(m, rest))
            else:
                out.weakdeps.append(Weakdep(m, tuple(_dep_words(rest))))
        elif cmd in (b"include", b"config"):
            log.error(f"kmod_config_parse: {where}: command {fs(cmd)} is deprecated and not "
                      "parsed anymore")
        else:
            ok = False
        if not ok:
            log.error(f"kmod_config_parse: {where} line {lineno}: ignoring bad line starting "
                      f"with '{fs(cmd)}'")


def config_files(moddir: bytes, paths: Optional[list[bytes]], root: bytes,
                 log: Log) -> list[tuple[bytes, bytes]]:
    """(basename, path) of every file to parse, in parse order.

    ``paths`` are the ``-C`` paths (used as given); None means kmod's default directories,
    taken under ``root``.
    """
    if paths is None:
        paths = [join_root(root, d) for d in DEFAULT_DIRS]
    extra = [(name, moddir + b"/" + name) for name in MODULE_DIR_FILES]
    inner = Log()
    files = collect(list(paths), conf_filter(quiet=True), inner, extra)
    for m in inner.messages:  # with the libkmod function that reports them
        fn = ("conf_files_filter_out" if m.text.startswith("Directories inside")
              else "conf_files_list")
        log.messages.append(type(m)(m.level, f"{fn}: {m.text}"))
    return files


def join_root(root: bytes, path: bytes) -> bytes:
    """``path`` (absolute, on the target) under ``root``."""
    if root in (b"", b"/"):
        return path
    return root.rstrip(b"/") + path


def load(moddir: bytes, paths: Optional[list[bytes]], root: bytes, log: Log,
         cmdline: Optional[bytes] = None) -> ModprobeConfig:
    """Read the configuration as kmod_new does: files, then the kernel command line."""
    out = _Builder()
    generated = {moddir + b"/" + name for name in MODULE_DIR_FILES}
    for _name, path in config_files(moddir, paths, root, log):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue  # kmod skips files it cannot open, silently
        allowed = frozenset((b"softdep", b"weakdep")) if path in generated else None
        parse_file(data, os.fsdecode(path), out, log, allowed)
    if cmdline is not None:
        from moddep.runtime.cmdline import parse_cmdline

        for kind, name, value in parse_cmdline(cmdline, log):
            if kind == "blacklist":
                out.blacklists.append(name)
            else:
                out.options.append(Options(name, value.replace(b"\t", b" ")))
    return out.freeze()


def show_config(config: ModprobeConfig) -> Iterator[bytes]:
    """The configuration part of ``modprobe -c``, line by line (with newlines)."""
    for name in config.blacklists:
        yield b"blacklist " + name + b"\n"
    for c in config.installs:
        yield b"install " + c.pattern + b" " + c.command + b"\n"
    for c in config.removes:
        yield b"remove " + c.pattern + b" " + c.command + b"\n"
    for a in config.aliases:
        yield b"alias " + a.pattern + b" " + a.modname + b"\n"
    for o in config.options:
        yield b"options " + o.modname + b" " + o.options + b"\n"
    for s in config.softdeps:
        yield b"softdep " + s.pattern + b" " + s.text() + b"\n"
    for w in config.weakdeps:
        yield b"weakdep " + w.pattern + b" " + b" ".join(w.deps) + b"\n"
