"""Module file containers, decided by magic bytes (never by file name).

kmod decodes by content too (``libkmod/libkmod-file.c``): zstd ``28 B5 2F FD``, xz
``FD 37 7A 58 5A 00``, gzip ``1F 8B``; anything else is read as is. The extension only decides
whether a file is a module candidate at all (see :data:`MODULE_EXTENSIONS`).

Decompression is bounded: a stream that expands beyond ``limit`` bytes is refused with a
:class:`~moddep.errors.CompressionError` instead of exhausting memory.
"""

from __future__ import annotations

import zlib
from typing import Callable, NamedTuple, Optional

from moddep.errors import CompressionError

# Largest decompressed module accepted by default (the biggest Debian 6.1 module is ~30 MiB).
DEFAULT_LIMIT = 256 * 1024 * 1024

# Module file name endings. kmod accepts ``.ko`` always and the others only when built with the
# matching library; Debian's kmod 30/34 lack zlib and so ignore ``.ko.gz`` (KMOD_NOTES §4.1).
MODULE_EXTENSIONS = (b".ko", b".ko.gz", b".ko.xz", b".ko.zst")


# zstd's densest encoding: a 3-byte block header and 1 byte (an RLE block) give 128 KiB.
_ZSTD_MAX_RATIO = 128 * 1024 // 4
_ZSTD_MIN_STEP = 64


def _zstd(data: bytes, limit: int) -> bytes:
    try:
        import zstandard
    except ImportError as e:  # optional at run time on targets
        raise CompressionError(
            "zstd-compressed, but the 'zstandard' module is not installed") from e
    beyond = f"zstd data decompresses beyond the limit of {limit} bytes"
    # decompressobj() buffers all the output of one call, so the input is fed in pieces small
    # enough that even the densest encoding (a 4-byte RLE block -> 128 KiB) stays near the
    # limit: at most _ZSTD_MAX_RATIO * _ZSTD_MIN_STEP (2 MiB) beyond it, never the whole bomb.
    view = memoryview(data)
    pieces = []
    total = pos = 0
    try:
        declared = zstandard.get_frame_parameters(data).content_size
        if declared != zstandard.CONTENTSIZE_UNKNOWN:
            if declared > limit:
                raise CompressionError(beyond)
            # The frame states its size (kmod's and the kernel's zstd modules do): one call
            # into a buffer of exactly that size, which zstd refuses to overrun.
            try:
                out = zstandard.ZstdDecompressor().decompress(data, max_output_size=declared)
                if len(out) == declared:
                    return out
            except zstandard.ZstdError:
                pass  # the piecewise path below gives the precise error
        dobj = zstandard.ZstdDecompressor().decompressobj()
        while pos < len(view) and not dobj.eof:
            step = max(_ZSTD_MIN_STEP, (limit - total) // _ZSTD_MAX_RATIO)
            piece = dobj.decompress(view[pos:pos + step])
            pos += step
            total += len(piece)
            if total > limit:
                raise CompressionError(beyond)
            pieces.append(piece)
    except zstandard.ZstdError as e:
        raise CompressionError(f"zstd data does not decompress: {e}") from e
    if not dobj.eof:
        raise CompressionError("zstd data is truncated")
    return b"".join(pieces)


def _xz(data: bytes, limit: int) -> bytes:
    import lzma  # here, not at the top: only trees with .ko.xz files need it

    dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        out = dec.decompress(data, max_length=limit + 1)
    except lzma.LZMAError as e:
        raise CompressionError(f"xz data does not decompress: {e}") from e
    if len(out) > limit:
        raise CompressionError(f"xz data decompresses beyond the limit of {limit} bytes")
    if not dec.eof:
        raise CompressionError("xz data is truncated")
    return out


def _gzip(data: bytes, limit: int) -> bytes:
    dec = zlib.decompressobj(wbits=31)
    try:
        out = dec.decompress(data, limit + 1)
    except zlib.error as e:
        raise CompressionError(f"gzip data does not decompress: {e}") from e
    if len(out) > limit:
        raise CompressionError(f"gzip data decompresses beyond the limit of {limit} bytes")
    if not dec.eof:
        raise CompressionError("gzip data is truncated")
    return out


class Codec(NamedTuple):
    """One container format: its name (as /sys/module/compression spells it), magic, decoder."""

    name: str
    magic: bytes
    decompress: Callable[[bytes, int], bytes]


CODECS: tuple[Codec, ...] = (
    Codec("zstd", b"\x28\xb5\x2f\xfd", _zstd),
    Codec("xz", b"\xfd7zXZ\x00", _xz),
    Codec("gzip", b"\x1f\x8b", _gzip),
)


def detect(data: bytes) -> Optional[Codec]:
    """The codec whose magic starts ``data``, or None for plain (uncompressed) content."""
    for codec in CODECS:
        if data.startswith(codec.magic):
            return codec
    return None


def decompress(data: bytes, path: Optional[str] = None, limit: int = DEFAULT_LIMIT) -> bytes:
    """``data`` decompressed if its magic names a known codec, else ``data`` unchanged."""
    codec = detect(data)
    if codec is None:
        return data
    try:
        return codec.decompress(data, limit)
    except CompressionError as e:
        raise CompressionError(e.message, path) from None


def compress(data: bytes, name: str) -> bytes:
    """Compress ``data`` with codec ``name`` (used by tests and tools that stage trees)."""
    if name == "xz":
        import lzma

        return lzma.compress(data, check=lzma.CHECK_CRC32)
    if name == "gzip":
        import gzip

        return gzip.compress(data)
    if name == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    raise CompressionError(f"unknown compression '{name}'")
