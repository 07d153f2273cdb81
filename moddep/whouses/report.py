"""Render the who-uses answer: text for people, JSON for tools, a short answer for rmmod.

JSON (``--format json``): one object, keys always present (``null`` or ``[]`` when empty),
lists in the order found. Version 1::

    {
      "version": 1,
      "module": "vkms" | null,                 # the MODULE argument, normalised
      "evidence": null | {                     # live sysfs/procfs (absent for --from-trace)
        "module": str, "state": "live"|"coming"|"going"|"builtin"|"not loaded"|"unknown",
        "refcnt": int|null,                    # /sys/module/M/refcnt (what lsmod shows)
        "unexplained_refs": int|null,          # refcnt minus one per holder module
        "holders":       [{"module", "evidence"}],
        "processes":     [{"pid", "comm", "handle", "file",
                           "device": {"type": "c"|"b", "major", "minor"}, "via", "evidence"}],
        "mounts":        [{"fstype", "source", "mountpoint", "pid", "via", "evidence"}],
        "block_devices": [{"device", "use", "evidence"}],
        "sockets":       [{"protocol", "sockets", "evidence"}],
        "interfaces":    [{"name", "via", "evidence"}],
        "notes":         [str]
      },
      "trace": null | {
        "source": str, "format": "trace-cmd report"|"ftrace text",
        "module_filter": str|null, "events": int, "skipped_lines": int, "lost": [str],
        "held": [{"module", "count", "pid", "comm", "by_module": str|null,
                  "call_sites": [{"site", "count"}], "first_timestamp"}],
        "tasks": [{"pid", "comm", "module", "loads", "gets", "puts", "net", "frees",
                   "requests", "released_unknown", "get_sites": [{"site", "count"}],
                   "put_sites": [...], "request_sites": [...]}],
        "modules": [{"module", "loads", "frees", "net", "last_refcnt",
                     "present_at_end": bool|null, "dropped_at_free",
                     "loaded_by": [{"comm", "pid"}], "freed_by": [{"comm", "pid"}]}],
        "unknown_comm_pids": [int],
        "notes": [str]                          # live tracing: what was done to tracefs
      }
    }

``net`` is ``loads + gets - puts`` (a load carries the module's initial reference); ``held``
lists references outstanding at the end (see :mod:`moddep.whouses.trace`).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

from moddep.whouses.model import Evidence, module_name
from moddep.whouses.trace import CALL_SITE_HINTS, UNKNOWN_COMM, TraceAnalysis

JSON_VERSION = 1
WIDTH = 100  # text lines are wrapped here, except table rows


# -- JSON ---------------------------------------------------------------------------------
def _sites(pairs: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"site": s, "count": n} for s, n in pairs]


def evidence_json(ev: Evidence) -> dict[str, Any]:
    """The ``evidence`` object of the JSON output."""
    return {
        "module": ev.module, "state": ev.state, "refcnt": ev.refcnt,
        "unexplained_refs": ev.unexplained,
        "holders": [{"module": h.module, "evidence": h.evidence} for h in ev.holders],
        "processes": [{"pid": p.pid, "comm": p.comm, "handle": p.handle, "file": p.file,
                       "device": {"type": p.device.kind, "major": p.device.major,
                                  "minor": p.device.minor},
                       "via": p.via, "evidence": p.evidence} for p in ev.processes],
        "mounts": [{"fstype": m.fstype, "source": m.source, "mountpoint": m.mountpoint,
                    "pid": m.pid, "via": m.via, "evidence": m.evidence} for m in ev.mounts],
        "block_devices": [{"device": b.device, "use": b.use, "evidence": b.evidence}
                          for b in ev.block_devices],
        "sockets": [{"protocol": s.protocol, "sockets": s.sockets, "evidence": s.evidence}
                    for s in ev.sockets],
        "interfaces": [{"name": n.name, "via": n.via, "evidence": n.evidence}
                       for n in ev.interfaces],
        "notes": list(ev.notes),
    }


def trace_json(an: TraceAnalysis, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The ``trace`` object of the JSON output."""
    return {
        "source": an.source, "format": an.format, "module_filter": an.module_filter,
        "events": an.events, "skipped_lines": an.skipped, "lost": list(an.lost),
        "held": [{"module": h.module, "count": h.count, "pid": h.pid, "comm": h.comm,
                  "by_module": h.by_module, "call_sites": _sites(h.call_sites),
                  "first_timestamp": h.first_timestamp} for h in an.held],
        "tasks": [{"pid": t.pid, "comm": t.comm, "module": t.module, "loads": t.loads,
                   "gets": t.gets, "puts": t.puts, "net": t.net, "frees": t.frees,
                   "requests": t.requests, "released_unknown": t.released_unknown,
                   "get_sites": _sites(t.get_sites), "put_sites": _sites(t.put_sites),
                   "request_sites": _sites(t.request_sites)} for t in an.tasks],
        "modules": [{"module": m.module, "loads": m.loads, "frees": m.frees, "net": m.net,
                     "last_refcnt": m.last_refcnt, "present_at_end": m.present_at_end,
                     "dropped_at_free": m.dropped_at_free,
                     "loaded_by": [{"comm": c, "pid": p} for c, p in m.loaded_by],
                     "freed_by": [{"comm": c, "pid": p} for c, p in m.freed_by]}
                    for m in an.modules],
        "unknown_comm_pids": list(an.unknown_comms),
        "notes": list(notes),
    }


