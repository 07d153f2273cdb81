"""The Buildroot BR2_EXTERNAL tree (buildroot_integration/): its hook script run the way
Buildroot runs it, its make fragments expanded by GNU make, and its files checked against the
rules of Buildroot's manual.

A fake Buildroot output directory stands in for a build: ``target/`` is a copy of the
amd64-basic sample tree holding the indexes Buildroot's own depmod (the LINUX_RUN_DEPMOD
target-finalize hook, kmod 34) wrote before the overlays were copied; an overlay then adds an
out-of-tree module; ``build/linux-<version>/`` is the kernel's build directory with
``include/config/kernel.release``, ``Module.symvers`` and ``System.map`` (made from the
tree's own modules: what they need and no module exports is what vmlinux exports); ``.config``
holds the options. The script gets the environment Buildroot gives post-build and
post-fakeroot scripts (Makefile's exports plus EXTRA_ENV of package/Makefile.in) and the
target directory as $1.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
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
    module_symvers,
    needed_symbols,
    overlay_module,
    stage_sample,
    system_map,
)

BR = REPO / "buildroot_integration"
SCRIPT = BR / "scripts" / "moddep-depmod.sh"
EXPECTED = SAMPLES / "amd64-basic" / "expected"
LINUX_VERSION = "6.1.176"  # Buildroot's LINUX_VERSION: the kernel build dir is linux-<it>
OVERLAY_KO = f"lib/modules/{KVER}/extra/moddep_overlay.ko"
OPT = "BR2_PACKAGE_HOST_PYTHON_MODDEP"
ON = {OPT: "y", f"{OPT}_DEPMOD": "y", f"{OPT}_KMOD_VERSION": "34"}
# usb-storage's export the overlay module uses, and the modules.dep line kmod writes for it
USB_DEPS = ("kernel/drivers/usb/storage/usb-storage.ko kernel/drivers/usb/core/usbcore.ko "
            "kernel/drivers/usb/common/usb-common.ko kernel/drivers/scsi/scsi_mod.ko "
            "kernel/drivers/scsi/scsi_common.ko")


@dataclass
class Build:
    """A fake Buildroot output directory (O=)."""

    base: Path
    top: Path  # Buildroot's source tree: scripts run with it as working directory
    config: Path
    log: Path  # argv of every moddep call

    @property
    def target(self) -> Path:
        return self.base / "target"

    @property
    def host(self) -> Path:
        return self.base / "host"

    @property
    def build(self) -> Path:
        return self.base / "build"

    @property
    def linux(self) -> Path:
        return self.build / f"linux-{LINUX_VERSION}"

    @property
    def moddir(self) -> Path:
        return self.target / "lib" / "modules" / KVER

    def env(self, **extra: str) -> dict[str, str]:
        """What Buildroot's Makefile exports, plus EXTRA_ENV (package/Makefile.in)."""
        b = self.base
        return clean_env(
            BR2_CONFIG=str(self.config), TARGET_DIR=str(self.target),
            STAGING_DIR=str(b / "staging"), HOST_DIR=str(self.host),
            BINARIES_DIR=str(b / "images"), BASE_DIR=str(b), BR2_VERSION="2026.08",
            BR2_EXTERNAL_NAMES="MODDEP", BR2_EXTERNAL_MODDEP_PATH=str(BR),
            BR2_EXTERNAL_MODDEP_DESC="moddep kernel-module indexes (depmod)",
            PATH=f"{self.host}/bin:{self.host}/sbin:{os.environ['PATH']}",
            BR2_DL_DIR=str(self.top / "dl"), BUILD_DIR=str(self.build),
            CONFIG_DIR=str(b), O=str(b), PARALLEL_JOBS="2",
            MODDEP_TEST_ARGV_LOG=str(self.log), **extra)

    def overlay(self, files: dict[str, bytes]) -> None:
        """A rootfs overlay, copied over the target as target-finalize does (after depmod)."""
        over = self.base.parent / "overlay"
        for rel, data in files.items():
            (over / rel).parent.mkdir(parents=True, exist_ok=True)
            (over / rel).write_bytes(data)
        shutil.copytree(over, self.target, dirs_exist_ok=True)

    def run(self, *args: str, env: Optional[dict[str, str]] = None,
            target_arg: bool = True) -> subprocess.CompletedProcess[str]:
        """The hook as a post-build/post-fakeroot script: ``SCRIPT TARGET_DIR ARGS...``."""
        argv = [str(SCRIPT), *([str(self.target)] if target_arg else []), *args]
        return subprocess.run(argv, cwd=self.top, env=env or self.env(), capture_output=True,
                              text=True, timeout=300)

    def set_config(self, options: dict[str, str]) -> None:
        lines = ["BR2_HAVE_DOT_CONFIG=y", "BR2_LINUX_KERNEL=y",
                 f'BR2_LINUX_KERNEL_VERSION="{LINUX_VERSION}"']
        for name, value in options.items():
            lines.append(f"# {name} is not set" if value == "n" else f"{name}={value}")
        self.config.write_text("\n".join(lines) + "\n")


