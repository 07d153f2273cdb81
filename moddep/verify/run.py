"""One verify run: recompute the indexes in memory, compare them with the files on disk, check
the ``.bin`` files and their agreement with the text files, and lint the modules.

It costs one depmod computation (:func:`moddep.depmod.compute`, no cache: verify must look at
the files as they are) plus decoding the index files; nothing is written and nothing printed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Optional

from moddep.depmod import Request, compute, discover, module_dir_name
from moddep.diag import ERROR, WARNING, Log, fs
from moddep.errors import DependencyCycleError, IndexFormatError, ModdepError
from moddep.graph import module_order
from moddep.index import trie
from moddep.index.outputs import OUTPUTS
from moddep.model import ModuleData
from moddep.parallel import ModuleSource
from moddep.scan import ModuleFile
from moddep.verify import compare, kernel, lint
from moddep.verify.compare import TEXT_BIN_PAIRS, Change, Decoded
from moddep.verify.findings import WARNING as SEV_WARNING
from moddep.verify.findings import Finding, sort_key
from moddep.verify.firmware import FirmwareDirs, describe_dirs
from moddep.verify.target import moddir_of, moddir_target

IDENTICAL, DIFFERENT, MISSING, EXTRA, UNCHECKED = (
    "identical", "different", "missing", "extra", "not compared")
INDEX_FILES = tuple(o.name for o in OUTPUTS)  # every file some kmod generation writes
INPUT_FILES = ("modules.builtin", "modules.builtin.modinfo")  # read for text/.bin agreement
DETAIL_LIMIT = 8  # names per explanation line in findings (JSON keeps every change)


@dataclass(frozen=True)
class Options:
    """What to verify: the module directory of ``req`` (its kmod generation is the one
    compared against), optional kernel symbol lists (host paths), firmware check on/off."""

    req: Request
    generation_reason: str = ""
    symvers: Optional[bytes] = None
    sysmap: Optional[bytes] = None
    firmware: bool = True
    jobs: Optional[int] = None


@dataclass
class FileResult:
    """How one index file compares with what depmod would write."""

    name: str
    status: str
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "status": self.status}
        if self.changes:
            out["changes"] = [c.to_json() for c in self.changes]
        if self.notes:
            out["notes"] = list(self.notes)
        return out


@dataclass
class Result:
    """A verify run's findings for one module directory."""

    moddir: str
    kver: str
    kmod_version: int
    generation_reason: str
    modules: int
    kernel: Optional[str]  # where kernel symbols came from, None if none
    firmware_dirs: Optional[list[str]]  # None: firmware not checked
    files: list[FileResult]
    findings: list[Finding]
    notes: list[str]
    seconds: float = 0.0
    compared: bool = True  # False: depmod refused the tree, the index files were not compared

    def count(self, severity: str) -> int:
        return sum(1 for f in self.findings if f.severity == severity)


class _Disk:
    """The index files found in the module directory, decoded on demand, once."""

    def __init__(self, moddir: bytes, findings: list[Finding]) -> None:
        self.files: dict[str, bytes] = {}
        for name in INDEX_FILES + INPUT_FILES:
            path = moddir + b"/" + os.fsencode(name)
            try:
                with open(path, "rb") as f:
                    self.files[name] = f.read()
            except FileNotFoundError:
                continue
            except OSError as e:
                findings.append(Finding("index-unreadable", f"{name} cannot be read: "
                                        f"{e.strerror}", file=name))
        self._memo: dict[str, Optional[Decoded]] = {}
        self.errors: dict[str, IndexFormatError] = {}

    def decoded(self, name: str) -> Optional[Decoded]:
        """The decoded file, None when absent or undecodable (then ``errors[name]``)."""
        if name not in self._memo:
            self._memo[name] = None
            if name in self.files:
                try:
                    self._memo[name] = _decode(name, self.files[name])
                except IndexFormatError as e:
                    self.errors[name] = e
        return self._memo[name]


def _decode(name: str, data: bytes) -> Decoded:
    # depmod writes a 0-byte modules.builtin(.alias).bin when its source file is missing
    if not data and name.endswith(".bin"):
        return Decoded(_kind(name), (), (), None)
    return compare.decode(name, data)


def _kind(name: str) -> str:
    for kind, names in compare.SOURCES.items():
        if name in names:
            return kind
    raise KeyError(name)


