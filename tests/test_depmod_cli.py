"""depmod's command line: modes and options beyond the default full run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import synth
from kofactory import Module
from synth import KVER, make_tree

from moddep.cli import main


def _tree(root: Path, moddir: str = "lib/modules") -> Path:
    mods = {"kernel/a.ko": Module(exports=[(b"fa", 1)], undefined=[(b"fb", False)],
                                  modinfo=[(b"alias", b"x:a")]).build(),
            "kernel/b.ko": Module(exports=[(b"fb", 2)]).build()}
    d = make_tree(root, mods)
    if moddir != "lib/modules":
        target = root / moddir
        target.parent.mkdir(parents=True, exist_ok=True)
        (root / "lib/modules").rename(target)
        return target / KVER
    return d


def test_usr_lib_modules_is_found(tmp_path: Path) -> None:
    moddir = _tree(tmp_path, "usr/lib/modules")
    assert main(["depmod", "-b", str(tmp_path), KVER]) == 0
    assert b"kernel/a.ko: kernel/b.ko\n" in (moddir / "modules.dep").read_bytes()


def test_moduledir_option(tmp_path: Path) -> None:
    moddir = _tree(tmp_path, "opt/mods")
    assert main(["depmod", "-b", str(tmp_path), "-m", "/opt/mods", KVER]) == 0
    assert (moddir / "modules.dep").exists()


def test_file_list_mode(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    moddir = _tree(tmp_path)
    a = str(moddir / "kernel/a.ko")
    assert main(["depmod", "-n", "-b", str(tmp_path), KVER, a]) == 0
    out = capsysbinary.readouterr().out
    assert out.startswith(b"kernel/a.ko:\n# Aliases")  # only a: b.ko is not part of the run
    assert main(["depmod", "-b", str(tmp_path), KVER, "relative.ko"]) == 1


def test_quick_mode(tmp_path: Path) -> None:
    moddir = _tree(tmp_path)
    assert main(["depmod", "-b", str(tmp_path), KVER]) == 0
    dep = moddir / "modules.dep"
    old = time.time() - 100
    os.utime(dep, (old, old))
    for ko in (moddir / "kernel").iterdir():
        os.utime(ko, (old - 100, old - 100))
    before = dep.stat().st_mtime
    assert main(["depmod", "-A", "-b", str(tmp_path), KVER]) == 0
    assert dep.stat().st_mtime == before  # up to date: nothing rewritten
    os.utime(moddir / "kernel/a.ko", None)
    (moddir / "kernel/b.ko").write_bytes(Module(exports=[(b"fb", 3)], modinfo=[
        (b"alias", b"new")]).build())
    assert main(["depmod", "-A", "-b", str(tmp_path), KVER]) == 0
    assert b"alias new b" in (moddir / "modules.alias").read_bytes()


def test_errsyms_needs_symbol_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _tree(tmp_path)
    assert main(["depmod", "-e", "-b", str(tmp_path), KVER]) == 0
    assert "depmod: WARNING: -e needs -E or -F" in capsys.readouterr().err


def test_verbose_prints_needs(tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    moddir = _tree(tmp_path)
    assert main(["depmod", "-v", "-b", str(tmp_path), KVER]) == 0
    out = capsysbinary.readouterr().out
    assert out == b'%s needs "fb": %s\n' % (str(moddir / "kernel/a.ko").encode(),
                                             str(moddir / "kernel/b.ko").encode())


def test_missing_module_dir_is_fatal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["depmod", "-b", str(tmp_path), KVER]) == 1
    assert "could not search modules" in capsys.readouterr().err


def test_kmod_version_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moddir = _tree(tmp_path)
    monkeypatch.setenv("MODDEP_KMOD_VERSION", "30")
    assert main(["depmod", "-b", str(tmp_path), KVER]) == 0
    assert not (moddir / "modules.weakdep").exists()
    monkeypatch.setenv("MODDEP_KMOD_VERSION", "29")
    assert main(["depmod", "-b", str(tmp_path), KVER]) == 1


def test_multicall_by_argv0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["/usr/sbin/depmod", "-V"]) == 0
    assert "moddep" in capsys.readouterr().out


def test_outdir(tmp_path: Path) -> None:
    _tree(tmp_path / "root")
    out = tmp_path / "out"
    assert main(["depmod", "-b", str(tmp_path / "root"), "-o", str(out), KVER]) == 0
    assert (out / "lib/modules" / KVER / "modules.dep.bin").exists()
    assert not (tmp_path / "root/lib/modules" / KVER / "modules.dep").exists()


def test_jobs_do_not_change_output(tmp_path: Path) -> None:
    root = tmp_path / "r"
    make_tree(root, {f"kernel/m{i}.ko": Module(exports=[(b"s%d" % i, i)], undefined=[
        (b"s%d" % (i // 2), False)], modinfo=[(b"alias", b"a%d" % i)]).build()
        for i in range(100)})
    one = synth.moddep(root, "-j1")
    two = synth.moddep(root, "-j2")
    assert one.files == two.files and one.stderr == two.stderr


def test_timing_marks_go_to_stderr_only_when_asked(tmp_path: Path) -> None:
    """MODDEP_TIMING=1 prints each phase with its time since start; without it, nothing."""
    import subprocess
    import sys

    make_tree(tmp_path, {f"kernel/m{i}.ko": Module(exports=[(f"s{i}".encode(), 1)]).build()
                         for i in range(3)})
    cmd = [sys.executable, "-m", "moddep", "depmod", "-b", str(tmp_path), "--no-cache", KVER]
    env = {k: v for k, v in os.environ.items() if k != "MODDEP_TIMING"}
    quiet = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    assert "moddep timing" not in quiet.stderr
    off = subprocess.run(cmd, env={**env, "MODDEP_TIMING": "0"}, capture_output=True,
                         text=True, check=True)
    assert "moddep timing" not in off.stderr
    timed = subprocess.run(cmd, env={**env, "MODDEP_TIMING": "1"}, capture_output=True,
                           text=True, check=True)
    lines = [line.split() for line in timed.stderr.splitlines()
             if line.startswith("moddep timing")]
    # "moddep timing [PID] 0.123s label": the main process's marks, in time order
    main_pid = lines[0][2]
    mine = [(float(w[3][:-1]), w[-1]) for w in lines if w[2] == main_pid]
    assert mine[0][1] == "start" and mine[-1][1] == "published"
    times = [t for t, _label in mine]
    assert times == sorted(times) and 0 < times[0] < 60


def test_process_exit_flushes_output_and_keeps_the_status(tmp_path: Path) -> None:
    """As a process, moddep leaves with os._exit once the command returns: everything written
    to stdout must still arrive (a large -n output through a pipe), and the status stays."""
    import subprocess
    import sys

    make_tree(tmp_path, {f"kernel/m{i}.ko": Module(exports=[(f"s{i}".encode(), 1)],
                                                   modinfo=[(b"alias", f"a{i}".encode())]
                                                   ).build() for i in range(300)})
    cmd = [sys.executable, "-m", "moddep", "depmod", "-b", str(tmp_path), "--no-cache"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # buffered pipes
    shown = subprocess.run([*cmd, "-n", KVER], capture_output=True, check=True, env=env).stdout
    assert shown.count(b"\nalias a") + shown.startswith(b"alias a") >= 300
    assert shown.endswith(b"\n") and b"alias symbol:s299 m299\n" in shown
    bad = subprocess.run([*cmd, "not-a-version"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "Bad version passed" in bad.stderr
    # print() output sits in the pipe's buffer until the exit flushes it
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True,
                             env=env)
    assert version.stdout.startswith("moddep ")


def test_process_start_up_skips_unused_standard_modules(tmp_path: Path) -> None:
    """As a process, a depmod run never loads dataclasses (nor the inspect it imports: cli
    defers that for the other tools) nor shutil (argparse's stock formatter imports it for
    the terminal width: depmod's formatter does not)."""
    import subprocess
    import sys

    _tree(tmp_path)
    code = ("import sys; from moddep.cli import main; "
            f"sys.argv = ['moddep', 'depmod', '-b', {str(tmp_path)!r}, '--no-cache', {KVER!r}]; "
            "main()")
    # -S: no site start-up (its .pth files import what they like); moddep from this checkout
    top = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=top)
    run = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", code],
                         capture_output=True, text=True, check=True, env=env)
    names = [line.rsplit("|", 1)[1].strip() for line in run.stderr.splitlines()
             if line.startswith("import time:") and "|" in line]
    assert "moddep.depmod" in names and "moddep.graph" in names  # a full run was imported
    assert "argparse" in names
    assert "dataclasses" not in names and "inspect" not in names and "shutil" not in names


