"""Runtime safety of modprobe: where shell commands come from, what reaches a shell, and that a
dry run never touches the kernel.

* ``install``/``remove`` commands are taken from modprobe.d files only: not from
  ``modules.softdep`` in the module directory (a generated file whose content comes from the
  modules' own ``.modinfo``), not from the kernel command line, not from a module's modinfo.
* Module names and options given on the command line never become shell syntax: names are
  passed to commands only in the environment, ``$CMDLINE_OPTS`` is substituted as quoted words,
  and a module without an install command never starts a process at all.
* ``-n`` (and ``-D``) never calls into the kernel nor runs a command, whatever the request.

The tools run in-process against a simulated kernel under the tree (``MODDEP_SYSROOT``);
"never" is checked by replacing every way out (kernel loaders, subprocess, os.system) with
one that fails the test, and by marker files that a leaked command would create.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "runtime"))

import rtree  # noqa: E402

from moddep.diag import Log  # noqa: E402
from moddep.runtime import fake, kernel  # noqa: E402
from moddep.runtime import modprobe_d as mpd  # noqa: E402
from moddep.runtime.cmdline import parse_cmdline  # noqa: E402


@pytest.fixture
def tree(tmp_path: Path) -> rtree.Tree:
    return rtree.make_tree(tmp_path / "root")


def modprobe(t: rtree.Tree, capfd: Any, *argv: str) -> tuple[int, str, str]:
    return rtree.run_tool("modprobe", ["-S", t.kver, "-d", str(t.root), *argv], t.root, capfd)


def loaded(t: rtree.Tree) -> list[bytes]:
    return fake.FakeKernel.open(os.fsencode(t.root)).loaded()


class Leak(AssertionError):
    pass


@pytest.fixture
def no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to start a process fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Leak(f"a process was started: {args!r}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, refuse)
    monkeypatch.setattr(os, "system", refuse)
    monkeypatch.setattr(os, "posix_spawn", refuse)


# --- where commands come from -------------------------------------------------------------------


def test_install_commands_come_only_from_modprobe_d(tree: rtree.Tree, capfd: Any) -> None:
    marker = tree.root / "PWNED"
    (tree.moddir / "modules.softdep").write_text(
        f"softdep dummy pre: loop\ninstall dummy touch {marker}\nremove dummy touch {marker}\n")
    rc, _out, err = modprobe(tree, capfd, "dummy")
    assert rc == 0, err
    assert b"dummy" in loaded(tree) and b"loop" in loaded(tree)  # the softdep was taken
    rc, _out, err = modprobe(tree, capfd, "-r", "dummy")
    assert rc == 0, err
    assert not marker.exists()


def test_a_modprobe_d_install_command_does_run(tree: rtree.Tree, capfd: Any) -> None:
    """The positive control: the same command from /etc/modprobe.d runs (through /bin/sh)."""
    marker = tree.root / "ran"
    tree.conf("x.conf", f"install dummy touch {marker}\n")
    rc, _out, err = modprobe(tree, capfd, "dummy")
    assert rc == 0 and marker.exists(), err


def test_modinfo_cannot_smuggle_a_command(tmp_path: Path, capfd: Any) -> None:
    """A module whose softdep carries a newline and an install line: depmod copies it into
    modules.softdep (as kmod does), and modprobe still runs nothing from there."""
    marker = tmp_path / "PWNED"
    spec = rtree.Spec("evil", extra=[(b"softdep", f"pre: dummy\ninstall evil touch {marker}"
                                                  .encode())])
    t = rtree.make_tree(tmp_path / "root", rtree.DEFAULT + (spec,))
    assert f"install evil touch {marker}" in (t.moddir / "modules.softdep").read_text()
    rc, _out, err = modprobe(t, capfd, "evil")
    assert rc == 0, err
    assert not marker.exists() and b"evil" in loaded(t)


def test_kernel_command_line_gives_options_only() -> None:
    entries = parse_cmdline(b"dummy.install=/bin/sh dummy.remove=x modprobe.blacklist=a "
                            b'"loop.max_loop=1 ; touch /x"', Log())
    assert {kind for kind, _n, _v in entries} <= {"options", "blacklist"}
    config = mpd.load(b"/nonexistent", [], b"/", Log(),
                      cmdline=b"dummy.install=touch${IFS}/x")
    assert config.installs == () and config.removes == ()


# --- what reaches a shell ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dummy;touch PWNED", "$(touch PWNED)", "`touch PWNED`",
                                  "dummy|touch PWNED", "dummy\ntouch PWNED", "../../PWNED"])
def test_module_names_never_reach_a_shell(name: str, tree: rtree.Tree, capfd: Any,
                                          no_process: None) -> None:
    tree.conf("x.conf", "install loop /bin/true\n")
    for argv in (["-a", name], ["-r", name], ["-n", name], ["-v", name]):
        rc, _out, _err = modprobe(tree, capfd, *argv)
        assert rc in (0, 1)
    assert not (tree.root / "PWNED").exists() and not Path("PWNED").exists()


def test_options_are_quoted_words_for_install_commands(tree: rtree.Tree, capfd: Any) -> None:
    out = tree.root / "args"
    tree.conf("x.conf", f"install dummy printf '[%s]' $CMDLINE_OPTS \"$MODPROBE_MODULE\" "
                        f"> {out}\n"
                        "alias evil-$(touch${IFS}PWNED) dummy\n")
    rc, _o, err = modprobe(tree, capfd, "evil-$(touch${IFS}PWNED)", "a=$(touch PWNED)",
                           "b=`touch PWNED`;x", 'c="q ; touch PWNED"')
    assert rc == 0, err
    assert not (tree.root / "PWNED").exists() and not Path("PWNED").exists()
    # one word per option (modprobe quotes values with blanks), literally; the name comes
    # only through $MODPROBE_MODULE, as the module's name
    assert out.read_text() == ('[a="$(touch PWNED)"][b="`touch PWNED`;x"]'
                               '[c="q ; touch PWNED"][dummy]')


def test_modules_without_commands_start_no_process(tree: rtree.Tree, capfd: Any,
                                                   no_process: None) -> None:
    rc, _o, err = modprobe(tree, capfd, "ftdi_sio")
    assert rc == 0, err
    rc, _o, err = modprobe(tree, capfd, "-r", "ftdi_sio")
    assert rc == 0, err


# --- dry runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["-n", "ftdi_sio"], ["-n", "-v", "pppox"], ["-D", "ftdi_sio"], ["-n", "-a", "dummy", "loop"],
    ["-n", "-r", "usb_common"], ["-n", "-r", "--remove-holders", "usbcore"],
    ["-n", "-f", "ifb"], ["-n", "veth"], ["-n", "rtnl-link-dummy"], ["-n", "-r", "dummy"],
])
def test_dry_run_never_calls_the_kernel(argv: list[str], tree: rtree.Tree, capfd: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # something to remove: loaded for real first, then every way into a kernel is closed
    for name in ("ftdi_sio", "pppox", "dummy"):
        assert modprobe(tree, capfd, name)[0] == 0
    before = loaded(tree)
    tree.conf("cmd.conf", "install loop touch /nonexistent/PWNED\n"
                          "remove dummy touch /nonexistent/PWNED\n")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise Leak(f"dry run reached the kernel or a shell: {args!r}")

    monkeypatch.setattr(kernel.KernelLoader, "__init__", refuse)
    for call in ("finit_module", "init_module", "delete_module"):
        monkeypatch.setattr(kernel.KernelLoader, call, refuse)
        monkeypatch.setattr(fake.FakeKernel, call, refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(subprocess, "Popen", refuse)
    rc, _out, err = modprobe(tree, capfd, *argv)
    assert rc in (0, 1), err
    assert "Leak" not in err and "dry run reached" not in err
    assert loaded(tree) == before
