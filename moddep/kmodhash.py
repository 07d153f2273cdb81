"""kmod's hash table order (``shared/hash.c``), which fixes the order of two depmod outputs.

depmod builds its module array by iterating a 512-bucket hash of module names, and writes
``modules.symbols`` by iterating a 2048-bucket hash of symbol names. Iteration visits buckets
0..n-1 and, inside a bucket, keys in ``strcmp`` order. The hash is Paul Hsieh's SuperFastHash,
seeded with the key length and reading 16-bit words in the *host's* byte order; kmod on every
common distro host is little endian, so we reproduce the little-endian order on any host.

Order is therefore a pure function of the key set (:func:`order`).
Test vectors (checked against kmod's C code): ``a`` -> 0x115ea782, ``usbcore`` -> 0x923b1427.
"""

from __future__ import annotations

import struct
from typing import Sequence

MASK32 = 0xFFFFFFFF

# Bucket counts used by tools/depmod.c (kmod 30..34): modules by name, symbols.
MODULE_BUCKETS = 512
SYMBOL_BUCKETS = 2048


def superfasthash(key: bytes) -> int:
    """32-bit SuperFastHash of ``key`` as kmod computes it on a little-endian host.

    kmod 30 reads the third tail byte as plain ``char`` (signed on x86), kmod 34 as uint8; the
    two differ only for bytes >= 0x80, which never occur in module or symbol names.
    """
    length = len(key)
    h = length
    rem = length & 3
    nwords = (length >> 1) & ~1  # whole 4-byte blocks, as 16-bit word count
    if nwords:
        it = iter(struct.unpack_from(f"<{nwords}H", key))
        for lo, hi in zip(it, it):
            h = (h + lo) & MASK32
            h = ((h << 16) ^ (hi << 11) ^ h) & MASK32
            h = (h + (h >> 11)) & MASK32
    pos = nwords * 2
    if rem == 3:
        h = (h + key[pos] + (key[pos + 1] << 8)) & MASK32
        h ^= (h << 16) & MASK32
        h ^= (key[pos + 2] << 18) & MASK32
        h = (h + (h >> 11)) & MASK32
    elif rem == 2:
        h = (h + key[pos] + (key[pos + 1] << 8)) & MASK32
        h ^= (h << 11) & MASK32
        h = (h + (h >> 17)) & MASK32
    elif rem == 1:
        h = (h + key[pos]) & MASK32
        h ^= (h << 10) & MASK32
        h = (h + (h >> 1)) & MASK32
    h ^= (h << 3) & MASK32
    h = (h + (h >> 5)) & MASK32
    h ^= (h << 4) & MASK32
    h = (h + (h >> 17)) & MASK32
    h ^= (h << 25) & MASK32
    h = (h + (h >> 6)) & MASK32
    return h


def superfasthash_many(keys: Sequence[bytes]) -> list[int]:
    """:func:`superfasthash` of every key, computed for all keys of one length at once.

    Each key of a length group gets a 64-bit lane of one big integer; the hash steps become a
    few big-integer operations per round (values stay below 2**58 inside a lane, and every
    right shift is masked back to 32 bits before it is combined, so lanes never mix).
    """
    out = [0] * len(keys)
    groups: dict[int, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(len(k), []).append(i)
    for length, idx in groups.items():
        n = len(idx)
        blob = b"".join([keys[i] for i in idx])
        m = int.from_bytes(b"\xff\xff\xff\xff\0\0\0\0" * n, "little")

        def col(*offsets: int, blob: bytes = blob, length: int = length, n: int = n) -> int:
            # lane j = bytes of key j at the given offsets, little endian
            buf = bytearray(8 * n)
            for lane_pos, off in enumerate(offsets):
                buf[lane_pos::8] = blob[off::length]
            return int.from_bytes(buf, "little")

        h = int.from_bytes(length.to_bytes(8, "little") * n, "little")
        pos = 0
        for _ in range(length >> 2):
            h = (h + col(pos, pos + 1)) & m
            h = ((h << 16) ^ (col(pos + 2, pos + 3) << 11) ^ h) & m
            h = (h + ((h >> 11) & m)) & m
            pos += 4
        rem = length & 3
        if rem == 3:
            h = (h + col(pos, pos + 1)) & m
            h ^= (h << 16) & m
            h ^= (col(pos + 2) << 18) & m
            h = (h + ((h >> 11) & m)) & m
        elif rem == 2:
            h = (h + col(pos, pos + 1)) & m
            h ^= (h << 11) & m
            h = (h + ((h >> 17) & m)) & m
        elif rem == 1:
            h = (h + col(pos)) & m
            h ^= (h << 10) & m
            h = (h + ((h >> 1) & m)) & m
        h ^= (h << 3) & m
        h = (h + ((h >> 5) & m)) & m
        h ^= (h << 4) & m
        h = (h + ((h >> 17) & m)) & m
        h ^= (h << 25) & m
        h = (h + ((h >> 6) & m)) & m
        lanes = struct.unpack(f"<{n}Q", h.to_bytes(8 * n, "little"))
        for i, v in zip(idx, lanes):
            out[i] = v
    return out


def order(keys: Sequence[bytes], n_buckets: int) -> list[int]:
    """Indices of unique ``keys`` in kmod's hash iteration order for ``n_buckets``."""
    mask = n_buckets - 1
    hashes = superfasthash_many(keys)
    return sorted(range(len(keys)), key=lambda i: (hashes[i] & mask, keys[i]))
