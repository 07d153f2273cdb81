"""``modprobe``: add or remove modules with their dependencies, as kmod's modprobe (kmod 34).

Options, messages, output and exit codes follow ``tools/modprobe.c`` of kmod 34.2 (KMOD_NOTES
§12); the procedures live in :mod:`moddep.runtime.engine`. Deliberate differences from kmod are
listed there and in :mod:`moddep.runtime.modprobe_d`; in short: ``$CMDLINE_OPTS`` is substituted
as shell-quoted words, ``-r`` removes a whole chain of unused dependencies, ``modules.softdep``
cannot carry install/remove commands, and an "in use" failure says who holds the module.
As in kmod, ``-d ROOT`` only moves the module directory: modprobe.d is still the system's
unless ``-C`` names other paths (moddep's depmod reads depmod.d from its ``-b`` root instead).

Test hook: ``MODDEP_SYSROOT=DIR`` reads /proc, /sys and the default modprobe.d directories
under DIR and makes every kernel call on a simulated kernel there
(:class:`moddep.runtime.fake.FakeKernel`), never the real one.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import BinaryIO, Callable, Optional

from moddep import __version__
from moddep.diag import DEBUG, ERROR, FATAL, LEVEL_NAMES, WARNING, Log
from moddep.elf import ElfModule
from moddep.errors import CompressionError, ElfError, ModdepError
from moddep.runtime import modprobe_d
from moddep.runtime.engine import (
    CommandRunner,
    Engine,
    Fatal,
    Options,
    RefusingRunner,
    ShellRunner,
)
from moddep.runtime.getopt import Getopt, GetoptError, LongOption
from moddep.runtime.index import ALIAS, SYMBOL, ModuleDir
from moddep.runtime.kernel import KernelLoader, Loader, RefusingLoader
from moddep.runtime.resolve import ResolveError, Resolver, absolute
from moddep.runtime.state import KernelState

EMERG = 0
SHORT = "arw:RibfDcnC:d:S:sqvVh"
LONG = (
    LongOption("all", False, "a"),
    LongOption("remove", False, "r"),
    LongOption("remove-dependencies", False, "remove-holders"),
    LongOption("remove-holders", False, "remove-holders"),
    LongOption("wait", True, "w"),
    LongOption("resolve-alias", False, "R"),
    LongOption("first-time", False, "first-time"),
    LongOption("ignore-install", False, "i"),
    LongOption("ignore-remove", False, "i"),
    LongOption("use-blacklist", False, "b"),
    LongOption("force", False, "f"),
    LongOption("force-modversion", False, "force-modversion"),
    LongOption("force-vermagic", False, "force-vermagic"),
    LongOption("show-depends", False, "D"),
    LongOption("showconfig", False, "c"),
    LongOption("show-config", False, "c"),
    LongOption("show-modversions", False, "show-modversions"),
    LongOption("dump-modversions", False, "show-modversions"),
    LongOption("show-exports", False, "show-exports"),
    LongOption("dry-run", False, "n"),
    LongOption("show", False, "n"),
    LongOption("config", True, "C"),
    LongOption("dirname", True, "d"),
    LongOption("set-version", True, "S"),
    LongOption("syslog", False, "s"),
    LongOption("quiet", False, "q"),
    LongOption("verbose", False, "v"),
    LongOption("version", False, "V"),
    LongOption("help", False, "h"),
)

HELP = """\
Usage:
\t{p} [options] [-i] [-b] modulename
\t{p} [options] -a [-i] [-b] modulename [modulename...]
\t{p} [options] -r [-i] modulename
\t{p} [options] -r -a [-i] modulename [modulename...]
\t{p} [options] -c
\t{p} [options] --dump-modversions filename
Management Options:
\t-a, --all                   Consider every non-argument to
\t                            be a module name to be inserted
\t                            or removed (-r)
\t-r, --remove                Remove modules instead of inserting
\t    --remove-dependencies   Deprecated: use --remove-holders
\t    --remove-holders        Also remove module holders (use together with -r)
\t-w, --wait=<MSEC>           When removing a module, wait up to MSEC for
\t                            module's refcount to become 0 so it can be
\t                            removed (use together with -r)
\t    --first-time            Fail if module already inserted or removed
\t-i, --ignore-install        Ignore install commands
\t-i, --ignore-remove         Ignore remove commands
\t-b, --use-blacklist         Apply blacklist to resolved alias.
\t-f, --force                 Force module insertion or removal.
\t                            implies --force-modversions and
\t                            --force-vermagic
\t    --force-modversion      Ignore module's version
\t    --force-vermagic        Ignore module's version magic

