"""The kmod ``.bin`` index: a path-compressed trie of byte keys to prioritised value lists.

This module is the single home of the format: its constants, the encoder (``encode``, both
node layouts), the reader (``Index``: exact and wildcard lookups with libkmod's semantics,
dump order) and the C-library ``fnmatch`` the wildcard lookups need. Everything here is
standard-library Python so the runtime tools can use it on targets.

Header
------
Three big-endian (network order) unsigned 32-bit words at offset 0::

    0  magic    0xB007F457  ("BOOTFAST")
    4  version  0x00020001  (major 2 in the high half, minor 1 in the low half)
    8  root     node reference of the root node

Readers check the magic and the major version only. Every integer in the file is big-endian;
there is no padding or alignment anywhere.

Node references
---------------
A 32-bit reference is a file offset in its low 28 bits (``OFFSET_MASK``) OR'ed with flags in
the high nibble saying which fields the node has::

    0x80000000  FLAG_PREFIX    the node starts with a non-empty NUL-terminated prefix
    0x40000000  FLAG_VALUES    the node has a value list
    0x20000000  FLAG_CHILDREN  the node has a child table
    0x10000000  (unused; this reader refuses it)

A reference of 0 in a child table means "no child for this character" (the header occupies
offsets 0..11, so no node can live at offset 0).

Node encoding
-------------
The fields present (per the flags) follow each other in this order:

1. prefix: the characters after the edge character that led here, then NUL;
2. children: ``first`` (u8), ``last`` (u8), then ``last - first + 1`` u32 references; slot
   ``i`` is the child reached by character ``first + i``. Characters are 7-bit (< 128);
3. values: u32 count, then per value: u32 priority and the NUL-terminated value string.

A node with no fields has zero length: the empty index is the 12-byte header whose root
reference is ``0x0000000C`` with no flags (in both layouts).

Trie shape
----------
The trie is canonical, whatever the insertion order: the root never has a prefix; each child
edge consumes one character and the child's prefix holds the following characters up to the
next branching point; every non-root node has values or at least two children (prefixes are
maximal). A key's values live at the node where the key ends. kmod builds this shape by
inserting keys one by one and splitting nodes; ``encode`` builds the same shape directly from
the sorted distinct keys.

Value lists
-----------
Sorted by priority, ascending. depmod inserts each new value **before the first existing value
whose priority is greater than or equal to its own**, so among equal priorities the most
recently inserted value comes first. Duplicate (key, value) pairs are inserted again.

Layouts (the only difference between kmod versions)
---------------------------------------------------
``"post"`` (kmod 30..33): each node is written after all of its child subtrees (children in
ascending character order), so the root is the last node and the header's root word is
patched in at the end. ``"pre"`` (kmod >= 34, commit dada048 "depmod: Write index in
pre-order"): the root is written at offset 12, each node directly followed by its child
subtrees in ascending character order. Both layouts have the same size and logical content,
and every libkmod reads both.

Worked example
--------------
Keys ``ab`` -> ``x`` and ``ac`` -> ``y``, both with priority 0. Shape: root (no prefix) with
child ``a``; node A (no prefix, it branches at once) with children ``b`` and ``c``; leaves B
and C (no prefix) holding one value each. Sizes: root 6 (``first``, ``last``, one reference),
A 10 (two references), B and C 10 each (count, priority, ``x\\0``). Pre-order (kmod >= 34)::

    b0 07 f4 57  00 02 00 01  20 00 00 0c           header, root at 12 with CHILDREN
    61 61  20 00 00 12                              @12 root: 'a'..'a' -> A at 18
    62 63  40 00 00 1c  40 00 00 26                 @18 A: 'b' -> 28, 'c' -> 38 (VALUES)
    00 00 00 01  00 00 00 00  78 00                 @28 B: 1 value, priority 0, "x"
    00 00 00 01  00 00 00 00  79 00                 @38 C: 1 value, priority 0, "y"

Post-order (kmod 30..33), same 48 bytes in another order::

    b0 07 f4 57  00 02 00 01  20 00 00 2a           header, root at 42 with CHILDREN
    00 00 00 01  00 00 00 00  78 00                 @12 B
    00 00 00 01  00 00 00 00  79 00                 @22 C
    62 63  40 00 00 0c  40 00 00 16                 @32 A: 'b' -> 12, 'c' -> 22
    61 61  20 00 00 20                              @42 root: 'a' -> A at 32

How libkmod reads it
--------------------
libkmod has two readers. modprobe calls ``kmod_load_resources``, which maps all indexes into
memory (the "mmap" reader); if any required index cannot be mapped (missing, or shorter than
the 12-byte header, e.g. the 0-byte ``modules.builtin.bin`` depmod writes when
``modules.builtin`` is missing), every lookup opens the file with stdio instead (the "stdio"
reader). They differ in one respect: the stdio reader re-inserts each node's values with the
insertion rule above while reading, which reverses runs of equal priority. ``Index`` methods
take ``reader="mmap"`` (default) or ``reader="stdio"``.

* Exact lookup (modules.dep.bin, modules.builtin.bin): follow prefixes and child characters;
  where the key ends, answer the node's first value (or nothing).
* Wildcard lookup (modules.alias.bin, modules.symbols.bin, modules.builtin.alias.bin): index
  keys are fnmatch patterns. Walking the key's exact path, at each node (after its prefix)
  first the children ``*``, ``?`` and ``[`` are searched in match-all mode, then, if the key
  ends there, the node's values are taken; a prefix character ``*``, ``?`` or ``[`` switches
  that node to match-all mode and ends the walk. Match-all enumerates a subtree children first
  (ascending), then the node's own values, which are taken when ``fnmatch(pattern, rest, 0)``
  succeeds; ``pattern`` holds the index key from its first wildcard on and ``rest`` the
  remaining input. Every value taken is merged into the result with the insertion rule.
* Dump (``modprobe -c``, ``Index.entries``): depth first, a node's values (in the reader's
  order) before its children, children in ascending character order; that is, keys in
  ascending byte order.

fnmatch is called with flags 0 in the C locale (the tools never call setlocale): ``*`` and
``?`` match ``/`` and leading dots, and a backslash escapes the next character (flags 0 does
not include FNM_NOESCAPE). :func:`fnmatch` reproduces glibc's behaviour on bytes.

Malformed files
---------------
libkmod reads offsets outside the file as "no node" and would loop forever on a cyclic file.
This reader refuses them instead with :class:`~moddep.errors.IndexFormatError` saying which
offset holds what and what was expected, and never recurses, so neither deep nor cyclic files
can exhaust the stack or hang a walk.
"""