def crcs() -> dict[str, int]:
    """CRC of every symbol the sample tree's modules need, as their __versions record it."""
    out: dict[str, int] = {}
    for ko in (SAMPLES / "amd64-basic" / "lib" / "modules" / KVER).rglob("*.ko"):
        out.update(needed_symbols(ko))
    return out


def overlay_ko(extra_needs: tuple[bytes, ...] = (), bad_crc: bool = False) -> bytes:
    """The overlay's module: uses usb-storage and the kernel, exports moddep_overlay_fn."""
    table = crcs()
    needs = [b"usb_stor_adjust_quirks", b"_printk"]
    versions = [(n, table[n.decode()]) for n in needs]
    if bad_crc:
        versions[1] = (b"_printk", table["_printk"] ^ 0xFFFF)
    return overlay_module(needs + list(extra_needs), exports=[b"moddep_overlay_fn"],
                          versions=versions)


def make_build(tmp_path: Path, options: dict[str, str], *, kernel_dir: bool = True,
               prior_index: bool = True) -> Build:
    base = tmp_path / "output"
    b = Build(base=base, top=tmp_path / "buildroot", config=base / ".config",
              log=tmp_path / "moddep-calls.log")
    b.top.mkdir(parents=True)
    stage_sample("amd64-basic", b.target)
    if prior_index:
        for f in (EXPECTED / "kmod34").glob("modules.*"):
            shutil.copyfile(f, b.moddir / f.name)
    launcher(b.host / "bin" / "moddep")
    (b.build / f"linux-headers-{LINUX_VERSION}").mkdir(parents=True)  # no kernel.release
    if kernel_dir:
        (b.linux / "include" / "config").mkdir(parents=True)
        (b.linux / "include" / "config" / "kernel.release").write_text(KVER + "\n")
        (b.linux / ".config").write_text("CONFIG_MODULES=y\n")
        ks = kernel_symbols(SAMPLES / "amd64-basic" / "lib" / "modules" / KVER,
                            EXPECTED / "kmod34" / "modules.symbols")
        (b.linux / "System.map").write_bytes(system_map(ks))
        (b.linux / "Module.symvers").write_bytes(module_symvers(ks))
    b.set_config(options)
    return b


def depmod_calls(b: Build) -> list[list[str]]:
    return [c for c in calls(b.log) if c[1] == "depmod"]


# --------------------------------------------------------------------------- the hook script