Query Options:
\t-R, --resolve-alias         Only lookup and print alias and exit
\t-D, --show-depends          Only print module dependencies and exit
\t-c, --showconfig            Print out known configuration and exit
\t-c, --show-config           Same as --showconfig
\t    --show-modversions      Dump module symbol version and exit
\t    --dump-modversions      Same as --show-modversions
\t    --show-exports          Only print module exported symbol versions and exit

General Options:
\t-n, --dry-run               Do not execute operations, just print out
\t-n, --show                  Same as --dry-run
\t-C, --config=FILE           Use FILE instead of default search paths
\t-d, --dirname=DIR           Use DIR as filesystem root for /lib/modules
\t-S, --set-version=VERSION   Use VERSION instead of `uname -r`
\t-s, --syslog                print to syslog, not stderr
\t-q, --quiet                 disable messages
\t-v, --verbose               enables more messages
\t-V, --version               show version
\t-h, --help                  show this help
"""

VERSION_TEXT = f"moddep {__version__} (kmod 34 compatible modprobe)\n+ZSTD +XZ +ZLIB\n"

_SYSLOG_PRIORITY = {FATAL: 2, ERROR: 3, WARNING: 4, 5: 5, 6: 6, DEBUG: 7}


def split_env_options(value: str) -> list[str]:
    """``MODPROBE_OPTIONS`` as kmod splits it: on single spaces (so runs of spaces give empty
    arguments), a quoted word up to its closing quote, quotes inside a word removed."""
    out: list[str] = []
    cur: list[str] = []
    quote: Optional[str] = None
    quote_at_start = False
    for ch in value:
        if quote is None:
            if ch == " ":
                out.append("".join(cur))
                cur = []
            elif ch in "\"'":
                quote = ch
                quote_at_start = not cur
            else:
                cur.append(ch)
        elif ch == quote:
            quote = None
            if quote_at_start:
                out.append("".join(cur))
                cur = []
                quote_at_start = False
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return out


def options_from_array(args: list[bytes]) -> Optional[bytes]:
    """kmod's options_from_array: module options from the command line, joined by spaces; a
    ``key=value`` whose value has a space and no leading quote gets double quotes."""
    parts = []
    for arg in args:
        key, eq, value = arg.partition(b"=")
        if eq and not value.startswith((b'"', b"'")) and b" " in value:
            arg = key + b'="' + value + b'"'
        parts.append(arg)
    return b" ".join(parts) if parts else None


class Output:
    """kmod's log.c for the tools plus stdout: ``prog: LEVEL: text`` at or below the
    threshold; a printed FATAL message ends the run (raises Fatal)."""

    def __init__(self, prog: str, threshold: int, root: bytes, syslog: bool = False,
                 stdout: Optional[BinaryIO] = None, stderr: Optional[BinaryIO] = None) -> None:
        self.prog = prog
        self.threshold = threshold
        self.root = root
        self.syslog = syslog
        self.stdout = stdout or sys.stdout.buffer
        self.stderr = stderr or sys.stderr.buffer

    def _write(self, level: int, text: str) -> None:
        name = LEVEL_NAMES.get(level, f"LOG-{level:03d}")
        if self.syslog:
            import syslog

            syslog.openlog(self.prog, syslog.LOG_CONS, syslog.LOG_DAEMON)
            syslog.syslog(_SYSLOG_PRIORITY.get(level, 7), f"{name}: {text}")
            return
        self.stderr.write(os.fsencode(f"{self.prog}: {name}: {text}\n"))
        self.stderr.flush()

    def log(self, level: int, text: str, module: Optional[bytes] = None) -> None:
        if level > self.threshold:
            return
        self._write(level, text)
        if module is not None and not self.syslog:
            from pathlib import Path

            from moddep.whouses import short_answer

            answer = short_answer(os.fsdecode(module), Path(os.fsdecode(self.root)))
            self.stderr.write(os.fsencode(answer.rstrip("\n") + "\n"))
            self.stderr.flush()
        if level <= FATAL:
            raise Fatal(text)

    def show(self, line: bytes) -> None:
        self.stdout.write(line)
        self.stdout.flush()


def library_threshold() -> int:
    """libkmod's own log priority before the tool sets it: ERR, or $KMOD_LOG."""
    value = os.environ.get("KMOD_LOG")
    if value is None:
        return ERROR
    digits = value.strip()
    if digits.lstrip("-").isdigit():
        return int(digits)
    for prefix, level in (("err", ERROR), ("info", 6), ("debug", DEBUG)):
        if value.startswith(prefix):
            return level
    return 0


