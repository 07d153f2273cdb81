"""``moddep diff``: the semantic difference of two module directories' index sets.

    moddep diff OLD NEW          OLD and NEW are module directories (.../lib/modules/VERSION)

Reports modules added, removed or moved (and those that became built-in or left the kernel
image), dependency changes, aliases gained or lost (the hardware support), symbols added,
removed or moved between modules, softdeps, weakdeps and device names. A directory without
index files (a kernel package's tree before depmod) is read by computing its indexes in memory;
``--compute`` does that for both.
Exit status: 0 same, 1 different, 2 usage or I/O error.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from typing import Optional

from moddep import compat
from moddep.depmod import compute
from moddep.diag import WARNING
from moddep.errors import IndexFormatError, ModdepError
from moddep.parallel import ModuleSource
from moddep.tools._common import Printer
from moddep.tools.verify import EXIT_FINDINGS, EXIT_OK, Parser, guarded, help_text, write_out
from moddep.verify import compare, target
from moddep.verify.compare import Change
from moddep.verify.installed import Installed

# report sections: (title, facets, word for "+", word for "-")
SECTIONS = (
    ("modules", ("module", "path", "compression"), "added", "removed"),
    ("built-in modules", ("builtin",), "added", "removed"),
    ("dependencies", ("dependency",), "", ""),
    ("aliases (hardware support)", ("alias",), "gained", "lost"),
    ("built-in aliases", ("builtin-alias",), "gained", "lost"),
    ("symbols", ("symbol",), "added", "removed"),
    ("softdeps", ("softdep",), "added", "removed"),
    ("weakdeps", ("weakdep",), "added", "removed"),
    ("device names", ("devname",), "added", "removed"),
)


@dataclass
class Side:
    """One side of a comparison: where its index files came from, and their contents."""

    path: str
    moddir: bytes
    files: dict[str, bytes]
    how: str  # "installed indexes" or "computed from the modules"

    @property
    def modules(self) -> int:
        dec = compare.decode("modules.dep", self.files["modules.dep"]) \
            if "modules.dep" in self.files else None
        return len(dec.records) if dec is not None else 0


def parser(prog: str) -> Parser:
    p = Parser(prog=prog, description=help_text(__doc__),
               formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("old", metavar="OLD", help="module directory before")
    a("new", metavar="NEW", help="module directory after")
    a("--compute", action="store_true",
      help="compute both index sets from the modules, even where index files exist")
    a("--format", choices=("text", "json"), default="text", help="report format")
    a("--summary", action="store_true", help="counts only, no lists")
    a("--limit", type=int, metavar="N",
      help="show at most N items per line (default: all)")
    a("-o", "--output", metavar="FILE", help="write the report to FILE instead of stdout")
    a("-j", "--jobs", type=int, metavar="N", help="worker processes when computing")
    a("--debug", action="store_true", help="show a traceback on errors")
    return p


def main(argv: list[str], prog: str = "diff") -> int:
    return guarded(prog, argv, parser(prog), _run)


def load(path: str, force: bool, jobs: Optional[int], printer: Optional[Printer]) -> Side:
    """The index set of the module directory at ``path`` (computed when it has none)."""
    req = target.request_for_dir(path, compat.generation(compat.DEFAULT_VERSION))
    moddir = target.moddir_of(req)
    if not os.path.isdir(moddir):
        raise ModdepError(f"{path}: no such module directory")
    inst = Installed(moddir, req.basedir)
    if not force and inst.has_indexes():
        return Side(path, moddir, inst.files(), "installed indexes")
    if printer is not None and not force:
        printer.message(WARNING, f"{path} has no index files: computing them from its modules")
    res = compute(req, ModuleSource(jobs, None))
    files = dict(res.outputs)
    for name in ("modules.builtin", "modules.builtin.modinfo"):
        data = inst.read(name)
        if data is not None:
            files[name] = data
    return Side(path, moddir, files, "computed from the modules")


def changes(old: Side, new: Side) -> list[Change]:
    try:
        return compare.diff_content(compare.content(old.files), compare.content(new.files))
    except IndexFormatError as e:
        raise ModdepError(f"cannot read {e}") from None


def _run(opts: argparse.Namespace, printer: Printer) -> int:
    old = load(opts.old, opts.compute, opts.jobs, printer)
    new = load(opts.new, opts.compute, opts.jobs, printer)
    found = changes(old, new)
    if opts.format == "json":
        out = to_json(old, new, found)
    else:
        out = text(old, new, found, None if opts.summary else opts.limit, opts.summary)
    write_out(out, opts.output)
    return EXIT_FINDINGS if found else EXIT_OK


def _section_counts(cs: list[Change], plus: str, minus: str) -> str:
    if not plus:
        return f"{len({c.module for c in cs})} modules changed"
    n_plus = sum(1 for c in cs if c.op == "+")
    n_minus = sum(1 for c in cs if c.op == "-")
    n_moved = sum(1 for c in cs if c.op == "~" and c.facet != "compression")
    n_comp = sum(1 for c in cs if c.facet == "compression")
    out = f"{n_plus} {plus}, {n_minus} {minus}"
    out += f", {n_moved} moved" if n_moved else ""
    return out + (f", {n_comp} compressed differently" if n_comp else "")


def transitions(cs: list[Change]) -> list[str]:
    """Modules that became built-in, and built-ins that became modules."""
    mods = {(c.module, c.op) for c in cs if c.facet == "module"}
    built = {(c.module, c.op) for c in cs if c.facet == "builtin"}
    out = [f"{m}: module -> built-in" for m, op in sorted(mods) if op == "-" and (m, "+") in built]
    out += [f"{m}: built-in -> module" for m, op in sorted(mods) if op == "+" and (m, "-") in built]
    return out


def text(old: Side, new: Side, found: list[Change], limit: Optional[int],
         summary: bool = False) -> str:
    lines = [f"moddep diff: {old.path} -> {new.path}",
             f"  old: {old.modules} modules ({old.how})",
             f"  new: {new.modules} modules ({new.how})"]
    if not found:
        return "\n".join(lines + ["", "no difference"]) + "\n"
    for title, facets, plus, minus in SECTIONS:
        cs = [c for c in found if c.facet in facets]
        if not cs:
            continue
        lines += ["", f"{title}: {_section_counts(cs, plus, minus)}"]
        if title == "modules":
            lines += [f"  {t}" for t in transitions(found)]
        if not summary:
            lines += [f"  {line}" for line in compare.describe(cs, "diff", limit)]
    return "\n".join(lines) + "\n"


def to_json(old: Side, new: Side, found: list[Change]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for c in found:
        d = counts.setdefault(c.facet, {"+": 0, "-": 0, "~": 0})
        d[c.op] += 1
    doc = {"old": {"path": old.path, "modules": old.modules, "source": old.how},
           "new": {"path": new.path, "modules": new.modules, "source": new.how},
           "counts": counts, "transitions": transitions(found),
           "changes": [c.to_json() for c in found]}
    return json.dumps(doc, indent=2) + "\n"