def test_post_script_indexes_the_overlay_module(tmp_path: Path) -> None:
    b = make_build(tmp_path, ON)
    before = (b.moddir / "modules.dep").read_text().splitlines()
    assert not any("moddep_overlay" in line for line in before)
    b.overlay({OVERLAY_KO: overlay_ko()})

    # Buildroot passes BR2_ROOTFS_POST_SCRIPT_ARGS to every script; this one is not ours
    r = b.run("--board=qemu-x86_64")
    assert r.returncode == 0, r.stderr
    assert "ignoring argument '--board=qemu-x86_64'" in r.stderr
    assert "needs unknown symbol" not in r.stderr and "disagrees" not in r.stderr

    dep = (b.moddir / "modules.dep").read_text().splitlines()
    assert f"extra/moddep_overlay.ko: {USB_DEPS}" in dep
    assert [line for line in dep if "moddep_overlay" not in line] == before
    assert ("alias pci:v00001AF4d00001099sv*sd*bc*sc*i* moddep_overlay"
            in (b.moddir / "modules.alias").read_text().splitlines())
    assert ("alias symbol:moddep_overlay_fn moddep_overlay"
            in (b.moddir / "modules.symbols").read_text().splitlines())
    assert b"moddep_overlay" in (b.moddir / "modules.dep.bin").read_bytes()

    # exactly one moddep run, with the kernel's Module.symvers found under BUILD_DIR
    assert depmod_calls(b) == [[
        "moddep", "depmod", "-a", "-b", str(b.target), "--kmod-version", "34",
        "-e", "-E", str(b.linux / "Module.symvers"), "-j", "2",
        "--cache-dir", str(b.build / ".moddep-cache"), KVER, str(b.top)]]


