"""Tests of moddep.index.trie: the kmod .bin index encoder, reader and fnmatch.

The exact bytes asserted below were worked out by hand from the format description in the
module docstring (kmod's libkmod/libkmod-index.c and tools/depmod.c, v30 and v34.2). Layout
"pre" is what kmod >= 34 writes, "post" what kmod 30..33 write. Behaviour of the lookups
was checked against real modprobe (kmod 30 and 34.2) with the same indexes; a small gated
test repeats that when a kmod modprobe is installed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import locale
import os
import random
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moddep.errors import IndexFormatError
from moddep.index.trie import (
    FLAG_CHILDREN,
    FLAG_PREFIX,
    FLAG_VALUES,
    MAGIC,
    OFFSET_MASK,
    VERSION,
    Index,
    encode,
    fnmatch,
)

Entry = Tuple[bytes, bytes, int]
LAYOUTS = ("pre", "post")


def u32(*words: int) -> bytes:
    return struct.pack(f">{len(words)}I", *words)


HEADER = u32(MAGIC, VERSION)


def values(*pairs: Tuple[int, bytes]) -> bytes:
    """An encoded value list: count, then priority and NUL-terminated value each."""
    return u32(len(pairs)) + b"".join(u32(p) + v + b"\0" for p, v in pairs)


# --- hand-checked encodings ------------------------------------------------------------------

# Keys ab -> x, ac -> y (the module docstring's worked example).
EXAMPLE = [(b"ab", b"x", 0), (b"ac", b"y", 0)]
EXAMPLE_PRE = bytes.fromhex(
    "b007f457 00020001 2000000c"
    " 6161 20000012"
    " 6263 4000001c 40000026"
    " 00000001 00000000 7800"
    " 00000001 00000000 7900"
)
EXAMPLE_POST = bytes.fromhex(
    "b007f457 00020001 2000002a"
    " 00000001 00000000 7800"
    " 00000001 00000000 7900"
    " 6263 4000000c 40000016"
    " 6161 20000020"
)


def test_worked_example_pre() -> None:
    assert encode(EXAMPLE, "pre") == EXAMPLE_PRE
    assert encode(EXAMPLE) == EXAMPLE_PRE  # pre-order is the default


def test_worked_example_post() -> None:
    assert encode(EXAMPLE, "post") == EXAMPLE_POST


@pytest.mark.parametrize("layout", LAYOUTS)
def test_empty_index(layout: str) -> None:
    data = encode([], layout)
    assert data == HEADER + u32(0x0000000C)
    ix = Index.from_bytes(data)
    assert list(ix.entries()) == []
    assert ix.lookup(b"") is None
    assert ix.search_wild(b"anything") == []
    assert ix.layout is None  # a lone root fits both layouts


def test_single_key() -> None:
    leaf = b"bc\0" + values((5, b"v"))  # 13 bytes, prefix and values
    # pre: root @12 (6 bytes), leaf @18
    pre = HEADER + u32(0x2000000C) + b"aa" + u32(FLAG_PREFIX | FLAG_VALUES | 18) + leaf
    # post: leaf @12, root @25
    post = HEADER + u32(FLAG_CHILDREN | 25) + leaf + b"aa" + u32(FLAG_PREFIX | FLAG_VALUES | 12)
    assert encode([(b"abc", b"v", 5)], "pre") == pre
    assert encode([(b"abc", b"v", 5)], "post") == post
    for data, layout in ((pre, "pre"), (post, "post")):
        ix = Index.from_bytes(data)
        assert ix.layout == layout
        assert list(ix.entries()) == [(b"abc", b"v", 5)]
        assert ix.lookup(b"abc") == b"v"
        assert ix.lookup(b"ab") is None
        assert ix.lookup(b"abcd") is None


def test_equal_priorities_newest_first() -> None:
    entries = [(b"k", b"a", 1), (b"k", b"b", 1), (b"k", b"c", 0), (b"k", b"d", 2)]
    leaf = values((0, b"c"), (1, b"b"), (1, b"a"), (2, b"d"))
    pre = HEADER + u32(0x2000000C) + b"kk" + u32(FLAG_VALUES | 18) + leaf
    post = HEADER + u32(FLAG_CHILDREN | (12 + len(leaf))) + leaf + b"kk" + u32(FLAG_VALUES | 12)
    assert encode(entries, "pre") == pre
    assert encode(entries, "post") == post
    ix = Index.from_bytes(pre)
    assert list(ix.entries()) == [
        (b"k", b"c", 0), (b"k", b"b", 1), (b"k", b"a", 1), (b"k", b"d", 2)]
    assert ix.lookup(b"k") == b"c"


def test_key_prefix_of_other_keys() -> None:
    entries = [(b"abce", b"3", 2), (b"ab", b"1", 0), (b"abcd", b"2", 1)]
    # Shape: root -a-> A("b", values [1]) -c-> C("") -d-> D, -e-> E.
    # Sizes: root 6, A 2+6+10 = 18, C 10, D 10, E 10.
    a_flags = FLAG_PREFIX | FLAG_CHILDREN | FLAG_VALUES

    def node_a(c_ref: int) -> bytes:
        return b"b\0" + b"cc" + u32(c_ref) + values((0, b"1"))

    def node_c(d_ref: int, e_ref: int) -> bytes:
        return b"de" + u32(d_ref, e_ref)

    d, e = values((1, b"2")), values((2, b"3"))
    pre = (HEADER + u32(FLAG_CHILDREN | 12) + b"aa" + u32(a_flags | 18)
           + node_a(FLAG_CHILDREN | 36) + node_c(FLAG_VALUES | 46, FLAG_VALUES | 56) + d + e)
    post = (HEADER + u32(FLAG_CHILDREN | 60) + d + e
            + node_c(FLAG_VALUES | 12, FLAG_VALUES | 22) + node_a(FLAG_CHILDREN | 32)
            + b"aa" + u32(a_flags | 42))
    assert len(pre) == len(post) == 66
    assert encode(entries, "pre") == pre
    assert encode(entries, "post") == post
    for data in (pre, post):
        ix = Index.from_bytes(data)
        assert list(ix.entries()) == [(b"ab", b"1", 0), (b"abcd", b"2", 1), (b"abce", b"3", 2)]
        assert ix.lookup(b"ab") == b"1"
        assert ix.lookup(b"abc") is None
        assert ix.lookup(b"a") is None
        assert ix.lookup(b"abcd") == b"2"


def test_empty_key_lives_in_root() -> None:
    data = encode([(b"", b"root", 3), (b"x", b"leaf", 1)])
    root = b"xx" + u32(FLAG_VALUES | 12 + 6 + 13) + values((3, b"root"))  # root: 6 + 13 bytes
    assert data == HEADER + u32(FLAG_CHILDREN | FLAG_VALUES | 12) + root + values((1, b"leaf"))
    ix = Index.from_bytes(data)
    assert ix.lookup(b"") == b"root"
    assert list(ix.entries()) == [(b"", b"root", 3), (b"x", b"leaf", 1)]


# --- an independent model of depmod: insertion with node splitting, naive writers ------------


class _ModelNode:
    def __init__(self, prefix: bytes = b"") -> None:
        self.prefix = prefix
        self.values: List[Tuple[int, bytes]] = []
        self.children: Dict[int, _ModelNode] = {}


def _model_insert(root: _ModelNode, key: bytes, value: bytes, priority: int) -> None:
    node = root
    i = 0
    while True:
        # Make node.prefix a prefix of key[i:], splitting the node where they differ.
        j = 0
        while j < len(node.prefix):
            if i + j >= len(key) or node.prefix[j] != key[i + j]:
                tail = _ModelNode(node.prefix[j + 1:])
                tail.values, tail.children = node.values, node.children
                node.values, node.children = [], {node.prefix[j]: tail}
                node.prefix = node.prefix[:j]
                break
            j += 1
        i += len(node.prefix)
        if i == len(key):
            pos = 0
            while pos < len(node.values) and node.values[pos][0] < priority:
                pos += 1
            node.values.insert(pos, (priority, value))
            return
        child = node.children.get(key[i])
        if child is None:
            child = node.children[key[i]] = _ModelNode(key[i + 1:])
            child.values.append((priority, value))
            return
        node = child
        i += 1


def _model_flags(node: _ModelNode) -> int:
    return ((FLAG_PREFIX if node.prefix else 0) | (FLAG_CHILDREN if node.children else 0)
            | (FLAG_VALUES if node.values else 0))


def _model_bytes(node: _ModelNode, refs: Dict[int, int]) -> bytes:
    out = b""
    if node.prefix:
        out += node.prefix + b"\0"
    if node.children:
        low, high = min(node.children), max(node.children)
        out += bytes((low, high)) + b"".join(u32(refs.get(c, 0)) for c in range(low, high + 1))
    if node.values:
        out += values(*node.values)
    return out


def _model_post(node: _ModelNode, out: bytearray) -> int:
    refs = {c: _model_post(node.children[c], out) for c in sorted(node.children)}
    offset = len(out)
    out += _model_bytes(node, refs)
    return offset | _model_flags(node)


def _model_total(node: _ModelNode) -> int:
    return len(_model_bytes(node, {})) + sum(_model_total(c) for c in node.children.values())


def _model_pre(node: _ModelNode, offset: int, out: bytearray) -> None:
    cursor = offset + len(_model_bytes(node, {}))
    refs = {}
    for c in sorted(node.children):
        refs[c] = cursor | _model_flags(node.children[c])
        cursor += _model_total(node.children[c])
    out += _model_bytes(node, refs)
    for c in sorted(node.children):
        _model_pre(node.children[c], refs[c] & OFFSET_MASK, out)


def model_encode(entries: List[Entry], layout: str) -> bytes:
    root = _ModelNode()
    for key, value, priority in entries:
        _model_insert(root, key, value, priority)
    out = bytearray(HEADER + u32(0))
    if layout == "post":
        out[8:12] = u32(_model_post(root, out))
    else:
        out[8:12] = u32(12 | _model_flags(root))
        _model_pre(root, 12, out)
    return bytes(out)


def expected_entries(entries: List[Entry]) -> List[Entry]:
    """Dump order: keys ascending; per key, kmod's insertion rule."""
    per_key: Dict[bytes, List[Tuple[int, bytes]]] = {}
    for key, value, priority in entries:
        lst = per_key.setdefault(key, [])
        pos = 0
        while pos < len(lst) and lst[pos][0] < priority:
            pos += 1
        lst.insert(pos, (priority, value))
    return [(k, v, p) for k in sorted(per_key) for p, v in per_key[k]]


