"""``moddep why``, ``graph`` and ``diff`` on synthetic trees (exact output and exit codes).

Real Debian trees (a diff of two kernel package versions, a rendered graph): see
tests/test_verify_debian.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from synth import KVER
from verify_fixtures import cli, depmod, mod, tree

from moddep.verify import dot as dotmod

CHAIN = {
    "kernel/a/mod-a.ko": mod([b"fa"], [b"fb"], alias=[b"pci:v1d*"]),
    "kernel/b/mod-b.ko": mod([b"fb", b"fb2"], [b"fc"], softdep=[b"pre: mod-e"]),
    "kernel/c/mod_c.ko": mod([b"fc"], [], alias=[b"char-major-10-200", b"devname:cdev"]),
    "kernel/d/mod-d.ko": mod([], [b"fa", b"fc", b"fb2"]),
    "kernel/e/mod-e.ko": mod([], [], alias=[b"usb:v1234p*d*", b"usb:v1234p5678d*",
                                            b"usb:v9999p*"]),
}
BUILTIN = b"kernel/x/bi.ko\n"
BUILTIN_MODINFO = b"bi.alias=usb:v1234p*\0bi.license=GPL\0"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("why") / "root"
    tree(root, CHAIN, builtin=BUILTIN, builtin_modinfo=BUILTIN_MODINFO)
    depmod(root)
    return root


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same modules without index files."""
    root = tmp_path_factory.mktemp("why") / "bare"
    tree(root, CHAIN, builtin=BUILTIN, builtin_modinfo=BUILTIN_MODINFO)
    return root


def why(root: Path, *args: str) -> tuple[int, str]:
    run = cli("why", "-b", str(root), "-k", KVER, *args)
    assert run.err == ""
    return run.rc, run.out


# -- why --------------------------------------------------------------------------------------

