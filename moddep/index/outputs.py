"""The index files depmod writes, generated from a :class:`~moddep.graph.DepModel`.

One table (:data:`OUTPUTS`) lists every file in kmod's write order with its generator; each
generator returns the file's bytes (or None when the file is binary and we are printing to
stdout with ``-n``). Text formats follow KMOD_NOTES §9.2, the ``.bin`` contents §9.3 and the
trie encoding lives in :mod:`moddep.index.trie`.
"""

from __future__ import annotations

from itertools import compress
from typing import Callable, NamedTuple, Optional, Sequence

from moddep.compat import KmodGeneration
from moddep.diag import Log, Message, fs
from moddep.errors import IndexFormatError, ModdepError
from moddep.graph import DepModel
from moddep.index import trie
from moddep.model import ModuleData
from moddep.modinfo import alias_normalize, path_to_modname
from moddep.scan import ModuleFile

ALIAS_HEADER = b"# Aliases extracted from modules themselves.\n"
SOFTDEP_HEADER = b"# Soft dependencies extracted from modules themselves.\n"
WEAKDEP_HEADER = b"# Weak dependencies extracted from modules themselves.\n"
SYMBOLS_HEADER = b"# Aliases for symbols, used by symbol_request().\n"
DEVNAME_HEADER = b"# Device nodes to trigger on-demand module loading.\n"


class Inputs(NamedTuple):
    """What the generators read: the modules in array order, the resolved model (only the
    generators marked ``resolved`` need it), kernel build products and options."""

    files: Sequence[ModuleFile]
    data: Sequence[ModuleData]
    model: Optional[DepModel]
    gen: KmodGeneration
    builtin: Optional[bytes]  # modules.builtin content, None when missing
    builtin_modinfo: Optional[bytes]  # modules.builtin.modinfo content, None when missing
    warn_dups: bool
    log: Log


def dep_lines(model: DepModel) -> list[bytes]:
    """modules.dep lines without newline: ``path: dep dep ...`` (deps nearest first)."""
    disp = [f.display for f in model.files]
    out = []
    for i, deps in enumerate(model.closure):
        if deps:
            out.append(disp[i] + b": " + b" ".join(disp[d] for d in deps))
        else:
            out.append(disp[i] + b":")
    return out


def _model(inp: Inputs) -> DepModel:
    assert inp.model is not None, "generator needs the resolved model"
    return inp.model


def modules_dep(inp: Inputs) -> bytes:
    lines = dep_lines(_model(inp))
    return b"\n".join(lines) + b"\n" if lines else b""


def _modinfo_lines(inp: Inputs, key: bytes, header: bytes, name_first: bool) -> bytes:
    """``KEY value name`` (aliases) or ``KEY name value`` lines for every ``key`` value."""
    out = [header]
    add = out.append
    for f, d in zip(inp.files, inp.data):
        values = d.aliases if key == b"alias" else d.values(key)
        if not values:
            continue
        # all of a module's lines at once: its values joined by what ends one line and
        # starts the next
        if name_first:
            head = key + b" " + f.name + b" "
            add(head + (b"\n" + head).join(values) + b"\n")
        else:
            tail = b" " + f.name + b"\n"
            add(key + b" " + (tail + key + b" ").join(values) + tail)
    return b"".join(out)


def modules_alias(inp: Inputs) -> bytes:
    return _modinfo_lines(inp, b"alias", ALIAS_HEADER, False)


def modules_softdep(inp: Inputs) -> bytes:
    return _modinfo_lines(inp, b"softdep", SOFTDEP_HEADER, True)


def modules_weakdep(inp: Inputs) -> bytes:
    return _modinfo_lines(inp, b"weakdep", WEAKDEP_HEADER, True)


def modules_symbols(inp: Inputs) -> bytes:
    names = inp.files
    out = [SYMBOLS_HEADER]
    out += [b"alias symbol:%s %s\n" % (sym, names[owner].name)
            for sym, owner in _model(inp).symbols]
    return b"".join(out)


def _scan_uint(s: bytes) -> tuple[Optional[int], bytes]:
    """sscanf's ``%u``: optional blanks and sign, digits; (value mod 2**32, rest)."""
    t = s.lstrip(b" \t\n\r\f\v")
    neg = False
    if t[:1] in (b"+", b"-"):
        neg = t[:1] == b"-"
        t = t[1:]
    n = 0
    while n < len(t) and 0x30 <= t[n] <= 0x39:
        n += 1
    if n == 0:
        return None, s
    v = int(t[:n])
    return ((-v if neg else v) & 0xFFFFFFFF), t[n:]