def test_deferred_module_loads_on_first_use() -> None:
    import importlib
    import sys

    from moddep import cli

    name = "colorsys"  # small, and nothing here imports it
    sys.modules.pop(name, None)
    cli._defer_imports([name])
    stub = sys.modules[name]
    mod = importlib.import_module(name)  # an import statement finds the stand-in ...
    assert mod is stub and "_real" not in vars(stub)  # ... and loads nothing
    assert stub.rgb_to_hsv(1.0, 0.0, 0.0) == (0.0, 1.0, 1.0)  # the first use loads it
    assert sys.modules[name] is not stub and sys.modules[name].rgb_to_hsv is stub.rgb_to_hsv
    sys.modules.pop(name, None)


def test_help_width_follows_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    from moddep.tools._common import terminal_columns

    monkeypatch.setenv("COLUMNS", "123")
    assert terminal_columns() == 123
    monkeypatch.setenv("COLUMNS", "junk")
    assert terminal_columns() >= 1


def test_module_names_are_longer_than_their_extension() -> None:
    from moddep.compression import MODULE_EXTENSIONS
    from moddep.scan import is_module_name

    for ext in MODULE_EXTENSIONS:
        assert not is_module_name(ext)
        assert is_module_name(b"a" + ext)
        assert not is_module_name(b"a" + ext + b"x")
    assert not is_module_name(b"a.ko.bz2") and not is_module_name(b"ko")
