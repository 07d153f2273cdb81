"""Confinement: with ``-b ROOT`` nothing is read or written outside ROOT (``-o``: OUTDIR).

Every way out is tried: module symlinks (absolute to the host, relative with ``..``), a
symlinked module subdirectory, a symlinked ``etc/depmod.d`` (to the host's ``/etc/depmod.d``
and to another host directory), a symlinked config file, ``external`` directories (relative,
``..`` above the root, through a symlink), ``modules.builtin`` and ``modules.order`` as symlinks,
and symlinked module and output directories. Each is reported and skipped (or, for the module
and output directories, refused with an error) and nothing from the "host" directory next to
the root reaches the indexes. Links that stay inside the image (absolute ones included: they
are followed inside the root, as the target will follow them) keep working. ``--host-config``
(kmod's host mode) may read host configuration and external directories, but its outputs are
still confined. The publisher only ever renames inside the output directory, even when a
hostile journal is planted there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kofactory import Module

from moddep.cli import main
from moddep.publish import JOURNAL, TMP_MARK, publish
from moddep.rootfs import EscapeError, Root

KVER = "6.1.0-1-amd64"


def _module(name: str, needs: tuple[str, ...] = ()) -> bytes:
    return Module(modinfo=[(b"alias", f"{name}-alias".encode()), (b"license", b"GPL")],
                  exports=[(f"{name}_fn".encode(), 0x1000 + len(name))],
                  undefined=[(f"{n}_fn".encode(), False) for n in needs]).build()


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, module dir, host dir): a two-module image and a "host" holding decoys."""
    root = tmp_path / "root"
    moddir = root / "lib/modules" / KVER
    (moddir / "kernel").mkdir(parents=True)
    (moddir / "kernel/a.ko").write_bytes(_module("a"))
    (moddir / "kernel/b.ko").write_bytes(_module("b", ("a",)))
    (root / "etc/depmod.d").mkdir(parents=True)
    host = tmp_path / "host"
    (host / "extra").mkdir(parents=True)
    (host / "extra/hostmod.ko").write_bytes(_module("hostmod"))
    (host / "depmod.d").mkdir()
    (host / "depmod.d/host.conf").write_text("exclude kernel\n")  # would hide every module
    (host / "builtin").write_text("kernel/host_secret.ko\n")
    return root, moddir, host


def depmod(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    rc = main(["depmod", "-b", str(root), *extra, KVER])
    return rc, capsys.readouterr().err


def outputs(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.glob("modules.*"))
                    if not p.is_symlink())


def assert_no_host_content(moddir: Path) -> None:
    text = outputs(moddir)
    assert b"hostmod" not in text and b"host_secret" not in text
    assert b"kernel/a.ko" in text and b"kernel/b.ko" in text


# --- module files -----------------------------------------------------------------------------


