"""Fuzzing the text parsers: depmod.d, modprobe.d, the kernel command line, Module.symvers and
System.map, MODPROBE_OPTIONS.

Lines are drawn from each grammar's keywords and awkward tokens (regex specials, brackets,
backslash continuations, NULs, non-UTF-8 bytes, shell metacharacters) or are plain random
bytes. The parsers report problems as messages and must never raise or hang.
"""

from __future__ import annotations

import pytest
from fuzz import harness
from fuzz.strategies import DEPMOD_D, MODPROBE_D, cmdline, kernel_symbols
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(autouse=True, scope="module")
def _summary(pytestconfig: pytest.Config) -> None:
    harness.register(pytestconfig)


@harness.fuzz_settings(300)
@given(DEPMOD_D)
def test_depmod_d(data: bytes) -> None:
    harness.run_one("depmod_d", data)
    for line in data.split(b"\n")[:-1]:  # each line alone too: cheap extra inputs
        harness.run_one("depmod_d", line)


@harness.fuzz_settings(250)
@given(MODPROBE_D)
def test_modprobe_d(data: bytes) -> None:
    harness.run_one("modprobe_d", data)
    for line in data.split(b"\n")[:-1]:
        harness.run_one("modprobe_d", line)


@harness.fuzz_settings(500)
@given(cmdline() | st.binary(max_size=64))
def test_kernel_cmdline(data: bytes) -> None:
    harness.run_one("cmdline", data)


@harness.fuzz_settings(250)
@given(kernel_symbols())
def test_kernel_symbol_files(data: bytes) -> None:
    harness.run_one("kernel_symbols", data)


@harness.fuzz_settings(300)
@given(st.lists(st.sampled_from((b" ", b"'", b'"', b"-v", b"a=b c", b"x", b"\xff")),
                max_size=12).map(b"".join))
def test_modprobe_options_env(data: bytes) -> None:
    harness.run_one("env_options", data)
