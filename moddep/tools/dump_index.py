"""``dump-index FILE...``: print a .bin index's entries as text, one per line.

Each line is ``key<TAB>value<TAB>priority`` in the order libkmod's dump (``modprobe -c``) walks
the trie; ``--header`` first prints the layout (pre-order as kmod >= 34 writes it, post-order
as kmod <= 33) and the number of entries.
"""

from __future__ import annotations

import argparse
import sys

from moddep.index.trie import Index
from moddep.tools._common import Printer, run_guarded


def main(argv: list[str], prog: str = "dump-index") -> int:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", metavar="FILE", help="a modules.*.bin index")
    p.add_argument("--header", action="store_true", help="print layout and entry count first")
    p.add_argument("--debug", action="store_true", help="show a traceback on errors")
    try:
        opts = p.parse_args(argv)
    except SystemExit as e:
        return 0 if e.code == 0 else 2
    printer = Printer(prog)

    def run() -> int:
        out = sys.stdout.buffer
        for path in opts.files:
            index = Index.open(path)
            entries = list(index.entries())
            if opts.header or len(opts.files) > 1:
                out.write(f"# {path}: {index.layout or 'empty'} layout, "
                          f"{len(entries)} entries\n".encode())
            for key, value, priority in entries:
                out.write(b"%s\t%s\t%d\n" % (key, value, priority))
        out.flush()
        return 0

    return run_guarded(prog, opts.debug, run, printer)
