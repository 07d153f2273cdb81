"""The oracle infrastructure itself: archive, kmod binaries, kernel trees, references."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import debcache
import pytest

pytestmark = pytest.mark.oracle


@contextmanager
def available() -> Iterator[None]:
    """Turn :class:`debcache.Unavailable` into a skip with its reason."""
    try:
        yield
    except debcache.Unavailable as exc:
        pytest.skip(str(exc))


def test_archive_uri_comes_from_apt_sources() -> None:
    with available():
        uri = debcache.archive_uri()
    assert re.match(r"^[a-z][a-z0-9+]*://\S+$", uri), uri
    host = uri.split("://", 1)[1].split("/", 1)[0]
    for name in ("debcache.py", "test_debcache.py"):
        assert host not in (Path(__file__).parent / name).read_text()


@pytest.mark.parametrize(
    ("version", "expected"), [(30, "kmod version 30"), (34, "kmod version 34.2")]
)
def test_kmod_versions(version: int, expected: str) -> None:
    with available():
        prefix = debcache.kmod_depmod(version)
    out = subprocess.run([*prefix, "-V"], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[0] == expected


def test_kmod_tool_argv0() -> None:
    with available():
        prefix = debcache.kmod_tool(34, "modinfo")
    out = subprocess.run([*prefix, "-V"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("kmod version 34.2")


def test_kernel_tree_amd64() -> None:
    with available():
        tree = debcache.kernel_tree("amd64")
    assert tree.compression == "none"
    assert re.match(r"^\d+\.\d+\.\d+-\d+-amd64$", tree.kver), tree.kver
    moddir = tree.root / "lib" / "modules" / tree.kver
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        assert (moddir / name).is_file()
    assert not (moddir / "modules.dep").exists()
    assert sum(1 for _ in moddir.rglob("*.ko")) > 1000


def test_reference_amd64_kmod34() -> None:
    with available():
        tree = debcache.kernel_tree("amd64")
        ref = debcache.reference(tree, 34)
    assert (ref / "rc.txt").read_text().strip() == "0"
    dep_lines = (ref / "modules.dep").read_text().splitlines()
    kos = sum(1 for _ in tree.root.rglob("*.ko"))
    assert dep_lines and len(dep_lines) == kos
    for name in debcache.OUTPUT_FILES:
        assert (ref / name).is_file(), name


def test_copy_tree_leaves_original(tmp_path: Path) -> None:
    with available():
        tree = debcache.kernel_tree("amd64")
    copy = debcache.copy_tree(tree, tmp_path / "root")
    assert copy.kver == tree.kver
    order = copy.root / "lib" / "modules" / copy.kver / "modules.order"
    assert order.samefile(tree.root / "lib" / "modules" / tree.kver / "modules.order")
