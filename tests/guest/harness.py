"""Boot a real Debian kernel under QEMU with Python inside and run a script there.

The runtime-tool and who-uses end-to-end tests (issues 4 and 5) use this:

    tree = debcache.kernel_tree("amd64")               # vmlinuz and modules, same package
    initrd = build_initramfs("amd64", modules_root=staged_root,
                             modules_filter=only_modules("dummy", "tun"))
    res = run_guest("amd64", SCRIPT, initramfs=initrd)  # SCRIPT: Python source
    assert res.rc == 0 and res.results["loaded"]

The guest
---------
* kernel: ``boot/vmlinuz-<kver>`` of :func:`debcache.kernel_tree` for the architecture, so it
  always matches the module tree taken from the same package (on amd64 its vmlinux,
  decompressed here once and booted through its PVH entry: see :func:`boot_kernel`);
* initramfs: newc cpio archives written here in Python and concatenated (the kernel unpacks
  one archive after another): a cached *base* (Debian's ``busybox-static`` and Python 3.11 with
  the libraries it links, unpacked from the architecture's own .debs with their own loader
  links such as ``/lib64/ld-linux-x86-64.so.2``; ``/init`` from ``init.sh``; ``guestlib``) plus
  a per-call *overlay* (moddep, the module tree, extra files) plus a per-run piece (the
  script and a nonce);
* ``/init`` mounts proc, sysfs, devtmpfs, devpts, tracefs (``/sys/kernel/tracing``) and
  debugfs, runs the script as root, prints the results between nonce-tagged lines, powers
  off.  QEMU runs with ``-accel tcg`` (KVM is not used: it hangs on these machines),
  ``-no-reboot``, and the kernel with ``panic=-1``, so any end of the guest ends QEMU.
* moddep (the repository's ``moddep/`` package) is importable from
  ``/usr/lib/python3/dist-packages``, ``/usr/bin/moddep`` runs its CLI, and (unless
  ``kmod_links=False``) ``/sbin/{depmod,modprobe,insmod,rmmod,lsmod,modinfo}`` are symlinks
  to it, made by /init after boot: the guest has no other module tools (busybox's module
  applets are not linked), and from then on the kernel's own module autoloading calls
  ``/sbin/modprobe``, i.e. moddep.
* ``guestlib`` (``tests/guest/guestlib.py``, importable in the guest): ``report(**kw)`` to
  return results, ``run(argv)``, ``proc_modules()``, raw ``finit_module``/``delete_module``.

Nothing is installed on the host; downloads and unpacking go through ``tests/debcache.py``
(cached under its ``CACHE``), which raises :class:`debcache.Unavailable` when apt or the
network cannot deliver: tests turn that into a skip.  The host needs ``qemu-system-x86``
(amd64 guests) and ``qemu-system-arm`` (arm64 guests); see :func:`qemu_available`.
"""

from __future__ import annotations

import base64
import compileall
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import lzma
import os
import py_compile
import re
import secrets
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Union

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import debcache  # noqa: E402  (tests/debcache.py, found through the path set just above)

# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class GuestArch:
    """How to boot one Debian architecture under QEMU."""

    qemu: str                 # QEMU system emulator binary
    qemu_package: str         # Debian package that ships it
    machine: tuple[str, ...]  # machine/CPU arguments
    console: str              # serial console device for console=
    uname_machine: str        # what platform.machine() says in the guest


ARCHES: dict[str, GuestArch] = {
    "amd64": GuestArch("qemu-system-x86_64", "qemu-system-x86", ("-M", "pc"), "ttyS0",
                       "x86_64"),
    "arm64": GuestArch("qemu-system-aarch64", "qemu-system-arm",
                       ("-M", "virt", "-cpu", "cortex-a57"), "ttyAMA0", "aarch64"),
}

#: Debian packages unpacked into every guest: busybox for /init and the shell tools, Python
#: 3.11 and the shared libraries its interpreter and the stdlib modules we use link
#: (libffi8: ctypes; liblzma5: lzma, for .ko.xz; libbz2: bz2; libgcc-s1: glibc needs it for
#: pthread_exit/cancel).  Left out on purpose: libssl3 (hashlib falls back to its builtin
#: hashes), libsqlite3, ncurses/readline, libdb, libnsl, tzdata.
BASE_PACKAGES: tuple[str, ...] = (
    "busybox-static",
    "libc6",
    "libgcc-s1",
    "zlib1g",
    "libexpat1",
    "libffi8",
    "liblzma5",
    "libbz2-1.0",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "python3.11-minimal",
)