def reinsert(pairs: List[Tuple[bytes, int]]) -> List[Tuple[bytes, int]]:
    """Values added one by one with the insertion rule (libkmod's add_value)."""
    out: List[Tuple[bytes, int]] = []
    for value, priority in pairs:
        pos = 0
        while pos < len(out) and out[pos][1] < priority:
            pos += 1
        out.insert(pos, (value, priority))
    return out


def walk_nodes(ix: Any) -> List[Any]:
    """Every node, root first (white-box: the canonical-shape test needs the nodes)."""
    return [node for _, node in ix._walk(ix._root, b"", post_order=False)]


# --- property-based round trips --------------------------------------------------------------

KEY_CHARS = "ab*?[]c:!\\"
keys_st = st.text(alphabet=KEY_CHARS, max_size=6).map(str.encode)
values_st = st.text(alphabet="xyz-_ ", max_size=4).map(str.encode)
priorities_st = st.one_of(st.integers(0, 3), st.integers(0, 0xFFFFFFFF))
entry_st = st.tuples(keys_st, values_st, priorities_st)
entries_st = st.lists(entry_st, max_size=40)


@given(entries_st)
@settings(max_examples=200, deadline=None)
def test_round_trip_both_layouts(entries: List[Entry]) -> None:
    expected = expected_entries(entries)
    pre = encode(entries, "pre")
    post = encode(entries, "post")
    assert len(pre) == len(post)
    assert pre == model_encode(entries, "pre")
    assert post == model_encode(entries, "post")
    for data in (pre, post):
        ix = Index.from_bytes(data)
        ix.validate()
        assert list(ix.entries()) == expected
        assert list(ix.entries(reader="stdio")) == [
            (k, v, p) for k in sorted({e[0] for e in entries})
            for v, p in reinsert([(v, p) for kk, v, p in expected if kk == k])]