from __future__ import annotations

import gc
import os
import struct
from bisect import bisect_left
from contextlib import contextmanager
from operator import itemgetter
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    NoReturn,
    Optional,
    Set,
    Tuple,
    Union,
)

from moddep.errors import IndexFormatError

__all__ = [
    "MAGIC",
    "VERSION",
    "VERSION_MAJOR",
    "HEADER_SIZE",
    "FLAG_PREFIX",
    "FLAG_VALUES",
    "FLAG_CHILDREN",
    "FLAGS_MASK",
    "OFFSET_MASK",
    "CHILD_MAX",
    "WILDCARDS",
    "Layout",
    "Reader",
    "Entry",
    "Values",
    "encode",
    "Index",
    "fnmatch",
]

# --- format constants (the one copy) ---------------------------------------------------------

MAGIC = 0xB007F457
VERSION = 0x00020001
VERSION_MAJOR = VERSION >> 16
HEADER_SIZE = 12
FLAG_PREFIX = 0x80000000
FLAG_VALUES = 0x40000000
FLAG_CHILDREN = 0x20000000
FLAGS_MASK = 0xF0000000
OFFSET_MASK = 0x0FFFFFFF
_FLAG_UNKNOWN = FLAGS_MASK & ~(FLAG_PREFIX | FLAG_VALUES | FLAG_CHILDREN)
CHILD_MAX = 128  # characters (and so child table entries) are 7-bit
WILDCARDS = b"*?["  # characters that switch a wildcard lookup to match-all mode
_MAX_PRIORITY = 0xFFFFFFFF

Layout = Literal["pre", "post"]
"""Node layout: ``"pre"`` is kmod >= 34 (root at offset 12), ``"post"`` kmod 30..33."""

Reader = Literal["mmap", "stdio"]
"""Which libkmod reader to imitate; they order equal-priority values differently."""

_U32 = struct.Struct(">I")
_HEADER = struct.Struct(">III")
_pack_u32 = _U32.pack
_unpack_u32 = _U32.unpack_from

Entry = Tuple[bytes, bytes, int]
"""One index entry: ``(key, value, priority)``."""
Values = List[Tuple[bytes, int]]
"""A lookup result: ``(value, priority)`` pairs in libkmod's order."""


# --- encoder ---------------------------------------------------------------------------------

_II = struct.Struct(">II")
_first = itemgetter(0)
_second = itemgetter(1)
_third = itemgetter(2)
_ninth = itemgetter(8)
_REF_TABLES = [struct.Struct(f">{n}I") for n in range(CHILD_MAX + 1)]  # by child count


def _entry_error(key: object, value: object, priority: object) -> None:
    """Raise the precise error for an entry that cannot be stored (if it cannot)."""
    if type(key) is not bytes or type(value) is not bytes:
        raise TypeError(f"index keys and values must be bytes, got {key!r} -> {value!r}")
    for what, s in (("key", key), ("value", value)):
        if b"\0" in s:
            raise IndexFormatError(
                f"index {what} {s!r} (key {key!r}) contains a NUL byte at position "
                f"{s.index(0)}: keys and values are NUL-terminated strings"
            )
        for pos, ch in enumerate(s):
            if ch >= CHILD_MAX:
                # kmod >= 34 dies with "bad character ... only 7-bit ASCII is supported";
                # kmod 30 does not notice (it tests a signed char). Callers decide.
                raise IndexFormatError(
                    f"index {what} {s!r} (key {key!r}) has byte 0x{ch:02x} at position "
                    f"{pos}: only 7-bit ASCII is supported"
                )
    if type(priority) is not int or not 0 <= priority <= _MAX_PRIORITY:
        raise ValueError(f"index priority {priority!r} for key {key!r} is not an unsigned "
                         "32-bit integer")


def _values_blob(values: List[Tuple[int, bytes]]) -> bytes:
    """The encoded value list of a node with several values: count, then (priority, value
    NUL) each (a single value is encoded inline by the caller)."""
    parts = [_pack_u32(len(values))]
    for priority, value in values:
        parts.append(_pack_u32(priority))
        parts.append(value)
        parts.append(b"\0")
    return b"".join(parts)