#: busybox applets linked into /bin.  The module tools (modprobe, insmod, rmmod, lsmod,
#: modinfo, depmod) are deliberately absent: in the guest those names are moddep's.
BUSYBOX_APPLETS: tuple[str, ...] = (
    "[", "[[", "ash", "awk", "base64", "basename", "cat", "chmod", "chown", "cmp", "cp",
    "chroot", "cut", "date", "dd", "df", "diff", "dirname", "dmesg", "du", "echo", "env",
    "expr", "false", "find", "free", "fuser", "grep", "gunzip", "halt", "head", "hexdump",
    "hostname", "id", "ifconfig", "ip", "kill", "killall", "ln", "losetup", "ls", "lsof",
    "mkdir", "mknod", "mktemp", "more", "mount", "mv", "nproc", "od", "pgrep", "pidof",
    "pkill", "poweroff", "printf", "ps", "pwd", "readlink", "realpath", "reboot", "rm",
    "rmdir", "sed", "seq", "sh", "sleep", "sort", "stat", "sync", "sysctl", "tail", "tee",
    "test", "timeout", "top", "touch", "tr", "true", "umount", "uname", "uniq", "usleep", "wc",
    "which", "xargs", "yes", "zcat",
)

#: Kernel command line of every guest (after console=...).  panic=-1: a panic reboots at
#: once, and -no-reboot turns that into QEMU's exit.
BASE_CMDLINE: tuple[str, ...] = ("panic=-1",)

KMOD_TOOLS: tuple[str, ...] = ("depmod", "modprobe", "insmod", "rmmod", "lsmod", "modinfo")

#: Paths of the unpacked packages not copied into the guest (documentation and the Python
#: packages no test needs).
_PRUNE = re.compile(
    r"^(usr/share/(doc|man|info|lintian|bug|binfmts|pixmaps|applications|gdb)"
    r"|usr/lib/python3\.11/(test|idlelib|tkinter|turtledemo|ensurepip|lib2to3|pydoc_data)"
    r"|usr/lib/python3\.11/turtle\.py|usr/lib/[^/]+-linux-gnu[^/]*/gconv)(/|$)"
)

#: Changes whenever the base layout built by _base_cpio changes (part of its cache key).
_BASE_LAYOUT = "4"

#: Where moddep's configuration files are read from in a staged root (copied when present).
_CONFIG_DIRS: tuple[str, ...] = (
    "etc/modprobe.d", "run/modprobe.d", "usr/local/lib/modprobe.d", "lib/modprobe.d",
    "usr/lib/modprobe.d", "etc/depmod.d", "run/depmod.d", "usr/local/lib/depmod.d",
    "lib/depmod.d", "usr/lib/depmod.d",
)

_MODULE_SUFFIX = re.compile(r"\.ko(\.(xz|zst|gz))?$")

_SITE = "usr/lib/python3/dist-packages"

# --------------------------------------------------------------------------- results