@given(entries_st)
@settings(max_examples=200, deadline=None)
def test_canonical_shape(entries: List[Entry]) -> None:
    nodes = walk_nodes(Index.from_bytes(encode(entries)))
    assert nodes[0].prefix == b""  # the root is never given a prefix
    for node in nodes[1:]:
        assert node.values or sum(1 for r in node.refs if r) >= 2


@given(entries_st, st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_shape_independent_of_key_order(entries: List[Entry], rnd: random.Random) -> None:
    # Reorder entries across keys, keeping each key's own order (which decides value order).
    by_key: Dict[bytes, List[Entry]] = {}
    for e in entries:
        by_key.setdefault(e[0], []).append(e)
    keys = list(by_key)
    rnd.shuffle(keys)
    shuffled = [e for k in keys for e in by_key[k]]
    for layout in LAYOUTS:
        assert encode(shuffled, layout) == encode(entries, layout)


@given(entries_st, st.lists(keys_st, max_size=10))
@settings(max_examples=200, deadline=None)
def test_exact_lookups(entries: List[Entry], probes: List[bytes]) -> None:
    expected = expected_entries(entries)
    for layout in LAYOUTS:
        ix = Index.from_bytes(encode(entries, layout))
        for key in {e[0] for e in entries} | set(probes):
            stored = [(v, p) for k, v, p in expected if k == key]
            assert ix.lookup_all(key) == stored
            assert ix.lookup(key) == (stored[0][0] if stored else None)
            assert ix.lookup_all(key, reader="stdio") == reinsert(stored)
            assert ix.lookup(key, reader="stdio") == (reinsert(stored)[0][0] if stored else None)


# --- wildcard search -------------------------------------------------------------------------


def reference_search(entries: List[Entry], key: bytes, reader: str = "mmap"
                     ) -> List[Tuple[bytes, int]]:
    """libkmod's wildcard search for an input without wildcard characters, without a trie.

    A pattern matches when its text before the first wildcard equals the input's (compared
    literally, as libkmod's exact walk does) and fnmatch matches the rest. libkmod meets the
    matching patterns by increasing position of their first wildcard (an exact key, met
    where the input ends, after the wildcard children there), and within one position in
    trie post-order (children first, ascending): sorting by key + 0xff does that for 7-bit
    keys. Each pattern's values are merged with the insertion rule.
    """
    assert not any(c in key for c in b"*?[")
    per_key: Dict[bytes, List[Tuple[bytes, int]]] = {}
    for k, v, p in expected_entries(entries):
        per_key.setdefault(k, []).append((v, p))
    met = []
    for pattern in per_key:
        wild = min((pattern.index(c) for c in b"*?[" if c in pattern), default=None)
        if wild is None:
            if pattern == key:
                met.append((len(key) + 1, pattern))
        elif pattern[:wild] == key[:wild] and fnmatch(pattern[wild:], key[wild:]):
            met.append((wild, pattern))
    out: List[Tuple[bytes, int]] = []
    for _, pattern in sorted(met, key=lambda m: (m[0], m[1] + b"\xff")):
        node_values = per_key[pattern] if reader == "mmap" else reinsert(per_key[pattern])
        out = merge_into(out, node_values)
    return out


def merge_into(out: List[Tuple[bytes, int]], new: List[Tuple[bytes, int]]
               ) -> List[Tuple[bytes, int]]:
    """``out`` with each of ``new`` added by the insertion rule, in turn."""
    out = list(out)
    for value, priority in new:
        pos = 0
        while pos < len(out) and out[pos][1] < priority:
            pos += 1
        out.insert(pos, (value, priority))
    return out


INPUT_CHARS = "abc:!\\]^"


@given(entries_st, st.lists(st.text(alphabet=INPUT_CHARS, max_size=7).map(str.encode),
                            max_size=8))
@settings(max_examples=200, deadline=None)
def test_search_wild_matches_reference(entries: List[Entry], probes: List[bytes]) -> None:
    keys = {e[0] for e in entries if not any(c in e[0] for c in b"*?[")}
    for layout in LAYOUTS:
        ix = Index.from_bytes(encode(entries, layout))
        for probe in set(probes) | keys:
            for reader in ("mmap", "stdio"):
                assert ix.search_wild(probe, reader=reader) == \
                    reference_search(entries, probe, reader)


def test_search_wild_input_with_wildcards_walks_literally() -> None:
    # libkmod enters the '*' child both in match-all mode and as the input's own character,
    # so the pattern a* is met twice for the input "a*" (checked with modprobe -R).
    ix = Index.from_bytes(encode([(b"a*", b"star", 0), (b"a?x", b"q", 0)]))
    assert ix.search_wild(b"a*") == [(b"star", 0), (b"star", 0)]
    assert ix.search_wild(b"ab") == [(b"star", 0)]


def test_search_wild_equal_priorities_per_reader() -> None:
    # File order for k is [new, old]; the mmap reader merges new then old (old ends first),
    # the stdio reader re-sorts the node to [old, new] first (new ends first). Both checked
    # with modprobe -R of kmod 30 and 34.2.
    ix = Index.from_bytes(encode([(b"k", b"old", 0), (b"k", b"new", 0), (b"k", b"low", 1)]))
    assert ix.search_wild(b"k") == [(b"old", 0), (b"new", 0), (b"low", 1)]
    assert ix.search_wild(b"k", reader="stdio") == [(b"new", 0), (b"old", 0), (b"low", 1)]
    assert ix.lookup(b"k") == b"new"
    assert ix.lookup(b"k", reader="stdio") == b"old"


def test_search_wild_escape_before_wildcard_is_literal() -> None:
    # Text before the first wildcard is compared literally by the walk, so a backslash there
    # is not an escape; after it, fnmatch treats backslash as an escape (flags 0).
    ix = Index.from_bytes(encode([(b"a\\b*", b"lit", 0), (b"x*\\?", b"esc", 0)]))
    assert ix.search_wild(b"a\\bzz") == [(b"lit", 0)]
    assert ix.search_wild(b"abzz") == []
    assert ix.search_wild(b"xyz?") == [(b"esc", 0)]
    assert ix.search_wild(b"xyzq") == []


REAL_ALIASES = [
    (b"pci:v00008086d000010D3sv*sd*bc*sc*i*", b"e1000e", 10),
    (b"pci:v00008086d*sv*sd*bc02sc00i*", b"intel_net", 5),
    (b"pci:v*d*sv*sd*bc02sc00i*", b"any_net", 20),
    (b"pci:v00008086d000010D3sv*sd*bc*sc*i*", b"e1000e_dup", 10),
    (b"usb:v0BDAp8153d*dc*dsc*dp*ic*isc*ip*in*", b"r8152", 3),
    (b"usb:v0BDAp8153d*dc*dsc*dp*icFFisc*ip*in*", b"r8152_vendor", 2),
    (b"usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*", b"usb_storage", 7),
    (b"acpi*:PNP0A03:*", b"pci_root", 1),
    (b"acpi*:PNP0A08:*", b"pcie_root", 1),
    (b"of:N*T*Cfoo,barC*", b"foobar", 2),
    (b"of:N*T*Cfoo,bar", b"foobar", 2),
    (b"dmi*:svn[Ll][Ee][Nn][Oo][Vv][Oo]:*", b"thinkpad_acpi", 4),
    (b"symbol:usb_register_driver", b"usbcore", 0),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("query", "expected"), [
    # Met in walk order any_net, intel_net, then the node [e1000e_dup, e1000e]; each merge
    # puts a value before the first one of equal or higher priority.
    (b"pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00",
     [b"intel_net", b"e1000e", b"e1000e_dup", b"any_net"]),
    (b"pci:v00008086d00001234sv00001028sd000004BEbc02sc00i00", [b"intel_net", b"any_net"]),
    (b"pci:v000010ECd00008168sv00001462sd00007C56bc02sc00i00", [b"any_net"]),
    (b"pci:v000010ECd00008168sv00001462sd00007C56bc03sc00i00", []),
    (b"usb:v0BDAp8153d3000dc00dsc00dp00icFFisc00ip00in00", [b"r8152_vendor", b"r8152"]),
    (b"usb:v0BDAp8153d3000dc00dsc00dp00ic02isc06ip00in00", [b"r8152"]),
    (b"usb:v0781p5581d0100dc00dsc00dp00ic08isc06ip50in00", [b"usb_storage"]),
    (b"acpi:PNP0A03:", [b"pci_root"]),
    (b"acpi:PNP0A08:PNP0A03:", [b"pcie_root", b"pci_root"]),  # met ...03 first, equal prio
    (b"acpi:PNP0A0C:", []),
    (b"of:NpciTpciCfoo,bar", [b"foobar"]),
    (b"of:NpciTpciCfoo,barCfoo,baz", [b"foobar"]),
    (b"of:NpciTpciCfoo,baz", []),
    (b"dmi:bvnLENOVO:svnLENOVO:pn20XW:", [b"thinkpad_acpi"]),
    (b"dmi:bvnLENOVO:svnLeNoVo:pn20XW:", [b"thinkpad_acpi"]),
    (b"dmi:svnLENOVA:", []),
    (b"symbol:usb_register_driver", [b"usbcore"]),
    (b"symbol:usb_register", []),
])
def test_search_wild_real_looking_modaliases(layout: str, query: bytes,
                                             expected: List[bytes]) -> None:
    ix = Index.from_bytes(encode(REAL_ALIASES, layout))
    assert [v for v, _ in ix.search_wild(query)] == expected
    assert ix.search_wild(query) == reference_search(REAL_ALIASES, query)


def test_search_wild_and_lookup_ignore_nul_and_high_bytes() -> None:
    ix = Index.from_bytes(encode([(b"a*", b"m", 0), (b"ab", b"n", 0)]))
    assert ix.search_wild(b"ab\0") == []
    assert ix.lookup(b"ab\0") is None
    assert ix.search_wild(b"a\xe9") == [(b"m", 0)]
    assert ix.lookup(b"\xe9") is None


@pytest.mark.parametrize("layout", LAYOUTS)
def test_deep_trie(layout: str) -> None:
    # Keys a^i b branch at every depth: a path of 1500 nodes, deeper than Python's default
    # recursion limit. Nothing recurses, and walks keep the key text in pieces.
    entries = [(b"a" * i + b"b", b"v%d" % i, i) for i in range(1500)]
    ix = Index.from_bytes(encode(entries, layout))
    ix.validate()
    assert list(ix.entries()) == sorted(entries)
    assert ix.lookup(b"a" * 1499 + b"b") == b"v1499"
    assert ix.search_wild(b"a" * 700 + b"b") == [(b"v700", 700)]
    star = Index.from_bytes(encode([(b"*" + k, v, p) for k, v, p in entries], layout))
    assert star.search_wild(b"zaab") == [(b"v0", 0), (b"v1", 1), (b"v2", 2)]


# --- encoder errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "message"), [
    ((b"caf\xe9", b"m", 0), "byte 0xe9 at position 3: only 7-bit ASCII"),
    ((b"k", b"\x80", 0), "index value b'\\x80' (key b'k') has byte 0x80 at position 0"),
    ((b"a\0b", b"m", 0), "contains a NUL byte at position 1"),
    ((b"k", b"m\0", 0), "index value b'm\\x00' (key b'k') contains a NUL byte"),
])
def test_encode_refuses_bad_strings(entry: Entry, message: str) -> None:
    with pytest.raises(IndexFormatError, match=re.escape(message)):
        encode([(b"fine", b"x", 0), entry])


