"""Real Debian kernel packages and reference kmod binaries for the oracle tests.

Everything here is slow the first time (downloads, unpacking, compression, kmod runs) and
cached afterwards under ``~/.cache/moddep-tests`` (or ``$MODDEP_TEST_CACHE``).  All entry
points are safe to call repeatedly and from concurrent processes: every cache entry is built
under an ``fcntl`` lock into a temporary name, then renamed into place and stamped.

Where things come from:

* The Debian archive URI is read at run time from the host's apt sources (deb822
  ``/etc/apt/sources.list.d/*.sources`` or one-line ``/etc/apt/sources.list``); no host name
  is written in this file.
* ``apt-get`` runs with a *private* state per (suite, architecture): its own sources list,
  package lists, cache and an empty dpkg status, so the host's apt state is never touched and
  foreign architectures need no ``dpkg --add-architecture``.
* kmod 30 is Debian bookworm's ``kmod`` package, kmod 34 is Debian trixie's (34.2); each is
  unpacked together with the shared libraries it needs (libc included) and run through that
  libc's own dynamic loader with ``--argv0`` selecting the multicall tool.  Nothing is
  installed on the host.

Anything the network or apt cannot provide raises :class:`Unavailable`; tests turn that into
``pytest.skip``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import functools
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

CACHE: Path = Path(
    os.environ.get("MODDEP_TEST_CACHE") or Path.home() / ".cache" / "moddep-tests"
).absolute()

#: Debian architecture -> flavour of its default ``linux-image-<flavour>`` metapackage.
FLAVOURS: dict[str, str] = {
    "amd64": "amd64",
    "arm64": "arm64",
    "armhf": "armmp",
    "i386": "686-pae",
    "ppc64el": "powerpc64le",
    "s390x": "s390x",
    "mips64el": "mips64r2el",
}

#: kmod major version -> Debian suite whose ``kmod`` package provides it.
KMOD_SUITES: dict[int, str] = {30: "bookworm", 34: "trixie"}

#: Every file depmod writes (KMOD_NOTES §9.1), in the order it writes them.
#: ``modules.weakdep`` exists since kmod 33 only.
OUTPUT_FILES: tuple[str, ...] = (
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.weakdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
)

#: How Linux 6.1's scripts/Makefile.modinst compresses an installed module, as argv tails
#: (the module path is appended; each tool replaces ``X.ko`` by ``X.ko.<ext>``).
#: gzip and zstd are as in v6.1; xz is as in 6.1.y since the stable backport of upstream
#: commit fbf5892df21a ("kbuild: Use CRC32 and a 1MiB dictionary for XZ compressed
#: modules"); v6.1 itself used ``xz --lzma2=dict=2MiB -f`` (CRC64).
COMPRESSORS: dict[str, tuple[str, list[str]]] = {
    "gz": (".gz", ["gzip", "-n", "-f"]),
    "xz": (".xz", ["xz", "--check=crc32", "--lzma2=dict=1MiB", "-f"]),
    "zst": (".zst", ["zstd", "-T0", "--rm", "-f", "-q"]),
}

#: Refresh a private apt state's package lists when older than this many seconds.
APT_REFRESH_SECONDS = 24 * 3600

_DONE = ".moddep-done"


class Unavailable(Exception):
    """Something the network, apt or the host cannot provide (tests skip on it)."""


@dataclass(frozen=True)
class KernelTree:
    """An unpacked kernel: ``root/lib/modules/<kver>/`` holds the modules.

    ``compression`` is ``"none"``, ``"xz"``, ``"zst"`` or ``"gz"``.  Treat as read-only.
    """

    root: Path
    kver: str
    arch: str
    package: str
    version: str
    compression: str

    @property
    def moddir(self) -> Path:
        """``<root>/lib/modules/<kver>``."""
        return self.root / "lib" / "modules" / self.kver


# --------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(f"[debcache] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Exclusive inter-process lock named ``name`` (any string)."""
    lockdir = CACHE / "locks"
    lockdir.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    with open(lockdir / f"{safe}.lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _rmtree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        # Trees may hold read-only directories; make them writable first.
        for dirpath, dirnames, _ in os.walk(path):
            for d in dirnames:
                p = os.path.join(dirpath, d)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(path)


def _clean_stale(parent: Path, prefix: str) -> None:
    """Remove leftovers ``<prefix>...<pid>`` in ``parent`` of processes no longer running."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        m = re.fullmatch(re.escape(prefix) + r"(?:.*\.)?(\d+)", entry.name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            _rmtree(entry)
        except PermissionError:
            pass


def _run(
    cmd: list[str], *, what: str, cwd: Optional[Path] = None, timeout: float = 3600
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; raise :class:`Unavailable` with its output when it fails."""
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise Unavailable(f"{what}: {cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"{what}: timed out after {timeout}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
        raise Unavailable(f"{what} failed (exit {proc.returncode}): {tail}")
    return proc


def host_arch() -> str:
    """The host's Debian architecture (``dpkg --print-architecture``)."""
    return _run(["dpkg", "--print-architecture"], what="dpkg").stdout.strip()


# --------------------------------------------------------------------------- apt sources


def _deb822_stanzas(text: str) -> Iterator[dict[str, str]]:
    fields: dict[str, str] = {}
    key = ""
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if fields:
                yield fields
            fields, key = {}, ""
        elif line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()


def _archive_source() -> tuple[str, Optional[str]]:
    """(URI, Signed-By keyring or None) of the host's Debian ``bookworm`` main archive."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        for st in _deb822_stanzas(text):
            if "deb" not in st.get("types", "deb").split():
                continue
            if st.get("enabled", "yes").lower() == "no":
                continue
            if "bookworm" not in st.get("suites", "").split():
                continue
            uris = st.get("uris", "").split()
            if uris:
                signed = st.get("signed-by", "").strip()
                keyring = signed if signed.startswith("/") and "\n" not in signed else None
                return uris[0].rstrip("/"), keyring
    lists = ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list"))
    for path in lists:
        try:
            lines = Path(path).read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            m = re.match(r"deb\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)", line)
            if m and m.group(3) == "bookworm":
                keyring = None
                for opt in (m.group(1) or "").split():
                    if opt.startswith("signed-by="):
                        keyring = opt.split("=", 1)[1]
                return m.group(2).rstrip("/"), keyring
    raise Unavailable("no Debian 'bookworm' archive in the host's apt sources")


def archive_uri() -> str:
    """The Debian archive URI of the host's apt sources (the entry for ``bookworm``)."""
    return _archive_source()[0]


# --------------------------------------------------------------------------- private apt


def _apt_dir(suite: str, arch: str) -> Path:
    return CACHE / "apt" / f"{suite}-{arch}"


def _apt_opts(suite: str, arch: str) -> list[str]:
    d = _apt_dir(suite, arch)
    return [
        f"-oDir::State={d}/state",
        f"-oDir::State::Lists={d}/lists",
        f"-oDir::State::status={d}/status",
        f"-oDir::Cache={d}/cache",
        f"-oDir::Cache::pkgcache={d}/cache/pkgcache.bin",
        "-oDir::Cache::srcpkgcache=",  # pkgcache.bin alone is enough
        f"-oDir::Etc::SourceList={d}/sources.list",
        f"-oDir::Etc::SourceParts={d}/empty",
        f"-oDir::Etc::Preferences={d}/empty/preferences",
        f"-oDir::Etc::PreferencesParts={d}/empty",
        f"-oAPT::Architecture={arch}",
        f"-oAPT::Architectures={arch}",
        "-oAcquire::Languages=none",
        "-oAPT::Sandbox::User=root",
        "-qq",
    ]


def _apt_state(suite: str, arch: str) -> list[str]:
    """Ensure the private apt state for (suite, arch) is set up and updated; return options."""
    d = _apt_dir(suite, arch)
    stamp = d / "update.stamp"
    with _lock(f"apt-{suite}-{arch}"):
        fresh = stamp.exists() and time.time() - stamp.stat().st_mtime < APT_REFRESH_SECONDS
        if fresh:
            return _apt_opts(suite, arch)
        uri, keyring = _archive_source()
        for sub in ("state", "lists/partial", "cache/archives/partial", "empty"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "status").touch()
        opts = f"[arch={arch} signed-by={keyring}]" if keyring else f"[arch={arch}]"
        (d / "sources.list").write_text(f"deb {opts} {uri} {suite} main\n")
        _log(f"apt-get update ({suite}, {arch})")
        try:
            _run(
                ["apt-get", *_apt_opts(suite, arch), "update"],
                what=f"apt-get update ({suite}/{arch})",
                timeout=1800,
            )
        except Unavailable:
            if stamp.exists():  # offline, but older lists are still usable
                _log(f"apt-get update ({suite}, {arch}) failed; using older lists")
                return _apt_opts(suite, arch)
            raise
        stamp.touch()
        return _apt_opts(suite, arch)


def _apt_run(
    tool: str, args: list[str], arch: str, suite: str, *, cwd: Optional[Path] = None
) -> str:
    """Run apt-get/apt-cache on the private state of (suite, arch), serialised by a lock."""
    opts = _apt_state(suite, arch)
    with _lock(f"apt-{suite}-{arch}"):
        return _run(
            [tool, *opts, *args],
            cwd=cwd,
            timeout=3600,
            what=f"{tool} {' '.join(args)} ({suite}/{arch})",
        ).stdout


def _apt_cache(args: list[str], arch: str, suite: str) -> str:
    return _apt_run("apt-cache", args, arch, suite)


def _package_fields(name: str, arch: str, suite: str) -> dict[str, str]:
    """Control fields of the candidate version of ``name`` in the private state."""
    try:
        text = _apt_cache(["show", "--no-all-versions", name], arch, suite)
    except Unavailable as exc:
        raise Unavailable(f"package {name} ({suite}/{arch}) not found: {exc}") from exc
    for st in _deb822_stanzas(text):
        if st.get("package") == name:
            return st
    raise Unavailable(f"package {name} not found in {suite}/{arch}")


def _package_exists(name: str, arch: str, suite: str) -> bool:
    try:
        _package_fields(name, arch, suite)
    except Unavailable:
        return False
    return True


def _deb_dir(arch: str, suite: str) -> Path:
    return CACHE / "debs" / suite / arch


def _cached_deb(name: str, arch: str, suite: str) -> Optional[Path]:
    hits = [
        Path(p)
        for p in glob.glob(str(_deb_dir(arch, suite) / f"{glob.escape(name)}_*.deb"))
        if p.endswith((f"_{arch}.deb", "_all.deb"))
    ]
    return max(hits, key=lambda p: p.stat().st_mtime) if hits else None


def download_debs(names: list[str], arch: str, suite: str = "bookworm") -> list[Path]:
    """Download binary packages ``names`` for ``arch`` from ``suite``; return cached paths.

    A package already in the cache (by name, arch and suite) is reused as it is.
    """
    out = _deb_dir(arch, suite)
    result: dict[str, Path] = {}
    missing = []
    for name in names:
        hit = _cached_deb(name, arch, suite)
        if hit is None:
            missing.append(name)
        else:
            result[name] = hit
    if missing:
        with _lock(f"debs-{suite}-{arch}"):
            still = [n for n in missing if _cached_deb(n, arch, suite) is None]
            if still:
                tmp = out / f".tmp.{os.getpid()}"
                _rmtree(tmp)
                tmp.mkdir(parents=True)
                _log(f"downloading {', '.join(still)} ({suite}/{arch})")
                t0 = time.monotonic()
                try:
                    _apt_run("apt-get", ["download", *still], arch, suite, cwd=tmp)
                    for f in tmp.glob("*.deb"):
                        os.replace(f, out / f.name)
                finally:
                    _rmtree(tmp)
                _log(f"downloaded in {time.monotonic() - t0:.1f}s")
            for name in missing:
                hit = _cached_deb(name, arch, suite)
                if hit is None:
                    raise Unavailable(f"apt-get download produced no .deb for {name}")
                result[name] = hit
    return [result[n] for n in names]


def deb_field(deb: Path, field: str) -> str:
    """One control field of a .deb file (``dpkg-deb -f``)."""
    return _run(["dpkg-deb", "-f", str(deb), field], what="dpkg-deb -f").stdout.strip()


def extract_deb(deb: Path, dest: Path) -> Path:
    """Unpack ``deb`` into ``dest`` with ``dpkg-deb -x`` (once; later calls reuse it)."""
    dest = Path(dest).absolute()
    if (dest / _DONE).exists():
        return dest
    with _lock(f"extract-{dest}"):
        if (dest / _DONE).exists():
            return dest
        _rmtree(dest)
        tmp = dest.with_name(f"{dest.name}.tmp.{os.getpid()}")
        _rmtree(tmp)
        tmp.mkdir(parents=True)
        _run(["dpkg-deb", "-x", str(deb), str(tmp)], what=f"dpkg-deb -x {deb.name}")
        (tmp / _DONE).write_text(f"{deb.name}\n")
        os.replace(tmp, dest)
    return dest


# --------------------------------------------------------------------------- kernels


def _depends_names(field: str) -> list[str]:
    """Package names of a Depends field (first alternative of each, no versions/arch)."""
    names = []
    for part in field.split(","):
        alt = part.split("|")[0].strip()
        if alt:
            names.append(re.split(r"[\s(:\[]", alt, maxsplit=1)[0])
    return names


@functools.cache
def resolve_kernel_package(arch: str, prefer_unsigned: bool = True) -> str:
    """Concrete ``linux-image-*`` package behind bookworm's default metapackage for ``arch``.

    With ``prefer_unsigned`` the ``-unsigned`` variant (same modules, but no appended module
    signatures and no signing wrapper package) is taken where it exists.
    """
    try:
        flavour = FLAVOURS[arch]
    except KeyError:
        raise Unavailable(f"no known kernel flavour for architecture {arch}") from None
    meta = f"linux-image-{flavour}"
    fields = _package_fields(meta, arch, "bookworm")
    pattern = re.compile(rf"^linux-image-\d[\w.+-]*-{re.escape(flavour)}(-unsigned)?$")
    images = [n for n in _depends_names(fields.get("depends", "")) if pattern.match(n)]
    if not images:
        raise Unavailable(f"{meta} depends on no linux-image package: {fields.get('depends')}")
    image = images[0]
    if prefer_unsigned and not image.endswith("-unsigned"):
        if _package_exists(f"{image}-unsigned", arch, "bookworm"):
            image = f"{image}-unsigned"
    elif not prefer_unsigned and image.endswith("-unsigned"):
        signed = image[: -len("-unsigned")]
        if _package_exists(signed, arch, "bookworm"):
            image = signed
    return image


def _safe_version(version: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+~-]", "_", version)


def kernel_tree(arch: str, prefer_unsigned: bool = True) -> KernelTree:
    """The unpacked bookworm kernel package for ``arch`` (uncompressed modules).

    Index files the package might ship are removed so the tree is pristine depmod input.
    """
    package = resolve_kernel_package(arch, prefer_unsigned)
    (deb,) = download_debs([package], arch, "bookworm")
    version = deb_field(deb, "Version")
    dest = CACHE / "trees" / arch / f"{package}_{_safe_version(version)}" / "none"
    if not (dest / _DONE).exists():
        with _lock(f"tree-{dest}"):
            if not (dest / _DONE).exists():
                t0 = time.monotonic()
                _clean_stale(CACHE / "trees" / arch, f".extract.{package}.")
                tmp = CACHE / "trees" / arch / f".extract.{package}.{os.getpid()}"
                _rmtree(tmp)
                extract_deb(deb, tmp)
                (tmp / _DONE).unlink()
                kver = _single_kver(tmp)
                moddir = tmp / "lib" / "modules" / kver
                for name in OUTPUT_FILES:
                    with contextlib.suppress(FileNotFoundError):
                        (moddir / name).unlink()
                (tmp / _DONE).write_text(f"{kver}\n{package}\n{version}\n")
                _rmtree(dest)
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, dest)
                _log(f"unpacked {deb.name} in {time.monotonic() - t0:.1f}s")
    kver = (dest / _DONE).read_text().split("\n", 1)[0]
    return KernelTree(dest, kver, arch, package, version, "none")


def _single_kver(root: Path) -> str:
    base = root / "lib" / "modules"
    kvers = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    if len(kvers) != 1:
        raise Unavailable(f"expected one kernel version under {base}, found {kvers}")
    return kvers[0]


def _compress_one(argv: list[str], path: Path) -> None:
    proc = subprocess.run([*argv, str(path)], capture_output=True, check=False)
    if proc.returncode != 0:
        raise Unavailable(f"{' '.join(argv)} {path}: {proc.stderr.decode(errors='replace')}")


def compressed_tree(arch: str, comp: str, prefer_unsigned: bool = True) -> KernelTree:
    """A cached copy of :func:`kernel_tree` with every ``.ko`` compressed as Linux 6.1 does.

    ``comp`` is ``"none"``, ``"xz"``, ``"zst"`` or ``"gz"`` (see :data:`COMPRESSORS`).
    modules.order, modules.builtin and the like are unchanged.
    """
    base = kernel_tree(arch, prefer_unsigned)
    if comp == "none":
        return base
    if comp not in COMPRESSORS:
        raise ValueError(f"unknown compression {comp!r}; expected none, {', '.join(COMPRESSORS)}")
    _, argv = COMPRESSORS[comp]
    if shutil.which(argv[0]) is None:
        raise Unavailable(f"{argv[0]} is not installed")
    dest = base.root.parent / comp
    if not (dest / _DONE).exists():
        with _lock(f"tree-{dest}"):
            if not (dest / _DONE).exists():
                t0 = time.monotonic()
                _clean_stale(dest.parent, f".{comp}.tmp.")
                tmp = dest.with_name(f".{comp}.tmp.{os.getpid()}")
                _rmtree(tmp)
                # Hard links: each compressor writes a new file and unlinks its input link.
                _run(["cp", "-al", str(base.root), str(tmp)], what="cp -al")
                (tmp / _DONE).unlink()
                kos = sorted(p for p in (tmp / "lib" / "modules").rglob("*.ko") if p.is_file())
                workers = max(1, min(len(os.sched_getaffinity(0)), 8))
                with concurrent.futures.ThreadPoolExecutor(workers) as pool:
                    for fut in [pool.submit(_compress_one, argv, ko) for ko in kos]:
                        fut.result()
                (tmp / _DONE).write_text((base.root / _DONE).read_text())
                _rmtree(dest)
                os.replace(tmp, dest)
                _log(
                    f"{comp}-compressed {len(kos)} modules of {arch} "
                    f"in {time.monotonic() - t0:.1f}s"
                )
    return KernelTree(dest, base.kver, arch, base.package, base.version, comp)


def copy_tree(tree: KernelTree, dest: Path) -> KernelTree:
    """Hard-link copy of ``tree`` at ``dest`` (must not exist yet), for a test to work on.

    Replace files by writing a new one and renaming it (as depmod does); never write into a
    linked file in place.
    """
    dest = Path(dest).absolute()
    if dest.exists():
        raise FileExistsError(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _run(["cp", "-al", str(tree.root), str(dest)], what="cp -al")
    with contextlib.suppress(FileNotFoundError):
        (dest / _DONE).unlink()
    return KernelTree(dest, tree.kver, tree.arch, tree.package, tree.version, tree.compression)


# --------------------------------------------------------------------------- kmod binaries


def _lib_closure(roots: list[str], arch: str, suite: str) -> list[str]:
    """``roots`` plus the library packages (``lib*``, ``zlib*``) their Depends pull in."""
    seen: list[str] = []
    todo = list(roots)
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.append(name)
        fields = _package_fields(name, arch, suite)
        deps = ", ".join(x for x in (fields.get("pre-depends"), fields.get("depends")) if x)
        for dep in _depends_names(deps):
            if dep.startswith(("lib", "zlib")) and dep not in seen:
                todo.append(dep)
    return seen


def _kmod_dir(version: int) -> Path:
    """Unpacked kmod ``version`` plus the libraries it needs, in one directory."""
    try:
        suite = KMOD_SUITES[version]
    except KeyError:
        raise ValueError(f"kmod version must be one of {sorted(KMOD_SUITES)}") from None
    arch = host_arch()
    dest = CACHE / "kmod" / f"{version}-{arch}"
    if (dest / _DONE).exists():
        return dest
    with _lock(f"kmod-{version}-{arch}"):
        if (dest / _DONE).exists():
            return dest
        t0 = time.monotonic()
        # kmod 34 loads liblzma/libzstd with dlopen: name them explicitly.
        names = _lib_closure(["kmod", "liblzma5", "libzstd1"], arch, suite)
        debs = download_debs(names, arch, suite)
        tmp = dest.with_name(f".{dest.name}.tmp.{os.getpid()}")
        _rmtree(tmp)
        tmp.mkdir(parents=True)
        versions = []
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], what=f"dpkg-deb -x {deb.name}")
            versions.append(f"{deb_field(deb, 'Package')} {deb_field(deb, 'Version')}")
        (tmp / "packages.txt").write_text("\n".join(versions) + "\n")
        (tmp / _DONE).write_text(f"{suite}\n")
        _rmtree(dest)
        os.replace(tmp, dest)
        _log(f"unpacked kmod {version} ({len(debs)} packages) in {time.monotonic() - t0:.1f}s")
    return dest