def test_module_symlink_to_the_host_is_refused(tree: tuple[Path, Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (moddir / "extra").mkdir()
    link = moddir / "extra/hostmod.ko"
    link.symlink_to(host / "extra/hostmod.ko")
    rc, err = depmod(root, capsys)
    assert rc == 0
    assert f"{link}: /lib/modules/{KVER}/extra/hostmod.ko: a symbolic link leads out of the " \
           f"root {root}: skipped" in err
    assert_no_host_content(moddir)


def test_module_symlink_climbing_out_is_refused(tree: tuple[Path, Path, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    rel = os.path.relpath(host / "extra/hostmod.ko", moddir / "kernel")
    (moddir / "kernel/hostmod.ko").symlink_to(rel)
    rc, err = depmod(root, capsys)
    assert rc == 0 and "'..' leads out of the root: skipped" in err
    assert_no_host_content(moddir)


def test_symlinked_module_subdirectory_to_the_host_is_refused(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (moddir / "extra").symlink_to(host / "extra")
    rc, err = depmod(root, capsys)
    assert rc == 0 and f"{moddir / 'extra'}: /lib/modules/{KVER}/extra: a symbolic link leads " \
                       "out of the root" in err
    assert_no_host_content(moddir)


def test_links_inside_the_image_are_followed_inside_it(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """An absolute link means the target's path: read from the root, never from the host
    (the host has no /lib/modules/KVER, so host semantics would find nothing)."""
    root, moddir, _host = tree
    (moddir / "updates").mkdir()
    (moddir / "kernel/c.ko").write_bytes(_module("c"))
    (moddir / "updates/c.ko").symlink_to(f"/lib/modules/{KVER}/kernel/c.ko")
    (root / "opt/other").mkdir(parents=True)
    (root / "opt/other/f.ko").write_bytes(_module("f", ("c",)))
    (moddir / "updates/d").symlink_to("../../../../opt/other")  # relative, to a directory
    rc, err = depmod(root, capsys)
    assert rc == 0 and "skipped" not in err, err
    dep = (moddir / "modules.dep").read_text()
    symbols = (moddir / "modules.symbols").read_text()
    assert "updates/c.ko:\n" in dep and "updates/d/f.ko: updates/c.ko\n" in dep
    assert "alias symbol:c_fn c" in symbols


def test_module_given_on_the_command_line_stays_inside(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (moddir / "kernel/evil.ko").symlink_to(host / "extra/hostmod.ko")
    rc = main(["depmod", "-b", str(root), KVER, f"/lib/modules/{KVER}/kernel/evil.ko"])
    err = capsys.readouterr().err
    assert rc == 1 and "a symbolic link leads out of the root" in err
    assert not (moddir / "modules.dep").exists()


# --- configuration ---------------------------------------------------------------------------


def test_depmod_d_linked_to_the_hosts_etc_is_refused(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, _host = tree
    (root / "etc/depmod.d").rmdir()
    (root / "etc/depmod.d").symlink_to("/etc/depmod.d")
    rc, err = depmod(root, capsys)
    assert rc == 0
    assert "configuration directory /etc/depmod.d: too many levels of symbolic links " \
           "(absolute links are followed inside the root): skipped" in err
    assert_no_host_content(moddir)


def test_depmod_d_linked_to_a_host_directory_is_refused(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (root / "etc/depmod.d").rmdir()
    (root / "etc/depmod.d").symlink_to(host / "depmod.d")
    rc, err = depmod(root, capsys)
    assert rc == 0 and "configuration directory /etc/depmod.d: a symbolic link leads out of " \
                       "the root" in err
    assert_no_host_content(moddir)  # "exclude kernel" from the host was not applied


def test_config_file_linked_to_the_host_is_refused(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (root / "etc/depmod.d/evil.conf").symlink_to(host / "depmod.d/host.conf")
    rc, err = depmod(root, capsys)
    assert rc == 0 and "configuration file /etc/depmod.d/evil.conf: a symbolic link leads " \
                       "out of the root" in err
    assert_no_host_content(moddir)


@pytest.mark.parametrize("spec,message", [
    ("../../../host/extra", "external directory ../../../host/extra: not an absolute path "
                            "inside the root: skipped"),
    ("/../../host/extra", "external directory /../../host/extra: '..' leads out of the root: "
                          "skipped"),
    ("/opt/ext", "external directory /opt/ext: a symbolic link leads out of the root"),
])
def test_external_directory_leaving_the_root_is_refused(
        spec: str, message: str, tree: tuple[Path, Path, Path],
        capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (root / "opt").mkdir()
    (root / "opt/ext").symlink_to(host / "extra")
    (root / "etc/depmod.d/ext.conf").write_text(f"search external built-in\nexternal * {spec}\n")
    rc, err = depmod(root, capsys)
    assert rc == 0 and message in err, err
    assert_no_host_content(moddir)


def test_external_directory_inside_the_root_is_used(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, _host = tree
    (root / "opt/ext").mkdir(parents=True)
    (root / "opt/ext/e.ko").write_bytes(_module("e"))
    (root / "opt/link").symlink_to("/opt/ext")  # absolute, inside the image
    (root / "etc/depmod.d/ext.conf").write_text("search external built-in\nexternal * /opt/link\n")
    rc, err = depmod(root, capsys)
    assert rc == 0 and "skipped" not in err
    assert "/opt/link/e.ko:" in (moddir / "modules.dep").read_text()


def test_host_config_mode_may_read_the_host(tree: tuple[Path, Path, Path],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """kmod's host mode: -C and external directories are host paths (exempt)."""
    root, moddir, host = tree
    conf = host / "ext.conf"
    conf.write_text(f"search external built-in\nexternal * {host / 'extra'}\n")
    rc, err = depmod(root, capsys, "--host-config", "-C", str(conf))
    assert rc == 0, err
    assert f"{host / 'extra/hostmod.ko'}:" in (moddir / "modules.dep").read_text()


# --- files in the module directory, outputs ------------------------------------------------------


def test_builtin_list_linked_to_the_host_is_not_read(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (moddir / "modules.builtin").symlink_to(host / "builtin")
    (moddir / "modules.order").symlink_to("/../../../etc/passwd")
    rc, err = depmod(root, capsys)
    assert rc == 0
    assert f"could not open modules.builtin at {moddir}: /lib/modules/{KVER}/modules.builtin: " \
           "a symbolic link leads out of the root" in err
    assert "ERROR" not in err  # not module files: only the warnings
    assert "could not open modules.order" in err and "'..' leads out of the root" in err
    assert b"host_secret" not in (moddir / "modules.builtin.bin").read_bytes()
    assert_no_host_content(moddir)


def test_module_directory_linked_to_the_host_is_refused(
        tree: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    (host / "modules").mkdir()
    os.rename(moddir, host / "modules" / KVER)
    moddir.symlink_to(host / "modules" / KVER)
    rc, err = depmod(root, capsys)
    assert rc == 1
    assert f"depmod: ERROR: module directory /lib/modules/{KVER}: a symbolic link leads out " \
           f"of the root {root}" in err
    assert not list((host / "modules" / KVER).glob("modules.*"))


def test_output_directory_linked_out_of_outdir_is_refused(
        tree: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, host = tree
    out = tmp_path / "out"
    (out / "lib").mkdir(parents=True)
    (out / "lib/modules").symlink_to(host)
    (host / KVER).mkdir()
    for extra in ((), ("--host-config",)):
        rc, err = depmod(root, capsys, "-o", str(out), *extra)
        assert rc == 1 and f"depmod: ERROR: output directory /lib/modules/{KVER}: a symbolic " \
                           f"link leads out of the root {out}" in err
        assert not list(host.rglob("modules.*"))


def test_absolute_link_in_outdir_is_taken_inside_it(
        tree: tuple[Path, Path, Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    """OUTDIR/lib/modules -> /srv/modules means OUTDIR/srv/modules (the image's view)."""
    root, _moddir, _host = tree
    out = tmp_path / "out"
    (out / "lib").mkdir(parents=True)
    (out / "lib/modules").symlink_to("/srv/modules")
    rc, err = depmod(root, capsys, "-o", str(out))
    assert rc == 0, err
    assert (out / "srv/modules" / KVER / "modules.dep").is_file()


def test_outputs_go_only_to_outdir(tree: tuple[Path, Path, Path], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    root, moddir, _host = tree
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    out = tmp_path / "out"
    rc, _err = depmod(root, capsys, "-o", str(out))
    assert rc == 0
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    written = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert written and all(str(p).startswith(f"lib/modules/{KVER}/modules.") for p in written)


def test_a_planted_journal_cannot_rename_outside(tmp_path: Path) -> None:
    """The journal lives in the (image-controlled) output directory: entries naming paths
    elsewhere are ignored, and a journal that is a symlink is not followed."""
    d = tmp_path / "moddir"
    d.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("keep me")
    (d / f"{TMP_MARK}x").write_text("planted")
    (d / JOURNAL).write_text(f"{TMP_MARK}x\t../victim\n../victim\tmodules.dep\n"
                             f"{TMP_MARK}x\t/etc/passwd\n{TMP_MARK}x\t.\n")
    publish(str(d), {"modules.dep": b"new\n"})
    assert victim.read_text() == "keep me"
    assert (d / "modules.dep").read_bytes() == b"new\n"
    assert sorted(p.name for p in d.iterdir()) == ["modules.dep"]
    (d / JOURNAL).symlink_to(tmp_path / "elsewhere-journal")
    (tmp_path / "elsewhere-journal").write_text(f"{TMP_MARK}y\tmodules.dep\n")
    publish(str(d), {"modules.dep": b"newer\n"})
    assert (d / "modules.dep").read_bytes() == b"newer\n"
    assert (tmp_path / "elsewhere-journal").exists()


# --- the Root itself -------------------------------------------------------------------------


def test_root_resolution(tmp_path: Path) -> None:
    r = tmp_path / "r"
    (r / "usr/lib/modules").mkdir(parents=True)
    (r / "lib").symlink_to("usr/lib")
    (r / "abs").symlink_to("/usr/lib")
    (r / "loop").symlink_to("/loop")
    (r / "up").symlink_to("../..")
    root = Root(os.fsencode(r))
    rb = os.fsencode(r)
    assert root.resolve(b"/lib/modules") == rb + b"/usr/lib/modules"
    assert root.resolve(b"/abs/modules/../modules") == rb + b"/usr/lib/modules"
    assert root.resolve(b"/new/dir") == rb + b"/new/dir"  # created later, inside
    assert root.resolve(b"/abs", follow_last=False) == rb + b"/abs"
    assert root.target_of(rb + b"/lib/x") == b"/lib/x"
    for bad, why in ((b"/loop", "too many levels"), (b"/up", "'..' leads out"),
                     (b"/../x", "'..' leads out"), (b"lib", "not an absolute path")):
        with pytest.raises(EscapeError, match=why):
            root.resolve(bad)
    with pytest.raises(EscapeError):
        root.target_of(b"/elsewhere")
    unconfined = Root(b"")
    assert unconfined.resolve(b"/lib/../x") == b"/lib/../x" and not unconfined.confined
