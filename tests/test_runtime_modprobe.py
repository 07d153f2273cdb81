"""modprobe's logic against a simulated kernel and a fake /proc and /sys (no root needed).

Each test copies a pristine synthetic tree (``fixtures/runtime/rtree.py``: a dependency
chain, a USB-alias module with three dependencies, leaves for softdeps, compressed modules,
built-ins), runs ``modprobe`` in-process with ``MODDEP_SYSROOT`` pointing at the copy, and
checks stdout, stderr and the exit status byte for byte (kmod 34's texts) and the simulated
kernel's system calls and state.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "fixtures" / "runtime"))

import rtree  # noqa: E402

from moddep.runtime.fake import FakeKernel  # noqa: E402
from moddep.runtime.kernel import (  # noqa: E402
    MODULE_INIT_COMPRESSED_FILE,
    MODULE_INIT_IGNORE_MODVERSIONS,
    MODULE_INIT_IGNORE_VERMAGIC,
    REMOVE_FORCE,
    REMOVE_NOWAIT,
)

KVER = rtree.KVER


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rtree.make_tree(tmp_path_factory.mktemp("pristine") / "root").root


class Env:
    """One test's copy of the tree, its simulated kernel, and a modprobe runner."""

    def __init__(self, root: Path, capfd: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capfd = capfd
        self.tree = rtree.Tree(root, KVER)
        self.mdir = str(self.tree.moddir)

    def kernel(self) -> FakeKernel:
        return FakeKernel.open(os.fsencode(self.root))

    def path(self, name: str) -> str:
        return str(self.tree.path_of(name))

    def run(self, *argv: str, tool: str = "modprobe",
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
        args = list(argv)
        if tool == "modprobe":
            args = ["-d", str(self.root), "-S", KVER, *args]
        return rtree.run_tool(tool, args, self.root, self.capfd, env)

    def loaded(self) -> list[str]:
        return [n.decode() for n in self.kernel().loaded()]

    def calls(self) -> list[tuple[str, str]]:
        return [(c.syscall, c.name.decode()) for c in self.kernel().calls]

    def conf(self, text: str) -> None:
        self.tree.conf("test.conf", text)

    def cmdline(self, text: str) -> None:
        (self.root / "proc" / "cmdline").write_text(text)


@pytest.fixture
def env(pristine: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> Env:
    root = tmp_path / "root"
    shutil.copytree(pristine, root, symlinks=True)
    e = Env(root, capfd)
    e.kernel()  # a fresh simulated kernel: empty /proc/modules
    return e


def insmod_line(env: Env, name: str, options: str = "") -> str:
    return f"insmod {env.path(name)} {options}\n"


# --- loading ---------------------------------------------------------------------------------

def test_chain_loads_dependencies_first(env: Env) -> None:
    rc, out, err = env.run("-v", "pppox")
    assert (rc, err) == (0, "")
    assert out == "".join(insmod_line(env, m) for m in ("slhc", "ppp_generic", "pppox"))
    assert env.calls() == [("finit_module", "slhc"), ("finit_module", "ppp_generic"),
                           ("finit_module", "pppox")]
    assert env.loaded() == ["pppox", "ppp_generic", "slhc"]  # newest first
    # loaded modules are skipped; a second run changes nothing
    assert env.run("-v", "pppox") == (0, "", "")
    assert len(env.calls()) == 3


def test_alias_loads_and_resolves(env: Env) -> None:
    alias = "usb:v0403p6001d0600dc00dsc00dp00icFFiscFFipFFin00"
    assert env.run("-R", alias) == (0, "ftdi_sio\n", "")
    assert env.calls() == []
    rc, out, err = env.run(alias)
    assert (rc, out, err) == (0, "", "")
    assert env.loaded() == ["ftdi_sio", "usbserial", "usbcore", "usb_common"]
    # a built-in module: nothing to do; -R names it; -D says "builtin"
    assert env.run("unix") == (0, "", "")
    assert env.run("-R", "net-pf-1") == (0, "unix\n", "")
    assert env.run("-D", "unix") == (0, "builtin unix\n", "")


def test_options_from_config_alias_cmdline_and_arguments(env: Env) -> None:
    env.conf("options loop max_part=7\noptions block-major-7-* ignored=1\n"
             "options block-major-7-0 from_alias=1\nalias lp loop\noptions lp via_config=1\n")
    env.cmdline("quiet loop.max_loop=4 other.x=1\n")
    rc, out, err = env.run("-v", "block-major-7-0", "extra=a b")
    assert (rc, err) == (0, "")
    # config options (name or the alias string), then command-line ones, then arguments
    assert out == insmod_line(env, "loop", 'max_part=7 from_alias=1 max_loop=4 extra="a b"')
    k = env.kernel()
    assert k.calls[-1].params == b'max_part=7 from_alias=1 max_loop=4 extra="a b"'
    params = (env.root / "sys/module/loop/parameters")
    assert (params / "max_part").read_text() == "7\n"
    assert (params / "extra").read_text() == "a b\n"
    # through a modprobe.d alias: the options of the alias pattern apply
    env.run("-r", "loop")
    rc, out, _ = env.run("-v", "lp")
    assert out == insmod_line(env, "loop", "max_part=7 via_config=1 max_loop=4 ")


def test_blacklist_applies_to_aliases_and_with_b(env: Env) -> None:
    env.conf("blacklist dummy\n")
    env.cmdline("modprobe.blacklist=e1000\n")
    assert env.run("-v", "rtnl-link-dummy") == (0, "", "")
    assert env.run("-v", "-b", "dummy") == (0, "", "")
    assert env.run("pci:v00008086d0000100Esv00008086sd0000001Ebc02sc00i00") == (0, "", "")
    assert env.calls() == []
    rc, out, err = env.run("-v", "dummy")  # by name: not blacklisted without -b
    assert (rc, out, err) == (0, insmod_line(env, "dummy"), "")
    assert env.loaded() == ["dummy"]
    # dependencies and softdeps are not filtered
    env.conf("blacklist slhc\nsoftdep tun pre: dummy\n")
    assert env.run("-v", "pppox")[0] == 0
    assert "slhc" in env.loaded()


def test_softdep_order_weakdep_and_softdep_errors(env: Env) -> None:
    env.conf("softdep veth pre: ifb post: nlmon\nweakdep veth tun\n"
             "softdep ppp_generic post: dummy\n")
    rc, out, err = env.run("-v", "veth")
    assert (rc, err) == (0, "")
    assert out == "".join(insmod_line(env, m) for m in ("ifb", "veth", "nlmon"))
    assert env.loaded() == ["nlmon", "veth", "ifb"]
    assert "tun" not in env.loaded()  # weakdeps are never loaded
    # a dependency's softdeps go around it; a failing softdep module is ignored
    k = env.kernel()
    k.fail_load[b"dummy"] = errno.EPERM
    k.save()
    rc, out, err = env.run("-v", "pppox")
    assert (rc, err) == (0, "")
    assert out == "".join(insmod_line(env, m)
                          for m in ("slhc", "ppp_generic", "dummy", "pppox"))
    assert env.loaded()[:3] == ["pppox", "ppp_generic", "slhc"]
    # with -i the target's softdeps are ignored
    env.run("-r", "veth")
    assert env.run("-v", "-i", "veth")[1] == insmod_line(env, "veth")


def test_softdep_loop_terminates(env: Env) -> None:
    env.conf("softdep nlmon post: veth\nsoftdep veth post: nlmon\n")
    rc, out, _ = env.run("-v", "nlmon")
    assert rc == 0
    assert out == insmod_line(env, "nlmon") + insmod_line(env, "veth")


def test_install_command_environment_and_quoting(env: Env, tmp_path: Path) -> None:
    log = tmp_path / "install.log"
    pwned = tmp_path / "pwned"
    env.conf(f"options dummy numdummies=2\n"
             f"install dummy echo $MODPROBE_MODULE [$CMDLINE_OPTS] >> {log}\n")
    rc, out, err = env.run("-v", "dummy", f"x=$(touch {pwned})")
    assert (rc, err) == (0, "")
    # print_action shows the command as configured and the options (quoted by modprobe
    # because the value has a blank); the shell gets them as quoted words: kmod would have
    # run the $(...)
    assert out == (f"install echo $MODPROBE_MODULE [$CMDLINE_OPTS] >> {log} "
                   f'numdummies=2 x="$(touch {pwned})"\n')
    assert log.read_text() == f'dummy [numdummies=2 x="$(touch {pwned})"]\n'
    assert not pwned.exists()
    assert env.calls() == []
    # looked up through the install line itself (no module of that name)
    env.conf(f"install virtual-thing echo virtual >> {log}\n")
    assert env.run("virtual-thing")[0] == 0
    assert log.read_text().endswith("virtual\n")


def test_failing_install_command(env: Env) -> None:
    env.conf("install dummy exit 3\n")
    rc, out, err = env.run("dummy")
    assert (rc, out) == (1, "")
    assert err == ("modprobe: ERROR: Error running install command 'exit 3' for module dummy: "
                   "retcode 3\nmodprobe: ERROR: could not insert 'dummy': Invalid argument\n")


def test_a_module_with_softdeps_ignores_its_install_command(env: Env, tmp_path: Path) -> None:
    env.conf(f"install veth touch {tmp_path}/ran\nsoftdep veth pre: ifb\n")
    rc, out, _ = env.run("-v", "veth")
    assert rc == 0 and out == insmod_line(env, "ifb") + insmod_line(env, "veth")
    assert not (tmp_path / "ran").exists()


def test_not_found_messages_and_levels(env: Env) -> None:
    mdir = env.mdir
    assert env.run("nosuch") == (
        1, "", f"modprobe: FATAL: Module nosuch not found in directory {mdir}\n")
    assert env.run("-q", "nosuch") == (1, "", "")
    rc, out, err = env.run("-a", "nosuch", "dummy", "other")
    assert (rc, out) == (1, "")
    assert err == (f"modprobe: WARNING: Module nosuch not found in directory {mdir}\n"
                   f"modprobe: WARNING: Module other not found in directory {mdir}\n")
    assert env.loaded() == ["dummy"]
    assert env.run("a]b") == (
        1, "", f"modprobe: FATAL: Module a]b not found in directory {mdir}\n")
    assert env.run() == (1, "", "modprobe: ERROR: missing parameters. See -h.\n")
    assert env.run("-q") == (1, "", "modprobe: ERROR: missing parameters. See -h.\n")
    assert env.run("--bogus")[2] == "modprobe: unrecognized option '--bogus'\n"


def test_kernel_errors_become_kmods_messages(env: Env) -> None:
    k = env.kernel()
    k.fail_load.update({b"tun": errno.EPERM, b"nlmon": errno.ENOENT, b"ifb": errno.ENOEXEC})
    k.save()
    assert env.run("tun") == (
        1, "", "modprobe: ERROR: could not insert 'tun': Operation not permitted\n")
    assert env.run("nlmon") == (
        1, "", "modprobe: ERROR: could not insert 'nlmon': Unknown symbol in module, or "
               "unknown parameter (see dmesg)\n")
    assert env.run("-vv", "ifb")[2] == (
        f"modprobe: INFO: Failed to insert module '{env.path('ifb')}': Exec format error\n"
        "modprobe: ERROR: could not insert 'ifb': Exec format error\n")
    # a required dependency failing stops the chain
    k = env.kernel()
    k.fail_load[b"slhc"] = errno.ENOMEM
    k.save()
    assert env.run("pppox") == (
        1, "", "modprobe: ERROR: could not insert 'pppox': Cannot allocate memory\n")
    assert "ppp_generic" not in env.loaded()
    # --first-time: a loaded module is an error
    env.run("dummy")
    assert env.run("--first-time", "dummy") == (
        1, "", "modprobe: ERROR: could not insert 'dummy': Module already in kernel\n")
    assert env.run("--first-time", "unix")[0] == 1


def test_by_path(env: Env, tmp_path: Path) -> None:
    copy = tmp_path / "dummy.ko"
    shutil.copy(env.path("dummy"), copy)
    rc, out, err = env.run("-v", str(copy))
    assert (rc, out, err) == (0, f"insmod {copy} \n", "")
    assert env.loaded() == ["dummy"]
    rc, _, err = env.run(str(tmp_path / "missing.ko"))
    assert rc == 1
    assert err == (f"modprobe: FATAL: Failed to get module from path {tmp_path}/missing.ko: "
                   "No such file or directory\n")


# --- dry runs --------------------------------------------------------------------------------

def test_dry_run_never_reaches_the_kernel(env: Env, tmp_path: Path) -> None:
    env.conf(f"install dummy touch {tmp_path}/ran\nsoftdep veth pre: ifb\n")
    assert env.run("-n", "pppox") == (0, "", "")  # kmod 34 prints nothing without -v
    rc, out, _ = env.run("-n", "-v", "veth")
    assert rc == 0 and out == insmod_line(env, "ifb") + insmod_line(env, "veth")
    assert env.run("-n", "-v", "dummy")[1] == f"install touch {tmp_path}/ran \n"
    assert env.calls() == [] and not (tmp_path / "ran").exists()
    env.run("pppox")
    # -D ignores what is loaded and prints everything, built-ins too
    assert env.run("-D", "pppox")[1] == "".join(
        insmod_line(env, m) for m in ("slhc", "ppp_generic", "pppox"))
    # -n -r: shows, removes nothing
    assert env.run("-n", "-v", "-r", "pppox") == (0, "rmmod pppox\n", "")
    assert env.loaded() == ["pppox", "ppp_generic", "slhc"]
    assert [c for c in env.calls() if c[0] == "delete_module"] == []


# --- compression and forcing -----------------------------------------------------------------

def test_compressed_modules_by_kernel_support(env: Env) -> None:
    env.run("ifb")
    env.run("veth")
    k = env.kernel()
    assert [(c.syscall, c.name, c.flags) for c in k.calls] == [
        ("init_module", b"ifb", 0), ("init_module", b"veth", 0)]
    for name in (b"ifb", b"veth"):
        k.delete_module(name, REMOVE_NOWAIT)
    # the kernel decompresses xz itself: finit_module with MODULE_INIT_COMPRESSED_FILE
    (env.root / "sys/module/compression").write_text("xz\n")
    k.compression = "xz"
    k.save()
    env.run("ifb")
    env.run("veth")
    assert [(c.syscall, c.name, c.flags) for c in env.kernel().calls[-2:]] == [
        ("finit_module", b"ifb", MODULE_INIT_COMPRESSED_FILE), ("init_module", b"veth", 0)]


def test_no_finit_module_falls_back_to_init_module(env: Env) -> None:
    k = env.kernel()
    k.has_finit = False
    k.save()
    assert env.run("dummy") == (0, "", "")
    assert [(c.syscall, c.name) for c in env.kernel().calls] == [("init_module", b"dummy")]


def test_force_flags_and_patched_image(env: Env) -> None:
    k = env.kernel()
    k.vermagic = b"other-kernel SMP"
    k.save()
    assert env.run("dummy") == (
        1, "", "modprobe: ERROR: could not insert 'dummy': Exec format error\n")
    assert env.run("--force-vermagic", "dummy")[0] == 0
    assert env.kernel().calls[-1].flags == MODULE_INIT_IGNORE_VERMAGIC
    assert env.run("-f", "tun")[0] == 0
    assert env.kernel().calls[-1].flags == (MODULE_INIT_IGNORE_VERMAGIC |
                                            MODULE_INIT_IGNORE_MODVERSIONS)
    # compressed, no kernel support: the image is stripped in userspace
    assert env.run("--force-vermagic", "ifb")[0] == 0
    call = env.kernel().calls[-1]
    assert call.syscall == "init_module" and call.name == b"ifb"
    assert env.loaded()[0] == "ifb"


def test_show_modversions_and_exports(env: Env) -> None:
    rc, out, err = env.run("--show-modversions", env.path("ppp_generic"))
    assert (rc, err) == (0, "")
    assert out == "0x00001234\tmodule_layout\n0x00001000\tslhc_fn\n"
    assert env.run("--show-exports", env.path("ppp_generic")) == (
        0, f"0x{0xABC0 + len('ppp_generic'):08x}\tppp_generic_fn\n", "")
    assert env.run("--dump-modversions", "nosuch") == (
        1, "", "modprobe: FATAL: Module nosuch not found.\n")


def test_show_config(env: Env) -> None:
    env.conf("alias a b\noptions b x=1\nblacklist c\n")
    env.cmdline("m.p=1 modprobe.blacklist=z\n")
    rc, out, _ = env.run("-c")
    assert rc == 0
    head, sep, tail = out.partition("\n# End of configuration files. Dumping indexes now:\n\n")
    assert sep
    assert head == ("blacklist c\nblacklist z\nalias a b\noptions b x=1\noptions m p=1\n")
    assert "alias rtnl_link_dummy dummy\n" in tail  # index keys are normalised
    assert "alias symbol:slhc_fn slhc\n" in tail


def test_modprobe_options_environment_and_child_environment(env: Env,
                                                            tmp_path: Path) -> None:
    env.conf(f"install dummy echo \"$MODPROBE_OPTIONS\" > {tmp_path}/opts\n")
    rc, out, _ = env.run("dummy", env={"MODPROBE_OPTIONS": "-v"})
    assert rc == 0 and out.startswith("install ")
    assert (tmp_path / "opts").read_text() == "-v -v\n"  # kmod appends what it was given


# --- removal ---------------------------------------------------------------------------------

def test_remove_takes_the_unused_chain(env: Env) -> None:
    env.run("pppox")
    env.run("usb:v0403p6001d0600dc00dsc00dp00icFFiscFFipFFin00")
    rc, out, err = env.run("-r", "-v", "pppox")
    assert (rc, err) == (0, "")
    assert out == "rmmod pppox\nrmmod ppp_generic\nrmmod slhc\n"
    assert env.loaded() == ["ftdi_sio", "usbserial", "usbcore", "usb_common"]
    calls = [c for c in env.kernel().calls if c.syscall == "delete_module"]
    assert {c.flags for c in calls} == {REMOVE_NOWAIT}
    assert env.run("-r", "ftdi_sio") == (0, "", "")
    assert env.loaded() == []


def test_remove_never_takes_a_held_dependency(env: Env) -> None:
    env.run("pppox")
    env.kernel().preload(b"other", deps=(b"slhc",))  # another user of slhc
    assert env.run("-r", "-v", "pppox") == (0, "rmmod pppox\nrmmod ppp_generic\n", "")
    assert env.loaded() == ["other", "slhc"]


def test_in_use(env: Env) -> None:
    env.run("pppox")
    k = env.kernel()
    k.hold(b"pppox")
    rc, out, err = env.run("-r", "pppox")
    assert (rc, out) == (1, "")
    lines = err.splitlines()
    assert lines[0] == "modprobe: FATAL: Module pppox is in use."
    assert lines[1].startswith("pppox: refcnt 1")  # who holds it (moddep's addition)
    assert "moddep who-uses --trace pppox" in err
    assert env.run("-q", "-r", "pppox") == (1, "", "")
    assert env.loaded() == ["pppox", "ppp_generic", "slhc"]
    # a dependency in use by its user
    assert env.run("-r", "slhc")[2].splitlines()[0] == "modprobe: FATAL: Module slhc is in use."
    # --remove-holders takes the holders first (but pppox itself is held)
    rc, out, err = env.run("-r", "-v", "--remove-holders", "ppp_generic")
    assert rc == 1 and err.splitlines()[0] == "modprobe: FATAL: Module pppox is in use."
    assert env.loaded() == ["pppox", "ppp_generic", "slhc"]


def test_remove_holders(env: Env) -> None:
    env.run("pppox")
    rc, out, err = env.run("-r", "-v", "--remove-holders", "ppp_generic")
    assert (rc, err) == (0, "")
    # pppox goes first, taking ppp_generic and slhc with it as unused dependencies
    assert out == "rmmod pppox\nrmmod ppp_generic\nrmmod slhc\n"
    assert env.loaded() == []


def test_remove_messages(env: Env) -> None:
    assert env.run("-r", "dummy") == (0, "", "")  # not loaded: nothing to do
    assert env.run("-r", "--first-time", "dummy") == (
        1, "", "modprobe: FATAL: Module dummy is not in kernel.\n")
    assert env.run("-r", "unix") == (1, "", "modprobe: FATAL: Module unix is builtin.\n")
    assert env.run("-r", "nosuch") == (1, "", "modprobe: FATAL: Module nosuch not found.\n")
    assert env.run("-r", "-a", "nosuch", "unix") == (
        1, "", "modprobe: WARNING: Module nosuch not found.\n"
               "modprobe: WARNING: Module unix is builtin.\n")
    env.run("dummy")
    k = env.kernel()
    k.fail_delete[b"dummy"] = errno.EPERM
    k.save()
    assert env.run("-r", "dummy") == (
        1, "", "modprobe: ERROR: could not remove 'dummy': Operation not permitted\n")


def test_remove_softdeps_and_commands(env: Env, tmp_path: Path) -> None:
    env.conf(f"softdep veth pre: ifb post: nlmon\nremove dummy echo bye $MODPROBE_MODULE "
             f"> {tmp_path}/bye\n")
    env.run("veth")
    assert env.run("-r", "-v", "veth") == (0, "rmmod nlmon\nrmmod veth\nrmmod ifb\n", "")
    assert env.loaded() == []
    env.run("dummy")
    rc, out, _ = env.run("-r", "-v", "dummy")
    assert (rc, out) == (0, f"remove echo bye $MODPROBE_MODULE > {tmp_path}/bye\n")
    assert (tmp_path / "bye").read_text() == "bye dummy\n"
    assert env.loaded() == ["dummy"]  # the command did not remove it
    assert env.run("-r", "-i", "dummy") == (0, "", "")
    assert env.loaded() == []


def test_force_remove_and_wait(env: Env) -> None:
    env.run("dummy")
    k = env.kernel()
    k.hold(b"dummy")
    # -w: no refcount check; the kernel's EAGAIN is retried until the deadline
    rc, _, err = env.run("-r", "-w", "50", "dummy")
    assert rc == 1
    assert err == "modprobe: ERROR: could not remove 'dummy': Resource temporarily unavailable\n"
    assert len([c for c in env.kernel().calls if c.syscall == "delete_module"]) > 1
    assert env.run("-r", "-w", "x", "dummy")[2] == "modprobe: ERROR: unexpected wait value 'x'.\n"
    # -f skips nothing in modprobe (refcnt is checked) but passes O_TRUNC to the kernel
    env.kernel().hold(b"dummy", -1)
    assert env.run("-r", "-f", "dummy") == (0, "", "")
    assert env.kernel().calls[-1].flags == REMOVE_NOWAIT | REMOVE_FORCE
