"""Which kmod generation moddep reproduces: every output difference between kmod releases.

Each field is one behaviour that changed, with the kmod commit that changed it. Code that
branches on kmod's version reads these fields instead of comparing version numbers.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from moddep.errors import UsageError

SUPPORTED = range(30, 35)
DEFAULT_VERSION = 34
ENV_VAR = "MODDEP_KMOD_VERSION"


class KmodGeneration(NamedTuple):
    """What differs between the kmod versions whose output moddep reproduces."""

    version: int
    # .bin node layout: "post" (children first, root last) until v33; "pre" (root at offset 12)
    # from kmod commit dada048 "depmod: Write index in pre-order" (v34).
    trie_layout: str
    # modules.weakdep written and `weakdep` understood: kmod commit 05828b4 (v33).
    weakdep: bool
    # modules.order: a repeated path keeps its first line from kmod commits 19c0df1/a1186fa
    # ("Read modules.order only once", "Support modules.order with duplicate lines", v34);
    # before, a two-pass read let the last line win.
    order_first_wins: bool
    # Index keys/values with bytes >= 0x80 are fatal ("only 7-bit ASCII is supported") in v34;
    # v30's signed-char check never fires on x86 (KMOD_NOTES §9.3).
    ascii_fatal: bool
    # depmod.d search list: DISTCONFDIR (/usr/lib) added by kmod commit 8463809 (v32).
    config_dirs: tuple[str, ...]
    # -o/--outdir: kmod commit 1712a15 (v31). -m/--moduledir: kmod commit c36ddb6 (v34); before
    # v34 `-m` was the deprecated --map, removed with -u/-q/-r by commit af54b73 (v34).
    outdir_option: bool
    moduledir_option: bool


def generation(version: int) -> KmodGeneration:
    """The behaviour table for kmod ``version`` (30..34)."""
    if version not in SUPPORTED:
        raise UsageError(f"--kmod-version must be one of 30..34, not {version}")
    dirs = ["/etc/depmod.d", "/run/depmod.d", "/usr/local/lib/depmod.d"]
    if version >= 32:
        dirs.append("/usr/lib/depmod.d")
    dirs.append("/lib/depmod.d")
    return KmodGeneration(
        version=version,
        trie_layout="pre" if version >= 34 else "post",
        weakdep=version >= 33,
        order_first_wins=version >= 34,
        ascii_fatal=version >= 34,
        config_dirs=tuple(dirs),
        outdir_option=version >= 31,
        moduledir_option=version >= 34,
    )


def from_environment(explicit: int | None) -> KmodGeneration:
    """``--kmod-version`` if given, else ``$MODDEP_KMOD_VERSION``, else the default (34)."""
    if explicit is not None:
        return generation(explicit)
    env = os.environ.get(ENV_VAR)
    if env:
        try:
            return generation(int(env))
        except ValueError:
            raise UsageError(f"{ENV_VAR}={env!r} is not a kmod version (30..34)") from None
    return generation(DEFAULT_VERSION)
