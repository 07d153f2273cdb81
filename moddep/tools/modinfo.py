"""``modinfo``: show a module's information, as kmod's modinfo (``tools/modinfo.c``, kmod 34).

An argument is a module file when it ends like one (``.ko``, ``.ko.xz``, ``.ko.zst``,
``.ko.gz``) and is a regular file; with ``-m`` a module name (modules.dep, then built-ins);
otherwise anything modprobe resolves (name, alias, ``symbol:``), through the indexes of
``-b ROOT``/``-k VERSION`` or the running kernel's. modprobe.d is not read, as in kmod.
Works offline on any architecture's modules. Output, byte for byte as kmod's::

    filename:       /lib/modules/.../tun.ko     (or "name:" and "(builtin)" for built-ins)
    alias:          devname:net/tun              key, colon, blanks to column 16, value
    parm:           name:description (type)      parameters gathered, in kmod's order

``-F FIELD`` prints only that field's values, ``-0`` ends records with NUL (and prints
``key=value``), ``-a -d -l -p -n`` are ``-F author/description/license/parm/filename``.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import BinaryIO, Optional

from moddep import __version__
from moddep.compression import MODULE_EXTENSIONS
from moddep.diag import ERROR, Log
from moddep.runtime import modprobe_d
from moddep.runtime.getopt import Getopt, GetoptError, LongOption
from moddep.runtime.index import ModuleDir
from moddep.runtime.info import InfoError, module_info
from moddep.runtime.resolve import Module, ResolveError, Resolver
from moddep.runtime.state import KernelState
from moddep.tools.modprobe import Output, flush_library_log, guarded, module_dirname, sysroot

LONG = (
    LongOption("author", False, "a"),
    LongOption("description", False, "d"),
    LongOption("license", False, "l"),
    LongOption("parameters", False, "p"),
    LongOption("filename", False, "n"),
    LongOption("null", False, "0"),
    LongOption("modname", False, "m"),
    LongOption("field", True, "F"),
    LongOption("set-version", True, "k"),
    LongOption("basedir", True, "b"),
    LongOption("version", False, "V"),
    LongOption("help", False, "h"),
)

FIELD_OPTIONS = {"a": "author", "d": "description", "l": "license", "p": "parm",
                 "n": "filename"}

HELP = """\
Usage:
\t{p} [options] <modulename|filename> [args]
Options:
\t-a, --author                Print only 'author'
\t-d, --description           Print only 'description'
\t-l, --license               Print only 'license'
\t-p, --parameters            Print only 'parm'
\t-n, --filename              Print only 'filename'
\t-0, --null                  Use \\0 instead of \\n
\t-m, --modname               Handle argument as module name instead of alias or filename
\t-F, --field=FIELD           Print only provided FIELD
\t-k, --set-version=VERSION   Use VERSION instead of `uname -r`
\t-b, --basedir=DIR           Use DIR as filesystem root for /lib/modules
\t-V, --version               Show version
\t-h, --help                  Show this help
"""


class _Param:
    __slots__ = ("name", "desc", "type")

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.desc: Optional[bytes] = None
        self.type: Optional[bytes] = None


class Modinfo:
    """modinfo_do and friends, writing to ``stdout``."""

    def __init__(self, resolver: Resolver, out: Output, field: Optional[bytes], sep: bytes,
                 stdout: BinaryIO) -> None:
        self.r = resolver
        self.out = out
        self.field = field
        self.sep = sep
        self.w = stdout.write

    def _add_param(self, key: bytes, value: bytes, params: list[_Param]) -> None:
        name, colon, rest = value.partition(b":")
        if not colon:
            self.out.log(ERROR, f'Found invalid "{os.fsdecode(key)}={os.fsdecode(value)}": '
                                "missing ':'")
            return
        p = next((p for p in params if p.name == name), None)
        if p is None:
            p = _Param(name)
            params.insert(0, p)  # kmod prepends: the last new parameter prints first
        if key == b"parm":
            p.desc = rest
        else:
            p.type = rest

    def show(self, mod: Module) -> int:
        field, sep, w = self.field, self.sep, self.w
        filename = self.r.path(mod)
        if filename is None:
            if field is None:
                w(b"%-16s%s%s" % (b"name:", mod.name, sep))
            elif field == b"name":
                w(mod.name + sep)
            filename = b"(builtin)"
            builtin_file = True
        else:
            builtin_file = False
        if field == b"filename":
            w(filename + sep)
            return 0
        if field is None:
            w(b"%-16s%s%s" % (b"filename:", filename, sep))
        try:
            info = module_info(self.r, mod)
        except InfoError as e:
            if builtin_file and e.errno == errno.ENOENT:
                return 0  # a kernel without modules.builtin.modinfo
            self.out.log(ERROR, f"could not get modinfo from '{os.fsdecode(mod.name)}': "
                                f"{os.strerror(e.errno)}")
            return -e.errno
        params: list[_Param] = []
        if field == b"parm":
            for key, value in info:
                if key in (b"parm", b"parmtype"):
                    self._add_param(key, value, params)
            for p in params:
                if p.desc is None:
                    w(b"%s: (%s)%s" % (p.name, p.type or b"", sep))
                elif p.type is not None:
                    w(b"%s:%s (%s)%s" % (p.name, p.desc, p.type, sep))
                else:
                    w(b"%s:%s%s" % (p.name, p.desc, sep))
            return 0
        for key, value in info:
            if field is not None:
                if key == field:
                    w(value + sep)
                continue
            if key in (b"parm", b"parmtype"):
                self._add_param(key, value, params)
                continue
            if sep == b"\0":
                w(key + b"=" + value + sep)
                continue
            # kmod 34 pads keys to 15 columns and caps the pad at 0; kmod 30 passed a negative
            # width to printf for keys over 15 characters (left-justified padding)
            w(key + b":" + b" " * (15 - min(len(key), 15)) + value + sep)
        if field is not None:
            return 0
        for p in params:
            if p.desc is None:
                w(b"%-16s%s:%s%s" % (b"parm:", p.name, p.type or b"", sep))
            elif p.type is not None:
                w(b"%-16s%s:%s (%s)%s" % (b"parm:", p.name, p.desc, p.type, sep))
            else:
                w(b"%-16s%s:%s%s" % (b"parm:", p.name, p.desc, sep))
        return 0


def is_module_filename(name: bytes) -> bool:
    if not any(name.endswith(ext) and len(name) > len(ext) for ext in MODULE_EXTENSIONS):
        return False
    try:
        return stat.S_ISREG(os.stat(name).st_mode)
    except OSError:
        return False


def main(argv: list[str], prog: str = "modinfo") -> int:
    return guarded(prog, argv, lambda: _main(argv, prog))


def _main(argv: list[str], prog: str) -> int:
    field: Optional[bytes] = None
    sep = b"\n"
    by_name = False
    root_opt: Optional[str] = None
    kver: Optional[str] = None
    parser = Getopt(argv, "adlpn0mF:k:b:Vh", LONG)
    try:
        for key, value in parser:
            if key in FIELD_OPTIONS:
                field = FIELD_OPTIONS[key].encode()
            elif key == "0":
                sep = b"\0"
            elif key == "m":
                by_name = True
            elif key == "F":
                field = os.fsencode(value or "")
            elif key == "k":
                kver = value
            elif key == "b":
                root_opt = value
            elif key == "h":
                sys.stdout.write(HELP.format(p=prog))
                return 0
            elif key == "V":
                sys.stdout.write(f"moddep {__version__} (kmod 34 compatible modinfo)\n")
                return 0
    except GetoptError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        return 1
    root = sysroot()
    out = Output(prog, ERROR, root)
    if not parser.operands:
        out.log(ERROR, "missing module or filename.")
        return 1
    dirname = module_dirname(root_opt, kver, root)
    log = Log()
    config = modprobe_d.load(dirname, [], root, log, KernelState(root).cmdline())
    flush_library_log(log)
    resolver = Resolver(ModuleDir(dirname), config)
    stdout = sys.stdout.buffer
    tool = Modinfo(resolver, out, field, sep, stdout)
    err = 0
    for arg in parser.operands:
        name = os.fsencode(arg)
        if by_name:
            mod = resolver.lookup_name(name)
            if mod is None:
                out.log(ERROR, f"Module name {arg} not found.")
                r = -2
            else:
                r = tool.show(mod)
        elif is_module_filename(name):
            try:
                mod = resolver.from_path(name)
            except ResolveError as e:
                out.log(ERROR, f"Module file {arg} not found.")
                r = -e.errno
            else:
                r = tool.show(mod)
        else:
            found = resolver.lookup(name)
            if found is None:
                out.log(ERROR, f"Module alias {arg} not found.")
                r = -22
            elif not found:
                out.log(ERROR, f"Module {arg} not found.")
                r = -2
            else:
                r = 0
                for mod in found:
                    rr = tool.show(mod)
                    if rr < 0:
                        r = rr
        stdout.flush()
        if r < 0:
            err = r
    stdout.flush()
    return 0 if err >= 0 else 1