def _real_file(root: Path, rel: str) -> Optional[Path]:
    """Resolve ``rel`` inside ``root``, following symlinks (absolute ones relative to root)."""
    path = root / rel.lstrip("/")
    for _ in range(40):
        if path.is_symlink():
            target = os.readlink(path)
            path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
            continue
        return path if path.is_file() else None
    return None


def _loader_and_libs(root: Path) -> tuple[Path, list[str]]:
    loaders = sorted(
        p
        for pat in (
            "lib*/ld-linux*.so*",
            "usr/lib*/ld-linux*.so*",
            "lib*/*/ld-linux*.so*",
            "usr/lib*/*/ld-linux*.so*",
            "lib*/ld64.so*",
            "usr/lib*/ld64.so*",
            "lib*/*/ld64.so*",
            "usr/lib*/*/ld64.so*",
        )
        for p in root.glob(pat)
    )
    real = [r for r in (_real_file(root, str(p.relative_to(root))) for p in loaders) if r]
    if not real:
        raise Unavailable(f"no dynamic loader in {root}")
    libdirs: list[str] = []
    for pat in ("lib/*-linux-gnu*", "usr/lib/*-linux-gnu*", "lib", "usr/lib", "lib64", "usr/lib64"):
        for p in sorted(root.glob(pat)):
            if p.is_dir() and not p.is_symlink() and str(p) not in libdirs:
                libdirs.append(str(p))
    return real[0], libdirs


