"""Oracle: moddep's depmod against real kmod 30 and kmod 34.2 on full Debian kernel trees.

Every output file kmod writes must be byte-identical, for every architecture, compression and
kmod generation. Trees, kmod binaries and kmod's outputs come from :mod:`debcache` (downloaded
once, cached); without network or apt these tests skip with the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import debcache
import pytest

from moddep.cli import main
from moddep.index import trie

ALL_ARCHES = ("amd64", "arm64", "armhf", "s390x", "i386", "ppc64el", "mips64el")
# compressed variants for the architectures the issue requires (compression is costly)
COMPRESSED_ARCHES = ("amd64", "arm64", "armhf", "s390x")
CASES = [(a, "none") for a in ALL_ARCHES] + [
    (a, c) for a in COMPRESSED_ARCHES for c in ("xz", "zst")]

pytestmark = pytest.mark.oracle


def _tree(arch: str, comp: str) -> debcache.KernelTree:
    try:
        if comp == "none":
            return debcache.kernel_tree(arch)
        return debcache.compressed_tree(arch, comp)
    except debcache.Unavailable as e:
        pytest.skip(f"{arch}/{comp} tree unavailable: {e}")


def _reference(tree: debcache.KernelTree, kmod: int) -> Path:
    try:
        return debcache.reference(tree, kmod)
    except debcache.Unavailable as e:
        pytest.skip(f"kmod {kmod} unavailable: {e}")


def _run_depmod(tree: debcache.KernelTree, kmod: int, tmp_path: Path,
                *extra: str) -> debcache.KernelTree:
    work = debcache.copy_tree(tree, tmp_path / "root")
    conf = tmp_path / "conf"
    conf.mkdir()
    rc = main(["moddep", "depmod", "--kmod-version", str(kmod), "-b", str(work.root),
               "-C", str(conf), *extra, tree.kver])
    assert rc == 0
    return work


def _compare(ref: Path, moddir: Path) -> list[str]:
    names = sorted(p.name for p in ref.iterdir() if p.name.startswith("modules."))
    assert names, f"kmod wrote nothing in {ref}"
    return [n for n in names if (moddir / n).read_bytes() != (ref / n).read_bytes()]


@pytest.mark.parametrize("kmod", [30, 34])
@pytest.mark.parametrize("arch,comp", CASES)
def test_depmod_identical_to_kmod(arch: str, comp: str, kmod: int, tmp_path: Path) -> None:
    tree = _tree(arch, comp)
    ref = _reference(tree, kmod)
    assert (ref / "rc.txt").read_text().strip() == "0"
    work = _run_depmod(tree, kmod, tmp_path)
    differing = _compare(ref, work.moddir)
    assert differing == [], f"{arch}/{comp} kmod {kmod}: files differ: {differing}"
    # what kmod does not write, we do not write either
    ours = {p.name for p in work.moddir.iterdir() if p.name.startswith("modules.")}
    kmods = {p.name for p in ref.iterdir() if p.name.startswith("modules.")}
    inputs = {"modules.order", "modules.builtin", "modules.builtin.modinfo"}
    assert ours - inputs == kmods - inputs


@pytest.mark.parametrize("kmod", [30, 34])
def test_dry_run_is_text_files_concatenated(kmod: int, tmp_path: Path,
                                            capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    tree = _tree("amd64", "none")
    ref = _reference(tree, kmod)
    conf = tmp_path / "conf"
    conf.mkdir()
    rc = main(["moddep", "depmod", "-n", "--kmod-version", str(kmod), "-b", str(tree.root),
               "-C", str(conf), tree.kver])
    assert rc == 0
    text = ["modules.dep", "modules.alias", "modules.softdep", "modules.weakdep",
            "modules.symbols", "modules.devname"]
    expected = b"".join((ref / n).read_bytes() for n in text if (ref / n).exists())
    assert capfdbinary.readouterr().out == expected
    assert not any(p.name.endswith(".bin") and p.stat().st_mtime > (ref / "rc.txt").stat().st_mtime
                   for p in tree.moddir.iterdir()), "-n wrote into the tree"


def _dep_entries(path: Path) -> list[tuple[bytes, bytes, int]]:
    return [(k, v.replace(b".ko.gz", b".ko"), p)
            for k, v, p in trie.Index.open(str(path)).entries()]


@pytest.mark.parametrize("kmod", [30, 34])
def test_gzip_tree_matches_uncompressed_paths_aside(kmod: int, tmp_path: Path) -> None:
    """kmod here is built without zlib: compare a .ko.gz tree with the plain tree's output."""
    plain = _tree("amd64", "none")
    ref = _reference(plain, kmod)
    work = _run_depmod(_tree("amd64", "gz"), kmod, tmp_path)
    for name in sorted(p.name for p in ref.iterdir() if p.name.startswith("modules.")):
        ours = (work.moddir / name).read_bytes()
        theirs = (ref / name).read_bytes()
        if name == "modules.dep":
            assert ours.replace(b".ko.gz", b".ko") == theirs
        elif name == "modules.dep.bin":
            assert _dep_entries(work.moddir / name) == _dep_entries(ref / name)
        else:
            assert ours == theirs, name


def test_module_count_matches_tree() -> None:
    tree = _tree("amd64", "none")
    ref = _reference(tree, 34)
    lines = (ref / "modules.dep").read_bytes().count(b"\n")
    count = sum(1 for _d, _s, files in os.walk(tree.moddir) for f in files if f.endswith(".ko"))
    assert lines == count > 1000