def encode(entries: Iterable[Entry], layout: str = "pre") -> bytes:
    """Encode ``(key, value, priority)`` entries as a ``.bin`` index file.

    ``entries`` come in depmod's insertion order, which decides the order of equal-priority
    values; duplicates are stored again. ``layout`` is ``"pre"`` (kmod >= 34) or ``"post"``
    (kmod 30..33). Keys and values must be 7-bit ASCII bytes without NUL
    (:class:`IndexFormatError` otherwise), priorities unsigned 32-bit integers
    (``ValueError``); other types raise ``TypeError``.
    """
    if layout not in ("pre", "post"):
        raise ValueError(f"unknown index layout {layout!r}: expected 'pre' or 'post'")
    items = entries if isinstance(entries, list) else list(entries)

    # Check every string and priority at once; find the culprit only when something is off.
    try:
        keys_ok = b"".join(map(_first, items))
        values_ok = b"".join(map(_second, items))
        fine = (keys_ok.isascii() and values_ok.isascii() and b"\0" not in keys_ok
                and b"\0" not in values_ok
                and (not items or (min(map(_third, items)) >= 0
                                   and max(map(_third, items)) <= _MAX_PRIORITY)))
    except TypeError:
        fine = False
    if not fine:
        for key, value, priority in items:
            _entry_error(key, value, priority)

    if not items:
        return _HEADER.pack(MAGIC, VERSION, HEADER_SIZE)
    with _gc_paused():
        # Each key's values, ordered by kmod's insertion rule: a new value goes before the
        # first value whose priority is >= its own.
        # A key seen once keeps its entry itself (the usual case: no list, no pair).
        groups: Dict[bytes, Any] = {}
        get = groups.get
        for entry in items:
            key = entry[0]
            existing = get(key)
            if existing is None:
                groups[key] = entry
                continue
            if existing.__class__ is not list:
                existing = groups[key] = [(existing[2], existing[1])]
            priority = entry[2]
            i = 0
            while i < len(existing) and existing[i][0] < priority:
                i += 1
            existing.insert(i, (priority, entry[1]))
        return _encode_groups(groups, layout)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector. The encoder allocates a few small containers per
    key, none in a cycle; left running, the collector would rescan them (and the rest of the
    heap) many times over, which doubles the encoding time of a 30000-key index."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _encode_groups(groups: Dict[bytes, Any], layout: str) -> bytes:
    """Encode the values of distinct keys in the given layout: a key's single entry
    (key, value, priority), or its (priority, value) list already ordered."""
    keys = sorted(groups)
    # (a key's single value, the usual case, inline: a call per key is a tenth of the time)
    pack_one = _II.pack
    blobs = [pack_one(1, got[2]) + got[1] + b"\0" if got.__class__ is not list
             else _values_blob(got) for got in map(groups.__getitem__, keys)]
    # Keys as big-endian integers, to find common prefixes by XOR (keys have no NUL, so
    # padding the shorter key with zero bytes makes it differ right where it ends).
    from_bytes = int.from_bytes

    # Build the canonical trie in one pass over the sorted keys, keeping the path to the
    # previous key on a stack. A key that first differs from the previous one at `depth`
    # closes the nodes below that depth, splits the node whose prefix `depth` falls into, and
    # hangs a new leaf off the node ending at `depth`. Nodes close children first, in
    # ascending order: that is post-order.
    # A node is a list: [0] start and [1] end of its prefix within key number [2] (the edge
    # character leading to the node is at start - 1 of that key), [3] value blob, [4] its
    # children in ascending order (None for none yet), then, once sized, [5] encoded size,
    # [6] size of its subtree, [7] flags and [8] offset. (As few objects as that: a tree of
    # 26000 keys is ~10^5 of them, and their memory is most of the encoder's.)
    post: List[List[Any]] = []
    close = post.append
    root: List[Any] = [0, 0, 0, b"", [], 0, 0, 0, 0]
    stack = [root]
    first = 0
    if keys[0] == b"":  # the empty key's values live in the root
        root[3] = blobs[0]
        first = 1
    prev_len = 0
    prev_number = 0
    for i in range(first, len(keys)):
        key = keys[i]
        key_len = len(key)
        number = from_bytes(key, "big")
        if key_len >= prev_len:
            width = key_len
            diff = number ^ (prev_number << ((key_len - prev_len) << 3))
        else:
            width = prev_len
            diff = (number << ((prev_len - key_len) << 3)) ^ prev_number
        depth = width - ((diff.bit_length() + 7) >> 3)
        top = stack[-1]
        if top[1] > depth:
            last = stack.pop()
            top = stack[-1]
            while top[1] > depth:
                close(last)
                last = stack.pop()
                top = stack[-1]
            if top[1] < depth:
                # `depth` falls inside last's prefix: a new node takes over its start.
                mid: List[Any] = [last[0], depth, i, b"", [last], 0, 0, 0, 0]
                last[0] = depth + 1
                top[4][-1] = mid
                stack.append(mid)
                top = mid
            close(last)
        leaf: List[Any] = [depth + 1, key_len, i, blobs[i], None, 0, 0, 0, 0]
        kids = top[4]
        if kids is None:
            top[4] = [leaf]
        else:
            kids.append(leaf)
        stack.append(leaf)
        prev_len = key_len
        prev_number = number
    while stack:
        close(stack.pop())

    # Sizes and flags, children before parents.
    for node in post:
        start, end, _, blob, children, _, _, _, _ = node
        size = len(blob)
        flags = FLAG_VALUES if size else 0
        if end > start:
            size += end - start + 1
            flags |= FLAG_PREFIX
        if children:
            low, high = children[0], children[-1]
            size += 2 + 4 * (keys[high[2]][high[0] - 1] - keys[low[2]][low[0] - 1] + 1)
            flags |= FLAG_CHILDREN
            total = size
            for child in children:
                total += child[6]
            node[6] = total
        else:
            node[6] = size
        node[5] = size
        node[7] = flags

    # Offsets: post-order is the order nodes were closed; pre-order puts each node first,
    # then its children's subtrees in ascending order.
    if layout == "post":
        offset = HEADER_SIZE
        for node in post:
            node[8] = offset
            offset += node[5]
    else:
        root[8] = HEADER_SIZE
        for node in reversed(post):  # parents before their children
            children = node[4]
            if children:
                offset = node[8] + node[5]
                for child in children:
                    child[8] = offset
                    offset += child[6]
    total = root[6] + HEADER_SIZE
    if total - 1 > OFFSET_MASK:
        raise IndexFormatError(
            f"index would be {total} bytes: node offsets are limited to 28 bits "
            f"({OFFSET_MASK + 1} bytes)"
        )

    # The nodes' bytes in file order, joined once: post-order as closed, or pre-order (by
    # offset) for kmod >= 34.
    if layout != "post":
        post.sort(key=_ninth)
    out = bytearray(_HEADER.pack(MAGIC, VERSION, root[8] | root[7]))
    tables = _REF_TABLES
    for start, end, index, blob, children, _, _, _, _ in post:
        if end > start:
            out += keys[index][start:end]
            out.append(0)
        if children:
            chars = [keys[child[2]][child[0] - 1] for child in children]
            low = chars[0]
            high = chars[-1]
            refs = [0] * (high - low + 1)
            for ch, child in zip(chars, children):
                refs[ch - low] = child[8] | child[7]
            out.append(low)
            out.append(high)
            out += tables[len(refs)].pack(*refs)
        out += blob
    return bytes(out)


