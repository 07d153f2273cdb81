"""meta-moddep's depmodwrapper (integrations/yocto/): the command it runs, and its output.

The wrapper template is filled in exactly as ``depmodwrapper-cross_%.bbappend``'s ``sed`` line
does (its expressions and ``?=`` defaults are read from the bbappend), then called the way
OE-core calls depmodwrapper: ``rootfs.py`` as ``depmodwrapper -a -b IMAGE_ROOTFS VERSION
KERNEL_PACKAGE_NAME``, the kernel's offline postinst as ``depmodwrapper -a -b $D VERSION``.
PKGDATA_DIR holds ``<pkg>-depmod/<pkg>-abiversion`` and ``System.map-VERSION`` as
``kernel.bbclass`` leaves them. kmod 34.2 runs the command OE-core's own wrapper runs for the
same call, ``depmod -C ROOT/lib/depmod.d -a -b ROOT [-F System.map] VERSION``, for the oracle.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import debcache
import pytest
from test_integrations_support import (
    KVER,
    REPO,
    SAMPLES,
    calls,
    clean_env,
    index_files,
    kernel_symbols,
    launcher,
    overlay_module,
    stage_sample,
    system_map,
    system_map_from_symvers,
)

LAYER = REPO / "integrations" / "yocto" / "meta-moddep"
TEMPLATE = LAYER / "recipes-kernel" / "kmod" / "files" / "depmodwrapper.in"
BBAPPEND = LAYER / "recipes-kernel" / "kmod" / "depmodwrapper-cross_%.bbappend"
EXPECTED = SAMPLES / "amd64-basic" / "expected" / "kmod34"


def bbappend_defaults() -> dict[str, str]:
    return dict(re.findall(r'^(MODDEP_\w+) \?= "([^"]*)"$', BBAPPEND.read_text(), re.M))


def render(out: Path, pkgdata: Path, **overrides: str) -> Path:
    """The installed wrapper: the bbappend's sed expressions with these variable values."""
    values = {"PKGDATA_DIR": str(pkgdata), "nonarch_base_libdir": "/lib",
              **bbappend_defaults(), **overrides}
    text = TEMPLATE.read_text()
    for placeholder, var in re.findall(r"-e 's\|(@\w+@)\|\$\{(\w+)\}\|g'",
                                       BBAPPEND.read_text()):
        text = text.replace(placeholder, values[var])
    assert not re.search(r"@[A-Z_]+@", text), "a placeholder the bbappend does not fill"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    out.chmod(0o755)
    return out


class Image:
    """An image build's pieces: rootfs, PKGDATA, the native sysroot's bin with moddep."""

    def __init__(self, tmp_path: Path, sysmap: Optional[bytes], abi: str = KVER,
                 pkg: str = "kernel", **settings: str) -> None:
        self.tmp = tmp_path
        self.rootfs = stage_sample("amd64-basic", tmp_path / "rootfs")
        shutil.rmtree(self.rootfs / "etc", ignore_errors=True)
        self.pkgdata = tmp_path / "pkgdata"
        depmod_dir = self.pkgdata / f"{pkg}-depmod"
        depmod_dir.mkdir(parents=True)
        (depmod_dir / f"{pkg}-abiversion").write_text(abi + "\n")
        if sysmap is not None:
            (depmod_dir / f"System.map-{KVER}").write_bytes(sysmap)
        self.bin = tmp_path / "recipe-sysroot-native" / "usr" / "bin"
        launcher(self.bin / "moddep")
        self.wrapper = render(self.bin / "crossscripts" / "depmodwrapper", self.pkgdata,
                              **settings)
        self.log = tmp_path / "calls.log"

    @property
    def moddir(self) -> Path:
        return self.rootfs / "lib" / "modules" / KVER

    def run(self, *args: str, moddep: Optional[Path] = None) -> subprocess.CompletedProcess[str]:
        env = clean_env(PATH=f"{self.bin}/crossscripts:{self.bin}:/usr/bin:/bin",
                        MODDEP_TEST_ARGV_LOG=str(self.log), TMPDIR=str(self.tmp))
        if moddep is not None:
            env["MODDEP"] = str(moddep)
        return subprocess.run(["depmodwrapper", *args], env=env, capture_output=True,
                              text=True, timeout=600)


