"""A simulated kernel for tests: a :class:`~moddep.runtime.kernel.Loader` that keeps
/proc/modules and /sys/module/* under a directory the way Linux does.

It checks what the real kernel checks and moddep's tools must get right: the module's
dependencies (``depends=`` in ``.modinfo``) are loaded (else ENOENT, "unknown symbol"), the
module is not loaded already (EEXIST), compressed images come with
``MODULE_INIT_COMPRESSED_FILE`` and a codec the "kernel" has (else ENOEXEC), a configured
vermagic matches unless ``MODULE_INIT_IGNORE_VERMAGIC`` or stripped, ``__versions`` is not
allocated when the kernel is set to reject modversions unless ``MODULE_INIT_IGNORE_MODVERSIONS``.
Removal fails with EWOULDBLOCK (``O_NONBLOCK``) while the module is used, unless forced.

Loading writes ``initstate``, ``refcnt``, ``coresize``, ``holders/`` (symlinks, as sysfs has)
and ``parameters/`` for each ``key=value`` option; each dependency gains a holder and a
reference. Every call is recorded in :attr:`FakeKernel.calls`.

The simulated kernel's own state (settings, loaded modules, calls) is kept in
``ROOT/.fake-kernel.json`` so that separate runs of the tools on one root (the CLI's
``MODDEP_SYSROOT`` test hook) see one kernel: :meth:`FakeKernel.open` picks it up.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from moddep.compression import decompress, detect
from moddep.elf import SHF_ALLOC, ElfModule
from moddep.errors import CompressionError, ElfError, KernelError
from moddep.runtime.kernel import (
    MODULE_INIT_COMPRESSED_FILE,
    MODULE_INIT_IGNORE_MODVERSIONS,
    MODULE_INIT_IGNORE_VERMAGIC,
    REMOVE_FORCE,
    REMOVE_NOWAIT,
)


def _s(b: Optional[bytes]) -> Optional[str]:
    return None if b is None else base64.b64encode(b).decode()


def _b(s: Optional[str]) -> Optional[bytes]:
    return None if s is None else base64.b64decode(s)


@dataclass
class Call:
    """One system call the fake kernel received."""

    syscall: str  # finit_module, init_module, delete_module
    name: bytes  # the module's name (from .modinfo) or the name to delete
    params: bytes = b""
    flags: int = 0
    image: bytes = b""  # what init_module got (or the decompressed finit file)


@dataclass
class _Loaded:
    """A module loaded into the fake kernel."""

    name: bytes
    size: int
    deps: list[bytes]
    refs: int = 0  # references from outside (open files, ...), on top of holders


def split_params(params: bytes) -> list[tuple[bytes, bytes]]:
    """The kernel's ``next_arg``: words separated by blanks, double quotes protect blanks and
    are removed from the value."""
    out = []
    i = 0
    n = len(params)
    while i < n:
        while i < n and params[i:i + 1].isspace():
            i += 1
        if i >= n:
            break
        start = i
        quoted = False
        while i < n and (quoted or not params[i:i + 1].isspace()):
            if params[i] == 0x22:
                quoted = not quoted
            i += 1
        word = params[start:i]
        key, sep, value = word.partition(b"=")
        if sep and value.startswith(b'"'):
            value = value[1:]
            if value.endswith(b'"'):
                value = value[:-1]
        out.append((key.replace(b'"', b""), value))
    return out


@dataclass
class FakeKernel:
    """A kernel whose /proc and /sys live under ``root`` (bytes path)."""

    root: bytes
    compression: Optional[str] = None  # what /sys/module/compression says
    has_finit: bool = True  # False: finit_module fails with ENOSYS (kernels before 3.8)
    vermagic: Optional[bytes] = None  # when set, modules must carry this vermagic
    reject_modversions: bool = False  # when set, an allocated __versions is refused
    fail_load: dict[bytes, int] = field(default_factory=dict)  # name -> errno
    fail_delete: dict[bytes, int] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    _mods: dict[bytes, _Loaded] = field(default_factory=dict)
    _order: list[bytes] = field(default_factory=list)  # newest first, as /proc/modules

    def __post_init__(self) -> None:
        os.makedirs(self._p(b"/sys/module"), exist_ok=True)
        os.makedirs(self._p(b"/proc"), exist_ok=True)
        if self.compression:
            with open(self._p(b"/sys/module/compression"), "wb") as f:
                f.write(self.compression.encode() + b"\n")
        self._write_proc()

    # -- persistence ---------------------------------------------------------------------------

    STATE = b"/.fake-kernel.json"

    @classmethod
    def open(cls, root: bytes) -> FakeKernel:
        """The kernel simulated under ``root`` (a fresh one if none was saved there)."""
        try:
            with open(root.rstrip(b"/") + cls.STATE, encoding="utf-8") as f:
                saved = json.load(f)
        except FileNotFoundError:
            return cls(root)
        k = cls.__new__(cls)
        k.root = root
        k.compression = saved["compression"]
        k.has_finit = saved["has_finit"]
        k.vermagic = _b(saved["vermagic"])
        k.reject_modversions = saved["reject_modversions"]
        k.fail_load = {_b(n) or b"": e for n, e in saved["fail_load"]}
        k.fail_delete = {_b(n) or b"": e for n, e in saved["fail_delete"]}
        k.calls = [Call(c["syscall"], _b(c["name"]) or b"", _b(c["params"]) or b"",
                        c["flags"], b"") for c in saved["calls"]]
        k._mods = {}
        for m in saved["mods"]:
            name = _b(m["name"]) or b""
            k._mods[name] = _Loaded(name, m["size"], [_b(d) or b"" for d in m["deps"]],
                                    m["refs"])
        k._order = [_b(n) or b"" for n in saved["order"]]
        return k

    def save(self) -> None:
        """Write the simulated kernel's state next to its /proc and /sys."""
        state: dict[str, Any] = {
            "compression": self.compression, "has_finit": self.has_finit,
            "vermagic": _s(self.vermagic), "reject_modversions": self.reject_modversions,
            "fail_load": [[_s(n), e] for n, e in self.fail_load.items()],
            "fail_delete": [[_s(n), e] for n, e in self.fail_delete.items()],
            "calls": [dict(asdict(c), name=_s(c.name), params=_s(c.params), image=None)
                      for c in self.calls],
            "mods": [dict(name=_s(m.name), size=m.size, deps=[_s(d) for d in m.deps],
                          refs=m.refs) for m in self._mods.values()],
            "order": [_s(n) for n in self._order],
        }
        with open(self._p(self.STATE), "w", encoding="utf-8") as f:
            json.dump(state, f)

    # -- paths and files ----------------------------------------------------------------------

    def _p(self, path: bytes) -> bytes:
        return self.root.rstrip(b"/") + path

    def _write(self, path: bytes, data: bytes) -> None:
        with open(self._p(path), "wb") as f:
            f.write(data)

    def set_cmdline(self, text: bytes) -> None:
        self._write(b"/proc/cmdline", text)

    def _write_proc(self) -> None:
        lines = []
        for name in self._order:
            m = self._mods[name]
            users = self.holders(name)
            used = b",".join(users) + b"," if users else b"-"
            lines.append(b"%s %d %d %s Live 0x0000000000000000\n"
                         % (name, m.size, self.refcnt(name), used))
        self._write(b"/proc/modules", b"".join(lines))
        for name in self._order:
            self._write(b"/sys/module/" + name + b"/refcnt", b"%d\n" % self.refcnt(name))
        self.save()

    # -- state --------------------------------------------------------------------------------

    def loaded(self) -> list[bytes]:
        """Names of the loaded modules, newest first."""
        return list(self._order)

    def holders(self, name: bytes) -> list[bytes]:
        return [m for m in self._order if name in self._mods[m].deps]

    def refcnt(self, name: bytes) -> int:
        return len(self.holders(name)) + self._mods[name].refs

    def hold(self, name: bytes, count: int = 1) -> None:
        """Take ``count`` references, as an open device file does."""
        self._mods[name].refs += count
        self._write_proc()

    def preload(self, name: bytes, deps: tuple[bytes, ...] = (), size: int = 4096,
                params: Optional[dict[bytes, bytes]] = None) -> None:
        """Make ``name`` loaded without a call (a module loaded before the test)."""
        self._add(name, size, list(deps), list((params or {}).items()))

    def _add(self, name: bytes, size: int, deps: list[bytes],
             params: list[tuple[bytes, bytes]]) -> None:
        base = b"/sys/module/" + name
        os.makedirs(self._p(base + b"/holders"), exist_ok=True)
        os.makedirs(self._p(base + b"/parameters"), exist_ok=True)
        self._write(base + b"/initstate", b"live\n")
        self._write(base + b"/coresize", b"%d\n" % size)
        for key, value in params:
            self._write(base + b"/parameters/" + key, value + b"\n")
        self._mods[name] = _Loaded(name, size, deps)
        self._order.insert(0, name)
        for dep in deps:
            link = self._p(b"/sys/module/" + dep + b"/holders/" + name)
            if not os.path.lexists(link):
                os.symlink(b"../../" + name, link)
        self._write_proc()

    # -- the Loader protocol ------------------------------------------------------------------

    def finit_module(self, fd: int, params: bytes, flags: int) -> None:
        if not self.has_finit:
            raise KernelError("finit_module: not implemented", errno.ENOSYS)
        data = b""
        while True:
            chunk = os.pread(fd, 1 << 20, len(data))
            if not chunk:
                break
            data += chunk
        codec = detect(data)
        if codec is not None:
            if not flags & MODULE_INIT_COMPRESSED_FILE or codec.name != self.compression:
                raise KernelError("finit_module: compressed image", errno.ENOEXEC)
            try:
                data = decompress(data)
            except CompressionError:
                raise KernelError("finit_module: bad compressed image", errno.EINVAL) from None
        elif flags & MODULE_INIT_COMPRESSED_FILE:
            raise KernelError("finit_module: not compressed", errno.EINVAL)
        self._load("finit_module", data, params, flags)

    def init_module(self, image: bytes, params: bytes) -> None:
        self._load("init_module", image, params, 0)

    def _load(self, how: str, image: bytes, params: bytes, flags: int) -> None:
        try:
            elf = ElfModule(image)
            info = elf.modinfo()
        except ElfError:
            self.calls.append(Call(how, b"", params, flags, image))
            self.save()
            raise KernelError(f"{how}: not a module", errno.ENOEXEC) from None
        fields = dict(info)
        name = fields.get(b"name", b"")
        self.calls.append(Call(how, name, params, flags, image))
        self.save()
        if not name:
            raise KernelError(f"{how}: module has no name", errno.ENOEXEC)
        if name in self.fail_load:
            err = self.fail_load[name]
            raise KernelError(f"{how}: {os.strerror(err)}", err)
        if name in self._mods:
            raise KernelError(f"{how}: module {name!r} exists", errno.EEXIST)
        if self.vermagic is not None and not flags & MODULE_INIT_IGNORE_VERMAGIC:
            magic = fields.get(b"vermagic")
            if magic is not None and magic != self.vermagic:
                raise KernelError(f"{how}: version magic {magic!r}", errno.ENOEXEC)
        if self.reject_modversions and not flags & MODULE_INIT_IGNORE_MODVERSIONS:
            hdr = elf.section_header(b"__versions")
            if hdr is not None and hdr[2] & SHF_ALLOC:
                raise KernelError(f"{how}: disagrees about symbol versions", errno.ENOEXEC)
        deps = [d for d in fields.get(b"depends", b"").split(b",") if d]
        for dep in deps:
            if dep not in self._mods:
                raise KernelError(f"{how}: unknown symbols from {dep!r}", errno.ENOENT)
        self._add(name, len(image), deps, split_params(params))

    def delete_module(self, name: bytes, flags: int) -> None:
        self.calls.append(Call("delete_module", name, b"", flags))
        self.save()
        if name in self.fail_delete:
            err = self.fail_delete[name]
            raise KernelError(f"delete_module: {os.strerror(err)}", err)
        if name not in self._mods:
            raise KernelError("delete_module: not loaded", errno.ENOENT)
        if self.refcnt(name) and not flags & REMOVE_FORCE:
            err = errno.EWOULDBLOCK if flags & REMOVE_NOWAIT else errno.EBUSY
            raise KernelError(f"delete_module: {os.strerror(err)}", err)
        m = self._mods.pop(name)
        self._order.remove(name)
        for dep in m.deps:
            link = self._p(b"/sys/module/" + dep + b"/holders/" + name)
            if os.path.lexists(link):
                os.unlink(link)
        shutil.rmtree(self._p(b"/sys/module/" + name), ignore_errors=True)
        self._write_proc()
