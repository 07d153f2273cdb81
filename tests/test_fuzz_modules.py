"""Fuzzing the module readers: ELF, extraction, __versions, .modinfo, containers, signatures.

Inputs are synthetic and real modules mutated field by field (see tests/fuzz/strategies.py),
modules generated with arbitrary contents, and corrupt, truncated and concatenated xz/zstd/gzip
streams. The property everywhere: only moddep's own errors (extraction: none at all), no hang,
invariants and reference readers agree. Counts appear in the test summary ("fuzz: ...").
"""

from __future__ import annotations

import pytest
from fuzz import harness
from fuzz.strategies import generated_module, mutated_elf, mutated_stream
from hypothesis import given
from hypothesis import strategies as st

from moddep.runtime.signature import MAGIC


@pytest.fixture(autouse=True, scope="module")
def _summary(pytestconfig: pytest.Config) -> None:
    harness.register(pytestconfig)


@harness.fuzz_settings(1000)
@given(mutated_elf())
def test_mutated_modules(data: bytes) -> None:
    harness.run_one("elf", data)
    harness.run_one("extract", data)


@harness.fuzz_settings(200)
@given(mutated_elf())
def test_mutated_modules_for_the_kernel_seam(data: bytes) -> None:
    harness.run_one("strip", data)


@harness.fuzz_settings(300)
@given(generated_module())
def test_generated_modules(data: bytes) -> None:
    harness.run_one("elf", data)
    harness.run_one("extract", data)
    harness.run_one("strip", data)


@harness.fuzz_settings(500)
@given(mutated_stream())
def test_compressed_streams(data: bytes) -> None:
    harness.run_one("decompress", data)


@harness.fuzz_settings(250)
@given(mutated_stream() | mutated_elf())
def test_module_files(data: bytes) -> None:
    harness.run_one("read_module", data)


@harness.fuzz_settings(1000)
@given(st.lists(st.one_of(st.sampled_from((b"alias=a-b[-_]c", b"depends=", b"=x", b"name",
                                           b"alias=", b"a.b-c=d", b"[", b"]", b"-.-")),
                          st.binary(max_size=16)), max_size=8)
       .flatmap(lambda items: st.sampled_from((b"\0", b"\0\0", b"")).map(lambda s: s.join(items))))
def test_modinfo(data: bytes) -> None:
    harness.run_one("modinfo", data)


@st.composite
def _signed(draw: st.DrawFn) -> bytes:
    """A module tail with a signature trailer whose lengths and id type are drawn."""
    body = draw(st.binary(max_size=64))
    sig = draw(st.one_of(st.binary(max_size=64),
                         st.sampled_from((b"\x30\x82\xff\xff", b"\x30\x80", b"\x30\x03\x06\x01\x2a",
                                          b"\x30\x84\xff\xff\xff\xff", b"\x06\x00"))))
    trailer = bytes(draw(st.lists(st.integers(0, 255), min_size=5, max_size=5))) + b"\0\0\0"
    trailer += draw(st.one_of(st.just(len(sig)), st.integers(0, 0xFFFFFFFF))).to_bytes(4, "big")
    return body + sig + trailer + MAGIC


@harness.fuzz_settings(400)
@given(_signed() | st.binary(max_size=128))
def test_signatures(data: bytes) -> None:
    harness.run_one("signature", data)
