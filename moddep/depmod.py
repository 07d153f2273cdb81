"""The depmod pipeline: staged root -> frozen model -> ``dict[file name, bytes]``.

Nothing here prints, exits or writes: :func:`compute` returns the index files and the
diagnostics; the CLI prints and :mod:`moddep.publish` writes. ``verify`` calls the same
function and compares instead of writing.
"""

from __future__ import annotations

import os
import re
from operator import attrgetter
from typing import TYPE_CHECKING, NamedTuple, Optional

from moddep.cache import RunResult, run_key
from moddep.compat import KmodGeneration
from moddep.config import depmod_d
from moddep.diag import Log, Message, fs, mark
from moddep.errors import ModdepError
from moddep.modinfo import modname_normalize
from moddep.parallel import ModuleSource, fork_join
from moddep.rootfs import EscapeError, Root
from moddep.scan import ModuleFile, Scanner, is_module_name, starts_dir

if TYPE_CHECKING:
    from moddep.graph import DepModel, KernelSymbols

DEFAULT_MODULE_DIRS = (b"/lib/modules", b"/usr/lib/modules")
VERSION_RE = re.compile(rb"\s*[+-]?\d+\.\s*[+-]?\d+")


def is_version(arg: bytes) -> bool:
    """kmod's is_version_number: ``sscanf(arg, "%u.%u")`` reads two numbers."""
    return VERSION_RE.match(arg) is not None


class Request(NamedTuple):
    """One depmod run's inputs, as the command line gives them."""

    kver: bytes
    gen: KmodGeneration
    basedir: bytes = b""  # absolute, or empty for /
    outdir: Optional[bytes] = None
    moduledir: Optional[bytes] = None  # None: detect lib/modules or usr/lib/modules
    config_paths: Optional[tuple[bytes, ...]] = None  # -C
    host_config: bool = False  # kmod's behaviour: host depmod.d, host external dirs
    symvers: Optional[bytes] = None
    sysmap: Optional[bytes] = None
    errsyms: bool = False
    prefix: bytes = b""
    warn_dups: bool = False
    verbose: bool = False
    files: tuple[bytes, ...] = ()  # non-empty: only these modules (not "all" mode)
    text_only: bool = False  # -n


class Result(NamedTuple):
    """What one depmod run computed, and where its outputs go."""

    outputs: dict[str, bytes]
    moddir: bytes  # module dir on this machine (inputs)
    outdir: bytes  # where outputs go on this machine
    model: Optional[DepModel]  # None when served from the run cache
    log: Log


def module_dir_name(req: Request) -> bytes:
    """The module directory below the root (``lib/modules``), without leading slashes."""
    if req.moduledir is not None:
        return req.moduledir.lstrip(b"/")
    for cand in DEFAULT_MODULE_DIRS:
        if os.path.isdir(req.basedir + cand + b"/" + req.kver):
            return cand.lstrip(b"/")
    return DEFAULT_MODULE_DIRS[0].lstrip(b"/")


def load_kernel_symbols(req: Request, log: Log) -> tuple[Optional[KernelSymbols], bytes]:
    """-E Module.symvers (wins) or -F System.map, and the raw file (for the cache key)."""
    if req.symvers is not None:
        from moddep.graph import KernelSymbols  # (not imported on a run the cache serves)

        raw = _read_file(req.symvers)
        return KernelSymbols(_read_symvers(req.symvers, raw, req.prefix, log), True), b"E" + raw
    if req.sysmap is not None:
        from moddep.graph import KernelSymbols

        raw = _read_file(req.sysmap)
        return KernelSymbols(_read_system_map(req.sysmap, raw, req.prefix, log), False), \
            b"F" + raw
    return None, b""


def _read_file(path: bytes) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ModdepError(f"could not load {fs(path)}: {e.strerror}") from None