# --- reader ----------------------------------------------------------------------------------


class _Node:
    """One decoded node: prefix, child table and values in file order."""

    __slots__ = ("offset", "prefix", "first", "refs", "values")

    def __init__(self, offset: int, prefix: bytes, first: int, refs: Tuple[int, ...],
                 values: Values) -> None:
        self.offset = offset
        self.prefix = prefix
        self.first = first  # meaningless when refs is empty
        self.refs = refs
        self.values = values  # (value, priority) in file order


def _merge(out: Values, priorities: List[int], value: bytes, priority: int) -> None:
    """libkmod's add_value on a result list; ``priorities`` mirrors ``out`` for bisecting."""
    i = bisect_left(priorities, priority)
    out.insert(i, (value, priority))
    priorities.insert(i, priority)


def _reader_order(values: Values, reader: str) -> Values:
    """A node's values as the given libkmod reader holds them."""
    if reader == "mmap" or len(values) < 2:
        return values
    # The stdio reader inserts each value read with the insertion rule.
    out: Values = []
    priorities: List[int] = []
    for value, priority in values:
        _merge(out, priorities, value, priority)
    return out


def _origin(parent: int, ch: int) -> str:
    """Where a node reference was found, for error messages."""
    if parent < 0:
        return "root reference at offset 8"
    return f"child 0x{ch:02x} of the node at offset {parent}"


def _check_reader(reader: str) -> None:
    if reader not in ("mmap", "stdio"):
        raise ValueError(f"unknown index reader {reader!r}: expected 'mmap' or 'stdio'")


