"""Answers for ``moddep why``: why a module needs another (the symbols, and the chain of
direct dependencies for indirect ones), what a module needs, and which modules an alias
matches through which patterns. Pure: lines of text and whether the answer is "yes"."""

from __future__ import annotations

from moddep.diag import fs
from moddep.verify.installed import AliasMatch, Deps

SUMMARY_SYMBOLS = 8  # symbols shown per dependency in the one-module summary


def _syms(syms: tuple[bytes, ...], limit: int = 0) -> str:
    names = [fs(s) for s in syms]
    if limit and len(names) > limit:
        return ", ".join(names[:limit]) + f" and {len(names) - limit} more"
    return ", ".join(names)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _unknown(deps: Deps, name: bytes) -> list[str]:
    if name in deps.builtin:
        return [f"{fs(name)} is built into the kernel: it needs no module"]
    return [f"{fs(name)}: no such module ({deps.source})"]


def pair(deps: Deps, mod: bytes, dep: bytes) -> tuple[list[str], bool]:
    """Why ``mod`` needs ``dep``: (lines, True) when it does (or names it as a softdep)."""
    if mod not in deps.paths:
        return _unknown(deps, mod), False
    direct = deps.direct(mod)
    m, d = fs(mod), fs(dep)
    if dep in direct:
        syms = direct[dep]
        lines = [f"{m} needs {d} directly: it uses {_count(len(syms), 'symbol')} of {d}:"]
        return lines + [f"  {fs(s)}" for s in syms], True
    if dep in deps.closure.get(mod, ()):
        chain = deps.chain(mod, dep)
        if chain is None:
            return [f"modules.dep lists {d} for {m}, but no chain of symbols leads there: the "
                    "indexes look stale (moddep verify tells)"], True
        lines = [f"{m} needs {d} indirectly: " + " -> ".join(fs(x) for x in chain)]
        for user, prov in zip(chain, chain[1:]):
            syms = deps.direct(user)[prov]
            lines.append(f"  {fs(user)} uses {fs(prov)}'s {_syms(syms)}")
        others = [x for x in direct if x != chain[1] and dep in deps.closure.get(x, ())]
        if others:
            lines.append("  also through: " + ", ".join(fs(x) for x in others))
        return lines, True
    soft = [t for t in deps.softdeps.get(mod, []) if dep in t.replace(b"-", b"_").split()]
    if soft:
        return [f"{m} does not need {d} for symbols, but its softdep names it: "
                + "; ".join(fs(t) for t in soft)], True
    extra = f" ({d} is built into the kernel)" if dep in deps.builtin else \
        ("" if dep in deps.paths else f" (no module {d} is installed)")
    return [f"{m} does not need {d}{extra}"], False


def module(deps: Deps, mod: bytes) -> tuple[list[str], bool]:
    """What ``mod`` needs: direct dependencies with their symbols, the others with the
    direct dependency they come through, and softdeps."""
    if mod not in deps.paths:
        return _unknown(deps, mod), False
    m = fs(mod)
    direct = deps.direct(mod)
    closure = deps.closure.get(mod, ())
    head = f"{m} ({fs(deps.paths[mod])})"
    if not closure:
        lines = [f"{head} needs no other module"]
    else:
        lines = [f"{head} needs {_count(len(closure), 'module')}, {len(direct)} directly:"]
        width = max(len(fs(x)) for x in closure)
        for x in closure:
            if x in direct:
                syms = direct[x]
                lines.append(f"  {fs(x):<{width}}  {_syms(syms, SUMMARY_SYMBOLS)}")
            else:
                chain = deps.chain(mod, x)
                via = fs(chain[1]) if chain else "?"
                lines.append(f"  {fs(x):<{width}}  (through {via})")
    for t in deps.softdeps.get(mod, []):
        lines.append(f"  softdep: {fs(t)}")
    return lines, True


def alias(matches: list[AliasMatch], modalias: bytes) -> tuple[list[str], bool]:
    """Which modules (and built-ins) ``modalias`` matches, through which patterns."""
    a = fs(modalias)
    if not matches:
        return [f"{a} matches no module"], False
    mods = [x for x in matches if not x.builtin]
    lines = [f"{a} matches {_count(len(matches), 'module')}"
             + (" (modprobe tries them in this order):" if len(mods) > 1 else ":")]
    names = [fs(x.module) + (" (built-in)" if x.builtin else "") for x in matches]
    width = max(len(n) for n in names)
    for name, x in zip(names, matches):
        pats = ", ".join(fs(p) for p in x.patterns) or "?"
        lines.append(f"  {name:<{width}}  {pats}")
    return lines, True
