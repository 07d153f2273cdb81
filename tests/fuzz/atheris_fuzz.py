"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python): optional, local.

    python3 -m pip install atheris
    python3 tests/fuzz/atheris_fuzz.py TARGET [-runs=N] [-max_total_time=SECONDS] [CORPUS_DIR]

TARGET is a name from ``tests/fuzz/targets.py`` (``elf``, ``index``, ``depmod_d``...). The
corpus directory (default ``build/fuzz-corpus/TARGET``) is seeded with the same valid inputs
the Hypothesis strategies start from, and grows with every input that reaches new code. The
property and the per-input time bound are the harness's (:func:`fuzz.harness.run_one`), so a
failing input is also kept in ``tests/fuzz/regressions/TARGET/`` for the replay test.
libFuzzer prints the number of inputs run at the end (``Done N runs``).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["moddep"]):
    from fuzz import harness
    from fuzz.targets import TARGETS


def seeds(name: str) -> list[bytes]:
    """Valid inputs to start from."""
    from fuzz import strategies as s

    top = TESTS.parent
    if name in ("elf", "extract", "strip", "read_module", "signature"):
        out = [seed.data for seed in s.elf_seeds()]
        return out + ([seed.data for seed in s.compressed_seeds()] if name == "read_module"
                      else [])
    if name == "decompress":
        return [seed.data for seed in s.compressed_seeds()]
    if name == "index":
        return [seed.data for seed in s.index_seeds()]
    if name == "depmod_d":
        return [p.read_bytes() for p in top.glob("sample_trees/*/etc/depmod.d/*")] + [
            b"search updates built-in\noverride tun * override\nexternal 6\\.1.* /opt/x\n"]
    if name == "modprobe_d":
        return [b"alias pci:v* e1000\noptions loop max_loop=8\ninstall a /bin/true\n"
                b"softdep a pre: b post: c\nweakdep a b\nblacklist x\n"]
    if name == "modinfo":
        return [b"alias=pci:v00008086d*\0depends=a,b\0name=x\0"]
    if name == "text_index":
        return [p.read_bytes() for p in top.glob("sample_trees/*/expected/kmod34/modules.dep")]
    return [b"a.b=c modprobe.blacklist=x \"m.p=a b\""]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} TARGET [libFuzzer options] [CORPUS_DIR]\n"
                 f"targets: {', '.join(TARGETS)}")
    name = sys.argv.pop(1)
    args = sys.argv[1:]
    if not any(not a.startswith("-") for a in args):
        corpus = TESTS.parent / "build" / "fuzz-corpus" / name
        corpus.mkdir(parents=True, exist_ok=True)
        for data in seeds(name):
            (corpus / hashlib.sha256(data).hexdigest()[:16]).write_bytes(data)
        args.append(str(corpus))
    def one(data: bytes) -> None:
        harness.run_one(name, data)

    atheris.Setup([sys.argv[0], *args], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