class Index:
    """A ``.bin`` index held in memory, read with libkmod's semantics.

    Construction checks the header and decodes the root node; other nodes are decoded and
    checked as lookups reach them, so a malformed file raises :class:`IndexFormatError`
    (offsets out of range, truncated fields, missing NUL terminators, inverted or 8-bit child
    ranges, unknown flags, and in whole-tree walks nodes reached twice) and never hangs.
    :meth:`validate` checks the whole file at once.
    """

    def __init__(self, data: bytes, path: Optional[str] = None) -> None:
        self._data = data
        self.path = path
        if len(data) < HEADER_SIZE:
            self._fail(f"file is {len(data)} bytes, shorter than the {HEADER_SIZE}-byte header")
        magic, version, root = _HEADER.unpack_from(data, 0)
        if magic != MAGIC:
            self._fail(f"bad magic 0x{magic:08x} at offset 0, expected 0x{MAGIC:08x}")
        if version >> 16 != VERSION_MAJOR:
            self._fail(
                f"unsupported index version {version >> 16}.{version & 0xFFFF} at offset 4, "
                f"expected major version {VERSION_MAJOR}"
            )
        self.version = version
        self.root_ref = root
        if root & OFFSET_MASK == 0:
            self._fail(f"root reference 0x{root:08x} at offset 8 has offset 0")
        self._root = self._read(root, -1, 0)

    @classmethod
    def from_bytes(cls, data: Union[bytes, bytearray, memoryview],
                   path: Optional[str] = None) -> Index:
        """Read an index from ``data``; ``path`` only names the file in error messages."""
        return cls(bytes(data), path)

    @classmethod
    def open(cls, path: Union[str, os.PathLike[str]]) -> Index:
        """Read the index file at ``path`` (``OSError`` if it cannot be read)."""
        with open(path, "rb") as f:
            data = f.read()
        return cls(data, os.fspath(path))

    # -- decoding -----------------------------------------------------------------------------

    def _fail(self, message: str) -> NoReturn:
        raise IndexFormatError(message, self.path)

    def _read(self, ref: int, parent: int, ch: int) -> _Node:
        """Decode the node ``ref`` points to: the child ``ch`` of the node at offset
        ``parent``, or the root when ``parent`` is -1 (they only matter for messages)."""
        data = self._data
        size = len(data)
        offset = ref & OFFSET_MASK
        if ref & _FLAG_UNKNOWN:
            self._fail(f"node reference 0x{ref:08x} ({_origin(parent, ch)}) has unknown flag "
                       f"bits 0x{ref & _FLAG_UNKNOWN:08x}")
        if offset < HEADER_SIZE or offset > size or (offset == size and ref & FLAGS_MASK):
            self._fail(f"node reference 0x{ref:08x} ({_origin(parent, ch)}) points to offset "
                       f"{offset}, outside the node area {HEADER_SIZE}..{size - 1}")
        pos = offset
        prefix = b""
        if ref & FLAG_PREFIX:
            end = data.find(b"\0", pos)
            if end < 0:
                self._fail(f"node at offset {offset}: prefix starting at offset {pos} has no "
                           f"NUL terminator before the end of the file ({size} bytes)")
            prefix = data[pos:end]
            pos = end + 1
        first = 0
        refs: Tuple[int, ...] = ()
        if ref & FLAG_CHILDREN:
            if pos + 2 > size:
                self._fail(f"node at offset {offset}: child range at offset {pos} is cut off "
                           f"by the end of the file ({size} bytes)")
            first = data[pos]
            last = data[pos + 1]
            if first > last:
                self._fail(f"node at offset {offset}: child range inverted at offset {pos}: "
                           f"first 0x{first:02x} > last 0x{last:02x}")
            if last >= CHILD_MAX:
                self._fail(f"node at offset {offset}: child range 0x{first:02x}..0x{last:02x} "
                           f"at offset {pos} goes beyond 7-bit characters")
            pos += 2
            n = last - first + 1
            if pos + 4 * n > size:
                self._fail(f"node at offset {offset}: {n} child references at offset {pos} "
                           f"are cut off by the end of the file ({size} bytes)")
            refs = _REF_TABLES[n].unpack_from(data, pos)
            pos += 4 * n
            if first == 0 and refs[0]:
                self._fail(f"node at offset {offset}: child reference for byte 0x00 at offset "
                           f"{pos - 4 * n} is not empty")
        values: Values = []
        if ref & FLAG_VALUES:
            if pos + 4 > size:
                self._fail(f"node at offset {offset}: value count at offset {pos} is cut off "
                           f"by the end of the file ({size} bytes)")
            (count,) = _unpack_u32(data, pos)
            pos += 4
            if count * 5 > size - pos:
                self._fail(f"node at offset {offset}: value count {count} at offset {pos - 4} "
                           f"does not fit in the {size - pos} bytes left")
            for _ in range(count):
                if pos + 4 > size:
                    self._fail(f"node at offset {offset}: value priority at offset {pos} is "
                               f"cut off by the end of the file ({size} bytes)")
                (priority,) = _unpack_u32(data, pos)
                pos += 4
                end = data.find(b"\0", pos)
                if end < 0:
                    self._fail(f"node at offset {offset}: value starting at offset {pos} has "
                               f"no NUL terminator before the end of the file ({size} bytes)")
                values.append((data[pos:end], priority))
                pos = end + 1
        return _Node(offset, prefix, first, refs, values)

    def _child(self, node: _Node, ch: int) -> Optional[_Node]:
        """The child of ``node`` for character ``ch``, or None."""
        i = ch - node.first
        refs = node.refs
        if i < 0 or i >= len(refs):
            return None
        ref = refs[i]
        if ref == 0:
            return None
        if ref & OFFSET_MASK == 0:
            self._fail(f"node at offset {node.offset}: child reference 0x{ref:08x} for "
                       f"character 0x{ch:02x} has flags but offset 0")
        return self._read(ref, node.offset, ch)

    def _children(self, node: _Node, seen: Set[int]) -> List[Tuple[int, _Node]]:
        """All children of ``node`` in ascending order, refusing nodes already in ``seen``."""
        out = []
        for i, ref in enumerate(node.refs):
            if ref == 0:
                continue
            ch = node.first + i
            offset = ref & OFFSET_MASK
            if offset in seen:
                self._fail(f"node at offset {node.offset}: child 0x{ch:02x} points to offset "
                           f"{offset}, a node already reached (loop or shared node)")
            if offset == 0:
                self._child(node, ch)  # raises the "flags but offset 0" error
            seen.add(offset)
            out.append((ch, self._read(ref, node.offset, ch)))
        return out

    # -- whole-tree walks ---------------------------------------------------------------------

    def validate(self) -> None:
        """Decode every node, raising :class:`IndexFormatError` on the first problem."""
        for _ in self._walk(self._root, self._root.prefix, post_order=False):
            pass

    def _walk(self, start: _Node, piece: bytes, post_order: bool,
              prune: Optional[Callable[[List[bytes]], bool]] = None
              ) -> Iterator[Tuple[List[bytes], _Node]]:
        """Every node of the subtree at ``start``, depth first, children in ascending order,
        each node before (pre-order) or after (post-order) its children; with the pieces of
        text leading to it (``piece`` for ``start``, then edge character plus prefix each).
        The children of nodes for which ``prune(pieces)`` is true are skipped.

        Nodes reached twice (loops, shared nodes) are refused. The text is kept in pieces so
        a walk costs time in proportion to the file even along very deep paths.
        """
        seen = {start.offset}
        path: List[bytes] = []
        # (depth, text piece, node, children already pushed?)
        stack: List[Tuple[int, bytes, _Node, bool]] = [(0, piece, start, False)]
        while stack:
            depth, piece, node, expanded = stack.pop()
            if expanded:
                del path[depth + 1:]
                yield path, node
                continue
            del path[depth:]
            path.append(piece)
            if post_order:
                stack.append((depth, piece, node, True))
            else:
                yield path, node
            if node.refs and (prune is None or not prune(path)):
                for ch, child in reversed(self._children(node, seen)):
                    stack.append((depth + 1, bytes((ch,)) + child.prefix, child, False))

    def entries(self, *, reader: str = "mmap") -> Iterator[Entry]:
        """Every ``(key, value, priority)`` in libkmod's dump order (``modprobe -c``).

        Depth first; a node's values come before its children, children in ascending
        character order, so keys appear in ascending byte order. Values of one key come in
        the reader's order: file order for ``"mmap"`` (what modprobe normally uses), re-sorted
        by the insertion rule for ``"stdio"``.
        """
        _check_reader(reader)
        for path, node in self._walk(self._root, self._root.prefix, post_order=False):
            if node.values:
                key = b"".join(path)
                for value, priority in _reader_order(node.values, reader):
                    yield key, value, priority

    @property
    def layout(self) -> Optional[str]:
        """``"pre"`` or ``"post"`` as the root's position shows, None if it cannot tell.

        A root at offset 12 means pre-order, a root ending at the end of the file post-order;
        when the root is the only node (e.g. the empty index) both hold and the answer is None.
        """
        root_end = self._root.offset + self._node_size(self._root)
        pre = self._root.offset == HEADER_SIZE
        post = root_end == len(self._data)
        if pre and not post:
            return "pre"
        if post and not pre:
            return "post"
        return None

    @staticmethod
    def _node_size(node: _Node) -> int:
        size = len(node.prefix) + 1 if node.prefix else 0
        if node.refs:
            size += 2 + 4 * len(node.refs)
        if node.values:
            size += 4 + sum(5 + len(v) for v, _ in node.values)
        return size

    # -- lookups ------------------------------------------------------------------------------

    def _exact_node(self, key: bytes) -> Optional[_Node]:
        """The node where ``key`` ends, following libkmod's exact search."""
        if b"\0" in key:
            return None  # a C string cannot hold it, so no index key equals it
        node: Optional[_Node] = self._root
        pos = 0
        n = len(key)
        while node is not None:
            prefix = node.prefix
            if prefix:
                end = pos + len(prefix)
                if key[pos:end] != prefix:
                    return None
                pos = end
            if pos == n:
                return node
            node = self._child(node, key[pos])
            pos += 1
        return None

    def lookup(self, key: bytes, *, reader: str = "mmap") -> Optional[bytes]:
        """libkmod's exact search: the first value stored at ``key``, or None.

        With the default ``"mmap"`` reader that is the first value in the file (lowest
        priority, newest among equals); the ``"stdio"`` reader answers the oldest among the
        lowest priority instead.
        """
        values = self.lookup_all(key, reader=reader)
        return values[0][0] if values else None

    def lookup_all(self, key: bytes, *, reader: str = "mmap") -> Values:
        """All ``(value, priority)`` pairs stored at exactly ``key``, in the reader's order."""
        _check_reader(reader)
        node = self._exact_node(key)
        if node is None:
            return []
        return list(_reader_order(node.values, reader))

    def search_wild(self, key: bytes, *, reader: str = "mmap") -> Values:
        """libkmod's wildcard search: values of every index pattern matching ``key``.

        Index keys are fnmatch patterns (see the module documentation for the walk). The
        result is in libkmod's order: values merged one by one with the insertion rule, in
        the order the walk meets them. An input containing wildcard characters is walked
        literally too, as libkmod does, so a pattern can be met (and listed) twice.
        """
        _check_reader(reader)
        out: Values = []
        priorities: List[int] = []
        if b"\0" in key:
            return out
        node: Optional[_Node] = self._root
        pos = 0
        n = len(key)
        while node is not None:
            prefix = node.prefix
            if prefix:
                wild = len(prefix)
                for w in WILDCARDS:
                    i = prefix.find(w)
                    if 0 <= i < wild:
                        wild = i
                if key[pos:pos + wild] != prefix[:wild]:
                    return out
                if wild < len(prefix):
                    self._match_all(node, prefix[wild:], key[pos + wild:], reader, out,
                                    priorities)
                    return out
                pos += wild
            rest = key[pos:]
            for w in WILDCARDS:
                child = self._child(node, w)
                if child is not None:
                    self._match_all(child, bytes((w,)) + child.prefix, rest, reader, out,
                                    priorities)
            if pos == n:
                for value, priority in _reader_order(node.values, reader):
                    _merge(out, priorities, value, priority)
                return out
            node = self._child(node, key[pos])
            pos += 1
        return out

    def _match_all(self, start: _Node, pattern: bytes, subject: bytes, reader: str,
                   out: Values, priorities: List[int]) -> None:
        """Enumerate the subtree at ``start`` (whose pattern text so far is ``pattern``),
        children before the node itself, taking the values of nodes whose pattern matches.

        Subtrees no pattern of which can match are skipped, which changes nothing in the
        result: when the text so far has no ``[`` or backslash, each of its elements is
        complete whatever follows, so a longer pattern can only match if the text followed
        by ``*`` does.
        """

        def hopeless(path: List[bytes]) -> bool:
            text = b"".join(path)
            return b"[" not in text and b"\\" not in text and not fnmatch(text + b"*", subject)

        for path, node in self._walk(start, pattern, post_order=True, prune=hopeless):
            if node.values and fnmatch(b"".join(path), subject):
                for value, priority in _reader_order(node.values, reader):
                    _merge(out, priorities, value, priority)


