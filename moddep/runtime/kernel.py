"""The kernel seam: the three module system calls, and how a module file reaches them.

Everything that changes the running kernel goes through a :class:`Loader`:

* :class:`KernelLoader` makes the real system calls through ``ctypes`` and libc's
  ``syscall()``, with the numbers of the running architecture (:data:`SYSCALLS`);
* :class:`RefusingLoader` is what dry runs (``-n``, ``-D``) get: any call is a bug and raises;
* :class:`moddep.runtime.fake.FakeKernel` simulates a kernel under a directory for tests.

:func:`insert_file` follows libkmod (kmod >= 31, ``kmod_module_insert_module``): a file that is
uncompressed, or compressed with the codec ``/sys/module/compression`` names, goes to
``finit_module`` (with ``MODULE_INIT_COMPRESSED_FILE`` when compressed); otherwise, or when the
kernel has no ``finit_module`` (ENOSYS), the file is decompressed here and passed to
``init_module``. Forcing (``-f``, ``--force-vermagic``, ``--force-modversion``) is a flag to
``finit_module``; on the ``init_module`` path the image is patched instead, as kmod does: the
``__versions`` section header loses ``SHF_ALLOC`` and the ``vermagic=`` string in ``.modinfo``
is overwritten with NULs.

Errors are :class:`~moddep.errors.KernelError` with the errno; :data:`MODPROBE_MESSAGES` and
:data:`INSMOD_MESSAGES` are the texts kmod's tools print for some of them.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from dataclasses import dataclass
from typing import Optional, Protocol

from moddep.compression import Codec, decompress, detect
from moddep.elf import ELFCLASS64, SHF_ALLOC, ElfModule
from moddep.errors import CompressionError, ElfError, KernelError

# finit_module flags (include/uapi/linux/module.h)
MODULE_INIT_IGNORE_MODVERSIONS = 1
MODULE_INIT_IGNORE_VERMAGIC = 2
MODULE_INIT_COMPRESSED_FILE = 4

# delete_module flags: libkmod's KMOD_REMOVE_NOWAIT/FORCE are the platform's O_NONBLOCK and
# O_TRUNC, which the kernel reads with the same architecture's values (KMOD_NOTES §12.5).
REMOVE_NOWAIT = os.O_NONBLOCK
REMOVE_FORCE = os.O_TRUNC


@dataclass(frozen=True)
class Syscalls:
    """System call numbers of the module syscalls on one architecture."""

    init_module: int
    delete_module: int
    finit_module: int


_GENERIC = Syscalls(105, 106, 273)  # asm-generic table: arm64, riscv, loongarch
_I386 = Syscalls(128, 129, 350)

#: (uname machine, pointer size in bytes) -> system call numbers. The pointer size picks the
#: ABI of this process, which is what counts (a 32-bit userland on a 64-bit kernel uses the
#: 32-bit numbers). Sources: arch/*/kernel/syscalls/*.tbl, include/uapi/asm-generic/unistd.h.
SYSCALLS: dict[tuple[str, int], Syscalls] = {
    ("x86_64", 8): Syscalls(175, 176, 313),
    ("x86_64", 4): _I386,
    **{(m, 4): _I386 for m in ("i386", "i486", "i586", "i686")},
    ("aarch64", 8): _GENERIC,
    ("arm64", 8): _GENERIC,
    ("riscv64", 8): _GENERIC,
    ("loongarch64", 8): _GENERIC,
    **{(m, 4): Syscalls(128, 129, 379)
       for m in ("aarch64", "armv5tel", "armv6l", "armv7l", "armv8l", "arm")},
    **{(m, b): Syscalls(128, 129, 353)
       for m in ("ppc64le", "ppc64", "ppc") for b in (4, 8)},
    ("s390x", 8): Syscalls(128, 129, 344),
    ("s390", 4): Syscalls(128, 129, 344),
    ("mips64", 8): Syscalls(5168, 5169, 5307),  # n64
    ("mips64", 4): Syscalls(4128, 4129, 4348),  # o32 userland
    ("mips", 4): Syscalls(4128, 4129, 4348),
}


def syscalls_for(machine: Optional[str] = None, pointer: Optional[int] = None) -> Syscalls:
    """The numbers for ``machine`` (default: this system) and pointer size (default: ours)."""
    machine = machine or platform.machine()
    pointer = pointer or struct.calcsize("P")
    try:
        return SYSCALLS[(machine, pointer)]
    except KeyError:
        raise KernelError(f"no module system call numbers known for {machine} with "
                          f"{pointer * 8}-bit pointers", errno.ENOSYS) from None


# --- errno -> the messages kmod's tools print ------------------------------------------------

#: modprobe (tools/modprobe.c insmod_insert): "could not insert 'M': <text>".
MODPROBE_MESSAGES: dict[int, str] = {
    errno.EEXIST: "Module already in kernel",
    errno.ENOENT: "Unknown symbol in module, or unknown parameter (see dmesg)",
}

#: insmod (tools/insmod.c mod_strerror): "could not insert module F: <text>".
INSMOD_MESSAGES: dict[int, str] = {
    errno.ENOEXEC: "Invalid module format",
    errno.ENOENT: "Unknown symbol in module",
    errno.ESRCH: "Module has wrong symbol version",
    errno.EINVAL: "Invalid parameters",
}


def strerror(err: int) -> str:
    return os.strerror(err)


def message(err: int, table: dict[int, str]) -> str:
    """kmod's text for ``err`` from ``table``, else strerror."""
    return table.get(err) or os.strerror(err)


# --- loaders -----------------------------------------------------------------------------------