@pytest.mark.parametrize("source", ["indexed", "bare"])
def test_why_direct_and_indirect(source: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(source)
    assert why(root, "mod-d", "mod_c") == (0, "mod_d needs mod_c directly: it uses 1 symbol of "
                                              "mod_c:\n  fc\n")
    assert why(root, "mod_a", "mod_c") == (0, "mod_a needs mod_c indirectly: mod_a -> mod_b -> "
                                              "mod_c\n  mod_a uses mod_b's fb\n"
                                              "  mod_b uses mod_c's fc\n")
    assert why(root, "kernel/d/mod-d.ko", "mod_b") == (
        0, "mod_d needs mod_b directly: it uses 1 symbol of mod_b:\n  fb2\n")
    assert why(root, "mod_c", "mod_a") == (1, "mod_c does not need mod_a\n")


def test_why_indirect_through_several(indexed: Path) -> None:
    rc, out = why(indexed, "mod_d", "mod_c")
    assert rc == 0 and out.startswith("mod_d needs mod_c directly")
    rc, out = why(indexed, "mod-a")
    assert rc == 0
    assert out == ("mod_a (kernel/a/mod-a.ko) needs 2 modules, 1 directly:\n"
                   "  mod_b  fb\n"
                   "  mod_c  (through mod_b)\n")
    rc, out = why(indexed, "mod_d")
    assert out == ("mod_d (kernel/d/mod-d.ko) needs 3 modules, 3 directly:\n"
                   "  mod_a  fa\n"
                   "  mod_b  fb2\n"
                   "  mod_c  fc\n")
    assert why(indexed, "mod_c") == (0, "mod_c (kernel/c/mod_c.ko) needs no other module\n")
    assert why(indexed, "mod_b") == (0, "mod_b (kernel/b/mod-b.ko) needs 1 module, 1 directly:\n"
                                        "  mod_c  fc\n  softdep: pre: mod-e\n")


def test_why_softdep_builtin_unknown(indexed: Path) -> None:
    assert why(indexed, "mod_b", "mod-e") == (
        0, "mod_b does not need mod_e for symbols, but its softdep names it: pre: mod-e\n")
    assert why(indexed, "mod_a", "bi") == (1, "mod_a does not need bi (bi is built into the "
                                              "kernel)\n")
    assert why(indexed, "mod_a", "zz") == (1, "mod_a does not need zz (no module zz is "
                                              "installed)\n")
    assert why(indexed, "bi", "mod_a") == (1, "bi is built into the kernel: it needs no module\n")
    assert why(indexed, "zz") == (1, "zz: no such module (installed indexes)\n")


@pytest.mark.parametrize("source", ["indexed", "bare"])
def test_why_alias(source: str, request: pytest.FixtureRequest) -> None:
    root = request.getfixturevalue(source)
    rc, out = why(root, "--alias", "usb:v1234p5678d0100dc00")
    assert rc == 0
    assert out == ("usb:v1234p5678d0100dc00 matches 2 modules:\n"
                   "  mod_e          usb:v1234p*d*, usb:v1234p5678d*\n"
                   "  bi (built-in)  usb:v1234p*\n")
    assert why(root, "--alias", "pci:v1d2") == (0, "pci:v1d2 matches 1 module:\n"
                                                   "  mod_a  pci:v1d*\n")
    assert why(root, "--alias", "pci:v2d2") == (1, "pci:v2d2 matches no module\n")


def test_why_usage(indexed: Path) -> None:
    run = cli("why", "-b", str(indexed), "-k", KVER)
    assert run.rc == 2 and run.err.endswith(
        "why: ERROR: give MODULE [DEPENDENCY], or --alias MODALIAS\n")
    run = cli("why", "-b", str(indexed), "-k", KVER, "--alias", "x", "mod_a")
    assert run.rc == 2 and run.err.endswith("why: ERROR: --alias takes no MODULE\n")
    run = cli("why", "-b", str(indexed), "-k", "9.9.9", "mod_a")
    assert run.rc == 2
    assert run.err == f"why: ERROR: {indexed}/lib/modules/9.9.9: no such module directory\n"


# -- graph ------------------------------------------------------------------------------------

def test_graph_dot(indexed: Path) -> None:
    run = cli("graph", "-b", str(indexed), "-k", KVER, "mod-a")
    assert run.rc == 0 and run.err == ""
    assert run.out == (
        "digraph moddep {\n"
        '  graph [rankdir=LR, fontname="sans-serif", label="mod_a (4.4.4)", labelloc=t];\n'
        '  node [shape=box, style=rounded, fontname="sans-serif"];\n'
        '  edge [fontname="sans-serif", fontsize=10];\n'
        '  "mod_a" [tooltip="kernel/a/mod-a.ko", style="rounded,filled,bold", '
        'fillcolor="#cfe2ff"];\n'
        '  "mod_b" [tooltip="kernel/b/mod-b.ko"];\n'
        '  "mod_c" [tooltip="kernel/c/mod_c.ko"];\n'
        '  "mod_a" -> "mod_b" [label="1 symbol", tooltip="fb"];\n'
        '  "mod_b" -> "mod_c" [label="1 symbol", tooltip="fc"];\n'
        "}\n")
    run = cli("graph", "-b", str(indexed), "-k", KVER, "--symbols", "mod_d", "mod_b")
    edges = [line for line in run.out.splitlines() if "->" in line]
    assert edges == ['  "mod_d" -> "mod_a" [label="fa", tooltip="fa"];',
                     '  "mod_d" -> "mod_b" [label="fb2", tooltip="fb2"];',
                     '  "mod_d" -> "mod_c" [label="fc", tooltip="fc"];',
                     '  "mod_b" -> "mod_c" [label="fc", tooltip="fc"];',
                     '  "mod_a" -> "mod_b" [label="fb", tooltip="fb"];']


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz 'dot' is not installed")
def test_graph_rendered(indexed: Path, tmp_path: Path) -> None:
    svg = tmp_path / "g.svg"
    run = cli("graph", "-b", str(indexed), "-k", KVER, "-o", str(svg), "mod_d")
    assert run.rc == 0 and run.out == ""
    text = svg.read_text()
    assert "<svg" in text and "mod_d" in text and "mod_c" in text
    png = tmp_path / "g.png"
    assert cli("graph", "-b", str(indexed), "-k", KVER, "-T", "png", "-o", str(png),
               "mod_d").rc == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_graph_errors(indexed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = cli("graph", "-b", str(indexed), "-k", KVER, "mod_a", "bi", "zz")
    assert run.rc == 1
    assert run.err == ("graph: ERROR: module bi is built into the kernel\n"
                       "graph: ERROR: module zz is not installed\n")
    monkeypatch.setattr(dotmod.shutil, "which", lambda _name: None)
    run = cli("graph", "-b", str(indexed), "-k", KVER, "-o", str(tmp_path / "x.svg"), "mod_a")
    assert run.rc == 2
    assert run.err == ("graph: ERROR: Graphviz 'dot' is not installed: cannot make SVG; write "
                       "DOT (-T dot) and render it elsewhere\n")


# -- diff -------------------------------------------------------------------------------------

NEW = {
    "kernel/a/mod-a.ko": mod([b"fa"], [], alias=[b"pci:v1d*"]),
    "kernel/b/mod-b.ko": mod([b"fb", b"fb2"], [b"fc"], softdep=[b"pre: mod-e post: mod-f"]),
    "kernel/c2/mod_c.ko": mod([b"fc", b"fc2"], [], alias=[b"char-major-10-200",
                                                          b"devname:cdev", b"acpi*:ABC0001:*"]),
    "kernel/d/mod-d.ko": mod([], [b"fa", b"fc"]),
    "kernel/f/mod-f.ko": mod([], [], alias=[b"usb:v1234p*d*"]),
    "kernel/x/bi.ko": mod([], []),
}


def test_diff_two_builds(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    tree(old, CHAIN, builtin=BUILTIN, builtin_modinfo=BUILTIN_MODINFO)
    depmod(old)
    tree(new, NEW, builtin=b"kernel/e/mod-e.ko\n", builtin_modinfo=b"")
    depmod(new)
    a, b = (str(p / "lib/modules" / KVER) for p in (old, new))
    run = cli("diff", a, b)
    assert run.rc == 1 and run.err == ""
    assert run.out == (
        f"moddep diff: {a} -> {b}\n"
        "  old: 5 modules (installed indexes)\n"
        "  new: 6 modules (installed indexes)\n"
        "\n"
        "modules: 2 added, 1 removed, 1 moved\n"
        "  mod_e: module -> built-in\n"
        "  bi: built-in -> module\n"
        "  + bi (kernel/x/bi.ko)\n"
        "  + mod_f (kernel/f/mod-f.ko)\n"
        "  - mod_e (kernel/e/mod-e.ko)\n"
        "  ~ mod_c moved: kernel/c/mod_c.ko -> kernel/c2/mod_c.ko\n"
        "\n"
        "built-in modules: 1 added, 1 removed\n"
        "  + built-in mod_e\n"
        "  - built-in bi\n"
        "\n"
        "dependencies: 2 modules changed\n"
        "  mod_a: - mod_b, - mod_c\n"
        "  mod_d: - mod_b\n"
        "\n"
        "aliases (hardware support): 2 gained, 3 lost\n"
        "  mod_c: + acpi*:ABC0001:*\n"
        "  mod_e: - usb:v1234p*d*, - usb:v1234p5678d*, - usb:v9999p*\n"
        "  mod_f: + usb:v1234p*d*\n"
        "\n"
        "built-in aliases: 0 gained, 1 lost\n"
        "  bi: - usb:v1234p*\n"
        "\n"
        "symbols: 1 added, 0 removed\n"
        "  mod_c: + fc2\n"
        "\n"
        "softdeps: 1 added, 1 removed\n"
        "  mod_b: + pre: mod-e post: mod-f, - pre: mod-e\n")
    doc = json.loads(cli("diff", "--format", "json", a, b).out)
    assert doc["counts"]["alias"] == {"+": 2, "-": 3, "~": 0}
    assert doc["transitions"] == ["mod_e: module -> built-in", "bi: built-in -> module"]
    assert {"facet": "symbol", "op": "+", "module": "mod_c", "item": "fc2"} in doc["changes"]
    summary = cli("diff", "--summary", a, b).out
    assert "aliases (hardware support): 2 gained, 3 lost\n" in summary
    assert "mod_f" not in summary
    assert cli("diff", a, a).rc == 0


def test_diff_computes_missing_indexes(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    tree(old, CHAIN, builtin=BUILTIN, builtin_modinfo=BUILTIN_MODINFO)
    depmod(old)
    tree(new, CHAIN, builtin=BUILTIN, builtin_modinfo=BUILTIN_MODINFO)  # no indexes
    a, b = (str(p / "lib/modules" / KVER) for p in (old, new))
    run = cli("diff", a, b)
    assert run.rc == 0
    assert run.err == f"diff: WARNING: {b} has no index files: computing them from its modules\n"
    assert run.out.endswith("  new: 5 modules (computed from the modules)\n\nno difference\n")
    run = cli("diff", a, str(tmp_path / "nope"))
    assert run.rc == 2 and run.err == f"diff: ERROR: {tmp_path}/nope: no such module directory\n"
