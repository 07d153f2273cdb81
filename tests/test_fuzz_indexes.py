"""Fuzzing the ``.bin`` index reader and the runtime's text-index fallbacks.

Seeds are kmod's own indexes from ``sample_trees/*/expected/`` (both layouts) and indexes
encoded from generated entries; mutations overwrite node references, flags, counts and child
ranges, flip bits and truncate. The reader may only raise IndexFormatError and never hang
(loops, shared nodes and deep paths included).
"""

from __future__ import annotations

import pytest
from fuzz import harness
from fuzz.strategies import encoded_index, mutated_index
from hypothesis import given
from hypothesis import strategies as st


@pytest.fixture(autouse=True, scope="module")
def _summary(pytestconfig: pytest.Config) -> None:
    harness.register(pytestconfig)


@harness.fuzz_settings(500)
@given(mutated_index())
def test_mutated_kmod_indexes(data: bytes) -> None:
    harness.run_one("index", data)


@harness.fuzz_settings(300)
@given(encoded_index())
def test_generated_indexes(data: bytes) -> None:
    harness.run_one("index", data)


_line = st.one_of(
    st.sampled_from((b"kernel/a.ko: kernel/b.ko", b"alias pci:v* a", b"alias x", b"x.ko",
                     b"mod.alias=pci:v1", b"m.alias=", b"alias \xff b", b": ", b"a.b=c")),
    st.binary(max_size=24))


@harness.fuzz_settings(300)
@given(st.lists(_line, max_size=8).flatmap(
    lambda lines: st.sampled_from((b"\n", b"\0", b"\r\n")).map(lambda s: s.join(lines))))
def test_text_index_fallbacks(data: bytes) -> None:
    harness.run_one("text_index", data)