def _load_modules(req: Request, source: ModuleSource) -> tuple[list[ModuleFile],
                                                               list[ModuleData]]:
    """Files and data without resolving (depmod refuses a tree with cycles): the first half
    of :func:`moddep.depmod.compute`; its messages were already reported by compute."""
    quiet = Log()
    mdir = module_dir_name(req)
    moddir_fs = req.basedir + b"/" + mdir + b"/" + req.kver
    moddir_k = moddir_fs if req.host_config else b"/" + mdir + b"/" + req.kver
    files = discover(req, moddir_k, moddir_fs, quiet)
    order = _read(moddir_fs + b"/modules.order")
    ordered = module_order({f.name: f for f in files}, order, "modules.order", req.gen, quiet)
    return ordered, source.extract([m.fspath for m in ordered])


def _read(path: bytes) -> Optional[bytes]:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def verify(opts: Options) -> Result:
    """Run every check; raises ModdepError when the module directory cannot be used."""
    t0 = time.monotonic()
    req = opts.req
    moddir = moddir_of(req)
    if not os.path.isdir(moddir):
        raise ModdepError(f"{fs(moddir)}: no such module directory")
    findings: list[Finding] = []
    notes: list[str] = []
    disk = _Disk(moddir, findings)
    log = Log()
    source = ModuleSource(opts.jobs, None)
    outputs: Optional[dict[str, bytes]] = None
    cycle: Optional[DependencyCycleError] = None
    try:
        res = compute(req, source, log)
        assert res.model is not None  # no cache: always computed
        files: list[ModuleFile] = list(res.model.files)
        data: list[ModuleData] = list(res.model.data)
        outputs = res.outputs
    except DependencyCycleError as e:
        cycle = e
        files, data = _load_modules(req, source)
        notes.append("depmod refuses this tree (dependency cycles): the index files were not "
                     "compared")
    mods = lint.Modules(files, data, req.prefix)

    results = _compare(disk, outputs, req.gen.version, findings)
    _structure(disk, outputs, findings)
    _agreement(disk, outputs, findings)

    installed = disk.decoded("modules.symbols") or disk.decoded("modules.symbols.bin")
    installed_syms = compare.facet(installed) if installed is not None else None
    assert installed_syms is None or isinstance(installed_syms, dict)
    ksrc, knotes = kernel.find(req.basedir, moddir_target(req), req.kver, req.prefix, log,
                               opts.symvers, opts.sysmap)
    notes += knotes
    findings += lint.symbols(mods, ksrc, installed_syms)
    if ksrc is None:
        findings.append(Finding(
            "symbols-not-checked",
            "no kernel symbol list (Module.symvers, vmlinux.symvers, System.map) found in the "
            "root or given with -E/-F: unresolved symbols were checked only against the "
            "installed modules.symbols, kernel CRCs not at all"))
    findings += lint.modules(mods, req.kver)
    fw_dirs: Optional[list[str]] = None
    if opts.firmware:
        dirs = FirmwareDirs(req.basedir, req.kver)
        if dirs.dirs:
            fw_dirs = [fs(d) for d in dirs.dirs]
            findings += lint.firmware(mods, dirs, disk.files.get("modules.builtin.modinfo"))
            notes.append(f"firmware searched in {describe_dirs(dirs)}")
        else:
            findings.append(Finding(
                "firmware-not-checked", "no firmware directory (/lib/firmware, "
                "/usr/lib/firmware) in the root: firmware was not checked"))
    present = lint.module_files(moddir)
    findings += lint.duplicates(mods, present)
    findings += lint.depends(mods)
    findings += lint.order(mods, _read(moddir + b"/modules.order"), present)
    if cycle is not None:
        findings += lint.cycles(mods, cycle.lines)
    findings += _depmod_messages(log)
    findings.sort(key=_order)
    return Result(fs(moddir), fs(req.kver), req.gen.version, opts.generation_reason, len(files),
                  ksrc.describe() if ksrc else None, fw_dirs, results, findings, notes,
                  time.monotonic() - t0, outputs is not None)


def _order(f: Finding) -> tuple[object, ...]:
    """Findings by severity, group, code; index files in depmod's write order."""
    key = sort_key(f)
    if f.file in INDEX_FILES:
        return (*key[:3], INDEX_FILES.index(f.file), f.message)
    return (*key[:3], -1, *key[3:])


def _compare(disk: _Disk, outputs: Optional[dict[str, bytes]], version: int,
             findings: list[Finding]) -> list[FileResult]:
    """Each index file: identical, different (explained), missing or extra."""
    out = []
    for name in INDEX_FILES:
        have = disk.files.get(name)
        if outputs is None:
            if have is not None:
                out.append(FileResult(name, UNCHECKED))
            continue
        want = outputs.get(name)
        if want is None and have is None:
            continue
        if want is None:
            out.append(FileResult(name, EXTRA))
            findings.append(Finding("index-extra", f"{name} exists, but kmod {version}'s "
                                    "depmod does not write it", file=name))
        elif have is None:
            out.append(FileResult(name, MISSING))
            findings.append(Finding("index-missing", f"{name} is missing", file=name))
        elif have == want:
            out.append(FileResult(name, IDENTICAL))
        else:
            out.append(_different(disk, name, want, findings))
    return out