class GuestError(RuntimeError):
    """The guest could not be run or did not report; ``output`` is its console text."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


class GuestTimeout(GuestError):
    """QEMU was killed after the timeout."""


@dataclass
class GuestResult:
    """What one guest run returned.

    ``rc`` is the script's exit status, ``output`` the whole serial console (kernel log,
    the script's stdout and stderr, the result lines), ``results`` the JSON object the script
    left in ``$GUEST_RESULTS`` (``{}`` when it wrote none).  ``elapsed`` is QEMU's wall time
    and ``boot_seconds`` the time until /init started the script.
    """

    rc: int
    output: str
    results: dict
    elapsed: float = 0.0
    boot_seconds: float = 0.0
    cmdline: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- availability


def qemu_available(arch: str) -> Optional[str]:
    """None when ``arch`` guests can run here, else the reason to skip."""
    spec = ARCHES.get(arch)
    if spec is None:
        return f"no QEMU guest definition for architecture {arch!r} (have: {', '.join(ARCHES)})"
    exe = shutil.which(spec.qemu)
    if exe is None:
        return f"{spec.qemu} is not installed (Debian package {spec.qemu_package})"
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{spec.qemu} does not run: {exc}"
    if proc.returncode != 0:
        return f"{spec.qemu} --version failed: {proc.stderr.strip()[-300:]}"
    return None


# --------------------------------------------------------------------------- cpio (newc)


class Cpio:
    """Writer of a newc ("070701") cpio archive, the format the kernel unpacks as initramfs.

    Each entry: a 110-byte ASCII header (magic + 13 eight-digit hex fields: ino, mode, uid,
    gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check),
    the NUL-terminated name padded to a multiple of 4, the data padded to a multiple of 4.
    A symlink's data is its target.  The archive ends with the entry ``TRAILER!!!``.
    Parents are emitted before their children (the kernel does not create them), and every
    file gets nlink 1 (no hard links), so concatenated archives never interact.
    """

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.ino = 0
        self.dirs: set[str] = {""}

    def _entry(self, name: str, mode: int, data: bytes = b"", *, mtime: int = 0,
               nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        raw = name.encode("utf-8", "surrogateescape") + b"\0"
        fields = (self.ino, mode, 0, 0, nlink, max(0, int(mtime)), len(data), 0, 0,
                  rdev[0], rdev[1], len(raw), 0)
        head = b"070701" + b"".join(b"%08X" % f for f in fields)
        self.fh.write(head + raw + b"\0" * (-(len(head) + len(raw)) % 4))
        self.fh.write(data + b"\0" * (-len(data) % 4))

    def _parents(self, name: str) -> None:
        parent = name.rpartition("/")[0]
        if parent not in self.dirs:
            self.directory(parent)

    @staticmethod
    def _norm(name: str) -> str:
        name = name.strip("/")
        if not name or ".." in name.split("/"):
            raise ValueError(f"bad path in initramfs: {name!r}")
        return name

    def directory(self, name: str, mode: int = 0o755, mtime: int = 0) -> None:
        name = self._norm(name)
        if name in self.dirs:
            return
        self._parents(name)
        self._entry(name, stat.S_IFDIR | mode, mtime=mtime, nlink=2)
        self.dirs.add(name)

    def file(self, name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFREG | (mode & 0o7777), data, mtime=mtime)

    def symlink(self, name: str, target: str, mtime: int = 0) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFLNK | 0o777, target.encode("utf-8", "surrogateescape"),
                    mtime=mtime)

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        name = self._norm(name)
        self._parents(name)
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def host_path(self, name: str, path: Path) -> None:
        """Add ``path`` (file, symlink or directory, recursively) at ``name``."""
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            self.symlink(name, os.readlink(path), int(st.st_mtime))
        elif stat.S_ISDIR(st.st_mode):
            self.directory(name, stat.S_IMODE(st.st_mode), int(st.st_mtime))
            for child in sorted(path.iterdir()):
                self.host_path(f"{name.rstrip('/')}/{child.name}", child)
        elif stat.S_ISREG(st.st_mode):
            self.file(name, path.read_bytes(), stat.S_IMODE(st.st_mode), int(st.st_mtime))

    def close(self) -> None:
        """Write the trailer and pad the archive to 512 bytes."""
        self._entry("TRAILER!!!", 0, nlink=1)
        pos = self.fh.tell()
        self.fh.write(b"\0" * (-pos % 512))


# --------------------------------------------------------------------------- base image


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    lockdir = debcache.CACHE / "locks"
    lockdir.mkdir(parents=True, exist_ok=True)
    with open(lockdir / f"guest-{name}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _guest_magic(root: Path) -> Optional[bytes]:
    """The .pyc magic of the guest's Python, read from its importlib source."""
    src = root / "usr/lib/python3.11/importlib/_bootstrap_external.py"
    try:
        m = re.search(r"^MAGIC_NUMBER = \((\d+)\)\.to_bytes\(2, 'little'\) \+ b'\\r\\n'",
                      src.read_text(errors="replace"), re.M)
    except OSError:
        return None
    return int(m.group(1)).to_bytes(2, "little") + b"\r\n" if m else None