def sample_system_map() -> bytes:
    return system_map(kernel_symbols(SAMPLES / "amd64-basic" / "lib" / "modules" / KVER,
                                     EXPECTED / "modules.symbols"))


def test_rootfs_call_runs_moddep_like_kmod(tmp_path: Path) -> None:
    img = Image(tmp_path, sample_system_map())
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel")  # as rootfs.py calls it
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    sysmap = img.pkgdata / "kernel-depmod" / f"System.map-{KVER}"
    assert calls(img.log) == [[
        "moddep", "depmod", "--kmod-version", "34", "-C", f"{img.rootfs}/lib/depmod.d",
        "-a", "-b", str(img.rootfs), "-e", "-F", str(sysmap), KVER, str(Path.cwd())]]
    assert (img.rootfs / "lib" / "depmod.d" / "exclude.conf").read_text() == "exclude .debug\n"
    assert index_files(img.moddir) == {p.name: p.read_bytes() for p in EXPECTED.iterdir()
                                       if p.name.startswith("modules.")}


def test_postinst_call_defaults_to_the_kernel_package(tmp_path: Path) -> None:
    img = Image(tmp_path, sample_system_map(), MODDEP_KMOD_VERSION="30")
    r = img.run("-a", "-b", str(img.rootfs), KVER)  # kernel-base postinst with $D
    assert r.returncode == 0, r.stderr
    (call,) = calls(img.log)
    assert call[2:4] == ["--kmod-version", "30"]
    assert str(img.pkgdata / "kernel-depmod" / f"System.map-{KVER}") in call
    assert index_files(img.moddir) == {
        p.name: p.read_bytes() for p in (EXPECTED.parent / "kmod30").iterdir()
        if p.name.startswith("modules.")}


@pytest.mark.parametrize("case", ["no-system-map", "other-abi"])
def test_without_a_matching_system_map(tmp_path: Path, case: str) -> None:
    if case == "no-system-map":
        img = Image(tmp_path, None)
    else:
        img = Image(tmp_path, sample_system_map(), abi="6.1.0-99-amd64")
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel")
    assert r.returncode == 0, r.stderr
    assert r.stderr == f"Unable to read: {img.pkgdata}/kernel-depmod/System.map-{KVER}\n"
    (call,) = calls(img.log)
    assert "-F" not in call and "-e" not in call
    assert (img.moddir / "modules.dep").read_bytes() == (EXPECTED / "modules.dep").read_bytes()


def test_other_kernel_package_name(tmp_path: Path) -> None:
    img = Image(tmp_path, sample_system_map(), pkg="kernel-rt")
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel-rt")
    assert r.returncode == 0, r.stderr
    assert str(img.pkgdata / "kernel-rt-depmod" / f"System.map-{KVER}") in calls(img.log)[0]


@pytest.mark.parametrize("args", [[], ["-a", KVER], ["-b", "/x", "-a", KVER], ["-a", "-b", "/x"]])
def test_usage(tmp_path: Path, args: list[str]) -> None:
    img = Image(tmp_path, None)
    r = img.run(*args)
    assert r.returncode == 1
    assert r.stderr == "Usage: depmodwrapper -a -b rootfs KERNEL_VERSION [KERNEL_PACKAGE_NAME]\n"
    assert calls(img.log) == []


def test_debug_copies_are_excluded(tmp_path: Path) -> None:
    """OE's split debug files (.debug/ beside the modules) stay out of the index."""
    img = Image(tmp_path, sample_system_map())
    debug = img.moddir / "kernel" / "drivers" / "net" / ".debug"
    debug.mkdir()
    shutil.copyfile(img.moddir / "kernel" / "drivers" / "net" / "dummy.ko", debug / "dummy.ko")
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel")
    assert r.returncode == 0, r.stderr
    assert ".debug" not in (img.moddir / "modules.dep").read_text()
    assert (img.moddir / "modules.dep").read_bytes() == (EXPECTED / "modules.dep").read_bytes()


