"""moddep as the kernel's DEPMOD: ``make modules_install DEPMOD=...`` runs the kernel's
``scripts/depmod.sh DEPMOD KERNELRELEASE`` in the object tree, with INSTALL_MOD_PATH exported.

The script is the real one, from Debian's ``linux-kbuild-6.1`` package; the tree is Debian's
full amd64 kernel package. The script wants a System.map in its working directory: Debian's
linux-image ships only a one-line stub (the real one is in the 850 MB -dbg package), so the
test writes an equivalent from ``Module.symvers`` of the matching ``linux-headers`` package:
one ``__ksymtab_NAME`` line per symbol vmlinux exports, which is all depmod -F reads.

The same script then runs with kmod 34.2's depmod as DEPMOD on a second copy; indexes and
messages must be identical, and the indexes also equal kmod's for the pristine tree.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import debcache
import pytest
from test_integrations_support import (
    calls,
    clean_env,
    index_files,
    launcher,
    system_map_from_symvers,
)

pytestmark = pytest.mark.oracle


class Kbuild:
    """The pieces: depmod.sh, a System.map, the pristine tree and kmod 34's depmod."""

    def __init__(self) -> None:
        self.tree = debcache.kernel_tree("amd64")
        (kbuild_deb,) = debcache.download_debs(["linux-kbuild-6.1"], "amd64")
        (headers_deb,) = debcache.download_debs([f"linux-headers-{self.tree.kver}"], "amd64")
        version = debcache.deb_field(headers_deb, "Version")
        if version != self.tree.version:
            raise debcache.Unavailable(
                f"linux-headers-{self.tree.kver} is {version}, the image {self.tree.version}")
        kbuild = debcache.extract_deb(kbuild_deb, debcache.CACHE / "extract" / kbuild_deb.stem)
        headers = debcache.extract_deb(headers_deb,
                                       debcache.CACHE / "extract" / headers_deb.stem)
        (self.depmod_sh,) = kbuild.glob("usr/lib/linux-kbuild-*/scripts/depmod.sh")
        (symvers,) = headers.glob(f"usr/src/linux-headers-{self.tree.kver}/Module.symvers")
        self.system_map = system_map_from_symvers(symvers.read_bytes())
        self.kmod = debcache.kmod_depmod(34)


@pytest.fixture(scope="module")
def kb() -> Kbuild:
    try:
        return Kbuild()
    except debcache.Unavailable as e:
        pytest.skip(f"Debian packages unavailable: {e}")