def _precompile(root: Path, dirs: Iterable[str]) -> bool:
    """Byte-compile ``dirs`` (relative to ``root``) for the guest, when the host can.

    Booting is all TCG, where compiling the stdlib on every import costs seconds; the host's
    CPython writes identical bytecode when its magic number equals the guest's (same 3.11
    series).  Unchecked-hash pycs do not depend on file times.  Otherwise the guest compiles
    at run time (slower, still correct).
    """
    magic = _guest_magic(root)
    if (sys.implementation.name != "cpython" or magic is None
            or magic != importlib.util.MAGIC_NUMBER):
        return False
    for rel in dirs:
        d = root / rel
        if d.is_dir():
            compileall.compile_dir(
                str(d), ddir="/" + rel, quiet=2, workers=0,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return True


def _merge(src: Path, dest: Path) -> None:
    """Copy the unpacked package ``src`` over ``dest`` (symlinks kept as they are)."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in dirnames + filenames:
            s = Path(dirpath) / name
            d = dest / rel / name
            if s.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    d.unlink()
                os.symlink(os.readlink(s), d)
            elif s.is_file() and name != debcache._DONE:
                shutil.copy2(s, d)


def _emit_tree(cpio: Cpio, root: Path) -> None:
    """Add everything under ``root`` (minus :data:`_PRUNE`) to ``cpio``, parents first."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        keep = []
        for name in sorted(dirnames):
            rel = f"{rel_dir}/{name}".lstrip("/")
            if _PRUNE.match(rel):
                continue
            p = Path(dirpath) / name
            if p.is_symlink():
                cpio.host_path(rel, p)
            else:
                keep.append(name)
                st = p.stat()
                cpio.directory(rel, stat.S_IMODE(st.st_mode), int(st.st_mtime))
        dirnames[:] = keep
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}".lstrip("/")
            if not _PRUNE.match(rel) and name != debcache._DONE:
                cpio.host_path(rel, Path(dirpath) / name)


def _unpacked(deb: Path, arch: str) -> Path:
    """``deb`` unpacked once into the cache (read-only use)."""
    return debcache.extract_deb(deb, debcache.CACHE / "guest" / arch / "debs" / deb.stem)