class Loader(Protocol):
    """The module system calls. Each raises KernelError(errno) on failure."""

    def finit_module(self, fd: int, params: bytes, flags: int) -> None: ...

    def init_module(self, image: bytes, params: bytes) -> None: ...

    def delete_module(self, name: bytes, flags: int) -> None: ...


class KernelLoader:
    """The running kernel, through libc's ``syscall()``."""

    def __init__(self, numbers: Optional[Syscalls] = None) -> None:
        self.numbers = numbers or syscalls_for()
        # imported here: a Python without ctypes (libffi) still runs dry runs and lookups
        import ctypes

        self._ct = ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long

    def _call(self, what: str, *args: object) -> None:
        self._ct.set_errno(0)
        ret = self._syscall(*args)
        if ret != 0:
            err = self._ct.get_errno()
            raise KernelError(f"{what}: {os.strerror(err)}", err)

    def finit_module(self, fd: int, params: bytes, flags: int) -> None:
        ct = self._ct
        self._call("finit_module", ct.c_long(self.numbers.finit_module), ct.c_int(fd),
                   ct.c_char_p(params), ct.c_int(flags))

    def init_module(self, image: bytes, params: bytes) -> None:
        ct = self._ct
        buf = ct.create_string_buffer(image, len(image))
        self._call("init_module", ct.c_long(self.numbers.init_module), buf,
                   ct.c_ulong(len(image)), ct.c_char_p(params))

    def delete_module(self, name: bytes, flags: int) -> None:
        ct = self._ct
        self._call("delete_module", ct.c_long(self.numbers.delete_module),
                   ct.c_char_p(name), ct.c_uint(flags))


class StripError(KernelError):
    """The image could not be prepared for a forced load (kmod logs these as errors)."""


class DryRunViolation(RuntimeError):
    """A dry run reached the kernel: a bug in moddep, never a user error."""


class RefusingLoader:
    """The loader of dry runs: every call is refused."""

    def _refuse(self, what: str) -> None:
        raise DryRunViolation(f"dry run: refusing to call {what}")

    def finit_module(self, fd: int, params: bytes, flags: int) -> None:
        self._refuse("finit_module")

    def init_module(self, image: bytes, params: bytes) -> None:
        self._refuse("init_module")

    def delete_module(self, name: bytes, flags: int) -> None:
        self._refuse("delete_module")


# --- inserting a file ------------------------------------------------------------------------


@dataclass(frozen=True)
class InsertResult:
    """How a module went in: ``finit_module`` (``compressed`` says with which codec, if any)
    or ``init_module`` after userspace decompression."""

    syscall: str
    codec: Optional[str]


def strip_for_force(image: bytes, modversion: bool, vermagic: bool) -> bytes:
    """kmod_elf_strip: the copy of ``image`` the init_module path loads when forcing.

    Raises KernelError(ENODATA) when ``vermagic`` is asked and the module has none, as kmod.
    """
    out = bytearray(image)
    elf = ElfModule(image)
    if modversion:
        hdr = elf.section_header(b"__versions")
        if hdr is not None:
            index = hdr[0]
            wide = elf.elfclass == ELFCLASS64
            off = elf.section_header_offset(index) + 8  # sh_flags follows sh_name, sh_type
            fmt = elf.endian + ("Q" if wide else "I")
            (flags,) = struct.unpack_from(fmt, out, off)
            struct.pack_into(fmt, out, off, flags & ~SHF_ALLOC)
    if vermagic:
        hdr = elf.section_header(b".modinfo")
        if hdr is not None:
            _i, _t, _f, off, size = hdr
            data = image[off:off + size]
            pos = 0
            found = False
            while pos < len(data):
                if data[pos] == 0:
                    pos += 1
                    continue
                end = data.find(b"\0", pos)
                end = len(data) if end < 0 else end
                if data[pos:end].startswith(b"vermagic="):
                    out[off + pos:off + end] = bytes(end - pos)
                    found = True
                    break
                pos = end
            if not found:
                raise StripError("Failed to strip version information: "
                                 f"{os.strerror(errno.ENODATA)}", errno.ENODATA)
    return bytes(out)


def insert_file(loader: Loader, path: bytes, params: bytes, *, force_modversion: bool = False,
                force_vermagic: bool = False,
                kernel_compression: Optional[str] = None) -> InsertResult:
    """Load the module file ``path`` with ``params`` through ``loader`` (see module doc)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise KernelError(f"could not open {os.fsdecode(path)}: {e.strerror}", e.errno or 0,
                          os.fsdecode(path)) from None
    try:
        head = os.pread(fd, 6, 0)
        if len(head) < 6:
            raise KernelError("file too short to be a module", errno.EINVAL, os.fsdecode(path))
        codec: Optional[Codec] = detect(head)
        if codec is None or codec.name == kernel_compression:
            flags = MODULE_INIT_COMPRESSED_FILE if codec is not None else 0
            if force_vermagic:
                flags |= MODULE_INIT_IGNORE_VERMAGIC
            if force_modversion:
                flags |= MODULE_INIT_IGNORE_MODVERSIONS
            try:
                loader.finit_module(fd, params, flags)
                return InsertResult("finit_module", codec.name if codec else None)
            except KernelError as e:
                if e.errno != errno.ENOSYS:
                    raise
        data = b""
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        image = decompress(data, os.fsdecode(path))
    except CompressionError as e:
        raise KernelError(e.message, errno.EINVAL, os.fsdecode(path)) from None
    if force_modversion or force_vermagic:
        try:
            image = strip_for_force(image, force_modversion, force_vermagic)
        except ElfError as e:
            raise KernelError(e.message, errno.ENOEXEC, os.fsdecode(path)) from None
    loader.init_module(image, params)
    return InsertResult("init_module", codec.name if codec else None)