def kmod_program(kb: Kbuild, path: Path) -> Path:
    """An executable ``depmod`` running kmod 34.2's depmod (for DEPMOD=)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\nexec {shlex.join(kb.kmod)} \"$@\"\n")
    path.chmod(0o755)
    return path


def modules_install_depmod(kb: Kbuild, depmod: Path, root: Path, work: Path,
                           log: Path) -> subprocess.CompletedProcess[str]:
    """What the kernel Makefile's cmd_depmod does after modules_install: in the object tree,
    ``$(CONFIG_SHELL) scripts/depmod.sh $(DEPMOD) $(KERNELRELEASE)``, INSTALL_MOD_PATH set."""
    obj = work / "obj"
    obj.mkdir(parents=True, exist_ok=True)
    (obj / "System.map").write_bytes(kb.system_map)
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    env = clean_env(INSTALL_MOD_PATH=str(root), TMPDIR=str(tmp), MODDEP_TEST_ARGV_LOG=str(log))
    return subprocess.run(["sh", str(kb.depmod_sh), str(depmod), kb.tree.kver], cwd=obj,
                          env=env, capture_output=True, text=True, timeout=1200)


def both(kb: Kbuild, tmp_path: Path, fault: str = "") -> tuple[
        subprocess.CompletedProcess[str], subprocess.CompletedProcess[str], Path, Path]:
    """depmod.sh with moddep and with kmod as DEPMOD, each on its own copy of the tree."""
    ours = debcache.copy_tree(kb.tree, tmp_path / "moddep-root")
    theirs = debcache.copy_tree(kb.tree, tmp_path / "kmod-root")
    if fault:
        for t in (ours, theirs):
            (t.moddir / fault).unlink()
    log = tmp_path / "calls.log"
    a = modules_install_depmod(kb, launcher(tmp_path / "bin-moddep" / "depmod"), ours.root,
                               tmp_path / "moddep-work", log)
    b = modules_install_depmod(kb, kmod_program(kb, tmp_path / "bin-kmod" / "depmod"),
                               theirs.root, tmp_path / "kmod-work", tmp_path / "unused.log")
    return a, b, ours.moddir, theirs.moddir


def test_depmod_sh_calls_moddep_as_kmod(kb: Kbuild, tmp_path: Path) -> None:
    ours, theirs, mod_a, mod_b = both(kb, tmp_path)
    assert ours.returncode == 0, ours.stderr
    assert theirs.returncode == 0, theirs.stderr
    # how depmod.sh calls DEPMOD: a probe on an empty tree (whether depmod accepts the
    # release as it is, else it would use a 99.98.<release> symlink), then the real run
    probe, real = calls(tmp_path / "calls.log")
    assert probe[0] == "depmod" and probe[1] == "-b" and probe[3:] == [
        kb.tree.kver, str(tmp_path / "moddep-work" / "obj")]
    assert re.fullmatch(re.escape(str(tmp_path / "moddep-work" / "tmp")) + r"/depmod\.\w{6}",
                        probe[2])
    assert real == ["depmod", "-ae", "-F", "System.map", "-b", str(mod_a.parents[2]),
                    kb.tree.kver, str(tmp_path / "moddep-work" / "obj")]
    assert not list(mod_a.parent.glob("99.98.*"))  # no symlink hack needed or left
    assert list((tmp_path / "moddep-work" / "tmp").iterdir()) == []  # probe tree removed
    # identical to kmod: through the same script, and for the pristine tree
    assert ours.stderr == theirs.stderr == ""
    assert ours.stdout == theirs.stdout
    produced = index_files(mod_a)
    assert produced == index_files(mod_b)
    ref = debcache.reference(kb.tree, 34)
    assert produced == {n: (ref / n).read_bytes() for n in debcache.OUTPUT_FILES
                        if (ref / n).exists()}


def test_depmod_sh_reports_a_missing_symbol(kb: Kbuild, tmp_path: Path) -> None:
    # usb-storage exports what uas (and others) need
    ours, theirs, mod_a, mod_b = both(kb, tmp_path,
                                      fault="kernel/drivers/usb/storage/usb-storage.ko")
    assert ours.returncode == theirs.returncode == 0
    warnings = ours.stderr.splitlines()
    uas = f"depmod: WARNING: {mod_a}/kernel/drivers/usb/storage/uas.ko needs unknown symbol "
    assert any(w.startswith(uas + "usb_stor_") for w in warnings), ours.stderr
    # every warning names a symbol usb-storage exported, needed by a module of its directory
    ref = debcache.reference(kb.tree, 34)
    exported = {line.split()[1][len("symbol:"):]
                for line in (ref / "modules.symbols").read_text().splitlines()
                if line.endswith(" usb_storage")}
    pattern = re.compile(re.escape(f"depmod: WARNING: {mod_a}/kernel/drivers/usb/storage/")
                         + r"[\w-]+\.ko needs unknown symbol (\w+)")
    names = set()
    for w in warnings:
        m = pattern.fullmatch(w)
        assert m, w
        names.add(m.group(1))
    assert names and names <= exported
    # the same messages as kmod's, root path aside
    assert ours.stderr.replace(str(mod_a.parents[2]), "ROOT") == \
        theirs.stderr.replace(str(mod_b.parents[2]), "ROOT")
    assert index_files(mod_a) == index_files(mod_b)


def test_depmod_sh_without_install_mod_path_uses_the_root(kb: Kbuild, tmp_path: Path) -> None:
    """No INSTALL_MOD_PATH: depmod.sh passes no -b (a real install into /); the probe alone
    runs here, since the test must not index the host's /lib/modules."""
    env = clean_env(TMPDIR=str(tmp_path), MODDEP_TEST_ARGV_LOG=str(tmp_path / "calls.log"))
    depmod = launcher(tmp_path / "bin" / "depmod")
    obj = tmp_path / "obj"
    obj.mkdir()
    (obj / "System.map").write_bytes(kb.system_map)
    # a DEPMOD that records the real call and stops there
    stop = tmp_path / "bin" / "depmod-stop"
    stop.write_text(f'#!/bin/sh\ncase " $* " in *" -ae "*) echo "$*" > {tmp_path}/real; '
                    f'exit 0;; esac\nexec {depmod} "$@"\n')
    stop.chmod(0o755)
    proc = subprocess.run(["sh", str(kb.depmod_sh), str(stop), kb.tree.kver], cwd=obj, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "real").read_text() == f"-ae -F System.map {kb.tree.kver}\n"
    assert os.path.basename(calls(tmp_path / "calls.log")[0][0]) == "depmod"


def test_depmod_sh_skips_without_system_map(kb: Kbuild, tmp_path: Path) -> None:
    depmod = launcher(tmp_path / "bin" / "depmod")
    obj = tmp_path / "obj"
    obj.mkdir()
    proc = subprocess.run(["sh", str(kb.depmod_sh), str(depmod), kb.tree.kver], cwd=obj,
                          env=clean_env(MODDEP_TEST_ARGV_LOG=str(tmp_path / "calls.log")),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "missing 'System.map' file. Skipping depmod." in proc.stderr
    assert calls(tmp_path / "calls.log") == []
    shutil.rmtree(obj)
