"""Replay every input that ever made a fuzz target fail (tests/fuzz/regressions/TARGET/*).

The harness writes a failing input there as soon as it fails (the smallest one per distinct
failure); once the bug is fixed the file stays, and this test keeps it fixed. A directory name
must be a target of tests/fuzz/targets.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzz import harness
from fuzz.targets import TARGETS

CASES = sorted(p for p in harness.REGRESSIONS.glob("*/*") if p.is_file())


@pytest.fixture(autouse=True, scope="module")
def _summary(pytestconfig: pytest.Config) -> None:
    harness.register(pytestconfig)


def test_regression_dirs_name_targets() -> None:
    dirs = sorted(p.name for p in harness.REGRESSIONS.iterdir() if p.is_dir())
    assert dirs and set(dirs) <= set(TARGETS)


@pytest.mark.parametrize("path", CASES, ids=[f"{p.parent.name}/{p.name}" for p in CASES])
def test_regression_input(path: Path) -> None:
    harness.run_one(path.parent.name, path.read_bytes())