def flush_library_log(log: Log, threshold: Optional[int] = None) -> None:
    """Print messages libkmod logs before a tool installs its logger (``libkmod: ...``)."""
    limit = library_threshold() if threshold is None else threshold
    for m in log.messages:
        if m.level <= limit:
            name = {FATAL: "CRITICAL"}.get(m.level, LEVEL_NAMES.get(m.level, str(m.level)))
            sys.stderr.buffer.write(os.fsencode(f"libkmod: {name}: {m.text}\n"))
    sys.stderr.buffer.flush()
    log.messages.clear()


def sysroot() -> bytes:
    """Where /proc, /sys and the default configuration are read (``MODDEP_SYSROOT``)."""
    return os.fsencode(os.environ.get("MODDEP_SYSROOT", "/")) or b"/"


def kernel_loader(root: bytes) -> Loader:
    """The real kernel on a live system; a simulated one when a test root is set."""
    if root not in (b"", b"/"):
        from moddep.runtime.fake import FakeKernel

        return FakeKernel.open(root)
    return KernelLoader()


def module_dirname(root_opt: Optional[str], kver: Optional[str], system_root: bytes) -> bytes:
    """kmod's dirname: ``ROOT/lib/modules/VERSION`` with -d/-S, else the running kernel's."""
    release = os.uname().release
    if root_opt is not None or kver is not None:
        base = os.fsencode(root_opt or "")
        d = base + b"/lib/modules/" + os.fsencode(kver or release)
    else:
        d = modprobe_d.join_root(system_root, b"/lib/modules/" + os.fsencode(release))
    return absolute(d)


def guarded(prog: str, argv: list[str], body: Callable[[], int]) -> int:
    """The one catch point of a tool: a ModdepError (a malformed index, say) becomes
    ``prog: ERROR: message`` and exit 1; a printed FATAL message ends with exit 1.
    ``MODDEP_DEBUG=1`` shows the traceback instead."""
    try:
        return body()
    except Fatal:
        return 1
    except ModdepError as e:
        if os.environ.get("MODDEP_DEBUG") == "1":
            raise
        sys.stderr.write(f"{prog}: ERROR: {e}\n")
        return 1
    except KeyboardInterrupt:
        return 130


def main(argv: list[str], prog: str = "modprobe") -> int:
    env_opts = os.environ.get("MODPROBE_OPTIONS")
    full = (split_env_options(env_opts) if env_opts is not None else []) + list(argv)
    return guarded(prog, argv, lambda: _main(full, prog, env_opts))


