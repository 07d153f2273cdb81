"""Dependency closures as Graphviz DOT, and rendering through Graphviz's ``dot`` when it is
installed. Nodes are modules (the ones asked about filled), edges point from a module to a
module whose symbols it uses, labelled with the symbol count (or the symbols)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional

from moddep.diag import fs
from moddep.errors import ModdepError
from moddep.verify.installed import Deps

RENDERED = ("svg", "png")
EDGE_SYMBOLS = 4  # symbols named on an edge with symbols=True


def _q(s: str) -> str:
    """A DOT double-quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def closure(deps: Deps, roots: list[bytes]) -> tuple[list[bytes], list[tuple[bytes, bytes,
                                                                              tuple[bytes, ...]]]]:
    """Modules of the roots' closures (roots first, then in modules.dep order) and the direct
    dependency edges among them: (user, provider, symbols)."""
    nodes: dict[bytes, None] = dict.fromkeys(roots)
    for r in roots:
        nodes.update(dict.fromkeys(deps.closure.get(r, ())))
    edges = []
    for n in nodes:
        for prov, syms in deps.direct(n).items():
            if prov in nodes:
                edges.append((n, prov, syms))
    return list(nodes), edges


def to_dot(deps: Deps, roots: list[bytes], symbols: bool = False,
           title: Optional[str] = None) -> str:
    nodes, edges = closure(deps, roots)
    lines = ["digraph moddep {",
             "  graph [rankdir=LR, fontname=\"sans-serif\""
             + (f", label={_q(title)}, labelloc=t" if title else "") + "];",
             "  node [shape=box, style=rounded, fontname=\"sans-serif\"];",
             "  edge [fontname=\"sans-serif\", fontsize=10];"]
    for n in nodes:
        attrs = [f"tooltip={_q(fs(deps.paths.get(n, b'')))}"]
        if n in roots:
            attrs.append('style="rounded,filled,bold", fillcolor="#cfe2ff"')
        lines.append(f"  {_q(fs(n))} [{', '.join(attrs)}];")
    for user, prov, syms in edges:
        if symbols:
            shown = [fs(s) for s in syms[:EDGE_SYMBOLS]]
            if len(syms) > EDGE_SYMBOLS:
                shown.append(f"+{len(syms) - EDGE_SYMBOLS} more")
            label = "\n".join(shown)
        else:
            label = f"{len(syms)} symbol" + ("" if len(syms) == 1 else "s")
        tip = ", ".join(fs(s) for s in syms)
        lines.append(f"  {_q(fs(user))} -> {_q(fs(prov))} [label={_q(label)}, "
                     f"tooltip={_q(tip)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render(dot: str, fmt: str) -> bytes:
    """``dot -T fmt``; ModdepError when Graphviz is missing or fails."""
    exe = shutil.which("dot")
    if exe is None:
        raise ModdepError(f"Graphviz 'dot' is not installed: cannot make {fmt.upper()}; "
                          "write DOT (-T dot) and render it elsewhere")
    try:
        proc = subprocess.run([exe, f"-T{fmt}"], input=dot.encode("utf-8", "surrogateescape"),
                              capture_output=True, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModdepError(f"dot -T{fmt} failed: {e}") from None
    if proc.returncode != 0:
        raise ModdepError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout
