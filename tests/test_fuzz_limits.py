"""Decompression limits: a module that expands beyond the bound is refused, by name, without
the memory it would need (zstd, xz and gzip bombs, with and without a declared size).

The memory checks run in a child process and compare its peak RSS before and after, so the
result does not depend on what the test process already holds.
"""

from __future__ import annotations

import gzip
import lzma
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest
import zstandard
from test_integrations_support import stage_sample

from moddep.cli import main
from moddep.compression import decompress
from moddep.errors import CompressionError

TOP = Path(__file__).resolve().parent.parent
TREE = TOP / "sample_trees" / "amd64-basic"
KVER = "6.1.0-50-amd64"
MIB = 1 << 20


def bomb(codec: str, size: int, declared: bool) -> bytes:
    """``size`` zero bytes compressed in 1 MiB pieces (never held whole in memory)."""
    chunk = bytes(MIB)
    if codec == "zstd":
        c = zstandard.ZstdCompressor()
        co = c.compressobj(size=size if declared else -1)
        return b"".join(co.compress(chunk) for _ in range(size // MIB)) + co.flush()
    if codec == "xz":
        lc = lzma.LZMACompressor(format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                                 filters=[{"id": lzma.FILTER_LZMA2, "preset": 0}])
        return b"".join(lc.compress(chunk) for _ in range(size // MIB)) + lc.flush()
    zc = zlib.compressobj(1, wbits=31)
    return b"".join(zc.compress(chunk) for _ in range(size // MIB)) + zc.flush()


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    out = {}
    for codec, declared in (("zstd", True), ("zstd", False), ("xz", False), ("gzip", False)):
        name = f"{codec}{'-sized' if declared else ''}"
        out[name] = d / f"{name}.bin"
        out[name].write_bytes(bomb(codec, 128 * MIB, declared))
    return out


@pytest.mark.parametrize("name", ["zstd-sized", "zstd", "xz", "gzip"])
def test_bomb_is_refused_without_the_memory(name: str, bombs: dict[str, Path]) -> None:
    code = textwrap.dedent(f"""
        import resource, sys
        from moddep.compression import decompress
        from moddep.errors import CompressionError
        data = open({str(bombs[name])!r}, "rb").read()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            decompress(data, "bomb.ko", 8 << 20)
        except CompressionError as e:
            print(e)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=TOP, check=True)
    message, grown = proc.stdout.splitlines()
    assert message.startswith("bomb.ko: ") and "beyond the limit of 8388608 bytes" in message
    assert int(grown) < 48, f"decompressing a 128 MiB bomb grew the process by {grown} MiB"


def test_limit_is_exact() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    for codec in ("zstd", "xz", "gzip"):
        packed = {"zstd": zstandard.ZstdCompressor().compress, "xz": lzma.compress,
                  "gzip": gzip.compress}[codec](data)
        assert decompress(packed, "m.ko", len(data)) == data
        with pytest.raises(CompressionError, match="beyond the limit"):
            decompress(packed, "m.ko", len(data) - 1)


def test_depmod_names_the_refused_module(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = stage_sample(TREE.name, tmp_path / "root")
    big = root / "lib/modules" / KVER / "extra" / "big.ko.zst"
    big.parent.mkdir()
    big.write_bytes(bomb("zstd", 64 * MIB, False))
    assert main(["depmod", "-b", str(root), "--max-module-size", "16M", KVER]) == 0
    err = capsys.readouterr().err
    assert (f"depmod: ERROR: failed to load symbols from {big}: zstd data decompresses beyond "
            f"the limit of {16 * MIB} bytes") in err
    # kmod keeps a module it cannot read, without symbols; the others are unaffected
    dep = (root / "lib/modules" / KVER / "modules.dep").read_text()
    assert "extra/big.ko.zst:\n" in dep
    expected = (TREE / "expected/kmod34/modules.dep").read_text()
    assert dep.replace("extra/big.ko.zst:\n", "") == expected


def test_max_module_size_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["depmod", "--max-module-size", "0", "-n", KVER]) == 1
    assert "invalid size '0'" in capsys.readouterr().err