def render_json(module: Optional[str], evidence: Optional[Evidence] = None,
                trace: Optional[TraceAnalysis] = None, trace_notes: Sequence[str] = ()) -> str:
    """The whole JSON document (see the module docstring), with a final newline."""
    doc = {
        "version": JSON_VERSION,
        "module": module_name(module) if module else None,
        "evidence": evidence_json(evidence) if evidence is not None else None,
        "trace": trace_json(trace, trace_notes) if trace is not None else None,
    }
    return json.dumps(doc, indent=2) + "\n"


# -- text ---------------------------------------------------------------------------------
def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _task(comm: str, pid: int) -> str:
    return f"{comm} (pid {pid})"


def _table(rows: list[list[str]], right: Sequence[int] = ()) -> list[str]:
    """Rows padded into columns (two spaces apart); ``right`` columns are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def _site_list(pairs: Sequence[tuple[str, int]]) -> str:
    return ", ".join(s if n == 1 else f"{s} x{n}" for s, n in pairs)


def render_evidence_text(ev: Evidence) -> list[str]:
    """Lines telling what sysfs and procfs show about ``ev.module``."""
    m = ev.module
    lines: list[str] = []
    if ev.state == "not loaded":
        lines.append(f"{m}: not loaded (no /sys/module/{m})")
    else:
        head = f"{m}: {ev.state}"
        if ev.refcnt is not None:
            head += (f", refcnt {ev.refcnt} (/sys/module/{m}/refcnt): {len(ev.holders)} from"
                     f" holder modules, {ev.unexplained} other")
        lines.append(head)
    if ev.holders:
        lines += ["", f"Modules using {m} (/sys/module/{m}/holders):"]
        lines += [f"  {h.module}" for h in ev.holders]
    if ev.processes:
        lines += ["", f"Processes with a device of {m} open:"]
        for p in ev.processes:
            lines.append(f"  {_task(p.comm, p.pid)}: {p.handle} -> {p.file} ({p.device})")
            lines.append(f"    {p.evidence}; {p.via}")
    if ev.mounts:
        lines += ["", f"Mounts that need {m}:"]
        for mt in ev.mounts:
            where = f", namespace of pid {mt.pid}" if mt.pid else ""
            lines.append(f"  {mt.mountpoint} ({mt.fstype}, {mt.source}{where})")
            lines.append(f"    {mt.evidence}; {mt.via}")
    if ev.block_devices:
        lines += ["", f"Block devices of {m} in use:"]
        for b in ev.block_devices:
            lines.append(f"  {b.device}: {b.use}")
            lines.append(f"    {b.evidence}")
    if ev.sockets:
        lines += ["", f"Open sockets of protocols {m} provides:"]
        for s in ev.sockets:
            lines.append(f"  {s.protocol}: {s.sockets} sockets ({s.evidence})")
    if ev.interfaces:
        lines += ["", f"Network interfaces {m} drives (removed with it; they hold no"
                      " reference):"]
        for n in ev.interfaces:
            lines.append(f"  {n.name}: {n.via} ({n.evidence})")
    found = ev.holders or ev.processes or ev.mounts or ev.block_devices or ev.sockets
    if not found and ev.state != "not loaded":
        lines += ["", "No holder module, process, mount, block device or socket found."]
    if ev.notes:
        lines += ["", "Notes:"] + _wrapped(ev.notes)
    return lines


def render_trace_text(an: TraceAnalysis, notes: Sequence[str] = ()) -> list[str]:
    """Lines of the trace analysis: what is held at the end, per-task tallies, modules."""
    mods = {t.module for t in an.tasks}
    pids = {t.pid for t in an.tasks}
    what = f"showing {an.module_filter}" if an.module_filter else (
        f"{_count(len(mods), 'module')}, {_count(len(pids), 'task')}")
    lines = [f"Trace {an.source} ({an.format}): {_count(an.events, 'module event')};"
             f" {what}."]
    lines += [f"  {n}" for n in notes]
    if an.module_filter and not an.tasks:
        lines.append(f"  No event of {an.module_filter} in the trace.")
        return lines

    by_tasks = [h for h in an.held if h.by_module is None]
    by_modules = [h for h in an.held if h.by_module is not None]
    lines += ["", "Held at the end of the trace:"]
    if not an.held:
        lines.append("  nothing: every reference taken in the trace was given back")
    if by_tasks:
        rows = [["module", "refs", "held by", "taken at"]]
        rows += [[h.module, str(h.count), _task(h.comm, h.pid), _site_list(h.call_sites)]
                 for h in by_tasks]
        lines += _table(rows, right=(1,))
    if by_modules:
        if by_tasks:
            lines.append("")
        rows = [["module", "refs", "held by module", "taken at", "by"]]
        rows += [[h.module, str(h.count), str(h.by_module), _site_list(h.call_sites),
                  _task(h.comm, h.pid)] for h in by_modules]
        lines += _table(rows, right=(1,))

    lines += ["", "Per task (net = loads + gets - puts):"]
    rows = [["task", "module", "load", "get", "put", "net", "call sites"]]
    for t in an.tasks:
        sites = []
        if t.get_sites:
            sites.append("get: " + _site_list(t.get_sites))
        if t.put_sites:
            sites.append("put: " + _site_list(t.put_sites))
        if t.frees:
            sites.append("freed it" if t.frees == 1 else f"freed it x{t.frees}")
        if t.request_sites:
            sites.append("requested at " + _site_list(t.request_sites))
        rows.append([_task(t.comm, t.pid), t.module, str(t.loads), str(t.gets), str(t.puts),
                     f"{t.net:+d}" if t.net else "0", "; ".join(sites)])
    lines += _table(rows, right=(2, 3, 4, 5))

    if an.modules:
        lines += ["", "Per module:"]
        rows = [["module", "loaded by", "freed by", "net", "last refcnt", "at the end"]]
        for m in an.modules:
            state = {True: "loaded", False: "freed", None: "?"}[m.present_at_end]
            rows.append([m.module, ", ".join(_task(c, p) for c, p in m.loaded_by) or "-",
                         ", ".join(_task(c, p) for c, p in m.freed_by) or "-",
                         f"{m.net:+d}" if m.net else "0",
                         "-" if m.last_refcnt is None else str(m.last_refcnt), state])
        lines += _table(rows, right=(3, 4))

    hints = _site_hints(an)
    if hints:
        lines += ["", "Call sites:"] + _wrapped(hints)
    remarks = _trace_remarks(an)
    if remarks:
        lines += ["", "Notes:"] + _wrapped(remarks)
    return lines


def _trace_remarks(an: TraceAnalysis) -> list[str]:
    remarks: list[str] = []
    for pid in an.unknown_comms:
        remarks.append(f"{UNKNOWN_COMM} (pid {pid}): the kernel no longer had the task's name"
                       " cached when the text was made (typically the task had exited)")
    unknown = sum(t.released_unknown for t in an.tasks)
    if unknown:
        remarks.append(f"{unknown} puts gave back references taken before the trace began"
                       " or by another task")
    for m in an.modules:
        if m.dropped_at_free:
            remarks.append(f"{m.module}: freed with {m.dropped_at_free} references not seen"
                           " given back (taken before the trace, or forced removal)")
    loaded = [m for m in an.modules if m.loads and m.last_refcnt is not None]
    if loaded and all(m.last_refcnt == m.net + 1 for m in loaded):
        remarks.append("refcnt= is the kernel's raw counter, one above the use count lsmod"
                       " shows (it includes the module's base reference): net is the use"
                       " count for modules loaded during the trace")
    if an.lost:
        remarks.append(f"the kernel lost events ({'; '.join(an.lost)}): counts may be"
                       " incomplete")
    return remarks


def _site_hints(an: TraceAnalysis) -> list[str]:
    used = {s for h in an.held for s, _ in h.call_sites}
    used |= {s for t in an.tasks for s, _ in t.get_sites + t.put_sites}
    return [f"{site}: {hint}" for site, hint in CALL_SITE_HINTS.items() if site in used]


def _wrapped(items: Sequence[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        out += textwrap.wrap(item, WIDTH, initial_indent="  ", subsequent_indent="    ",
                             break_on_hyphens=False, break_long_words=False)
    return out


def render_text(module: Optional[str], evidence: Optional[Evidence] = None,
                trace: Optional[TraceAnalysis] = None, trace_notes: Sequence[str] = ()) -> str:
    """The whole text report, with a final newline."""
    lines: list[str] = []
    if evidence is not None:
        lines += render_evidence_text(evidence)
    if trace is not None:
        if lines:
            lines.append("")
        lines += render_trace_text(trace, trace_notes)
    elif evidence is not None and evidence.state not in ("not loaded", "builtin"):
        lines += ["", f"To see who takes references as it happens: "
                      f"moddep who-uses --trace {evidence.module}"]
    return "\n".join(lines) + "\n"


# -- short answer -------------------------------------------------------------------------
def short_summary(ev: Evidence, limit: int = 4) -> str:
    """One or two lines on ``ev`` for an "in use" error message."""
    parts: list[str] = []
    if ev.refcnt is not None:
        parts.append(f"refcnt {ev.refcnt}")
    if ev.holders:
        parts.append("used by modules " + ", ".join(h.module for h in ev.holders))
    procs: dict[int, str] = {}
    for p in ev.processes:
        procs.setdefault(p.pid, f"{p.comm} (pid {p.pid}, {p.file})")
    if procs:
        shown = list(procs.values())
        more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
        parts.append("open by " + ", ".join(shown[:limit]) + more)
    if ev.mounts:
        mps = sorted({m.mountpoint for m in ev.mounts})
        more = f" and {len(mps) - limit} more" if len(mps) > limit else ""
        parts.append("mounted on " + ", ".join(mps[:limit]) + more)
    if ev.block_devices:
        parts.append("block devices busy: " + ", ".join(
            sorted({f"{b.device} ({b.use})" for b in ev.block_devices})[:limit]))
    if ev.sockets:
        parts.append("open sockets: " + ", ".join(f"{s.protocol} x{s.sockets}"
                                                  for s in ev.sockets))
    if not (ev.holders or procs or ev.mounts or ev.block_devices or ev.sockets):
        parts.append("no holder module, process or mount found")
    return (f"{ev.module}: " + "; ".join(parts) + ".\n"
            f"To see who takes its references: moddep who-uses --trace {ev.module}")


def short_answer(module: str, root: Path = Path("/")) -> str:
    """Who holds ``module``, in one or two lines, for modprobe -r/rmmod "in use" errors.

    Never raises: it runs in an error path. If looking fails, it still points to the tool.
    """
    from moddep.whouses.evidence import gather

    name = module_name(module)
    try:
        return short_summary(gather(name, root))
    except Exception:  # noqa: BLE001 - an error message must not fail in turn
        return f"To see who holds {name}: moddep who-uses {name} (or --trace {name})"