def kmod_tool(version: int, tool: str) -> list[str]:
    """Command prefix running ``tool`` (depmod, modprobe, modinfo, ...) of kmod ``version``.

    ``version`` is 30 (Debian bookworm) or 34 (Debian trixie, kmod 34.2).
    """
    root = _kmod_dir(version)
    kmod = _real_file(root, "usr/bin/kmod") or _real_file(root, "bin/kmod")
    if kmod is None:
        raise Unavailable(f"no kmod binary in {root}")
    loader, libdirs = _loader_and_libs(root)
    return [str(loader), "--library-path", ":".join(libdirs), "--argv0", tool, str(kmod)]


def kmod_depmod(version: int) -> list[str]:
    """Command prefix running depmod of kmod ``version`` (30 or 34)."""
    return kmod_tool(version, "depmod")


# --------------------------------------------------------------------------- references


def reference(tree: KernelTree, kmod_version: int) -> Path:
    """Directory with kmod ``kmod_version``'s depmod outputs for ``tree``.

    Results for the trees of :func:`kernel_tree` / :func:`compressed_tree` are cached; for any
    other tree (e.g. a test's modified :func:`copy_tree`) depmod runs again on every call.

    depmod runs as ``depmod -b COPY -C EMPTYDIR KVER`` on a hard-link copy of the tree, so
    no host configuration leaks in.  The directory holds every output file depmod wrote
    (see :data:`OUTPUT_FILES`), ``stdout.txt``, ``stderr.txt``, ``rc.txt`` (exit status),
    ``cmd.txt`` (the argv) and ``basedir.txt`` (the ``-b`` path, which may appear in
    messages).
    """
    key = (
        f"{tree.arch}-{tree.compression}-{tree.package}_{_safe_version(tree.version)}"
        f"-kmod{kmod_version}"
    )
    cacheable = _is_cached_tree(tree.root)
    if not cacheable:
        # A tree a test made or changed: never reuse a result, keep one per tree path.
        digest = hashlib.sha1(str(tree.root.absolute()).encode()).hexdigest()[:16]
        key = f"adhoc-{digest}-kmod{kmod_version}"
    dest = CACHE / "ref" / key
    if cacheable and (dest / _DONE).exists():
        return dest
    prefix = kmod_depmod(kmod_version)
    with _lock(f"ref-{key}"):
        if cacheable and (dest / _DONE).exists():
            return dest
        _clean_stale(CACHE / "work", f"{key}.")
        work = CACHE / "work" / f"{key}.{os.getpid()}"
        _rmtree(work)
        work.mkdir(parents=True)
        try:
            copy = copy_tree(tree, work / "root")
            (work / "conf").mkdir()
            cmd = [*prefix, "-b", str(copy.root), "-C", str(work / "conf"), tree.kver]
            t0 = time.monotonic()
            proc = subprocess.run(cmd, capture_output=True, check=False, timeout=3600)
            _log(
                f"kmod {kmod_version} depmod on {key}: exit {proc.returncode} "
                f"in {time.monotonic() - t0:.1f}s"
            )
            tmp = work / "out"
            tmp.mkdir()
            for name in OUTPUT_FILES:
                src = copy.moddir / name
                if src.exists():
                    shutil.copyfile(src, tmp / name)
            (tmp / "stdout.txt").write_bytes(proc.stdout)
            (tmp / "stderr.txt").write_bytes(proc.stderr)
            (tmp / "rc.txt").write_text(f"{proc.returncode}\n")
            (tmp / "cmd.txt").write_text("\0".join(cmd) + "\n")
            (tmp / "basedir.txt").write_text(f"{copy.root}\n")
            (tmp / _DONE).touch()
            _rmtree(dest)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dest)
        finally:
            _rmtree(work)
    return dest


