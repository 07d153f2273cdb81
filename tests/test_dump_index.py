"""dump-index prints a .bin index's entries; a corrupt one gives moddep's error, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from moddep.cli import main

EXPECTED = Path(__file__).resolve().parent.parent / "sample_trees/amd64-basic/expected"


def test_dump_matches_text_index(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    assert main(["moddep", "dump-index", str(EXPECTED / "kmod34/modules.dep.bin")]) == 0
    out = capsysbinary.readouterr().out.splitlines()
    dep = (EXPECTED / "kmod34/modules.dep").read_bytes().splitlines()
    assert sorted(line.split(b"\t")[1] for line in out) == sorted(dep)


def test_both_layouts_same_entries(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    outs = []
    for v in (30, 34):
        assert main(["moddep", "dump-index", str(EXPECTED / f"kmod{v}/modules.alias.bin")]) == 0
        outs.append(capsysbinary.readouterr().out)
    assert outs[0] == outs[1] and outs[0].count(b"\n") > 100


def test_corrupt_index(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes((EXPECTED / "kmod34/modules.alias.bin").read_bytes()[:100])
    assert main(["moddep", "dump-index", str(bad)]) == 1
    assert "dump-index: ERROR:" in capsys.readouterr().err