def test_encode_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="priority -1"):
        encode([(b"k", b"v", -1)])
    with pytest.raises(ValueError, match="priority 4294967296"):
        encode([(b"k", b"v", 1 << 32)])
    with pytest.raises(TypeError):
        encode([("k", b"v", 0)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="layout"):
        encode([], "middle")
    # The full unsigned range is fine.
    data = encode([(b"k", b"v", 0xFFFFFFFF)])
    assert Index.from_bytes(data).lookup_all(b"k") == [(b"v", 0xFFFFFFFF)]


def test_encode_accepts_any_iterable() -> None:
    assert encode(iter(EXAMPLE)) == EXAMPLE_PRE
    assert encode(tuple(EXAMPLE), "post") == EXAMPLE_POST


# --- malformed files -------------------------------------------------------------------------


def read_everything(data: bytes) -> None:
    """Everything a caller might do with an index; only IndexFormatError may escape."""
    ix = Index.from_bytes(data, "test.bin")
    ix.validate()
    list(ix.entries())
    list(ix.entries(reader="stdio"))
    for key in (b"", b"a", b"ab", b"abc", b"symbol:x", b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"):
        ix.lookup(key)
        ix.search_wild(key)
        ix.search_wild(key, reader="stdio")
    _ = ix.layout


def test_bad_magic() -> None:
    data = bytearray(EXAMPLE_PRE)
    data[3] = 0x58
    with pytest.raises(IndexFormatError, match="bad magic 0xb007f458 at offset 0, expected "
                                               "0xb007f457") as exc:
        Index.from_bytes(bytes(data), "x/modules.dep.bin")
    assert str(exc.value).startswith("x/modules.dep.bin: ")


def test_major_version_checked_minor_ignored() -> None:
    v3 = EXAMPLE_PRE[:4] + u32(0x00030001) + EXAMPLE_PRE[8:]
    with pytest.raises(IndexFormatError, match=r"unsupported index version 3\.1 at offset 4"):
        Index.from_bytes(v3)
    v1 = EXAMPLE_PRE[:4] + u32(0x00010001) + EXAMPLE_PRE[8:]
    with pytest.raises(IndexFormatError, match="version 1.1"):
        Index.from_bytes(v1)
    minor = EXAMPLE_PRE[:4] + u32(0x00020007) + EXAMPLE_PRE[8:]
    assert list(Index.from_bytes(minor).entries()) == [(b"ab", b"x", 0), (b"ac", b"y", 0)]


@pytest.mark.parametrize("size", range(12))
def test_short_header(size: int) -> None:
    with pytest.raises(IndexFormatError, match=f"file is {size} bytes"):
        Index.from_bytes(EXAMPLE_PRE[:size])


SMALL_FILES = [encode(e, layout) for layout in LAYOUTS for e in (
    EXAMPLE,
    [(b"abce", b"3", 2), (b"ab", b"1", 0), (b"abcd", b"2", 1)],
    [(b"", b"r", 1), (b"pci:v*d*", b"m", 7), (b"pci:v1*", b"n", 3), (b"usb", b"u", 0)],
)]


@pytest.mark.parametrize("data", SMALL_FILES)
def test_truncated_at_every_offset(data: bytes) -> None:
    read_everything(data)
    for size in range(len(data)):
        with pytest.raises(IndexFormatError):
            read_everything(data[:size])


def patched(data: bytes, offset: int, word: int) -> bytes:
    return data[:offset] + u32(word) + data[offset + 4:]


def test_child_pointing_to_itself() -> None:
    # In EXAMPLE_PRE node A is at 18; its child reference for 'b' is at 20.
    data = patched(EXAMPLE_PRE, 20, FLAG_CHILDREN | 18)
    with pytest.raises(IndexFormatError, match="child 0x62 points to offset 18, a node "
                                               "already reached"):
        Index.from_bytes(data).validate()
    ix = Index.from_bytes(data)
    with pytest.raises(IndexFormatError, match="already reached"):
        list(ix.entries())
    # An exact walk consumes a character per step, so it ends even in a loop.
    assert ix.lookup(b"abbbbbbbbbbbbbbbbbbbbbbb") is None


def test_child_pointing_to_ancestor_and_shared_nodes() -> None:
    to_root = patched(EXAMPLE_PRE, 20, FLAG_CHILDREN | 12)  # A's 'b' child -> root
    with pytest.raises(IndexFormatError, match="already reached"):
        Index.from_bytes(to_root).validate()
    shared = patched(EXAMPLE_PRE, 24, FLAG_VALUES | 28)  # 'c' -> the same leaf as 'b'
    with pytest.raises(IndexFormatError, match="child 0x63 points to offset 28"):
        Index.from_bytes(shared).validate()


def test_loop_in_wildcard_subtree_is_refused() -> None:
    data = encode([(b"a*b", b"m", 0), (b"a*c", b"n", 0), (b"ax", b"o", 0)])
    ix: Any = Index.from_bytes(data)
    star = ix._child(ix._child(ix._root, ord("a")), ord("*"))  # white-box: find the node
    assert star.prefix == b"" and star.first == ord("b")
    # Make the '*' node's child 'b' point back at the '*' node itself.
    slot = star.offset + 2
    looped = patched(data, slot, FLAG_CHILDREN | star.offset)
    with pytest.raises(IndexFormatError, match="already reached"):
        Index.from_bytes(looped).search_wild(b"a-anything")


@pytest.mark.parametrize(("offset", "word", "message"), [
    (8, 0x20000000, "root reference 0x20000000 at offset 8 has offset 0"),
    (8, 0x20000004, r"points to offset 4, outside the node area 12\.\.47"),
    (8, 0x20000100, "points to offset 256, outside the node area"),
    (8, 0x3000000C, "unknown flag bits 0x10000000"),
    (14, 0x20000000, "child reference 0x20000000 for character 0x61 has flags but offset 0"),
    (14, 0x40000030, "points to offset 48, outside the node area"),
])
def test_bad_references(offset: int, word: int, message: str) -> None:
    with pytest.raises(IndexFormatError, match=message):
        read_everything(patched(EXAMPLE_PRE, offset, word))


def test_bad_child_ranges() -> None:
    inverted = EXAMPLE_PRE[:18] + b"\x63\x62" + EXAMPLE_PRE[20:]
    with pytest.raises(IndexFormatError, match="child range inverted at offset 18: first 0x63 "
                                               "> last 0x62"):
        read_everything(inverted)
    high = EXAMPLE_PRE[:12] + b"\x80\x80" + EXAMPLE_PRE[14:]
    with pytest.raises(IndexFormatError, match="goes beyond 7-bit characters"):
        read_everything(high)
    nul = EXAMPLE_PRE[:12] + b"\x00\x00" + EXAMPLE_PRE[14:]
    with pytest.raises(IndexFormatError, match="child reference for byte 0x00"):
        read_everything(nul)


def test_huge_value_count() -> None:
    data = patched(EXAMPLE_PRE, 28, 0xFFFFFFFF)
    with pytest.raises(IndexFormatError, match="value count 4294967295 at offset 28 does not "
                                               "fit"):
        read_everything(data)


def test_missing_nul_terminators() -> None:
    single = encode([(b"abc", b"v", 5)])  # leaf at 18: "bc" NUL, count, priority, "v" NUL
    with pytest.raises(IndexFormatError, match="value starting at offset 29 has no NUL"):
        read_everything(single[:-1] + b"w")
    with pytest.raises(IndexFormatError, match="prefix starting at offset 18 has no NUL"):
        read_everything(single[:20])


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_garbage_never_crashes(blob: bytes) -> None:
    for data in (blob, HEADER + blob):
        try:
            read_everything(data)
        except IndexFormatError:
            pass


@given(st.sampled_from(SMALL_FILES), st.data())
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_corruption_never_crashes(data: bytes, draw: st.DataObject) -> None:
    corrupt = bytearray(data)
    for _ in range(draw.draw(st.integers(1, 4))):
        pos = draw.draw(st.integers(8, len(corrupt) - 1))
        corrupt[pos] = draw.draw(st.integers(0, 255))
    try:
        read_everything(bytes(corrupt))
    except IndexFormatError:
        pass


def test_open_reads_file(tmp_path: Path) -> None:
    path = os.path.join(str(tmp_path), "modules.alias.bin")
    with open(path, "wb") as f:
        f.write(EXAMPLE_POST)
    ix = Index.open(path)
    assert ix.path == path
    assert ix.layout == "post"
    assert list(ix.entries()) == [(b"ab", b"x", 0), (b"ac", b"y", 0)]
    with open(path, "wb") as f:
        f.write(b"\0" * 12)
    with pytest.raises(IndexFormatError, match=f"{path}: bad magic"):
        Index.open(path)


# --- fnmatch ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("pattern", "string", "result"), [
    (b"", b"", True),
    (b"", b"a", False),
    (b"*", b"", True),
    (b"*", b"a/b.c", True),  # '*' crosses '/' (no FNM_PATHNAME) and leading dots
    (b"?", b"/", True),
    (b"a*b*c", b"aXbYbZc", True),
    (b"a*b*c", b"aXbYbZ", False),
    (b"*?", b"", False),
    (b"*??", b"ab", True),
    (b"\\*", b"*", True),  # backslash escapes (FNM_NOESCAPE is not set)
    (b"\\*", b"\\*", False),
    (b"a\\", b"a\\", False),  # a trailing backslash never matches
    (b"[abc]", b"b", True),
    (b"[!abc]", b"b", False),
    (b"[^abc]", b"d", True),
    (b"[]a]", b"]", True),  # a leading ']' is a member
    (b"[!]a]", b"]", False),
    (b"[a-c]", b"b", True),
    (b"[c-a]", b"b", False),
    (b"[a-]", b"-", True),
    (b"[\\]]", b"]", True),
    (b"[[:digit:]x]", b"7", True),
    (b"[[:digit:]x]", b"x", True),
    (b"[[:alpha:]]", b"\xe9", False),  # C locale: no 8-bit byte is in a class
    (b"[[:foo:]x]", b"x", False),  # an unknown class fails the element when reached
    (b"[x[:foo:]]", b"x", True),  # ... but not when an earlier member matched
    (b"[[=a=]]", b"a", True),
    (b"[[.a.]]", b"a", True),
    (b"[[.ab.]]", b"a", False),
    (b"[[.a.]-]", b"a", False),  # glibc quirk: a collating symbol before '-]'
    (b"[ab", b"[ab", True),  # unterminated: '[' is literal
    (b"[ab", b"a", False),
    (b"[[x", b"[[x", True),
    (b"[\x80-\xff]", b"\xe9", True),
    (b"dmi*:svn[Ll][Ee]*", b"dmi:bvn:svnLe:", True),
])
def test_fnmatch_cases(pattern: bytes, string: bytes, result: bool) -> None:
    assert fnmatch(pattern, string) is result