def _major_minor(value: bytes, prefix: bytes) -> Optional[tuple[int, int]]:
    """``sscanf(value, "<prefix>%u-%u")`` == 2."""
    if not value.startswith(prefix):
        return None
    major, rest = _scan_uint(value[len(prefix):])
    if major is None or not rest.startswith(b"-"):
        return None
    minor, _ = _scan_uint(rest[1:])
    if minor is None:
        return None
    return major, minor


def modules_devname(inp: Inputs) -> bytes:
    out: list[bytes] = []
    for f, d in zip(inp.files, inp.data):
        if b"alias=devname:" not in d.modinfo_raw:
            continue  # most modules: no devname, so no line whatever else they have
        devname = None
        kind = b""
        major = minor = 0
        for v in d.aliases:
            if v.startswith(b"devname:"):
                devname = v[8:]
            else:
                mm = _major_minor(v, b"char-major-")
                if mm is not None:
                    kind = b"c"
                else:
                    mm = _major_minor(v, b"block-major-")
                    if mm is not None:
                        kind = b"b"
                if mm is not None:
                    major, minor = mm
            if kind and devname is not None:
                break
        if devname is None:
            continue
        if not kind:
            inp.log.error(f"Module '{fs(f.name)}' has devname ({fs(devname)}) but lacks major "
                          f"and minor information. Ignoring.")
            continue
        if not out:
            out.append(DEVNAME_HEADER)
        out.append(b"%s %s %s%d:%d\n" % (f.name, devname, kind, major, minor))
    return b"".join(out)


# -- binary indexes --------------------------------------------------------------------------

def _encode(inp: Inputs, name: str, entries: list[tuple[bytes, bytes, int]]) -> bytes:
    try:
        return trie.encode(entries, inp.gen.trie_layout)
    except IndexFormatError as e:
        if inp.gen.ascii_fatal:
            # kmod >= 34: index__checkstring makes any byte >= 0x80 fatal (v30's signed
            # check never fires on x86); report it the same way (the first culprit, in
            # entry order). The encoder refuses such entries too, so it is looked for only
            # once the encoder has refused something.
            for key, value, _prio in entries:
                for s in (key, value):
                    if not s.isascii():
                        bad = next(c for c in s if c >= 0x80)
                        raise ModdepError(
                            f"Module index: bad character '{chr(bad)}'=0x{bad:x} - only 7-bit "
                            f"ASCII is supported:\n{fs(s)}") from None
        raise IndexFormatError(f"could not encode {name}: {e.message}") from None


def _warn_duplicates(inp: Inputs, entries: list[tuple[bytes, bytes, int]], what: str) -> None:
    if not inp.warn_dups:
        return
    seen: set[tuple[bytes, bytes]] = set()
    for key, value, _prio in entries:
        if (key, value) in seen:
            inp.log.warning(f"duplicate module {what}:\n{fs(key)} {fs(value)}")
        seen.add((key, value))


def modules_dep_bin(inp: Inputs) -> bytes:
    files = inp.files
    entries = [(f.name, line, i) for i, (f, line) in enumerate(zip(files, dep_lines(_model(inp))))]
    _warn_duplicates(inp, entries, "deps")
    return _encode(inp, "modules.dep.bin", entries)


def _holding(blob: bytes, char: bytes) -> set[int]:
    """Numbers of the NUL-separated strings of ``blob`` holding ``char``."""
    found = set()
    number = start = 0
    at = blob.find(char)
    while at >= 0:
        number += blob.count(b"\0", start, at)
        found.add(number)
        start = at
        at = blob.find(char, at + 1)
    return found


def alias_entries(inp: Inputs) -> list[tuple[bytes, bytes, int]]:
    """(normalised alias, module name, module index) of every alias, in module order."""
    values: list[bytes] = []
    names: list[bytes] = []
    where: list[int] = []
    for i, (f, d) in enumerate(zip(inp.files, inp.data)):
        got = d.aliases
        if got:
            values += got
            names += [f.name] * len(got)
            where += [i] * len(got)
    # alias_normalize on all at once: values never hold a NUL, so joined by NULs one
    # replace does the usual case (no brackets); bracketed values take the full rule
    blob = b"\0".join(values)
    keys: list[Optional[bytes]] = list(blob.replace(b"-", b"_").split(b"\0")) if values else []
    unmatched = False
    if b"[" in blob or b"]" in blob:
        for j in sorted(_holding(blob, b"[") | _holding(blob, b"]")):
            keys[j] = alias_normalize(values[j])
            if keys[j] is None:
                inp.log.warning(f"Unmatched bracket in {fs(values[j])}")
                unmatched = True
    entries = zip(keys, names, where)
    if unmatched:
        return list(compress(entries, [k is not None for k in keys]))  # type: ignore[arg-type]
    return list(entries)  # type: ignore[arg-type]