# --- fnmatch ---------------------------------------------------------------------------------

_STAR = 0x2A  # *
_QUESTION = 0x3F  # ?
_LBRACKET = 0x5B  # [
_RBRACKET = 0x5D  # ]
_BACKSLASH = 0x5C
_EXCLAIM = 0x21  # !
_CARET = 0x5E  # ^
_COLON = 0x3A
_EQUALS = 0x3D
_DOT = 0x2E
_MINUS = 0x2D
_CLASS_NAME_MAX = 2048  # glibc's CHARCLASS_NAME_MAX bounds a [:name:] scan


def _class(*ranges: Tuple[int, int]) -> frozenset[int]:
    return frozenset(c for lo, hi in ranges for c in range(lo, hi + 1))


_DIGIT = ((0x30, 0x39),)
_UPPER = ((0x41, 0x5A),)
_LOWER = ((0x61, 0x7A),)
_GRAPH = ((0x21, 0x7E),)
# Character classes of the C locale (the tools never call setlocale); bytes >= 0x80 are in
# no class there.
_CLASSES: Dict[bytes, frozenset[int]] = {
    b"alnum": _class(*_DIGIT, *_UPPER, *_LOWER),
    b"alpha": _class(*_UPPER, *_LOWER),
    b"blank": _class((0x20, 0x20), (0x09, 0x09)),
    b"cntrl": _class((0x00, 0x1F), (0x7F, 0x7F)),
    b"digit": _class(*_DIGIT),
    b"graph": _class(*_GRAPH),
    b"lower": _class(*_LOWER),
    b"print": _class((0x20, 0x7E)),
    b"punct": _class(*_GRAPH) - _class(*_DIGIT, *_UPPER, *_LOWER),
    b"space": _class((0x09, 0x0D), (0x20, 0x20)),
    b"upper": _class(*_UPPER),
    b"xdigit": _class(*_DIGIT, (0x41, 0x46), (0x61, 0x66)),
}