def _different(disk: _Disk, name: str, want: bytes, findings: list[Finding]) -> FileResult:
    found = disk.decoded(name)
    if found is None:  # undecodable: reported by the structure check
        err = disk.errors.get(name)
        return FileResult(name, DIFFERENT, notes=[f"cannot be decoded: {err.message}"
                                                  if err else "cannot be decoded"])
    diff = compare.explain_decoded(found, _decode(name, want),
                                   ("in the file", "in the recomputed one"))
    lines = compare.describe(diff.changes, "verify", DETAIL_LIMIT) + diff.notes
    layout_only = not diff.changes and all("trie layout" in n for n in diff.notes)
    summary = _summary(diff.changes) if diff.changes else "; ".join(diff.notes)
    findings.append(Finding("index-different", f"{name} does not match the modules: {summary}",
                            file=name, details=tuple(lines if diff.changes else diff.notes[1:]),
                            severity=SEV_WARNING if layout_only else ""))
    return FileResult(name, DIFFERENT, diff.changes, diff.notes)


def _summary(changes: list[Change]) -> str:
    """``2 modules, 14 dependencies, 3 aliases differ``."""
    counts: dict[str, int] = {}
    for c in changes:
        counts[c.facet] = counts.get(c.facet, 0) + 1
    words = {"module": "module", "path": "path", "compression": "compression",
             "dependency": "dependency", "alias": "alias", "builtin-alias": "built-in alias",
             "symbol": "symbol", "softdep": "softdep", "weakdep": "weakdep",
             "devname": "device name", "builtin": "built-in module"}
    parts = []
    for fct, n in counts.items():
        w = words[fct]
        plural = w[:-1] + "ies" if w.endswith("y") else w + ("es" if w.endswith("s") else "s")
        parts.append(f"{n} {w if n == 1 else plural}")
    return ", ".join(parts) + (" differs" if len(changes) == 1 else " differ")


def _same(disk: _Disk, outputs: Optional[dict[str, bytes]], name: str) -> bool:
    return outputs is not None and name in disk.files and disk.files[name] == outputs.get(name)


def _structure(disk: _Disk, outputs: Optional[dict[str, bytes]],
               findings: list[Finding]) -> None:
    """Every .bin on disk is well-formed: each node decoded and checked (a full walk)."""
    for name in INDEX_FILES:
        data = disk.files.get(name)
        if not name.endswith(".bin") or data is None:
            continue
        if not data:
            continue  # depmod writes an empty builtin .bin when its source file is missing
        if _same(disk, outputs, name):
            # identical to the fresh encoding: walk every node, the entries are not needed
            try:
                trie.Index.from_bytes(data, name).validate()
            except IndexFormatError as e:
                disk.errors[name] = e
        else:
            disk.decoded(name)  # the full decode records the error, if any
        err = disk.errors.get(name)
        if err is not None:
            findings.append(Finding("index-corrupt", f"{name} is corrupt: {err.message}",
                                    file=name))


def _agreement(disk: _Disk, outputs: Optional[dict[str, bytes]],
               findings: list[Finding]) -> None:
    """Text files and their .bin say the same on disk (whatever the modules say). Files
    identical to the recomputed ones agree by construction and are not decoded again."""
    for text, binary in TEXT_BIN_PAIRS:
        if text not in disk.files or binary not in disk.files:
            continue
        if _same(disk, outputs, binary) and (text in INPUT_FILES or
                                             _same(disk, outputs, text)):
            continue
        a, b = disk.decoded(text), disk.decoded(binary)
        if a is None or b is None:
            continue
        changes = compare.diff_facets(a.kind, compare.facet(b), compare.facet(a))
        if not changes:
            continue
        findings.append(Finding(
            "index-disagree", f"{binary} and {text} disagree: {_summary(changes)}",
            file=binary, details=(f"+ only in {text}, - only in {binary}:",
                                  *compare.describe(changes, "diff", DETAIL_LIMIT))))


_SKIPPED_MESSAGES = ("failed to load symbols from",  # module-unreadable says it
                     "could not open modules.order")  # order-missing says it


def _depmod_messages(log: Log) -> list[Finding]:
    out = []
    for m in log.messages:
        if m.text.startswith(_SKIPPED_MESSAGES):
            continue
        if m.level <= ERROR:
            out.append(Finding("depmod-error", m.text))
        elif m.level == WARNING:
            out.append(Finding("depmod-warning", m.text))
    return out