def test_fail_on_unresolved(tmp_path: Path) -> None:
    img = Image(tmp_path, sample_system_map(), MODDEP_FAIL_ON_UNRESOLVED="1")
    extra = img.moddir / "extra"
    extra.mkdir()
    (extra / "oot.ko").write_bytes(overlay_module([b"moddep_missing_symbol"], name=b"oot"))
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"depmod: WARNING: {img.moddir}/extra/oot.ko needs unknown symbol moddep_missing_symbol",
        f"depmodwrapper: ERROR: 1 unresolved module symbol(s) in {KVER} "
        "(MODDEP_FAIL_ON_UNRESOLVED)"]
    # the same tree passes with the default settings (a warning only)
    img2 = Image(tmp_path / "default", sample_system_map())
    shutil.copytree(extra, img2.moddir / "extra")
    r = img2.run("-a", "-b", str(img2.rootfs), KVER, "kernel")
    assert r.returncode == 0 and "needs unknown symbol moddep_missing_symbol" in r.stderr


def test_verify_setting(tmp_path: Path) -> None:
    img = Image(tmp_path, sample_system_map(), MODDEP_VERIFY="1")
    stub = tmp_path / "stub-moddep"
    stub.write_text(f'#!/bin/sh\n[ "$1" = verify ] && {{ echo "$*" > {tmp_path}/verify.args; '
                    f'exit 1; }}\nexec {img.bin}/moddep "$@"\n')
    stub.chmod(0o755)
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel", moddep=stub)
    assert r.returncode == 1
    sysmap = img.pkgdata / "kernel-depmod" / f"System.map-{KVER}"
    assert (tmp_path / "verify.args").read_text() == (
        f"verify --kmod-version 34 -C {img.rootfs}/lib/depmod.d -b {img.rootfs} -F {sysmap} "
        f"{KVER}\n")
    assert "moddep verify found problems" in r.stderr


def _has_verify() -> bool:
    from moddep import cli

    return "verify" in cli._available()


@pytest.mark.skipif(not _has_verify(), reason="moddep verify (issue 6) is not in this tree")
def test_verify_setting_with_real_verify(tmp_path: Path) -> None:
    img = Image(tmp_path, sample_system_map(), MODDEP_VERIFY="1")
    # OE's split debug copies: excluded by the wrapper's exclude.conf, for verify too
    debug = img.moddir / "kernel" / "drivers" / "net" / ".debug"
    debug.mkdir()
    shutil.copyfile(img.moddir / "kernel" / "drivers" / "net" / "dummy.ko", debug / "dummy.ko")
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel")
    assert r.returncode == 0, r.stdout + r.stderr
    # the fault: a module others need is gone
    (img.moddir / "kernel/drivers/usb/storage/usb-storage.ko").unlink()
    r = img.run("-a", "-b", str(img.rootfs), KVER, "kernel")
    assert r.returncode == 1
    assert "usb_stor_adjust_quirks" in r.stdout
    assert "moddep verify found problems" in r.stderr


def test_layer_files_are_consistent() -> None:
    layer = (LAYER / "conf" / "layer.conf").read_text()
    (collection,) = re.findall(r'^BBFILE_COLLECTIONS \+= "(\w+)"$', layer, re.M)
    for key in ("BBFILE_PATTERN", "BBFILE_PRIORITY", "LAYERSERIES_COMPAT", "LAYERDEPENDS"):
        assert re.search(rf"^{key}_{collection} ", layer, re.M), key
    # every recipe and append is matched by BBFILES
    assert "${LAYERDIR}/recipes-*/*/*.bb" in layer and "${LAYERDIR}/recipes-*/*/*.bbappend" in layer
    recipes = sorted(p.relative_to(LAYER).as_posix() for p in LAYER.glob("recipes-*/*/*.bb*"))
    assert recipes == ["recipes-devtools/python/python3-moddep_0.1.0.bb",
                       "recipes-kernel/kmod/depmodwrapper-cross_%.bbappend"]
    version = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert version and version.group(1) == "0.1.0"  # the recipe's file name carries it
    # the bbappend's DEPENDS names the recipe this layer provides, as a native variant
    recipe = (LAYER / "recipes-devtools/python/python3-moddep_0.1.0.bb").read_text()
    assert 'BBCLASSEXTEND = "native nativesdk"' in recipe
    assert 'DEPENDS += "python3-moddep-native"' in BBAPPEND.read_text()
    # every placeholder of the template has a sed expression, and every variable a default
    placeholders = set(re.findall(r"@\w+@", TEMPLATE.read_text()))
    filled = dict(re.findall(r"-e 's\|(@\w+@)\|\$\{(\w+)\}\|g'", BBAPPEND.read_text()))
    assert placeholders == set(filled)
    for var in filled.values():
        assert var in ("PKGDATA_DIR", "nonarch_base_libdir") or var in bbappend_defaults()