def _is_cached_tree(root: Path) -> bool:
    """Whether ``root`` is one of this module's cached (pristine) trees."""
    try:
        rel = Path(root).absolute().relative_to(CACHE / "trees")
    except ValueError:
        return False
    return len(rel.parts) == 3 and (Path(root) / _DONE).exists()


def _main(argv: list[str]) -> int:
    """``python tests/debcache.py warm ARCH... [--comp none,xz,zst] [--kmod 30,34]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="debcache")
    ap.add_argument("cmd", choices=["warm", "resolve", "kmod"])
    ap.add_argument("arch", nargs="*", default=["amd64"])
    ap.add_argument("--comp", default="none,xz,zst")
    ap.add_argument("--kmod", default="30,34")
    args = ap.parse_args(argv)
    if args.cmd == "kmod":
        for v in (int(x) for x in args.kmod.split(",")):
            print(" ".join(kmod_depmod(v)))
        return 0
    for arch in args.arch:
        if args.cmd == "resolve":
            print(arch, resolve_kernel_package(arch))
            continue
        for comp in args.comp.split(","):
            tree = compressed_tree(arch, comp)
            for v in (int(x) for x in args.kmod.split(",")):
                ref = reference(tree, v)
                print(ref, (ref / "rc.txt").read_text().strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