def fnmatch(pattern: bytes, string: bytes) -> bool:
    """``fnmatch(pattern, string, 0) == 0`` of glibc in the C locale, on bytes.

    With flags 0: ``*`` and ``?`` match any bytes including ``/`` and a leading ``.``;
    backslash escapes the next character (a trailing backslash never matches); bracket
    expressions take ``!`` or ``^`` for negation, a leading ``]`` as a member, ranges by byte
    value, ``[:class:]``, and one-character ``[=c=]`` and ``[.c.]``; an unterminated ``[``
    matches itself. Quirks of glibc's bracket parser are reproduced (see ``_bracket``).
    Neither argument may contain NUL (C strings).
    """
    plen = len(pattern)
    slen = len(string)
    p = 0
    n = 0
    star_p = -1  # pattern position after the last '*' seen, -1 before any
    star_n = 0  # string position the text after that '*' is being tried at
    while True:
        if p < plen:
            c = pattern[p]
            if c == _STAR:
                p += 1
                # A run of '*' and '?' after a '*': each '?' needs one character.
                while p < plen and pattern[p] in (_STAR, _QUESTION):
                    if pattern[p] == _QUESTION:
                        if n >= slen:
                            return False
                        n += 1
                    p += 1
                if p == plen:
                    return True
                star_p = p
                star_n = n
                continue
            if n < slen:
                nxt = _match_one(pattern, p, string[n])
                if nxt >= 0:
                    p = nxt
                    n += 1
                    continue
        elif n == slen:
            return True
        # Mismatch: let the last '*' swallow one more character (every other element of a
        # pattern consumes exactly one character, so this finds any match there is).
        if star_p < 0 or star_n >= slen:
            return False
        star_n += 1
        p = star_p
        n = star_n