def _main(argv: list[str], prog: str, env_opts: Optional[str]) -> int:
    use_all = remove = show_config = show_modversions = show_exports = False
    lookup_only = syslog = False
    opt = Options()
    force = False
    verbose = WARNING
    log_level = FATAL
    config_paths: Optional[list[bytes]] = None
    root_opt: Optional[str] = None
    kver: Optional[str] = None
    child_env = env_opts

    def env_append(value: str) -> None:
        nonlocal child_env
        child_env = value if child_env is None else f"{child_env} {value}"

    early = Output(prog, WARNING, b"/")
    parser = Getopt(argv, SHORT, LONG)
    try:
        for key, value in parser:
            if key == "a":
                log_level = WARNING
                use_all = True
            elif key == "r":
                remove = True
            elif key == "remove-holders":
                opt.remove_holders = True
            elif key == "w":
                try:
                    assert value
                    opt.wait_msec = int(value, 0)
                except (AssertionError, ValueError):
                    early.log(ERROR, f"unexpected wait value '{value}'.")
                    return 1
            elif key == "first-time":
                opt.first_time = True
            elif key == "i":
                opt.ignore_commands = True
            elif key == "b":
                opt.use_blacklist = True
            elif key == "f":
                force = True
            elif key == "force-modversion":
                opt.force_modversion = True
            elif key == "force-vermagic":
                opt.force_vermagic = True
            elif key == "D":
                opt.ignore_loaded = opt.dry_run = opt.show = True
            elif key == "R":
                lookup_only = True
            elif key == "c":
                show_config = True
            elif key == "show-modversions":
                show_modversions = True
            elif key == "show-exports":
                show_exports = True
            elif key == "n":
                opt.dry_run = True
            elif key == "C":
                assert value is not None
                config_paths = (config_paths or []) + [os.fsencode(value)]
                env_append("-C")
                env_append(value)
            elif key == "d":
                root_opt = value
            elif key == "S":
                kver = value
            elif key == "s":
                env_append("-s")
                syslog = True
            elif key == "q":
                env_append("-q")
                verbose = EMERG
            elif key == "v":
                env_append("-v")
                verbose += 1
            elif key == "V":
                sys.stdout.write(VERSION_TEXT)
                return 0
            elif key == "h":
                sys.stdout.write(HELP.format(p=prog))
                return 0
    except GetoptError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    args = [os.fsencode(a) for a in parser.operands]
    if not show_config and not args:
        early.log(ERROR, "missing parameters. See -h.")
        return 1
    if force:
        opt.force_modversion = opt.force_vermagic = opt.force_remove = True
    if verbose > WARNING:
        opt.show = True

    root = sysroot()
    state = KernelState(root)
    dirname = module_dirname(root_opt, kver, root)
    log = Log()
    cmdline = state.cmdline()
    config = modprobe_d.load(dirname, config_paths, root, log, cmdline)
    flush_library_log(log)
    moddir = ModuleDir(dirname, preload=True)
    out = Output(prog, verbose, root, syslog)
    resolver = Resolver(moddir, config, lambda level, text: out.log(level, text))

    if show_config:
        for line in modprobe_d.show_config(config):
            out.show(line)
        out.show(b"\n# End of configuration files. Dumping indexes now:\n\n")
        for index in (ALIAS, SYMBOL):
            out.show(b"".join(b"alias " + k + b" " + v + b"\n" for k, v in moddir.dump(index)))
        return 0
    if show_modversions or show_exports:
        return _show_symbols(resolver, out, args[0], log_level, show_exports)

    if opt.dry_run:
        loader: Loader = RefusingLoader()
        runner: CommandRunner = RefusingRunner()
    else:
        loader = kernel_loader(root)
        env = dict(os.environb)
        if child_env is not None:
            env[b"MODPROBE_OPTIONS"] = os.fsencode(child_env)
        runner = ShellRunner(env=env)
    engine = Engine(resolver, state, loader, runner, out, opt, log_level)
    err = 0
    if remove:
        for arg in args:
            r = engine.rmmod(arg)
            if r < 0:
                err = r
    elif use_all:
        for arg in args:
            r = engine.insmod(arg, None, lookup_only)
            if r < 0:
                err = r
    else:
        err = engine.insmod(args[0], options_from_array(args[1:]), lookup_only)
    return 0 if err >= 0 else 1


