"""The re-run cache: content-keyed, never stale, output byte-identical to an uncached run."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import pytest
import synth
from kofactory import Module
from synth import KVER, make_tree

import moddep.extract
import moddep.parallel
from moddep.cache import PackIndex, content_key, image_key, key_by_recipe, layout_key, recipe
from moddep.cli import main
from moddep.compression import DEFAULT_LIMIT
from moddep.elf import ElfModule
from moddep.errors import ElfError
from moddep.extract import parse_elf, parse_image, read_keyed, rekey


def _mod(exports: list[bytes], needs: list[bytes], alias: bytes) -> bytes:
    return Module(exports=[(e, 1) for e in exports], undefined=[(n, False) for n in needs],
                  modinfo=[(b"alias", alias)]).build()


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODDEP_NO_CACHE", "0")
    monkeypatch.setenv("MODDEP_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "root"
    make_tree(root, {f"kernel/m{i}.ko": _mod([f"s{i}".encode()], [f"s{i + 1}".encode()],
                                             f"a{i}".encode()) for i in range(80)})
    return root


def _run(root: Path, *args: str) -> dict[str, bytes]:
    assert main(["depmod", "-b", str(root), *args, KVER]) == 0
    moddir = root / "lib/modules" / KVER
    return {n: (moddir / n).read_bytes() for n in synth.OUTPUTS}


def _no_extraction(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_a: object, **_k: object) -> None:
        raise AssertionError("module extracted although the cache should serve it")

    monkeypatch.setattr(moddep.extract, "parse_elf", fail)
    monkeypatch.setattr(moddep.extract, "parse_image", fail)


def test_rerun_is_served_from_cache_and_identical(tree: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    plain = _run(tree, "--no-cache", "-j1")
    first = _run(tree)
    assert first == plain
    _no_extraction(monkeypatch)
    assert _run(tree) == plain


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_rerun_reads_no_module(tree: Path, monkeypatch: pytest.MonkeyPatch, jobs: str) -> None:
    """The stat identities and keys a run learns are saved whether it computed the outputs
    (where the saving happens beside the output work) or was served them: the next run
    reads no module file at all."""
    first = _run(tree, "-j", jobs)
    for mod in (tree / "lib/modules" / KVER / "kernel").iterdir():  # new identities ...
        os.utime(mod, ns=(mod.stat().st_atime_ns, mod.stat().st_mtime_ns + 10**9))
    assert _run(tree, "-j", jobs) == first  # ... re-keyed, served by the run cache

    def unread(*_a: object, **_k: object) -> None:
        raise AssertionError("a module file was read although its identity is known")

    monkeypatch.setattr(moddep.extract, "read_keyed", unread)
    monkeypatch.setattr(moddep.parallel, "read_keyed", unread)
    assert _run(tree, "-j", jobs) == first


def test_module_array_is_arranged_only_for_computed_runs(
        tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first run sorts the module array (beside the extraction pass); a re-run the cache
    serves, even one that re-keys every file, never does."""
    import moddep.graph

    calls: list[int] = []
    real = moddep.graph.module_order

    def spy(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(moddep.graph, "module_order", spy)
    first = _run(tree)
    assert calls == [1]
    for mod in (tree / "lib/modules" / KVER / "kernel").iterdir():
        os.utime(mod, ns=(mod.stat().st_atime_ns, mod.stat().st_mtime_ns + 10**9))
    assert _run(tree) == first and calls == [1]


def test_new_mtimes_same_content_still_hit(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(tree)
    for p in (tree / "lib/modules" / KVER / "kernel").iterdir():
        os.utime(p, (1_000_000_000, 1_000_000_000))
    _no_extraction(monkeypatch)
    assert _run(tree) == first


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_reinstall_rekeys_by_recipe_without_parsing(tree: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    jobs: str) -> None:
    """A package reinstall (the same files rewritten at the same paths: new inodes and
    mtimes) is re-keyed from the byte ranges each key was computed from, without parsing a
    module; a module whose bytes changed there, even at the same size, is parsed again."""
    first = _run(tree, "-j", jobs)
    moddir = tree / "lib/modules" / KVER
    for mod in (moddir / "kernel").iterdir():  # rewritten: new inode, new mtime
        data = mod.read_bytes()
        mod.unlink()
        mod.write_bytes(data)

    def unparsed(*_a: object, **_k: object) -> None:
        raise AssertionError("a module was parsed although its recipe still fits")

    with monkeypatch.context() as m:
        m.setattr(moddep.extract, "ElfModule", unparsed)
        assert _run(tree, "-j", jobs) == first
    # the same size, one alias byte different: re-parsed, never served stale
    mod = moddir / "kernel" / "m7.ko"
    data = mod.read_bytes()
    assert data.count(b"alias=a7\0") == 1
    mod.write_bytes(data.replace(b"alias=a7\0", b"alias=b7\0"))
    assert _run(tree, "-j", jobs) == _run(tree, "--no-cache", "-j", jobs)
    assert b"alias b7 m7\n" in (moddir / "modules.alias").read_bytes()


def test_recipe_keys_of_real_modules() -> None:
    """On Debian's own modules (the sample trees: amd64 and arm64, some compressed), the
    key a recipe recomputes from the file is the key its parse gave."""
    top = Path(__file__).resolve().parent.parent / "sample_trees"
    checked = 0
    for path in sorted(top.glob("*/lib/modules/*/**/*.ko*")):
        key, _data, _layout, how, _ident = read_keyed(bytes(path), DEFAULT_LIMIT, PackIndex())
        ident, again = rekey(bytes(path), DEFAULT_LIMIT, how) if how else ((), None)
        if path.name.endswith(".ko"):
            assert how and again == key and ident, path
            checked += 1
        else:
            assert not how  # a compressed module is keyed whole
    assert checked >= 20


def test_pack_parts_load_together_and_leave_with_their_pack(tmp_path: Path) -> None:
    """A pack is written in parts (one per output process); loading a pack reads them all,
    and evicting a pack removes its parts too."""
    from moddep.cache import KEEP_PACKS, PACK_PARTS, Cache
    from moddep.model import ModuleData

    cache = Cache(str(tmp_path / "c"))
    for n in range(KEEP_PACKS + 3):
        moddir = b"/m%d" % n
        data = {b"k%d-%d" % (n, i): ModuleData(modinfo_raw=b"alias=%d" % i) for i in range(4)}
        keys = list(data)
        if n % 2:  # indexed before or after its parts are written
            cache.index_pack(moddir, keys, {})
        for part in range(PACK_PARTS):
            cache.save_pack(moddir, dict(list(data.items())[part::PACK_PARTS]), part)
        if not n % 2:
            cache.index_pack(moddir, keys, {})
        got = cache.load_packs([cache.pack_name(moddir)])
        assert got == data
        assert all(cache.pack_index().where[k] == cache.pack_name(moddir) for k in keys)
    names = os.listdir(tmp_path / "c" / "packs")
    bases = {n for n in names if len(n) == 32}
    assert len(bases) == KEEP_PACKS
    assert all(n[:32] in bases for n in names if n != "index")  # no part left without its pack


def test_copy_elsewhere_hits(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = _run(tree)
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    _no_extraction(monkeypatch)
    assert _run(other) == first


def test_changed_module_is_never_stale(tree: Path) -> None:
    first = _run(tree)
    path = tree / "lib/modules" / KVER / "kernel/m5.ko"
    st = path.stat()
    # same size, same mtime: only the content (and ctime) differ
    new = _mod([b"s5"], [b"s6"], b"zz")
    assert len(new) == st.st_size
    path.write_bytes(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = _run(tree)
    assert second != first
    assert b"alias zz m5\n" in second["modules.alias"]
    assert second == _run(tree, "--no-cache")


def test_partial_change_reextracts_only_that_module(tree: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _run(tree)
    path = tree / "lib/modules" / KVER / "kernel/m7.ko"
    path.write_bytes(_mod([b"s7"], [], b"changed"))
    seen: list[str] = []
    real = moddep.extract.parse_elf

    def spy(elf: ElfModule) -> object:
        seen.append(str(elf.path))
        return real(elf)

    monkeypatch.setattr(moddep.extract, "parse_elf", spy)
    out = _run(tree, "-j1")
    assert [os.path.basename(p) for p in seen] == ["m7.ko"]
    assert b"alias changed m7\n" in out["modules.alias"]


def test_cache_inside_root_is_refused(tree: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MODDEP_CACHE_DIR", str(tree / "var/cache/moddep"))
    _run(tree)
    assert "is inside the root" in capsys.readouterr().err
    assert not (tree / "var").exists()


def _flip_subject(crc_mode: str, bits: int) -> bytes:
    """A module with every kind of input extraction reads, and 64 bytes of code it does not."""
    return Module(bits=bits, big=bits == 32, crc_mode=crc_mode,
                  exports=[(b"e1", 0x1234), (b"e2", 7)],
                  undefined=[(b"u", False), (b"w", True)],
                  versions=[(b"u", 5), (b"module_layout", 9)],
                  modinfo=[(b"alias", b"pci:v*"), (b"depends", b"")],
                  text=bytes(range(64))).build()


@pytest.mark.parametrize("crc_mode", ["kcrctab", "abs"])
@pytest.mark.parametrize("bits", [64, 32])
def test_key_covers_every_byte_extraction_reads(crc_mode: str, bits: int) -> None:
    """Flip each byte of a module in turn: whenever the cache key stays the same, the
    extracted data must too (so an unchanged key can never serve stale data); bytes outside
    the read ranges (code, an unreferenced __kcrctab) leave the key alone."""
    image = _flip_subject(crc_mode, bits)
    base = parse_image(image)
    assert base.exports == (b"e1", b"e2") and base.error is None
    elf = ElfModule(image)
    key = image_key(elf)
    # what a cache that extracted this module once knows: its layout's CRC sections and key
    layout = layout_key(elf)
    known = PackIndex({key: "pack"}, {layout.digest(): (elf.crc_sections(), "pack")})
    assert content_key(layout, elf, known.sections(layout.digest(), elf.section_count) or ()) \
        == key
    unchanged = 0
    for pos in range(len(image)):
        flipped = image[:pos] + bytes([image[pos] ^ 0x41]) + image[pos + 1:]
        try:
            elf = ElfModule(flipped)
        except ElfError:
            continue  # such a file is keyed whole
        # the key a re-run computes: with the CRC sections the cache stored for a layout
        # seen before, else those a scan finds
        state = layout_key(elf)
        stored = known.sections(state.digest(), elf.section_count)
        keys = {image_key(elf)} | ({content_key(state, elf, stored)} if stored is not None
                                   else set())
        if key in keys:
            unchanged += 1
            assert parse_elf(elf) == base, f"byte {pos} changes the data but not the key"
    # .text (64 bytes) is never read; with SHN_ABS CRCs neither is __kcrctab (8 bytes)
    assert unchanged >= 64 + (8 if crc_mode == "abs" else 0)


@pytest.mark.parametrize("crc_mode", ["kcrctab", "abs"])
@pytest.mark.parametrize("bits", [64, 32])
def test_recipe_key_is_the_key_and_never_stale(crc_mode: str, bits: int) -> None:
    """The key a recipe recomputes from raw bytes equals the parse's; flipping any byte,
    or cutting the file, either leaves what extraction reads unchanged or gives another key."""
    image = _flip_subject(crc_mode, bits)
    elf = ElfModule(image)
    key = image_key(elf)
    how = recipe(elf, elf.crc_sections())

    def by_recipe(data: bytes) -> bytes:
        return key_by_recipe(lambda off, n: data[off:off + n], len(data), DEFAULT_LIMIT, how)

    assert by_recipe(image) == key
    base = parse_image(image)
    same = 0
    for pos in range(len(image)):
        flipped = image[:pos] + bytes([image[pos] ^ 0x41]) + image[pos + 1:]
        try:
            got = by_recipe(flipped)
        except ValueError:
            continue
        if got == key:
            same += 1
            assert parse_image(flipped) == base, f"byte {pos}: same recipe key, other data"
    assert same >= 64  # .text, never read
    for resized in (image[:-1], image + b"\0"):
        try:
            assert by_recipe(resized) != key
        except ValueError:
            pass  # (a cut file may not even fit the recipe)
    with pytest.raises(ValueError):
        key_by_recipe(lambda off, n: image[off:off + n], len(image), DEFAULT_LIMIT, how[:-8])


def test_copy_elsewhere_with_other_options_reuses_module_data(
        tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A different run (another path, another option) still finds each module's data through
    the pack index: the copy is only re-keyed, never re-extracted."""
    _run(tree)
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    plain = _run(other, "--no-cache", "-w")
    _no_extraction(monkeypatch)
    assert _run(other, "-w") == plain


@pytest.mark.parametrize("damage", [(10 ** 6,), ("x",), (1,), None])
def test_damaged_layout_entries_are_misses(tree: Path, tmp_path: Path,
                                           damage: object) -> None:
    """A pack index whose CRC-section lists are wrong (out of range, not numbers, another
    section, not a tuple) costs a re-extraction, never a wrong or failed run."""
    first = _run(tree)
    index = tmp_path / "cache" / "packs" / "index"
    where, layouts = pickle.loads(index.read_bytes())
    assert layouts
    index.write_bytes(pickle.dumps((where, {k: (damage, v[1]) for k, v in layouts.items()})))
    other = tmp_path / "other"
    shutil.copytree(tree, other)
    assert _run(other) == first