def _read_symvers(path: bytes, raw: bytes, prefix: bytes, log: Log) -> dict[bytes, int]:
    """Module.symvers lines ``crc sym where ...``; only ``where == vmlinux`` count."""
    out: dict[bytes, int] = {}
    for n, line in enumerate(raw.splitlines(keepends=True), 1):
        f = line.replace(b"\t", b" ").split(b" ")
        f = [x for x in f if x]
        if len(f) < 3 or f[2] != b"vmlinux":
            continue
        ver, sym = f[0], f[1]
        try:
            crc = int(ver, 16)
        except ValueError:
            # kmod appends a stale errno text (%m) here; say what is wrong instead
            log.error(f"{fs(path)}:{n} Invalid symbol version {fs(ver)}: not a hexadecimal "
                      "number")
            continue
        if prefix and sym.startswith(prefix):
            sym = sym[len(prefix):]
        out[sym] = crc
    return out


def _read_system_map(path: bytes, raw: bytes, prefix: bytes, log: Log) -> dict[bytes, int]:
    """System.map lines ``addr type name``: names ``__ksymtab_X`` export X."""
    out: dict[bytes, int] = {}
    for n, line in enumerate(raw.splitlines(keepends=True), 1):
        parts = line.split(b" ", 2)
        if len(parts) < 3:
            log.error(f"{fs(path)}:{n}: invalid line: {fs(line)}")
            continue
        name = parts[2]
        if prefix and name.startswith(prefix):
            name = name[len(prefix):]
        if not name.startswith(b"__ksymtab_"):
            continue
        out[name[10:].split(b"\n", 1)[0]] = 0
    return out


def discover(req: Request, moddir_k: bytes, moddir_fs: bytes, log: Log) -> list[ModuleFile]:
    """The module files of this run, unordered (one per module name)."""
    if req.files:
        mods: dict[bytes, ModuleFile] = {}
        for path in req.files:
            if not path.startswith(b"/"):
                raise ModdepError(f"{fs(path)}: not absolute path.")
            # in target mode a listed path is a target path below the root
            kpath = path if req.host_config else _target_path(req, path)
            fspath = path if req.host_config or not kpath.startswith(b"/") else \
                Root(req.basedir).resolve(kpath)  # symlinks followed inside the root
            rel = kpath[len(moddir_k) + 1:] if starts_dir(kpath, moddir_k) else None
            base = path.rpartition(b"/")[2]
            m = ModuleFile(modname_normalize(base), kpath, fspath, rel, base)
            if m.name in mods:
                raise ModdepError(f"could not add module {fs(path)}: File exists")
            mods[m.name] = m
        return list(mods.values())
    if req.config_paths is not None:
        cfg = depmod_d.load(list(req.config_paths), req.kver, log)
    elif req.host_config:
        cfg = depmod_d.load([d.encode() for d in req.gen.config_dirs], req.kver, log)
    else:
        cfg = depmod_d.load([d.encode() for d in req.gen.config_dirs], req.kver, log,
                            root=req.basedir or b"/")
    # kmod walks external dirs last-configured first
    root = Root(req.basedir)
    ext = []
    for e in reversed(cfg.externals):
        if req.host_config:  # kmod's host mode: host paths, used as given
            ext.append((e, e))
            continue
        try:
            ext.append((e, root.resolve(e)))
        except EscapeError as err:
            log.error(f"external directory {err.message}: skipped")
    return list(Scanner(cfg, moddir_k, moddir_fs, ext, log, root).run().values())


def _target_path(req: Request, path: bytes) -> bytes:
    """A command-line path given as a host path below the root becomes a target path."""
    if req.basedir and path.startswith(req.basedir + b"/"):
        return path[len(req.basedir):]
    return path


def _read_optional(path: bytes, log: Log, what: str, where: bytes,
                   root: Optional[Root] = None) -> Optional[bytes]:
    try:
        if root is not None:
            path = root.resolve_host(path)  # a symlink is followed inside the root
    except EscapeError as e:
        log.warning(f"could not open {what} at {fs(where)}: {e.message}")
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        log.warning(f"could not open {what} at {fs(where)}: {e.strerror}")
        return None


