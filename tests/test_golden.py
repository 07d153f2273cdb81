"""Golden tests: moddep on the bundled sample trees against the committed kmod 30/34.2 output.

The expected files were written by the real kmod binaries (tests/make_sample_trees.py); these
tests need no network. The trees are copied per test; sample_trees/ is never written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_integrations_support import stage_sample

from moddep.cli import main

TOP = Path(__file__).resolve().parent.parent / "sample_trees"
TREES = sorted(p.name for p in TOP.iterdir() if (p / "expected").is_dir())


def _kver(tree: Path) -> str:
    (kver,) = [p.name for p in (tree / "lib" / "modules").iterdir()]
    return kver


@pytest.mark.parametrize("kmod", [30, 34])
@pytest.mark.parametrize("name", TREES)
def test_sample_tree_matches_kmod(name: str, kmod: int, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = TOP / name
    root = stage_sample(name, tmp_path / "root")
    kver = _kver(src)
    assert main(["depmod", "--kmod-version", str(kmod), "-b", str(root), kver]) == 0
    expected = src / "expected" / f"kmod{kmod}"
    names = sorted(p.name for p in expected.iterdir() if p.name.startswith("modules."))
    moddir = root / "lib" / "modules" / kver
    differing = [n for n in names if (moddir / n).read_bytes() != (expected / n).read_bytes()]
    assert differing == []
    stderr = capsys.readouterr().err.replace(str(root), "ROOT")
    assert stderr == (expected / "stderr.txt").read_text()


def test_outdir_leaves_tree_untouched(tmp_path: Path) -> None:
    src = TOP / "amd64-basic"
    kver = _kver(src)
    before = sorted(p.name for p in (src / "lib/modules" / kver).iterdir())
    assert main(["depmod", "-b", str(src), "-o", str(tmp_path), kver]) == 0
    assert sorted(p.name for p in (src / "lib/modules" / kver).iterdir()) == before
    out = tmp_path / "lib/modules" / kver
    assert (out / "modules.dep").read_bytes() == (src / "expected/kmod34/modules.dep").read_bytes()


def test_trees_have_a_readme() -> None:
    for name in TREES:
        text = (TOP / name / "README.md").read_text()
        assert "License" in text and "package" in text