def _base_cpio(arch: str) -> Path:
    """The cached base archive for ``arch`` (built on first use)."""
    debs = debcache.download_debs(list(BASE_PACKAGES), arch)
    key = hashlib.sha256()
    for item in ([_BASE_LAYOUT, arch, importlib.util.MAGIC_NUMBER.hex()]
                 + [d.name for d in debs] + list(BUSYBOX_APPLETS)):
        key.update(item.encode() + b"\0")
    for helper in ("init.sh", "guestlib.py"):
        key.update((HERE / helper).read_bytes())
    out = debcache.CACHE / "guest" / arch / f"base-{key.hexdigest()[:16]}.cpio"
    if out.exists():
        return out
    with _lock(f"base-{arch}"):
        if out.exists():
            return out
        t0 = time.monotonic()
        out.parent.mkdir(parents=True, exist_ok=True)
        for stale in out.parent.glob("base-*"):
            stale.unlink()
        with tempfile.TemporaryDirectory(prefix="guest-base-", dir=out.parent) as tmpdir:
            stage = Path(tmpdir) / "root"
            stage.mkdir()
            for deb in debs:
                _merge(_unpacked(deb, arch), stage)
            _finish_base(stage)
            compiled = _precompile(stage, ["usr/lib/python3.11", _SITE])
            part = out.with_name(f".{out.name}.{os.getpid()}")
            with open(part, "wb") as fh:
                cpio = Cpio(fh)
                cpio.chardev("dev/console", 5, 1)
                cpio.chardev("dev/null", 1, 3, 0o666)
                _emit_tree(cpio, stage)
                cpio.close()
            meta = {"packages": [d.name for d in debs], "precompiled": compiled}
            out.with_suffix(".json").write_text(json.dumps(meta, indent=1) + "\n")
            os.replace(part, out)
        print(f"[guest] built {arch} base initramfs {out.name} "
              f"({out.stat().st_size / 1e6:.1f} MB, precompiled={compiled}) "
              f"in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    return out


def _finish_base(stage: Path) -> None:
    """Add what the packages' maintainer scripts or other packages would: links, /init, dirs."""
    for d in ("proc", "sys", "dev", "tmp", "run", "root", "guest", "sbin", "usr/sbin",
              "etc/modprobe.d", "etc/depmod.d", "lib/modules", _SITE):
        (stage / d).mkdir(parents=True, exist_ok=True)
    (stage / "tmp").chmod(0o1777)
    if not (stage / "bin/busybox").is_file():
        raise debcache.Unavailable("busybox-static did not provide /bin/busybox")
    for applet in BUSYBOX_APPLETS:
        link = stage / "bin" / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("busybox")
    py = stage / "usr/bin/python3"
    if not py.exists():
        py.symlink_to("python3.11")
    (stage / "init").write_bytes((HERE / "init.sh").read_bytes())
    (stage / "init").chmod(0o755)
    shutil.copy2(HERE / "guestlib.py", stage / _SITE / "guestlib.py")
    (stage / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (stage / "etc/group").write_text("root:x:0:\n")
    (stage / "etc/hostname").write_text("guest\n")


# --------------------------------------------------------------------------- overlay


def only_modules(*names: str) -> Callable[[str], bool]:
    """A ``modules_filter`` keeping modules by name (``-`` and ``_`` are the same)."""
    wanted = {n.replace("-", "_") for n in names}

    def keep(relpath: str) -> bool:
        base = _MODULE_SUFFIX.sub("", relpath.rpartition("/")[2])
        return base.replace("-", "_") in wanted

    return keep


def with_dependencies(moddir: Path, *names: str) -> Callable[[str], bool]:
    """A ``modules_filter`` keeping ``names`` and everything they need per ``modules.dep``."""
    deps: dict[str, list[str]] = {}
    for line in (Path(moddir) / "modules.dep").read_text(errors="surrogateescape").splitlines():
        mod, sep, rest = line.partition(":")
        if sep:
            deps[mod] = rest.split()
    by_name = {_MODULE_SUFFIX.sub("", m.rpartition("/")[2]).replace("-", "_"): m for m in deps}
    keep: set[str] = set()
    todo = []
    for n in names:
        rel = by_name.get(n.replace("-", "_"))
        if rel is None:
            raise KeyError(f"module {n} is not in {moddir}/modules.dep")
        todo.append(rel)
    while todo:
        rel = todo.pop()
        if rel not in keep:
            keep.add(rel)
            todo.extend(deps.get(rel, []))
    return keep.__contains__


def _module_dirs(modules_root: Path) -> Iterator[tuple[str, Path]]:
    """(kver, directory) for each kernel version of a staged root (merged /usr or not)."""
    seen: set[Path] = set()
    for base in ("lib/modules", "usr/lib/modules"):
        d = modules_root / base
        if d.is_dir():
            for kdir in sorted(d.iterdir()):
                if kdir.is_dir() and kdir.resolve() not in seen:
                    seen.add(kdir.resolve())
                    yield kdir.name, kdir


def _emit_modules(cpio: Cpio, kver: str, kdir: Path,
                  modules_filter: Optional[Callable[[str], bool]]) -> int:
    """Add ``kdir`` as /lib/modules/<kver>: every index/config file, filtered modules."""
    count = 0
    prefix = f"lib/modules/{kver}"
    cpio.directory(prefix)
    for dirpath, dirnames, filenames in os.walk(kdir):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(kdir).as_posix()
        for name in sorted(filenames):
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            path = Path(dirpath) / name
            if path.is_symlink() and not path.exists():
                continue  # build/source links into /usr/src
            if _MODULE_SUFFIX.search(name):
                if modules_filter is not None and not modules_filter(rel):
                    continue
                count += 1
            cpio.host_path(f"{prefix}/{rel}", path)
    return count


#: initramfs path -> kernel versions of the module trees put into it (checked by run_guest).
_KVERS: dict[str, list[str]] = {}
_TMP: Optional[tempfile.TemporaryDirectory] = None


def _tmpdir() -> Path:
    global _TMP
    if _TMP is None:
        _TMP = tempfile.TemporaryDirectory(prefix="moddep-guest-")
    return Path(_TMP.name)


def build_initramfs(
    arch: str,
    *,
    modules_root: Optional[Path] = None,
    modules_filter: Optional[Callable[[str], bool]] = None,
    extra_files: Optional[Mapping[str, Union[bytes, str, Path]]] = None,
    extra_debs: Iterable[str] = (),
    kmod_links: bool = True,
    dest: Optional[Path] = None,
) -> Path:
    """Build an initramfs for ``arch``: the cached base plus this call's overlay.

    ``modules_root`` is a staged root: its ``lib/modules/<kver>/`` (and
    ``usr/lib/modules/<kver>/``) become the guest's ``/lib/modules/<kver>/`` and its
    modprobe.d/depmod.d directories are copied too.  ``modules_filter(relpath)`` (relpath
    below ``<kver>/``, e.g. ``kernel/drivers/net/dummy.ko``) selects which module files go
    in; index files and everything else in the directory always do.  Without a filter every
    module goes in (amd64: about 400 MB, which needs ``memory="2G"`` or more in run_guest);
    see :func:`only_modules` and :func:`with_dependencies`.

    ``extra_files`` maps guest paths to bytes/str (mode 0755 when it starts with ``#!``,
    else 0644) or host paths (files keep their mode; directories are copied recursively).
    ``extra_debs`` are more Debian packages of ``arch`` to unpack (e.g.
    ``python3-zstandard``).  The archive is written to ``dest`` or a temporary file that
    lives until the process exits.
    """
    if arch not in ARCHES:
        raise ValueError(f"unknown guest architecture {arch!r}")
    base = _base_cpio(arch)
    precompiled = json.loads(base.with_suffix(".json").read_text())["precompiled"]
    if dest is None:
        dest = Path(tempfile.mkstemp(prefix=f"initramfs-{arch}-", suffix=".cpio",
                                     dir=_tmpdir())[1])
    dest = Path(dest)
    kvers: list[str] = []
    with open(dest, "wb") as fh:
        with open(base, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)
        cpio = Cpio(fh)
        _emit_moddep(cpio, kmod_links, precompiled)
        if modules_root is not None:
            modules_root = Path(modules_root)
            for kver, kdir in _module_dirs(modules_root):
                _emit_modules(cpio, kver, kdir, modules_filter)
                kvers.append(kver)
            for conf in _CONFIG_DIRS:
                if (modules_root / conf).is_dir():
                    cpio.host_path(conf, modules_root / conf)
        if extra_debs:
            for deb in debcache.download_debs(list(extra_debs), arch):
                _emit_tree(cpio, _unpacked(deb, arch))
        for guest_path, content in (extra_files or {}).items():
            if isinstance(content, Path):
                cpio.host_path(guest_path, content)
            else:
                data = content.encode() if isinstance(content, str) else bytes(content)
                cpio.file(guest_path, data, 0o755 if data.startswith(b"#!") else 0o644,
                          int(time.time()))
        cpio.close()
    _KVERS[str(dest.resolve())] = kvers
    return dest


def _emit_moddep(cpio: Cpio, kmod_links: bool, precompile: bool) -> None:
    """The repository's moddep package, its command, and the kmod-named links."""
    pkg = REPO / "moddep"
    with tempfile.TemporaryDirectory(dir=_tmpdir()) as tmp:
        staged = Path(tmp) / _SITE
        shutil.copytree(pkg, staged / "moddep",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        if precompile:  # the base was: the host's bytecode is the guest's
            compileall.compile_dir(
                str(staged / "moddep"), ddir=f"/{_SITE}/moddep", quiet=2,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        cpio.host_path(f"{_SITE}/moddep", staged / "moddep")
    cpio.file("usr/bin/moddep",
              b"#!/usr/bin/python3\nimport sys\nfrom moddep.cli import main\n"
              b"sys.exit(main())\n", 0o755)
    if kmod_links:
        # /init makes the links once the kernel has booted: the kernel calls /sbin/modprobe
        # for every request_module() of its own initcalls (crypto algorithms, net families),
        # and each Python start costs a second or more under TCG.
        cpio.file("guest/kmod_links", "".join(f"{t}\n" for t in KMOD_TOOLS).encode())


# --------------------------------------------------------------------------- running


def vmlinuz(arch: str) -> tuple[Path, str]:
    """(kernel image, kver) of the bookworm kernel package for ``arch``."""
    tree = debcache.kernel_tree(arch)
    path = tree.root / "boot" / f"vmlinuz-{tree.kver}"
    if not path.is_file():
        raise debcache.Unavailable(f"{tree.package} has no boot/vmlinuz-{tree.kver}")
    return path, tree.kver


#: Magic bytes at the start of a bzImage payload -> decompressor (stdlib ones only; a
#: payload in another format is booted as the bzImage itself).
_PAYLOADS: dict[bytes, Callable[[bytes], bytes]] = {
    b"\xfd7zXZ\x00": lambda d: lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(d),
    b"\x1f\x8b": lambda d: zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(d),
    b"\x5d\x00\x00": lambda d: lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress(d),
}

_XEN_ELFNOTE_PHYS32_ENTRY = 18


def _bzimage_payload(image: bytes) -> Optional[bytes]:
    """The decompressed vmlinux inside an x86 bzImage (boot protocol >= 2.08), or None."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    if struct.unpack_from("<H", image, 0x206)[0] < 0x208:
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    payload = image[start:start + length]
    for magic, decompress in _PAYLOADS.items():
        if payload.startswith(magic):
            try:
                return decompress(payload)
            except (lzma.LZMAError, zlib.error):
                return None
    return None


def _has_pvh_entry(elf: bytes) -> bool:
    """Whether an x86-64 ELF vmlinux has the Xen PVH entry note QEMU can boot directly."""
    if elf[:5] != b"\x7fELF\x02" or elf[5] != 1:  # ELF64 little-endian
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:  # PT_NOTE
            continue
        pos, end = p_offset, p_offset + p_filesz
        while pos + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, pos)
            name = elf[pos + 12:pos + 12 + namesz]
            if name == b"Xen\0" and ntype == _XEN_ELFNOTE_PHYS32_ENTRY:
                return True
            pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def boot_kernel(arch: str) -> tuple[Path, str]:
    """(image for QEMU's -kernel, kver).

    amd64: the vmlinux decompressed here from the bzImage when it has a PVH entry note
    (Debian's does: CONFIG_PVH=y), so QEMU enters the kernel directly instead of running
    SeaBIOS, the real-mode setup and the in-guest XZ decompression, which under TCG cost
    about 7 s of every boot.  Otherwise, and on arm64 (QEMU itself unpacks the gzip'd
    Image), the package's vmlinuz.
    """
    path, kver = vmlinuz(arch)
    if arch != "amd64":
        return path, kver
    image = path.read_bytes()
    digest = hashlib.sha256(image).hexdigest()[:16]
    out = debcache.CACHE / "guest" / arch / f"vmlinux-{kver}-{digest}"
    if out.exists():
        return out, kver
    with _lock(f"vmlinux-{arch}"):
        if not out.exists():
            elf = _bzimage_payload(image)
            if elf is None or not _has_pvh_entry(elf):
                return path, kver
            out.parent.mkdir(parents=True, exist_ok=True)
            for stale in out.parent.glob("vmlinux-*"):
                stale.unlink()
            part = out.with_name(f".{out.name}.{os.getpid()}")
            part.write_bytes(elf)
            os.replace(part, out)
    return out, kver


def _script_cpio(initramfs: Path, nonce: str, script: str) -> Path:
    """A copy of ``initramfs`` with /guest/nonce and /guest/script appended."""
    fd, name = tempfile.mkstemp(prefix="run-", suffix=".cpio", dir=_tmpdir())
    with os.fdopen(fd, "wb") as fh:
        with open(initramfs, "rb") as src:
            shutil.copyfileobj(src, fh, 1 << 20)
        cpio = Cpio(fh)
        cpio.file("guest/nonce", nonce.encode() + b"\n")
        cpio.file("guest/script", script.encode())
        cpio.close()
    return Path(name)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _parse(output: str, nonce: str) -> tuple[Optional[int], Optional[dict]]:
    tag = re.escape(nonce)
    m = re.search(rf"{tag}:RC:(-?\d+)", output)
    rc = int(m.group(1)) if m else None
    n = re.search(rf"{tag}:RN:(\d+)", output)
    if not n:
        return rc, None
    chunks = dict((int(i), c) for i, c in re.findall(rf"{tag}:R:(\d+):([A-Za-z0-9+/=]*)",
                                                     output))
    count = int(n.group(1))
    if sorted(chunks) != list(range(count)):
        raise GuestError(f"guest results incomplete: chunks {sorted(chunks)} of {count}", output)
    data = base64.b64decode("".join(chunks[i] for i in range(count)))
    try:
        results = json.loads(data)
    except ValueError as exc:
        raise GuestError(f"guest results are not JSON ({exc}): {data[:200]!r}", output) from exc
    if not isinstance(results, dict):
        raise GuestError(f"guest results are not a JSON object: {data[:200]!r}", output)
    return rc, results


def run_guest(
    arch: str,
    script: str,
    *,
    initramfs: Path,
    timeout: float = 120,
    kernel_cmdline_extra: str = "",
    memory: str = "768M",
    smp: int = 1,
) -> GuestResult:
    """Boot ``arch``'s bookworm kernel with ``initramfs`` and run ``script`` as root.

    ``script`` is Python source (run by the guest's python3.11) unless it starts with
    ``#!``, then it is executed as it is (``#!/bin/sh`` for busybox sh).  It writes
    results as a JSON object to ``$GUEST_RESULTS`` (``guestlib.report(**kw)`` does that);
    its exit status is ``GuestResult.rc``.  Raises :class:`GuestTimeout` (QEMU killed, with
    the console's tail) after ``timeout`` seconds, :class:`GuestError` when the guest ends
    without reporting, and :class:`debcache.Unavailable` when the kernel cannot be had.

    One vCPU by default: under TCG a second one made boots no faster on these 2-core
    machines and competes with the test process; pass ``smp=2`` for SMP behaviour.
    ``kernel_cmdline_extra`` is appended to ``console=... panic=-1``.
    """
    reason = qemu_available(arch)
    if reason:
        raise GuestError(reason)
    spec = ARCHES[arch]
    kernel, kver = boot_kernel(arch)
    kvers = _KVERS.get(str(Path(initramfs).resolve()), [])
    if kvers and kver not in kvers:
        raise GuestError(f"initramfs {initramfs} holds modules for {kvers}, "
                         f"but the {arch} kernel is {kver}")
    nonce = f"MODDEP-GUEST-{secrets.token_hex(8)}"
    run_initrd = _script_cpio(Path(initramfs), nonce, script)
    append = " ".join([f"console={spec.console}", *BASE_CMDLINE, kernel_cmdline_extra]).strip()
    cmd = [shutil.which(spec.qemu) or spec.qemu, *spec.machine, "-accel", "tcg",
           "-m", memory, "-smp", str(smp), "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", str(kernel), "-initrd", str(run_initrd), "-append", append]
    buf = bytearray()
    marks: dict[bytes, float] = {}
    tags = (f"{nonce}:BEGIN".encode(), f"{nonce}:END".encode())
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def reader() -> None:
        assert proc.stdout is not None
        while True:
            chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            buf.extend(chunk)
            recent = bytes(buf[-len(chunk) - 64:])
            for tag in tags:
                if tag not in marks and tag in recent:
                    marks[tag] = time.monotonic()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if tags[1] in marks and now - marks[tags[1]] > 15:
                proc.kill()  # reported everything, but did not power off: not an error
            elif now - t0 > timeout:
                proc.kill()
                proc.wait()
                thread.join(10)
                output = buf.decode("utf-8", "replace").replace("\r\n", "\n")
                raise GuestTimeout(
                    f"{arch} guest did not finish within {timeout:.0f}s; QEMU killed. "
                    f"Console tail:\n{_tail(output)}", output)
            time.sleep(0.05)
    finally:
        if proc.poll() is None:  # interrupted (e.g. Ctrl-C): never leave QEMU behind
            proc.kill()
            proc.wait()
        with contextlib.suppress(OSError):
            run_initrd.unlink()
    thread.join(10)
    elapsed = time.monotonic() - t0
    output = buf.decode("utf-8", "replace").replace("\r\n", "\n")
    rc, results = _parse(output, nonce)
    if rc is None or results is None:
        raise GuestError(
            f"{arch} guest ended (QEMU exit {proc.returncode}) without reporting "
            f"{'an exit status' if rc is None else 'results'}. Console tail:\n{_tail(output)}",
            output)
    boot = marks[tags[0]] - t0 if tags[0] in marks else 0.0
    return GuestResult(rc, output, results, elapsed, boot, cmd)
