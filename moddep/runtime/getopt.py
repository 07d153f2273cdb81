"""Command-line parsing with glibc ``getopt_long`` semantics, as kmod's tools get them.

What matters for compatibility: options and operands may be mixed (operands are collected and
scanning goes on) until ``--``; short options cluster (``-vvv``, ``-C/etc/x``); a long option
may be abbreviated to any unambiguous prefix (``--show-dep``), an exact name always wins;
``--name=value`` or ``--name value`` for options with an argument. Errors use glibc's texts::

    PROG: invalid option -- 'Z'
    PROG: option requires an argument -- 'C'
    PROG: unrecognized option '--foo'
    PROG: option '--config' requires an argument
    PROG: option '--all' doesn't allow an argument
    PROG: option '--show-' is ambiguous; possibilities: '--show-depends' '--show-config' ...

Options are produced lazily, in command-line order, so a tool can act on ``-h`` or ``-V``
before a later error is reached, as getopt-driven C code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class LongOption:
    """A long option as getopt_long's ``struct option`` describes it."""

    name: str
    has_arg: bool
    key: str  # what the option means: a short letter or a tool-defined word


class GetoptError(Exception):
    """A command-line error, with glibc's message (without the program name)."""


class Getopt:
    """Parse ``argv`` (without the program name); iterate for (key, argument) pairs, then read
    :attr:`operands`."""

    def __init__(self, argv: list[str], shortopts: str,
                 longopts: tuple[LongOption, ...] = ()) -> None:
        self.argv = list(argv)
        self.longopts = longopts
        self.operands: list[str] = []
        self._short: dict[str, bool] = {}
        i = 0
        while i < len(shortopts):
            c = shortopts[i]
            takes = i + 1 < len(shortopts) and shortopts[i + 1] == ":"
            self._short[c] = takes
            i += 2 if takes else 1

    def __iter__(self) -> Iterator[tuple[str, Optional[str]]]:
        argv = self.argv
        i = 0
        while i < len(argv):
            arg = argv[i]
            i += 1
            if arg == "--":
                self.operands.extend(argv[i:])
                return
            if not arg.startswith("-") or arg == "-":
                self.operands.append(arg)
                continue
            if arg.startswith("--"):
                key, value, i = self._long(arg, argv, i)
                yield key, value
                continue
            j = 1
            while j < len(arg):
                c = arg[j]
                j += 1
                if c not in self._short or c == ":":
                    raise GetoptError(f"invalid option -- '{c}'")
                if not self._short[c]:
                    yield c, None
                    continue
                if j < len(arg):
                    yield c, arg[j:]
                elif i < len(argv):
                    yield c, argv[i]
                    i += 1
                else:
                    raise GetoptError(f"option requires an argument -- '{c}'")
                break

    def _long(self, arg: str, argv: list[str], i: int) -> tuple[str, Optional[str], int]:
        body = arg[2:]
        name, eq, value = body.partition("=")
        exact = [o for o in self.longopts if o.name == name]
        if exact:
            opt = exact[0]
        else:
            matches = [o for o in self.longopts if o.name.startswith(name)]
            if not matches:
                raise GetoptError(f"unrecognized option '--{name}'")
            distinct = {(o.key, o.has_arg) for o in matches}
            if len(distinct) > 1:
                names = " ".join(f"'--{o.name}'" for o in matches)
                raise GetoptError(f"option '--{name}' is ambiguous; possibilities: {names}")
            opt = matches[0]
        if not opt.has_arg:
            if eq:
                raise GetoptError(f"option '--{opt.name}' doesn't allow an argument")
            return opt.key, None, i
        if eq:
            return opt.key, value, i
        if i < len(argv):
            return opt.key, argv[i], i + 1
        raise GetoptError(f"option '--{opt.name}' requires an argument")