def _show_symbols(resolver: Resolver, out: Output, arg: bytes, log_level: int,
                  exports: bool) -> int:
    """--show-modversions / --show-exports of a module file."""
    name = os.fsdecode(arg)
    try:
        mod = resolver.from_path(arg)
    except ResolveError:
        out.log(log_level, f"Module {name} not found.")
        return 1
    what = "symbols" if exports else "modversions"
    try:
        assert mod.path is not None
        from moddep.compression import decompress

        with open(mod.path, "rb") as f:
            image = decompress(f.read(), name)
        elf = ElfModule(image, name)
        if exports:
            names, crcs = elf.exported_symbols()
            if not names:
                # kmod_elf_get_symbols' fallback: __ksymtab_strings must exist and end in NUL
                strings = elf.section_data(b"__ksymtab_strings")
                bad = (errno.ENODATA if strings is None else
                       errno.EINVAL if len(strings.lstrip(b"\0")) > 1
                       and not strings.endswith(b"\0") else 0)
                if bad:
                    out.log(log_level, f"could not get {what} of {name}: {os.strerror(bad)}")
                    return 1
        else:
            data = elf.section_data(b"__versions")
            if data is None or len(data) % 64:
                bad = errno.ENODATA if data is None else errno.EINVAL
                out.log(log_level, f"could not get {what} of {name}: {os.strerror(bad)}")
                return 1
            names, crcs = elf.versions()
            width = 8 if elf.elfclass == 2 else 4
            if any(len(n) >= 64 - width for n in names):
                out.log(log_level, f"could not get {what} of {name}: "
                                   f"{os.strerror(errno.EINVAL)}")
                return 1
            names = [n[1:] if n.startswith(b".") else n for n in names]
    except ElfError as e:
        out.log(log_level, f"could not get {what} of {name}: {e.errno_text}")
        return 1
    except (OSError, CompressionError) as e:
        text = e.strerror if isinstance(e, OSError) else os.strerror(errno.EINVAL)
        out.log(log_level, f"could not get {what} of {name}: {text}")
        return 1
    out.show(b"".join(b"0x%08x\t%s\n" % (crc, n) for n, crc in zip(names, crcs)))
    return 0


class SimpleOptions:
    """What insmod, rmmod and lsmod share on their command lines: -f, -s, -v, -V, -h."""

    def __init__(self) -> None:
        self.force = False
        self.syslog = False
        self.verbose = ERROR
        self.operands: list[str] = []


# The options insmod, rmmod and lsmod share (kmod's tools/{insmod,rmmod,lsmod}.c); insmod and
# rmmod also take --force.
_SIMPLE_LONG = (
    LongOption("syslog", False, "s"),
    LongOption("verbose", False, "v"),
    LongOption("version", False, "V"),
    LongOption("help", False, "h"),
)
_FORCE = LongOption("force", False, "f")


def simple_options(argv: list[str], prog: str, help_text: str,
                   force: bool = False) -> SimpleOptions | int:
    """Parse a small tool's options the way getopt_long does (operands may come first);
    an int is the exit status when the tool should stop (help, version, bad option)."""
    opts = SimpleOptions()
    long = (_FORCE, *_SIMPLE_LONG) if force else _SIMPLE_LONG
    parser = Getopt(argv, "".join(o.key for o in long), long)
    try:
        for key, _value in parser:
            if key == "f":
                opts.force = True
            elif key == "s":
                opts.syslog = True
            elif key == "v":
                opts.verbose += 1
            elif key == "h":
                sys.stdout.write(help_text.format(p=prog))
                return 0
            elif key == "V":
                sys.stdout.write(f"moddep {__version__} (kmod 34 compatible {prog})\n")
                return 0
    except GetoptError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    opts.operands = list(parser.operands)
    return opts