def compute(req: Request, source: ModuleSource, log: Optional[Log] = None) -> Result:
    """Run the pipeline; raises ModdepError for kmod's fatal cases (cycles, no module dir).

    With a cache in ``source``, a run whose every input is unchanged (by content) returns the
    stored outputs and replays the stored messages instead of recomputing.
    """
    log = log if log is not None else Log()
    mdir = module_dir_name(req)
    # The module directory and the output directory are confined to their roots (-b, -o):
    # symlinks are followed inside them, a way out is an error (moddep.rootfs).
    root = Root(req.basedir)
    moddir_t = b"/" + mdir + b"/" + req.kver
    try:
        moddir_fs = root.resolve(moddir_t)
    except EscapeError as e:
        raise ModdepError(f"module directory {e.message}") from None
    moddir_k = req.basedir + moddir_t if req.host_config else moddir_t
    outroot = Root(req.outdir) if req.outdir is not None else root
    try:
        outdir = outroot.join(moddir_t) if req.text_only else outroot.resolve(moddir_t)
    except EscapeError as e:
        raise ModdepError(f"output directory {e.message}") from None
    kernel, kernel_raw = load_kernel_symbols(req, log)
    if req.errsyms and kernel is None:
        log.warning("-e needs -E or -F")
    mark("start")
    # by name: a canonical order for the cache's run key; the module array's order (which
    # follows from the files, modules.order and the kmod generation) is only needed, and so
    # only computed, when the run is not served from the cache
    files = sorted(discover(req, moddir_k, moddir_fs, log), key=_name)
    order = _read_optional(moddir_fs + b"/modules.order", log, "modules.order", moddir_fs, root)
    builtin = builtin_modinfo = None
    if not req.text_only:
        builtin = _read_optional(moddir_fs + b"/modules.builtin", log, "modules.builtin",
                                 moddir_fs, root)
        builtin_modinfo = _read_optional(moddir_fs + b"/modules.builtin.modinfo", log,
                                         "modules.builtin.modinfo", moddir_fs, root)
    mark("discovered")

    def arrange() -> tuple[list[ModuleFile], list[int], Log]:
        """The module array, where each of its modules is in ``files``, and the messages
        sorting it gave, for a run that computes its outputs: ready by the end of the
        extraction pass when it runs beside it."""
        from moddep.graph import module_order

        order_log = Log()
        ordered = module_order({f.name: f for f in files}, order,
                               fs(moddir_fs) + "/modules.order", req.gen, order_log)
        position = {m.name: i for i, m in enumerate(files)}
        import moddep.index.outputs  # noqa: F401 - the outputs' import, done beside too

        return ordered, [position[m.name] for m in ordered], order_log

    arranged: list[tuple[list[ModuleFile], list[int], Log]] = []
    loaded = source.load(moddir_fs, [m.fspath for m in files],
                         lambda: arranged.append(arrange()))
    keys = loaded.keys
    mark("keys")
    rkey = None
    first_msg, first_out = len(log.messages), len(log.stdout)
    if keys is not None and source.cache is not None:
        parts = [b"%d %r %r %r %r %r %r" % (req.gen.version, req.prefix, req.errsyms,
                                            req.warn_dups, req.verbose, req.text_only,
                                            req.host_config),
                 kernel_raw, _opt(order), _opt(builtin), _opt(builtin_modinfo)]
        # each file's path, relative path and key, column by column (paths hold no NUL, so
        # NUL-separated they split one way only; every key is a 32-byte digest)
        parts += [b"\0".join(map(_KPATH, files)),
                  b"\0".join([m.relpath or b"\1" for m in files]), b"".join(keys)]
        rkey = run_key(parts)
        hit = source.cache.load_run(rkey)
        if hit is not None:
            loaded.store_keys()
            for level, text in hit.messages:
                log.messages.append(Message(level, text))
            log.stdout.extend(hit.stdout)
            return Result(hit.outputs, moddir_fs, outdir, None, log)
    # imported only now: a run served from the cache needs neither (their import is a tenth
    # of such a run's start-up)
    from moddep.graph import resolve
    from moddep.index.outputs import Inputs, generate, wanted

    ordered, where, order_log = arranged[0] if arranged else arrange()
    log.messages.extend(order_log.messages)
    data = list(map(loaded.data().__getitem__, where))
    mark("data")
    for m, d in zip(ordered, data):
        if d.error is not None:
            log.error(f"failed to load symbols from {fs(m.fspath)}: {d.error}")
    inputs = Inputs(ordered, data, None, req.gen, builtin, builtin_modinfo, req.warn_dups, log)
    todo = wanted(req.gen, req.text_only)
    resolved_log = Log()

    # Two halves that can run at once: symbol resolution and the outputs that need it, and
    # the outputs that need only the modules (aliases, softdeps, devname, builtins).
    def with_model() -> tuple[DepModel, list[tuple[str, bytes, list[Message]]]]:
        model = resolve(ordered, data, kernel=kernel, prefix=req.prefix,
                        errsyms=req.errsyms and kernel is not None, verbose=req.verbose,
                        log=resolved_log)
        mark("resolved")
        out = generate(inputs._replace(model=model), [o for o in todo if o.resolved])
        mark("outputs needing the model")
        return model, out

    def without_model() -> tuple[None, list[tuple[str, bytes, list[Message]]]]:
        out = generate(inputs, [o for o in todo if not o.resolved])
        mark("outputs without the model")
        return None, out

    def store_with_model() -> None:
        loaded.store(0)

    def store_without_model() -> None:
        loaded.store_keys()
        loaded.store_index()
        loaded.store(1)

    # The cache's copy of the module data is written after each half has handed over its
    # outputs: half of it by each (and its index and the files' keys by the half without
    # the model, which has less to do), while this process goes on to publish.
    (model, first), (_none, second) = fork_join([with_model, without_model], source.jobs,
                                                [store_with_model, store_without_model])
    mark("outputs")
    log.messages.extend(resolved_log.messages)
    log.stdout.extend(resolved_log.stdout)
    done = {name: (content, msgs) for name, content, msgs in first + second}
    outputs = {}
    for o in todo:
        content, msgs = done[o.name]
        outputs[o.name] = content
        log.messages.extend(msgs)
    assert model is not None
    if rkey is not None and source.cache is not None:
        source.cache.save_run(rkey, RunResult(
            outputs, [(m.level, m.text) for m in log.messages[first_msg:]],
            log.stdout[first_out:]))
    return Result(outputs, moddir_fs, outdir, model, log)


_KPATH = attrgetter("kpath")


def _name(m: ModuleFile) -> bytes:
    return m.name


def _opt(data: Optional[bytes]) -> bytes:
    return b"\0missing" if data is None else b"+" + data


def up_to_date(moddir_fs: bytes, log: Log) -> bool:
    """-A: no module file is newer (in whole seconds, as kmod 30..34.2) than modules.dep."""
    try:
        dep_mtime = int(os.stat(moddir_fs + b"/modules.dep").st_mtime)
    except OSError as e:
        log.error(f"could not fstatat({fs(moddir_fs)}, modules.dep): {e.strerror}")
        return False
    stack = [moddir_fs]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError as e:
            log.error(f"could not open directory {fs(d)}: {e.strerror}")
            return False
        for ent in entries:
            if ent.name in (b".", b"..", b"build", b"source"):
                continue
            try:
                st = ent.stat()
            except OSError:
                continue
            if ent.is_dir():
                stack.append(ent.path)
            elif is_module_name(ent.name):
                if int(st.st_mtime) > dep_mtime:
                    return False
    return True