def _glibc_fnmatch() -> Optional[Any]:
    try:
        if "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""):
            return None
    except (AttributeError, ValueError, OSError):
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    func = libc.fnmatch
    func.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
    func.restype = ctypes.c_int
    return func


GLIBC_FNMATCH = _glibc_fnmatch()


@pytest.fixture
def c_locale() -> Iterator[None]:
    # modprobe never calls setlocale, so its fnmatch runs in the C locale; Python sets
    # LC_CTYPE from the environment, which would make glibc decode UTF-8.
    old = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


PATTERN_PIECES = ["a", "b", "*", "?", "[", "]", "!", "^", "-", "\\", ":", ".", "=", "1", "A",
                  "\xe9", "[:alpha:]", "[:digit:]", "[:punct:]", "[:bogus:]", "[=a=]", "[.a.]",
                  "[.]", "[a-b]", "[!a]", "[]a]", "[^]]", "[\\]]", "[a-]", "[-a]", "[a\\-b]",
                  "[[.a.]-b]", "[a-[.b.]]", "[\x80-\xff]"]
SUBJECT_CHARS = "ab]\\[-!^1A.:=\xe9\x80"


@pytest.mark.skipif(GLIBC_FNMATCH is None, reason="needs glibc's fnmatch to compare with")
@given(st.lists(st.sampled_from(PATTERN_PIECES), max_size=7).map(
           lambda p: "".join(p).encode("latin-1")),
       st.text(alphabet=SUBJECT_CHARS, max_size=5).map(lambda s: s.encode("latin-1")))