def test_kmod_generation_option_reaches_depmod(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_KMOD_VERSION": "30"}, prior_index=False)
    r = b.run()
    assert r.returncode == 0, r.stderr
    expected = {p.name: p.read_bytes() for p in (EXPECTED / "kmod30").glob("modules.*")}
    assert index_files(b.moddir) == expected  # kmod 30: post-order .bin, no modules.weakdep
    assert depmod_calls(b)[0][5:7] == ["--kmod-version", "30"]


def test_command_line_options_override_the_configuration(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_KMOD_VERSION": "30"}, prior_index=False)
    r = b.run("--kmod-version=34", f"--system-map={b.linux / 'System.map'}")
    assert r.returncode == 0, r.stderr
    assert index_files(b.moddir) == {p.name: p.read_bytes()
                                     for p in (EXPECTED / "kmod34").glob("modules.*")}
    (call,) = depmod_calls(b)
    assert call[5:10] == ["--kmod-version", "34", "-e", "-F", str(b.linux / "System.map")]


def test_unresolved_symbol_is_a_warning_by_default(tmp_path: Path) -> None:
    b = make_build(tmp_path, ON)
    b.overlay({OVERLAY_KO: overlay_ko(extra_needs=(b"moddep_missing_symbol",))})
    r = b.run()
    assert r.returncode == 0, r.stderr
    assert (f"depmod: WARNING: {b.moddir}/extra/moddep_overlay.ko needs unknown symbol "
            "moddep_missing_symbol") in r.stderr.splitlines()
    assert "1 unresolved or mismatched module symbol(s) in 6.1.0-50-amd64 (warnings only)" \
        in r.stderr


def test_fail_on_unresolved_symbols(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_FAIL_ON_UNRESOLVED": "y"})
    b.overlay({OVERLAY_KO: overlay_ko(extra_needs=(b"moddep_missing_symbol",))})
    r = b.run()
    assert r.returncode == 1
    assert "needs unknown symbol moddep_missing_symbol" in r.stderr
    assert r.stderr.rstrip().endswith(
        "moddep-depmod: ERROR: 1 unresolved or mismatched module symbol(s) in 6.1.0-50-amd64 "
        "(BR2_PACKAGE_HOST_PYTHON_MODDEP_FAIL_ON_UNRESOLVED)")


def test_fail_on_symbol_version_mismatch(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_FAIL_ON_UNRESOLVED": "y"})
    b.overlay({OVERLAY_KO: overlay_ko(bad_crc=True)})
    r = b.run()
    assert r.returncode == 1
    assert (f"depmod: WARNING: {b.moddir}/extra/moddep_overlay.ko disagrees about version of "
            "symbol _printk") in r.stderr.splitlines()
    assert "ERROR: 1 unresolved or mismatched" in r.stderr


def test_fail_on_unresolved_without_kernel_symbols_is_an_error(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_FAIL_ON_UNRESOLVED": "y"}, kernel_dir=False)
    r = b.run()
    assert r.returncode == 1
    assert "needs the kernel's Module.symvers or System.map" in r.stderr
    assert depmod_calls(b) == []


def test_clean_tree_passes_with_every_check(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_FAIL_ON_UNRESOLVED": "y"})
    b.overlay({OVERLAY_KO: overlay_ko()})
    r = b.run()
    assert r.returncode == 0, r.stderr
    assert "unresolved" not in r.stderr


def _stub_verify(b: Build, rc: int) -> Path:
    """A moddep whose 'verify' answers ``rc`` (the hook's plumbing, whatever verify finds)."""
    stub = b.base / "stub-moddep"
    stub.write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = verify ]; then echo "$*" >> {b.base}/verify.args; '
        f'echo "verify: stub finding" >&2; exit {rc}; fi\n'
        f'exec {b.host}/bin/moddep "$@"\n')
    stub.chmod(0o755)
    return stub


@pytest.mark.parametrize("rc", [0, 1, 2])
def test_verify_option_runs_verify_and_fails_on_its_findings(tmp_path: Path, rc: int) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_VERIFY": "y",
                              f"{OPT}_VERIFY_OPTS": '"--fail-on warning"'})
    r = b.run(env=b.env(MODDEP=str(_stub_verify(b, rc))))
    assert (b.base / "verify.args").read_text() == (
        f"verify -b {b.target} --kmod-version 34 -E {b.linux / 'Module.symvers'} -j 2 "
        f"--fail-on warning {KVER}\n")
    if rc == 0:
        assert r.returncode == 0, r.stderr
    else:
        assert r.returncode == 1
        assert (f"moddep-depmod: ERROR: moddep verify found problems in "
                f"{b.moddir} (exit {rc})") in r.stderr


def _has_verify() -> bool:
    from moddep import cli

    return "verify" in cli._available()


@pytest.mark.skipif(_has_verify(), reason="this moddep has a verify command")
def test_verify_option_without_a_verify_command_fails_loudly(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_VERIFY": "y"})
    r = b.run()
    assert r.returncode == 1
    assert "unknown command 'verify'" in r.stderr
    assert "ERROR: moddep verify found problems" in r.stderr


@pytest.mark.skipif(not _has_verify(), reason="moddep verify (issue 6) is not in this tree")
def test_verify_option_with_real_verify(tmp_path: Path) -> None:
    b = make_build(tmp_path, {**ON, f"{OPT}_VERIFY": "y"})
    b.overlay({OVERLAY_KO: overlay_ko()})
    clean = b.run()
    assert clean.returncode == 0, clean.stdout + clean.stderr
    (verify,) = [c for c in calls(b.log) if c[1] == "verify"]
    assert verify[2:-1] == ["-b", str(b.target), "--kmod-version", "34",
                            "-E", str(b.linux / "Module.symvers"), "-j", "2", KVER]
    # the fault: a module others need is gone (uas and the overlay module use usb-storage)
    (b.moddir / "kernel/drivers/usb/storage/usb-storage.ko").unlink()
    faulty = b.run()
    assert faulty.returncode == 1
    assert "usb_stor_adjust_quirks" in faulty.stdout  # verify's report names the symbol
    assert f"ERROR: moddep verify found problems in {b.moddir} (exit 1)" in faulty.stderr


def test_kernel_release_from_linux_version_probed(tmp_path: Path) -> None:
    b = make_build(tmp_path, ON, kernel_dir=False, prior_index=False)
    other = b.target / "lib" / "modules" / "6.1.0-99-other"
    shutil.copytree(b.moddir / "kernel" / "fs", other / "kernel" / "fs")
    r = b.run()  # two kernels and nothing to choose by
    assert r.returncode == 2
    assert "modules for several kernels" in r.stderr and "pass --kver=VERSION" in r.stderr
    r = b.run(env=b.env(LINUX_VERSION_PROBED=KVER))
    assert r.returncode == 0, r.stderr
    assert (b.moddir / "modules.dep").exists() and not (other / "modules.dep").exists()
    assert depmod_calls(b)[-1][-2] == KVER


def test_kernel_release_from_the_kernel_build_directory(tmp_path: Path) -> None:
    b = make_build(tmp_path, ON, prior_index=False)
    shutil.copytree(b.moddir / "kernel" / "fs",
                    b.target / "lib" / "modules" / "6.1.0-99-other" / "kernel" / "fs")
    r = b.run()
    assert r.returncode == 0, r.stderr
    assert depmod_calls(b)[-1][-2] == KVER


def test_merged_usr_layout(tmp_path: Path) -> None:
    """BR2_ROOTFS_MERGED_USR: /lib is a link to usr/lib, overlays put modules in /usr/lib."""
    b = make_build(tmp_path, ON)
    (b.target / "usr").mkdir()
    (b.target / "lib").rename(b.target / "usr" / "lib")
    (b.target / "lib").symlink_to("usr/lib")
    b.overlay({f"usr/{OVERLAY_KO}": overlay_ko()})
    r = b.run()
    assert r.returncode == 0, r.stderr
    dep = (b.target / "usr" / "lib" / "modules" / KVER / "modules.dep").read_text()
    assert f"extra/moddep_overlay.ko: {USB_DEPS}" in dep.splitlines()
    assert (b.target / "lib").is_symlink()


def test_nothing_to_index(tmp_path: Path) -> None:
    b = make_build(tmp_path, ON)
    shutil.rmtree(b.target / "lib")
    r = b.run()
    assert r.returncode == 0
    assert "no kernel modules to index" in r.stderr
    assert calls(b.log) == []


def test_target_from_environment_and_bad_usage(tmp_path: Path) -> None:
    b = make_build(tmp_path, ON, prior_index=False)
    r = b.run(target_arg=False)  # TARGET_DIR from the environment
    assert r.returncode == 0, r.stderr
    assert (b.moddir / "modules.dep").exists()
    env = b.env()
    del env["TARGET_DIR"]
    r = b.run(target_arg=False, env=env)
    assert r.returncode == 2 and "no target directory" in r.stderr
    b.set_config({**ON, f"{OPT}_KMOD_VERSION": "29"})
    r = b.run()
    assert r.returncode == 2 and "'29' is not one of 30..34" in r.stderr


@pytest.mark.oracle
def test_image_index_matches_kmod(tmp_path: Path) -> None:
    """The image's final index (sample tree + overlay module) equals kmod 34.2's for it."""
    try:
        kmod = debcache.kmod_depmod(34)
    except debcache.Unavailable as e:
        pytest.skip(f"kmod 34 unavailable: {e}")
    b = make_build(tmp_path, ON)
    b.overlay({OVERLAY_KO: overlay_ko()})
    ref = tmp_path / "kmod-root"
    shutil.copytree(b.target, ref, symlinks=True)
    (tmp_path / "empty-conf").mkdir()
    assert b.run().returncode == 0
    proc = subprocess.run([*kmod, "-a", "-b", str(ref), "-C", str(tmp_path / "empty-conf"),
                           "-e", "-E", str(b.linux / "Module.symvers"), KVER],
                          capture_output=True, text=True, timeout=300, env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert index_files(b.moddir) == index_files(ref / "lib" / "modules" / KVER)


# --------------------------------------------------------------------------- make fragments

HARNESS = """\
# Stand-in for the parts of Buildroot's Makefile that external.mk and the package .mk files
# use (the real definitions: Makefile, package/pkg-generic.mk, package/pkg-python.mk,
# linux/linux.mk, fs/common.mk, support/misc/utils.mk).
define sep


endef
qstrip = $(strip $(subst ",,$(1)))
include $(BR2_CONFIG)
BR2_EXTERNAL_MODDEP_PATH = {br}
BUILD_DIR = {base}/build
HOST_DIR = {base}/host
BASE_TARGET_DIR = {base}/target
PARALLEL_JOBS = 2
LINUX_DIR = $(BUILD_DIR)/linux-{version}
# linux.mk asks the kernel's Makefile ('make -s kernelrelease'); same answer:
LINUX_VERSION_PROBED = `cat $(LINUX_DIR)/include/config/kernel.release`
# fs/common.mk: inside an image's rules TARGET_DIR is the image's copy of the target
TARGET_DIR = $(if $(ROOTFS),$(BUILD_DIR)/buildroot-fs/$(ROOTFS)/target,$(BASE_TARGET_DIR))
python-package =
host-python-package =
define LINUX_RUN_DEPMOD
	$(HOST_DIR)/sbin/depmod -a -b $(TARGET_DIR) $(LINUX_VERSION_PROBED)
endef
TARGET_FINALIZE_HOOKS += LINUX_RUN_DEPMOD
include $(BR2_EXTERNAL_MODDEP_PATH)/external.mk

# What fs/common.mk writes into an image's fakeroot script for ROOTFS_PRE_CMD_HOOKS
fakeroot-script: ROOTFS = ext2
fakeroot-script:
	@:$(foreach hook,$(ROOTFS_PRE_CMD_HOOKS),$(file >>$(OUT),$($(hook))))
# What target-finalize runs for TARGET_FINALIZE_HOOKS
target-finalize-script:
	@:$(foreach hook,$(TARGET_FINALIZE_HOOKS),$(file >>$(OUT),$($(hook))))
print-%:
	@:$(info $($*))
"""


def _make(b: Build, harness: Path, *goals: str, **variables: str) -> str:
    args = [f"{k}={v}" for k, v in variables.items()]
    proc = subprocess.run(["make", "-s", "-f", str(harness), f"BR2_CONFIG={b.config}",
                           *args, *goals], capture_output=True, text=True,
                          env=clean_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.fixture
def harness(tmp_path: Path) -> Path:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    h = tmp_path / "Makefile.harness"
    h.write_text(HARNESS.format(br=BR, base=tmp_path / "output", version=LINUX_VERSION))
    return h


def test_rootfs_hook_indexes_the_image_copy(tmp_path: Path, harness: Path) -> None:
    b = make_build(tmp_path, ON)
    b.overlay({OVERLAY_KO: overlay_ko()})
    # the image's copy of the target, made after target-finalize (overlays, post-build)
    fs_target = b.build / "buildroot-fs" / "ext2" / "target"
    shutil.copytree(b.target, fs_target, symlinks=True)
    script = tmp_path / "fakeroot"
    _make(b, harness, "fakeroot-script", OUT=str(script))
    hook = script.read_text()
    assert hook.strip() == (
        f"MODDEP={b.host}/bin/moddep BUILD_DIR={b.build} PARALLEL_JOBS=2 {SCRIPT} {fs_target} "
        f"--kver=`cat {b.linux}/include/config/kernel.release` "
        f"--kernel-build-dir={b.linux}")
    proc = subprocess.run(["sh", "-e", str(script)], env=b.env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fs_moddir = fs_target / "lib" / "modules" / KVER
    assert f"extra/moddep_overlay.ko: {USB_DEPS}" in (fs_moddir / "modules.dep").read_text()
    # the base target directory is not the image's: untouched by the image step
    assert "moddep_overlay" not in (b.moddir / "modules.dep").read_text()
    assert depmod_calls(b)[0][3:8] == ["-b", str(fs_target), "--kmod-version", "34", "-e"]


def test_target_finalize_depmod_is_replaced(tmp_path: Path, harness: Path) -> None:
    b = make_build(tmp_path, ON, prior_index=False)
    script = tmp_path / "finalize"
    _make(b, harness, "target-finalize-script", OUT=str(script))
    text = " ".join(script.read_text().split())
    assert "/sbin/depmod" not in text  # host-kmod's depmod no longer runs
    assert text == (
        f"MODDEP={b.host}/bin/moddep BUILD_DIR={b.build} PARALLEL_JOBS=2 {SCRIPT} {b.target} "
        f"--kver=`cat {b.linux}/include/config/kernel.release` "
        f"--kernel-build-dir={b.linux} --no-verify --no-fail-on-unresolved")
    proc = subprocess.run(["sh", "-e", str(script)], env=b.env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert index_files(b.moddir) == {p.name: p.read_bytes()
                                     for p in (EXPECTED / "kmod34").glob("modules.*")}


def test_disabled_step_leaves_buildroot_alone(tmp_path: Path, harness: Path) -> None:
    b = make_build(tmp_path, {OPT: "y", f"{OPT}_DEPMOD": "n"})
    assert _make(b, harness, "print-ROOTFS_PRE_CMD_HOOKS").strip() == ""
    assert _make(b, harness, "print-LINUX_RUN_DEPMOD").strip() == (
        f"{b.host}/sbin/depmod -a -b {b.target} `cat {b.linux}/include/config/kernel.release`")


def test_package_makefiles(tmp_path: Path, harness: Path) -> None:
    b = make_build(tmp_path, {**ON, "BR2_PACKAGE_MODDEP_RUNTIME": "y",
                              "BR2_PACKAGE_MODDEP_RUNTIME_KMOD_NAMES": "y"})

    def value(name: str) -> str:
        return _make(b, harness, f"print-{name}").strip()

    version = _pyproject_version()
    for pkg in ("PYTHON_MODDEP", "MODDEP_RUNTIME"):
        assert value(f"{pkg}_VERSION") == version
        assert Path(value(f"{pkg}_SITE")).resolve() == REPO
        assert value(f"{pkg}_SITE_METHOD") == "local"
        assert value(f"{pkg}_SETUP_TYPE") == "setuptools"
    assert value("MODDEP_RUNTIME_TARGET_FINALIZE_HOOKS") == "MODDEP_RUNTIME_INSTALL_KMOD_NAMES"
    # run the hook's commands as target-finalize would
    links = value("MODDEP_RUNTIME_INSTALL_KMOD_NAMES")
    subprocess.run(["sh", "-ec", links], check=True)
    for tool in ("depmod", "modprobe", "insmod", "rmmod", "lsmod", "modinfo"):
        assert os.readlink(b.target / "sbin" / tool) == "/usr/bin/moddep"


# --------------------------------------------------------------------------- tree layout


def _pyproject_version() -> str:
    m = re.search(r'^version = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    assert m
    return m.group(1)


def _external_name() -> str:
    # support/scripts/br2-external: sed '/^name: +(.*)$/!d; s//\1/'
    names = re.findall(r"^name: +(.*)$", (BR / "external.desc").read_text(), re.M)
    assert len(names) == 1
    return names[0]


def test_external_desc() -> None:
    text = (BR / "external.desc").read_text()
    for line in text.splitlines():
        assert re.match(r"^(name|desc): +\S", line), line  # keyword, colon, spaces, value
    assert re.fullmatch(r"[A-Za-z0-9_]+", _external_name())
    (desc,) = re.findall(r"^desc: +(.*)$", text, re.M)
    assert 0 < len(desc) <= 40  # the manual: one line, 40 characters a good upper limit


def test_mandatory_files_and_sourcing() -> None:
    name = _external_name()
    var = f"BR2_EXTERNAL_{name}_PATH"
    for f in ("external.desc", "external.mk", "Config.in"):
        assert (BR / f).is_file()
    sources = re.findall(r'^\s*source\s+"([^"]+)"', (BR / "Config.in").read_text(), re.M)
    assert sources
    for s in sources:
        assert s.startswith(f"${var}/"), s
        assert (BR / s[len(var) + 2:]).is_file(), s
    mk = (BR / "external.mk").read_text()
    includes = re.findall(r"^include (.*)$", mk, re.M)
    assert includes == [f"$(sort $(wildcard $({var})/package/*/*.mk))"]
    for ref in re.findall(r"\$\((BR2_EXTERNAL_\w+_PATH)\)", mk):
        assert ref == var
    # every package is reachable from Config.in
    pkgs = sorted(p.name for p in (BR / "package").iterdir() if p.is_dir())
    assert pkgs == ["moddep-runtime", "python-moddep"]
    for pkg in pkgs:
        assert any(s.split("/")[-2] == pkg for s in sources), pkg


def _kconfig_symbols(path: Path) -> dict[str, str]:
    """``config NAME`` -> its type, checking the Kconfig layout Buildroot uses."""
    text = path.read_text()
    out: dict[str, str] = {}
    blocks = re.split(r"^(?=config |if |endif|comment |menu|endmenu)", text, flags=re.M)
    depth = 0
    for block in blocks:
        head = block.split("\n", 1)[0]
        if head.startswith("if "):
            depth += 1
        elif head.startswith("endif"):
            depth -= 1
            assert depth >= 0, path
        elif head.startswith("config "):
            name = head.split()[1]
            types = re.findall(r"^\t(bool|int|string|hex|tristate)\b", block, re.M)
            assert len(types) == 1, (path, name)
            out[name] = types[0]
            body = block.split("\n")[1:]
            if "\thelp" in body:
                help_lines = body[body.index("\thelp") + 1:]
                for line in help_lines:
                    assert line == "" or line.startswith("\t  "), (path, name, line)
    assert depth == 0, path
    return out


def test_package_files_follow_buildroot_conventions() -> None:
    symbols: dict[str, str] = {}
    for pkg_dir in sorted((BR / "package").iterdir()):
        pkg = pkg_dir.name
        upper = pkg.upper().replace("-", "_")
        mk = (pkg_dir / f"{pkg}.mk").read_text()
        # the header block of every Buildroot .mk
        assert mk.startswith(f"{'#' * 80}\n#\n# {pkg}\n#\n{'#' * 80}\n"), pkg
        # every variable is the package's own (<PKG>_..., or HOST_<PKG>_... for host options)
        assigned = re.findall(r"^(?:define\s+)?([A-Z][A-Z0-9_]*)\s*(?:[+:?]?=|$)", mk, re.M)
        for v in assigned:
            assert v.startswith((f"{upper}_", f"HOST_{upper}_")), (pkg, v)
        host = (pkg_dir / "Config.in.host").exists()
        target = (pkg_dir / "Config.in").exists()
        assert host or target
        evals = re.findall(r"^\$\(eval \$\(([a-z-]+)\)\)$", mk, re.M)
        assert evals == (["host-python-package"] if host else ["python-package"]), pkg
        if host:
            found = _kconfig_symbols(pkg_dir / "Config.in.host")
            assert found.get(f"BR2_PACKAGE_HOST_{upper}") == "bool"
            assert all(n.startswith(f"BR2_PACKAGE_HOST_{upper}") for n in found)
            symbols.update(found)
        if target:
            found = _kconfig_symbols(pkg_dir / "Config.in")
            assert found.get(f"BR2_PACKAGE_{upper}") == "bool"
            assert all(n.startswith(f"BR2_PACKAGE_{upper}") for n in found)
            symbols.update(found)
        assert re.search(rf"^{upper}_SETUP_TYPE = setuptools$", mk, re.M)
        assert re.search(rf"^{upper}_VERSION = {re.escape(_pyproject_version())}$", mk, re.M)
    # every option the script and the .mk files read is defined, with the type they assume
    used = set(re.findall(r"BR2_PACKAGE_(?:HOST_PYTHON_MODDEP|MODDEP_RUNTIME)\w*",
                          (BR / "external.mk").read_text()
                          + "".join(p.read_text() for p in (BR / "package").glob("*/*.mk"))))
    script = SCRIPT.read_text()
    used |= {f"{OPT}{suffix}" for suffix in re.findall(r"\$\{opt\}(_\w+)", script)}
    assert used - set(symbols) == set()
    assert symbols[f"{OPT}_KMOD_VERSION"] == "int"
    assert symbols[f"{OPT}_VERIFY_OPTS"] == symbols[f"{OPT}_DEPMOD_OPTS"] == "string"


def test_script_is_posix_shell() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/bin/sh\n")
    for shell in ("sh", "dash", "bash"):
        if shutil.which(shell):
            subprocess.run([shell, "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-s", "sh", str(SCRIPT)], check=True)


def test_readme_covers_enabling_and_replacing() -> None:
    text = (BR / "README.md").read_text()
    for needle in ("BR2_EXTERNAL=", "BR2_PACKAGE_HOST_PYTHON_MODDEP", "ROOTFS_PRE_CMD_HOOKS",
                   "LINUX_RUN_DEPMOD", "host-kmod", "BR2_ROOTFS_POST_FAKEROOT_SCRIPT",
                   "moddep-depmod.sh"):
        assert needle in text, needle
