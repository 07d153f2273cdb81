"""Module options and blacklists on the kernel command line (KMOD_NOTES §12.2).

libkmod reads ``/proc/cmdline`` (at most 4095 bytes) after all configuration files and scans
it with a small state machine (kmod >= 29, quote aware):

* a word ``MOD.PARAM[=VALUE]`` becomes ``options MOD PARAM[=VALUE]`` (MOD through underscores();
  a bad MOD is reported and skipped);
* ``modprobe.blacklist=A,B,...`` adds each comma-separated name to the blacklist as written;
* words without a ``.`` before ``=``, with a second ``.`` in the parameter name, with a quote
  anywhere but at the start of the word or inside the value, or with a blank inside quotes
  outside the value are ignored;
* a word that starts with a quote (as GRUB writes ``"mod.param=a b"``) is re-quoted as
  ``mod.param="a b"``, so the value keeps its quotes for the kernel's parameter parser.
"""

from __future__ import annotations

from typing import Optional

from moddep.diag import Log, fs
from moddep.modinfo import underscores

#: libkmod's buffer for /proc/cmdline (KCMD_LINE_SIZE), including the terminating NUL.
CMDLINE_SIZE = 4096

_IGNORE, _MODNAME, _PARAM, _VALUE, _COMPLETE = range(5)
_WHITE = frozenset(b" \n\t\v\f\r")
_QUOTE, _DOT, _EQUALS = 0x22, 0x2E, 0x3D


def _cstr(buf: bytearray, start: int) -> bytes:
    end = buf.find(b"\0", start)
    return bytes(buf[start:end if end >= 0 else len(buf)])


def parse_cmdline(text: bytes, log: Log) -> list[tuple[str, bytes, bytes]]:
    """``("options", module, param)`` and ``("blacklist", module, b"")`` entries, in order."""
    buf = bytearray(text[:CMDLINE_SIZE - 1].split(b"\0", 1)[0])
    buf.append(0)
    out: list[tuple[str, bytes, bytes]] = []
    state = _MODNAME
    quoted = False
    quote_start: Optional[int] = None
    modname = 0
    param: Optional[int] = None
    value: Optional[int] = None
    p = 0
    more = True
    while more:
        ch = buf[p]
        if ch == _QUOTE:
            quoted = not quoted
            # a quote may only open a word (before the module name); anywhere else but the
            # value it makes the word ill-formed
            if quoted and state == _MODNAME and p == modname:
                quote_start = p
                modname = p + 1
            elif state != _VALUE:
                state = _IGNORE
        elif ch == 0 or ch in _WHITE:
            if ch == 0:
                more = False
            if quoted and state == _VALUE:
                pass  # a blank inside a quoted value
            elif quoted:
                state = _IGNORE
            elif state in (_VALUE, _PARAM):
                buf[p] = 0
                state = _COMPLETE
            else:
                modname = p + 1
                state = _MODNAME
                quote_start = None
        elif ch == _DOT:
            if state == _MODNAME:
                buf[p] = 0
                param = p + 1
                state = _PARAM
            elif state == _PARAM:
                state = _IGNORE
        elif ch == _EQUALS:
            if state == _PARAM:
                value = p + 1
                state = _VALUE
            elif state == _MODNAME:
                state = _IGNORE
        if state == _COMPLETE:
            assert param is not None
            if quote_start is not None and quote_start < modname and value is not None:
                # "mod.param=a b" -> mod.param="a b": shift "mod\0param=" left over the
                # opening quote and put the quote after the '='
                length = value - modname
                buf[quote_start:quote_start + length] = buf[modname:modname + length]
                value -= 1
                modname -= 1
                param -= 1
                buf[value] = _QUOTE
            _result(_cstr(buf, modname), _cstr(buf, param),
                    _cstr(buf, value) if value is not None else None, out, log)
            modname = p + 1
            state = _MODNAME
            quote_start = None
        p += 1
    return out


def _result(modname: bytes, param: bytes, value: Optional[bytes],
            out: list[tuple[str, bytes, bytes]], log: Log) -> None:
    if modname == b"modprobe" and param.startswith(b"blacklist="):
        for name in (value or b"").split(b","):
            out.append(("blacklist", name, b""))
        return
    normalized = underscores(modname)
    if normalized is None:
        log.error("kcmdline_parse_result: Ignoring bad option on kernel command line while "
                  f"parsing module name: '{fs(modname)}'")
        return
    out.append(("options", normalized, param))
