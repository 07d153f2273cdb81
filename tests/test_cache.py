"""The re-run cache: content-keyed, never stale, output byte-identical to an uncached run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import synth
from kofactory import Module
from synth import KVER, make_tree

import moddep.extract
from moddep.cli import main


def _mod(exports: list[bytes], needs: list[bytes], alias: bytes) -> bytes:
    return Module(exports=[(e, 1) for e in exports], undefined=[(n, False) for n in needs],
                  modinfo=[(b"alias", alias)]).build()


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODDEP_NO_CACHE", "0")
    monkeypatch.setenv("MODDEP_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "root"
    make_tree(root, {f"kernel/m{i}.ko": _mod([f"s{i}".encode()], [f"s{i + 1}".encode()],
                                             f"a{i}".encode()) for i in range(80)})
    return root


def _run(root: Path, *args: str) -> dict[str, bytes]:
    assert main(["depmod", "-b", str(root), *args, KVER]) == 0
    moddir = root / "lib/modules" / KVER
    return {n: (moddir / n).read_bytes() for n in synth.OUTPUTS}


def _no_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise AssertionError("module extracted although the cache should serve it")

    monkeypatch.setattr(moddep.extract, "read_module", fail)
    monkeypatch.setattr("moddep.parallel.read_module", fail)


def test_rerun_is_served_from_cache_and_identical(tree: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _run(tree, "--no-cache", "-j1")
    first = _run(tree)
    assert first == plain
    _no_extraction(monkeypatch)
    assert _run(tree) == plain


def test_new_mtimes_same_content_still_hit(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(tree)
    for p in (tree / "lib/modules" / KVER / "kernel").iterdir():
        os.utime(p, (1_000_000_000, 1_000_000_000))
    _no_extraction(monkeypatch)
    assert _run(tree) == first


def test_copy_elsewhere_hits(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(tree)
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    _no_extraction(monkeypatch)
    assert _run(other) == first


def test_changed_module_is_never_stale(tree: Path) -> None:
    first = _run(tree)
    path = tree / "lib/modules" / KVER / "kernel/m5.ko"
    st = path.stat()
    # same size, same mtime: only the content (and ctime) differ
    new = _mod([b"s5"], [b"s6"], b"zz")
    assert len(new) == st.st_size
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = _run(tree)
    assert second != first
    assert b"alias zz m5\n" in second["modules.alias"]
    assert second == _run(tree, "--no-cache")


def test_partial_change_reextracts_only_that_module(tree: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tree)
    path = tree / "lib/modules" / KVER / "kernel/m7.ko"
    path.write_bytes(_mod([b"s7"], [], b"changed"))
    seen: list[bytes] = []
    real = moddep.extract.read_module

    def spy(p: bytes, *a: int) -> object:
        seen.append(p)
        return real(p, *a)

    monkeypatch.setattr("moddep.parallel.read_module", spy)
    out = _run(tree, "-j1")
    assert [os.path.basename(p) for p in seen] == [b"m7.ko"]
    assert b"alias changed m7\n" in out["modules.alias"]


def test_cache_inside_root_is_refused(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MODDEP_CACHE_DIR", str(tree / "var/cache/moddep"))
    _run(tree)
    assert "is inside the root" in capsys.readouterr().err
    assert not (tree / "var").exists()
