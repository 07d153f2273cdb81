"""Packaging: moddep builds as a wheel and an sdist offline from its own files, installs into a
fresh virtual environment that has only the declared dependencies, and there its commands,
their help and the kmod-named multicall symlinks work.

The build runs on a copy of just what packaging needs (pyproject.toml, README.md, moddep/), with
``pip wheel --no-deps --no-build-isolation --no-index``: no network, the build backend that is
installed. The venv has no system site-packages; the declared dependencies (and nothing else)
are made importable from a directory of links to their installed files.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_integrations_support import KVER, REPO, SAMPLES, clean_env, index_files, stage_sample

TOOLS = ("depmod", "modprobe", "insmod", "rmmod", "lsmod", "modinfo")


def _pyproject() -> str:
    return (REPO / "pyproject.toml").read_text()


def _declared_dependencies() -> list[str]:
    block = re.search(r"^dependencies = \[(.*?)\]", _pyproject(), re.S | re.M)
    assert block
    return re.findall(r'"([^"]+)"', block.group(1))


def _version() -> str:
    m = re.search(r'^version = "([^"]+)"', _pyproject(), re.M)
    assert m
    return m.group(1)


def _run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kw)  # type: ignore[call-overload,no-any-return]


class Built:
    def __init__(self, root: Path) -> None:
        self.root = root
        src = root / "src"
        src.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(REPO / name, src / name)
        shutil.copytree(REPO / "moddep", src / "moddep",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        self.src = src
        self.dist = root / "dist"
        env = clean_env(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1")
        wheel = _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                      "--no-build-isolation", "--no-index", "-w", str(self.dist)], env=env)
        if wheel.returncode != 0 and "invalid command 'bdist_wheel'" in wheel.stdout + \
                wheel.stderr:
            import setuptools

            pytest.skip(f"setuptools {setuptools.__version__} without the 'wheel' package "
                        "cannot build a wheel offline (needs setuptools>=70.1 or 'wheel')")
        assert wheel.returncode == 0, wheel.stdout + wheel.stderr
        (self.wheel,) = self.dist.glob("moddep-*.whl")
        sdist = _run([sys.executable, "-c",
                      "import sys; from setuptools import build_meta; "
                      "print(build_meta.build_sdist(sys.argv[1]))", str(self.dist)],
                     cwd=src, env=env)
        assert sdist.returncode == 0, sdist.stderr
        self.sdist = self.dist / sdist.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return Built(tmp_path_factory.mktemp("packaging"))


class Venv:
    """A fresh venv with the wheel installed; PYTHONPATH gives the declared dependencies."""

    def __init__(self, root: Path, wheel: Path) -> None:
        self.root = root
        made = _run([sys.executable, "-m", "venv", str(root / "venv")])
        if made.returncode != 0:
            pytest.skip(f"cannot create a venv: {made.stderr.strip()}")
        self.bin = root / "venv" / "bin"
        self.deps = root / "deps"
        self.deps.mkdir()
        for requirement in _declared_dependencies():
            name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
            try:
                dist = md.distribution(name)
            except md.PackageNotFoundError:
                pytest.skip(f"declared dependency {name} is not installed here")
            tops = {Path(str(f)).parts[0] for f in dist.files or []
                    if not Path(str(f)).parts[0].endswith((".dist-info", ".egg-info", ".."))}
            for top in tops:
                src = Path(str(dist.locate_file(top)))
                if src.exists() and not (self.deps / top).exists():
                    (self.deps / top).symlink_to(src)
        env = clean_env(PIP_CONFIG_FILE=os.devnull)
        inst = _run([str(self.bin / "python"), "-m", "pip", "install", "--no-index", "--no-deps",
                     "--disable-pip-version-check", str(wheel)], env=env)
        assert inst.returncode == 0, inst.stdout + inst.stderr

    def env(self) -> dict[str, str]:
        return clean_env(PYTHONPATH=str(self.deps), PYTHONNOUSERSITE="1",
                         PATH=f"{self.bin}:/usr/bin:/bin")

    def run(self, *argv: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _run(list(argv), env=self.env(), **kw)


@pytest.fixture(scope="module")
def venv(built: Built, tmp_path_factory: pytest.TempPathFactory) -> Venv:
    return Venv(tmp_path_factory.mktemp("venv"), built.wheel)


def _wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return set(z.namelist())


def test_wheel_contents(built: Built) -> None:
    names = _wheel_names(built.wheel)
    sources = {p.relative_to(built.src).as_posix() for p in (built.src / "moddep").rglob("*.py")}
    assert sources <= names
    assert not any(n.startswith(("tests/", "sample_trees/", "buildroot_integration/"))
                   for n in names)
    info = f"moddep-{_version()}.dist-info"
    with zipfile.ZipFile(built.wheel) as z:
        meta = z.read(f"{info}/METADATA").decode()
        entry_points = z.read(f"{info}/entry_points.txt").decode()
    requires = [line.split(": ", 1)[1] for line in meta.splitlines()
                if line.startswith("Requires-Dist: ") and "extra ==" not in line]
    assert sorted(r.replace(" ", "") for r in requires) == \
        sorted(d.replace(" ", "") for d in _declared_dependencies())
    assert re.search(r"^moddep = moddep\.cli:main$", entry_points, re.M)
    assert "Requires-Python: >=3.9" in meta


def test_sdist_builds_the_same_wheel(built: Built, tmp_path: Path) -> None:
    with tarfile.open(built.sdist) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
        t.extractall(tmp_path)
    assert {"pyproject.toml", "README.md", "moddep/cli.py", "moddep/__main__.py"} <= members
    (unpacked,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    out = tmp_path / "dist"
    r = _run([sys.executable, "-m", "pip", "wheel", str(unpacked), "--no-deps",
              "--no-build-isolation", "--no-index", "-w", str(out)],
             env=clean_env(PIP_CONFIG_FILE=os.devnull))
    assert r.returncode == 0, r.stdout + r.stderr
    (again,) = out.glob("*.whl")
    assert _wheel_names(again) == _wheel_names(built.wheel)


def test_installed_package_needs_only_declared_dependencies(venv: Venv) -> None:
    # every module imports in an environment with the stdlib, moddep and its declared deps
    code = ("import importlib, pkgutil, sys, moddep\n"
            "assert moddep.__file__.startswith(sys.prefix), moddep.__file__\n"
            "names = [m.name for m in pkgutil.walk_packages(moddep.__path__, 'moddep.')\n"
            "         if m.name != 'moddep.__main__']\n"
            "[importlib.import_module(n) for n in names]\n"
            "print(len(names))\n")
    r = venv.run(str(venv.bin / "python"), "-c", code, cwd="/")
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) > 10


def test_moddep_help_and_every_subcommand(venv: Venv) -> None:
    r = venv.run("moddep", "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: moddep COMMAND")
    commands = re.findall(r"^  (\S+) {2,}\S", r.stdout.split("commands:", 1)[1], re.M)
    assert {"depmod", "modprobe", "modinfo"} <= set(commands)
    for name in commands:
        h = venv.run("moddep", name, "--help")
        text = h.stdout + h.stderr
        assert h.returncode == 0, (name, text)
        assert "usage" in text.lower() and name in text, name
    v = venv.run("moddep", "--version")
    assert v.returncode == 0 and v.stdout.strip() == f"moddep {_version()}"
    unknown = venv.run("moddep", "no-such-command")
    assert unknown.returncode == 1 and "unknown command 'no-such-command'" in unknown.stderr


def test_depmod_help_lists_moddep_options(venv: Venv) -> None:
    r = venv.run("moddep", "depmod", "--help")
    assert r.returncode == 0
    for option in ("--basedir", "--kmod-version", "--host-config", "--jobs", "--cache-dir",
                   "--no-cache", "--errsyms", "--filesyms", "--symvers"):
        assert option in r.stdout, option


@pytest.fixture(scope="module")
def multicall(venv: Venv, tmp_path_factory: pytest.TempPathFactory) -> Path:
    bindir = tmp_path_factory.mktemp("sbin")
    for tool in TOOLS:
        (bindir / tool).symlink_to(venv.bin / "moddep")
    return bindir


@pytest.mark.parametrize("tool", TOOLS)
def test_multicall_symlink_help(venv: Venv, multicall: Path, tool: str) -> None:
    r = venv.run(str(multicall / tool), "--help")
    text = r.stdout + r.stderr
    assert r.returncode == 0, text
    assert "usage" in text.lower() and tool in text
    assert "moddep COMMAND" not in text  # the tool itself, not the moddep dispatcher


def test_multicall_depmod_modinfo_modprobe(venv: Venv, multicall: Path, tmp_path: Path) -> None:
    root = stage_sample("amd64-basic", tmp_path / "root")
    r = venv.run(str(multicall / "depmod"), "-b", str(root), KVER)
    assert r.returncode == 0, r.stderr
    moddir = root / "lib" / "modules" / KVER
    expected = SAMPLES / "amd64-basic" / "expected" / "kmod34"
    assert index_files(moddir) == {p.name: p.read_bytes() for p in expected.iterdir()
                                   if p.name.startswith("modules.")}
    uas = moddir / "kernel" / "drivers" / "usb" / "storage" / "uas.ko"
    r = venv.run(str(multicall / "modinfo"), "-F", "license", str(uas))
    assert r.returncode == 0 and r.stdout == "GPL\n", r.stderr
    r = venv.run(str(multicall / "modprobe"), "-d", str(root), "-S", KVER, "--show-depends",
                 "usb-storage")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].strip() == \
        f"insmod {moddir}/kernel/drivers/usb/storage/usb-storage.ko"