def modules_alias_bin(inp: Inputs) -> bytes:
    entries = alias_entries(inp)
    _warn_duplicates(inp, entries, "alias")
    return _encode(inp, "modules.alias.bin", entries)


def modules_symbols_bin(inp: Inputs) -> bytes:
    files = inp.files
    entries = [(b"symbol:" + sym, files[owner].name, owner) for sym, owner in _model(inp).symbols]
    _warn_duplicates(inp, entries, "syms")
    return _encode(inp, "modules.symbols.bin", entries)


def builtin_entries(content: bytes, log: Log) -> list[tuple[bytes, bytes, int]]:
    """modules.builtin lines -> (name, "", 0); a line not starting with a letter is refused.

    The key is path_to_modname of the raw line: normalisation stops at the first ``.``, so a
    line without one keeps its newline in the key (kmod does the same).
    """
    entries = []
    for line in content.splitlines(keepends=True):
        if not line[:1].isalpha():
            log.error(f"Invalid modules.builtin line: {fs(line)}")
            continue
        entries.append((path_to_modname(line), b"", 0))
    return entries


def modules_builtin_bin(inp: Inputs) -> bytes:
    if inp.builtin is None:
        return b""
    return _encode(inp, "modules.builtin.bin", builtin_entries(inp.builtin, inp.log))


def builtin_alias_entries(content: bytes, log: Log) -> list[tuple[bytes, bytes, int]]:
    """Records ``modname.alias=value`` of modules.builtin.modinfo, read as kmod's stream parser.

    kmod reads up to ``.`` (a NUL first means "skip this record"), then up to ``=`` (a key
    other than ``alias`` skips to the next NUL — and when the key itself ended at a NUL that
    skips the *following* record too, a quirk kept here), then the value up to NUL.
    """
    entries = []
    n = len(content)
    pos = 0

    def read_to(end: int) -> tuple[bytes, bool]:
        nonlocal pos
        start = pos
        while pos < n:
            c = content[pos]
            pos += 1
            if c == end:
                return content[start:pos - 1], True
            if c == 0:
                return content[start:pos - 1], False
        return content[start:pos], False

    while pos < n:
        modname, ok = read_to(0x2E)  # '.'
        if not ok or not modname:
            continue
        key, ok = read_to(0x3D)  # '='
        if not ok or key != b"alias":
            while pos < n:  # flush_stream(in, '\0')
                pos += 1
                if content[pos - 1] == 0:
                    break
            continue
        value, _ok = read_to(0)
        if not value:
            continue
        alias = alias_normalize(value)
        if alias is None:
            log.warning(f"Unmatched bracket in {fs(value)}")
            continue
        entries.append((alias, modname, 0))
    return entries


def modules_builtin_alias_bin(inp: Inputs) -> bytes:
    if inp.builtin_modinfo is None:
        return b""
    entries = builtin_alias_entries(inp.builtin_modinfo, inp.log)
    return _encode(inp, "modules.builtin.alias.bin", entries)


class Output(NamedTuple):
    """One index file: its name, its generator and the kmod versions writing it."""

    name: str
    generate: Callable[[Inputs], bytes]
    binary: bool
    since: int  # first kmod version writing it
    resolved: bool  # needs symbol resolution (the DepModel); the others only the modules


# kmod's write order (tools/depmod.c depmod_output); modules.weakdep since kmod 33 (05828b4)
OUTPUTS: tuple[Output, ...] = (
    Output("modules.dep", modules_dep, False, 30, True),
    Output("modules.dep.bin", modules_dep_bin, True, 30, True),
    Output("modules.alias", modules_alias, False, 30, False),
    Output("modules.alias.bin", modules_alias_bin, True, 30, False),
    Output("modules.softdep", modules_softdep, False, 30, False),
    Output("modules.weakdep", modules_weakdep, False, 33, False),
    Output("modules.symbols", modules_symbols, False, 30, True),
    Output("modules.symbols.bin", modules_symbols_bin, True, 30, True),
    Output("modules.builtin.bin", modules_builtin_bin, True, 30, False),
    Output("modules.builtin.alias.bin", modules_builtin_alias_bin, True, 30, False),
    Output("modules.devname", modules_devname, False, 30, False),
)


def wanted(gen: KmodGeneration, text_only: bool) -> list[Output]:
    """The outputs of this kmod generation (text only with -n), in write order."""
    return [o for o in OUTPUTS if o.since <= gen.version and not (text_only and o.binary)]


def generate(inp: Inputs, outputs: Sequence[Output]) -> list[tuple[str, bytes, list[Message]]]:
    """(name, content, messages) of each output; every generator logs into its own list, so
    callers can run groups of outputs in different processes and merge in write order."""
    done = []
    for o in outputs:
        log = Log()
        done.append((o.name, o.generate(inp._replace(log=log)), log.messages))
    return done