@settings(max_examples=1000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fnmatch_agrees_with_glibc(c_locale: None, pattern: bytes, string: bytes) -> None:
    assert GLIBC_FNMATCH is not None
    expected = GLIBC_FNMATCH(pattern, string, 0) == 0
    assert fnmatch(pattern, string) is expected


# --- against a real kmod modprobe, when one is installed -------------------------------------


def _kmod_modprobe() -> Optional[str]:
    path = shutil.which("modprobe") or ("/usr/sbin/modprobe"
                                        if os.path.exists("/usr/sbin/modprobe") else None)
    if path is None:
        return None
    try:
        out = subprocess.run([path, "-V"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if out.startswith("kmod version") else None


MODPROBE = _kmod_modprobe()
ORACLE_ENTRIES = [
    (b"a*", b"star", 0), (b"a?x", b"q", 0), (b"k", b"old", 0), (b"k", b"new", 0),
    (b"k", b"low", 1), (b"k*", b"kstar", 0), (b"[kx]y", b"br", 2),
] + REAL_ALIASES


@pytest.mark.skipif(MODPROBE is None, reason="needs kmod's modprobe")
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("reader", ["mmap", "stdio"])
def test_against_modprobe(tmp_path: Path, layout: str, reader: str) -> None:
    assert MODPROBE is not None
    root = str(tmp_path)
    moddir = os.path.join(root, "lib", "modules", "v")
    os.makedirs(moddir)
    os.makedirs(os.path.join(root, "conf"))
    files = {name: encode([], layout) for name in (
        "modules.dep.bin", "modules.symbols.bin", "modules.builtin.alias.bin",
        "modules.builtin.bin")}
    files["modules.alias.bin"] = encode(ORACLE_ENTRIES, layout)
    if reader == "stdio":
        # A 0-byte index cannot be mapped, so libkmod falls back to its stdio reader.
        files["modules.builtin.bin"] = b""
    for name, data in files.items():
        with open(os.path.join(moddir, name), "wb") as f:
            f.write(data)
    ix = Index.from_bytes(files["modules.alias.bin"])

    def modprobe(*args: str) -> str:
        assert MODPROBE is not None
        return subprocess.run([MODPROBE, "-d", root, "-S", "v", "-C", os.path.join(root, "conf"),
                               *args], capture_output=True, text=True, timeout=30).stdout

    dump = "".join(f"alias {k.decode()} {v.decode()}\n" for k, v, _ in ix.entries(reader=reader))
    assert modprobe("-c").endswith(dump)
    for query in ("a*", "ab", "axx", "k", "kk", "ky", "xy",
                  "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00",
                  "acpi:PNP0A08:PNP0A03:", "dmi:bvnLENOVO:svnLeNoVo:pn20XW:"):
        found = [v.decode() for v, _ in ix.search_wild(query.encode(), reader=reader)]
        assert modprobe("-R", query).split() == found, query