def _match_one(pattern: bytes, p: int, ch: int) -> int:
    """Match the pattern element at ``p`` (not ``*``) against byte ``ch``.

    Returns the position after the element, or -1 when it does not match.
    """
    c = pattern[p]
    if c == _QUESTION:
        return p + 1
    if c == _BACKSLASH:
        if p + 1 >= len(pattern):
            return -1  # a trailing backslash never matches
        return p + 2 if pattern[p + 1] == ch else -1
    if c == _LBRACKET:
        return _bracket(pattern, p + 1, ch)
    return p + 1 if c == ch else -1


def _collating_symbol(at: Callable[[int], int], p: int) -> tuple[int, int]:
    """A ``[.x.]`` collating symbol whose ``[`` was read (``p`` at the ``.``): the position
    after its ``.]`` and its character, or (-1, -1) when it is unterminated or is not exactly
    one character (glibc then fails the match)."""
    start = p
    while True:
        p += 1
        c = at(p)
        if c == _DOT and at(p + 1) == _RBRACKET:
            break
        if c == 0:
            return -1, -1
    if p - start != 2:
        return -1, -1
    return p + 2, at(start + 1)


def _bracket(pat: bytes, p: int, ch: int) -> int:
    """Match the bracket expression whose ``[`` precedes position ``p`` against ``ch``.

    Follows glibc's parser in the C locale: elements are read one by one and the first that
    matches ends the scan; some malformed elements (unknown class name, ``[.xy.]``, a
    backslash or range end cut by the end of the pattern) make the whole element fail when
    the scan reaches them; reaching the end of the pattern without ``]`` makes the ``[`` a
    literal character. Returns the position after the element or -1.
    """
    plen = len(pat)

    def at(i: int) -> int:
        return pat[i] if i < plen else 0

    start = p
    negate = at(p) in (_EXCLAIM, _CARET)
    if negate:
        p += 1
    c = at(p)
    p += 1
    matched = False
    while True:
        collating = False
        if c == _BACKSLASH:
            if at(p) == 0:
                return -1
            c = at(p)
            p += 1
        elif c == _LBRACKET and at(p) == _COLON:
            name_start = p
            name = bytearray()
            is_class = True
            while True:
                if len(name) == _CLASS_NAME_MAX:
                    return -1
                p += 1
                c = at(p)
                if c == _COLON and at(p + 1) == _RBRACKET:
                    p += 2
                    break
                if c < 0x61 or c >= 0x7A:  # not 'a'..'y': not a class name after all
                    p = name_start
                    c = _LBRACKET
                    is_class = False
                    break
                name.append(c)
            if is_class:
                members = _CLASSES.get(bytes(name))
                if members is None:
                    return -1
                if ch in members:
                    matched = True
                    break
                c = at(p)
                p += 1
                if c == _RBRACKET:
                    break
                continue
        elif c == _LBRACKET and at(p) == _EQUALS:
            eq_start = p
            if at(p + 1) != 0 and at(p + 2) == _EQUALS and at(p + 3) == _RBRACKET:
                symbol = at(p + 1)
                p += 4
                if ch == symbol:
                    matched = True
                    break
                c = at(p)
                p += 1
                if c == _RBRACKET:
                    break
                continue
            p = eq_start
            c = _LBRACKET
        elif c == 0:
            return start if ch == _LBRACKET else -1  # unterminated: '[' is literal
        elif c == _LBRACKET and at(p) == _DOT:
            collating = True

        if collating:
            p, low = _collating_symbol(at, p)
            if p < 0:
                return -1
            is_range = at(p) == _MINUS and at(p + 1) != 0
            if not is_range and ch == low:
                matched = True
                break
        else:
            is_range = at(p) == _MINUS and at(p + 1) not in (0, _RBRACKET)
            if not is_range and c == ch:
                matched = True
                break
            low = c
        c = at(p)
        p += 1
        if c == _MINUS and at(p) != _RBRACKET:
            high = at(p)
            p += 1
            if high == _LBRACKET and at(p) == _DOT:
                p, high = _collating_symbol(at, p)
                if p < 0:
                    return -1
            else:
                if high == _BACKSLASH:
                    high = at(p)
                    p += 1
                if high == 0:
                    return -1
            if low <= ch <= high:
                matched = True
                break
            c = at(p)
            p += 1
        if c == _RBRACKET:
            break

    if not matched:
        return p if negate else -1

    # Skip the rest of a bracket that matched, as glibc's second scanner does.
    while True:
        c = at(p)
        p += 1
        if c == _RBRACKET:
            break
        if c == 0:
            return start if ch == _LBRACKET else -1  # unterminated: '[' is literal
        if c == _BACKSLASH:
            if at(p) == 0:
                return -1
            p += 1
        elif c == _LBRACKET and at(p) == _COLON:
            name_start = p
            length = 0
            while True:
                p += 1
                c = at(p)
                length += 1
                if length == _CLASS_NAME_MAX:
                    return -1
                if c == _COLON and at(p + 1) == _RBRACKET:
                    break
                if c < 0x61 or c >= 0x7A:
                    p = name_start - 2
                    break
            p += 2
        elif c == _LBRACKET and at(p) == _EQUALS:
            if at(p + 1) == 0:
                return -1
            if at(p + 2) != _EQUALS or at(p + 3) != _RBRACKET:
                return -1
            p += 4
        elif c == _LBRACKET and at(p) == _DOT:
            while True:
                p += 1
                c = at(p)
                if c == 0:
                    return -1
                if c == _DOT and at(p + 1) == _RBRACKET:
                    break
            p += 2
    return -1 if negate else p