def test_wrapper_is_posix_shell() -> None:
    for shell in ("sh", "dash", "bash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(TEMPLATE)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "sh", str(TEMPLATE)], check=True)


def _kmod() -> list[str]:
    try:
        return debcache.kmod_depmod(34)
    except debcache.Unavailable as e:
        pytest.skip(f"kmod 34 unavailable: {e}")


def _oe_core_command(kmod: list[str], root: Path, sysmap: Path) -> list[str]:
    """What OE-core's own depmodwrapper execs for ``-a -b ROOT KVER`` (after making the same
    exclude.conf): kmod's depmod with -C ROOT/lib/depmod.d, then -a -b ROOT, -F, KVER."""
    conf = root / "lib" / "depmod.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "exclude.conf").write_text("exclude .debug\n")
    return [*kmod, "-C", str(conf), "-a", "-b", str(root), "-F", str(sysmap), KVER]


@pytest.mark.oracle
def test_sample_tree_matches_oe_core_wrapper_with_kmod(tmp_path: Path) -> None:
    kmod = _kmod()
    img = Image(tmp_path, sample_system_map())
    debug = img.moddir / "kernel" / ".debug"
    debug.mkdir()
    shutil.copyfile(img.moddir / "kernel" / "drivers" / "net" / "veth.ko", debug / "veth.ko")
    ref = tmp_path / "kmod-rootfs"
    shutil.copytree(img.rootfs, ref, symlinks=True)
    sysmap = img.pkgdata / "kernel-depmod" / f"System.map-{KVER}"
    theirs = subprocess.run(_oe_core_command(kmod, ref, sysmap), capture_output=True, text=True,
                            timeout=600, env=clean_env())
    ours = img.run("-a", "-b", str(img.rootfs), KVER, "kernel")
    assert theirs.returncode == ours.returncode == 0, (theirs.stderr, ours.stderr)
    assert ours.stderr == theirs.stderr == ""
    assert index_files(img.moddir) == index_files(ref / "lib" / "modules" / KVER)


@pytest.mark.oracle
def test_full_debian_tree_matches_oe_core_wrapper_with_kmod(tmp_path: Path) -> None:
    kmod = _kmod()
    try:
        tree = debcache.kernel_tree("amd64")
        (headers,) = debcache.download_debs([f"linux-headers-{tree.kver}"], "amd64")
        hdir = debcache.extract_deb(headers, debcache.CACHE / "extract" / headers.stem)
    except debcache.Unavailable as e:
        pytest.skip(f"Debian packages unavailable: {e}")
    assert tree.kver == KVER
    (symvers,) = hdir.glob(f"usr/src/linux-headers-{tree.kver}/Module.symvers")
    img = Image(tmp_path, system_map_from_symvers(symvers.read_bytes()), abi=tree.kver)
    shutil.rmtree(img.rootfs)
    ours = debcache.copy_tree(tree, img.rootfs)
    theirs = debcache.copy_tree(tree, tmp_path / "kmod-rootfs")
    sysmap = img.pkgdata / "kernel-depmod" / f"System.map-{tree.kver}"
    ref = subprocess.run(_oe_core_command(kmod, theirs.root, sysmap), capture_output=True,
                         text=True, timeout=1200, env=clean_env())
    r = img.run("-a", "-b", str(ours.root), tree.kver, "kernel")
    assert ref.returncode == r.returncode == 0, (ref.stderr, r.stderr)
    assert r.stderr == ref.stderr == ""
    assert index_files(ours.moddir) == index_files(theirs.moddir)
