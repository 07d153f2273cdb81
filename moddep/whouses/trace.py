"""Parse module trace events and attribute every reference to a task and a call site.

Input is the text of ``trace-cmd report``, of tracefs ``trace`` or of ``trace_pipe``; both
appear in the seeds. One event per line::

    <task>-<pid> [(<tgid>)] [<cpu>] [<flags>] <seconds>.<micro>: <event>: <fields>

          insmod-21137 [001] 28038.103904: module_put: testmod call_site=sys_init_module refcnt=2
      systemd-logind-545   [000]   102.168297: module_get:  vkms call_site=drm_stub_open refcnt=2
             cat-7956    [000] .....   261.965589: sched_process_exec: ...   (other events: skipped)
           <...>-21137 [001] 28038.101509: module_load: testmod

``<task>`` may contain ``-`` and spaces; ``<...>`` means the task had exited and its name was
no longer cached when the text was made: the name is then taken from another line with the
same pid, if there is one. The module events (include/trace/events/module.h) print::

    module_load     "%s %s"                     name, taint flags like "(OE)" (may be empty)
    module_free     "%s"                        name
    module_get/put  "%s call_site=%ps refcnt=%d" name, caller, the raw refcount
    module_request  "%s wait=%d call_site=%ps"  requested name (often an alias)

``call_site`` may carry an offset (``drm_stub_open+0x5c/0x1a0``) or a module (``[drm]``); the
symbol without them is used for grouping and the raw text kept. ``refcnt`` is the raw
counter: since the module reference rework (``MODULE_REF_BASE``) it is one above the use
count lsmod shows, as in the vkms seed (``vkms refcnt=2`` while lsmod shows 1).

Attribution (:func:`analyze`) replays the events in order and keeps, per module, the list of
references outstanding with who took them:

* ``module_load`` carries the module's initial reference (load_module sets it before the
  event; ``do_init_module``/``sys_init_module`` drops it when init is done): it counts as a
  get by the loading task, call site ``(load)``.
* A get at ``ref_module`` (``use_module`` before Linux 2.6.35 / 3.x) links a module being
  loaded to a dependency: the reference belongs to the module the same task loads next, and
  shows in ``/sys/module/M/holders``. A put at ``module_unload_free`` gives such a reference
  back when that module is freed.
* Any other put releases the most recent reference the same task still holds on the
  module (nested acquire/release, as ``chrdev_open`` then ``replace_fops`` do). A put with
  no such reference released one taken before the trace began, or by another task (a file
  opened before ``fork``); it is counted, never matched to someone else's get.
* ``module_free`` ends the module: whatever is still outstanding on it is dropped.

What remains outstanding at the end is reported as held. The call-site names are kernel
function names; :data:`CALL_SITE_HINTS` explains the common ones.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Mapping, Optional

from moddep.whouses.model import module_name

MODULE_EVENTS = ("module_load", "module_free", "module_get", "module_put", "module_request")
UNKNOWN_COMM = "<...>"
LOAD_SITE = "(load)"

# Where the kernel links a new module to the modules it uses (kernel/module/main.c).
DEPENDENCY_SITES = frozenset({"ref_module", "use_module", "strong_try_module_get"})
# Where a freed module gives those references back.
UNLOAD_SITES = frozenset({"module_unload_free"})

#: What a call site means, for people reading the report.
CALL_SITE_HINTS: dict[str, str] = {
    LOAD_SITE: "initial reference while the module initialises",
    "do_init_module": "initialisation done, load reference dropped",
    "sys_init_module": "initialisation done, load reference dropped",
    "ref_module": "another module links against it (see holders)",
    "use_module": "another module links against it (see holders)",
    "module_unload_free": "a module that used it was freed",
    "get_filesystem": "a superblock of its filesystem type (a mount, maybe kernel-internal)",
    "put_filesystem": "a superblock of its filesystem type went away",
    "cdev_get": "an open character device (held while the file is open)",
    "cdev_put": "a character device file was closed",
    "chrdev_open": "opening a character device: the driver's file operations",
    "misc_open": "opening a misc device: the driver's file operations",
    "drm_stub_open": "opening a DRM device: the DRM driver's file operations",
    "__fput": "a file was closed",
    "fput": "a file was closed",
    "blkdev_get": "an open block device",
    "blkdev_put": "a block device was closed",
    "search_binary_handler": "an exec through a binary format handler",
}

_LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<pid>\d+)\s+"
    r"(?:\(\s*[\d-]+\)\s+)?"  # tgid, with the record-tgid option
    r"\[(?P<cpu>\d+)\]\s+"
    r"(?:[^\s:]{3,6}\s+)?"  # irq/preempt flags (".....", "d..2.") of newer kernels
    r"(?P<ts>\d+\.\d+):\s+"
    r"(?P<event>[\w:]+):\s?(?P<rest>.*)$"
)
_CALL_SITE = re.compile(r"\bcall_site=(?P<site>\S+)(?:\s+\[(?P<mod>[^\]\s]+)\])?")
_REFCNT = re.compile(r"\brefcnt=(?P<n>-?\d+)")
_WAIT = re.compile(r"\bwait=(?P<n>\d+)")
_TAINTS = re.compile(r"^\((?P<t>[A-Z]+)\)$")
_OFFSET = re.compile(r"\+0x[0-9a-fA-F]+(?:/0x[0-9a-fA-F]+)?$")
_LOST = re.compile(r"LOST (?P<n>\d+) EVENTS|\[(?P<m>\d+)? ?EVENTS DROPPED\]")
_HEADER = re.compile(r"^(cpus=\d+|version = \S+|CPU \d+ is empty|CPU\d+ data recorded at)")


@dataclass(frozen=True)
class TraceEvent:
    """One module event line."""

    lineno: int
    comm: str
    pid: int
    cpu: int
    timestamp: str
    event: str
    name: str  # module name (for module_request: the name requested, often an alias)
    call_site: Optional[str] = None  # symbol, without +offset/size
    raw_call_site: Optional[str] = None
    refcnt: Optional[int] = None
    taints: str = ""
    wait: Optional[int] = None


@dataclass(frozen=True)
class ParsedTrace:
    """The module events of a trace text and what else it held."""

    events: tuple[TraceEvent, ...]
    format: str  # "trace-cmd report" or "ftrace text"
    skipped: int  # non-comment lines that are not module events
    lost: tuple[str, ...] = ()  # the kernel's "events lost" lines


def parse_call_site(text: str) -> tuple[str, str]:
    """``drm_stub_open+0x5c/0x1a0 [drm]`` -> (``drm_stub_open``, raw text)."""
    return _OFFSET.sub("", text), text


def parse_line(line: str, lineno: int = 0) -> Optional[TraceEvent]:
    """The module event on ``line``, or ``None`` if it holds none."""
    m = _LINE.match(line)
    if not m:
        return None
    event = m["event"].rsplit(":", 1)[-1]  # perf-style "module:module_get"
    if event not in MODULE_EVENTS:
        return None
    rest = m["rest"].strip()
    words = rest.split()
    if not words:
        return None
    name = words[0]
    site: Optional[str] = None
    raw_site: Optional[str] = None
    cs = _CALL_SITE.search(rest)
    if cs:
        site, raw_site = parse_call_site(cs["site"])
        if cs["mod"]:
            raw_site += f" [{cs['mod']}]"
    rc = _REFCNT.search(rest)
    wt = _WAIT.search(rest)
    taints = ""
    if event == "module_load" and len(words) > 1:
        tm = _TAINTS.match(words[1])
        taints = tm["t"] if tm else ""
    return TraceEvent(
        lineno=lineno, comm=m["comm"], pid=int(m["pid"]), cpu=int(m["cpu"]),
        timestamp=m["ts"], event=event,
        name=module_name(name) if event != "module_request" else name,
        call_site=site, raw_call_site=raw_site,
        refcnt=int(rc["n"]) if rc else None, taints=taints,
        wait=int(wt["n"]) if wt else None)


def parse_trace(text: str) -> ParsedTrace:
    """All module events in a ``trace-cmd report``, ``trace`` or ``trace_pipe`` text."""
    events: list[TraceEvent] = []
    skipped = 0
    lost: list[str] = []
    fmt = "ftrace text"
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or not stripped.strip("."):
            continue
        if _HEADER.match(stripped):
            fmt = "trace-cmd report"
            continue
        if _LOST.search(stripped):
            lost.append(stripped)
            continue
        ev = parse_line(line, lineno)
        if ev is None:
            skipped += 1
        else:
            events.append(ev)
    return ParsedTrace(tuple(events), fmt, skipped, tuple(lost))


# -- attribution --------------------------------------------------------------------------
@dataclass
class _Ref:
    """A module reference seen in the trace, and who took it."""

    holder_pid: int
    site: str
    timestamp: str
    by_module: Optional[str] = None  # set when the reference belongs to a module (ref_module)
    pending: bool = False  # a ref_module reference waiting for its module's load event


@dataclass(frozen=True)
class TaskTally:
    """What one task did to one module during the trace.

    ``net`` is ``loads + gets - puts``: ``loads`` are initial references (see the module
    docstring). ``get_sites``/``put_sites`` are ``(call site, count)`` in first-seen order.
    ``released_unknown`` counts puts of references this task was not seen taking.
    ``requests`` are ``module_request`` events: the kernel asking modprobe for ``module``
    (then usually an alias such as ``fs-nfs4``), at ``request_sites``.
    """

    pid: int
    comm: str
    module: str
    loads: int
    gets: int
    puts: int
    frees: int
    requests: int
    get_sites: tuple[tuple[str, int], ...]
    put_sites: tuple[tuple[str, int], ...]
    request_sites: tuple[tuple[str, int], ...]
    released_unknown: int

    @property
    def net(self) -> int:
        return self.loads + self.gets - self.puts


@dataclass(frozen=True)
class HeldRef:
    """References on ``module`` still outstanding at the end of the trace.

    Taken by task ``comm``/``pid``; when ``by_module`` is set they belong to that module
    (it links against ``module``), which that task was loading.
    """

    module: str
    pid: int
    comm: str
    by_module: Optional[str]
    count: int
    call_sites: tuple[tuple[str, int], ...]
    first_timestamp: str


@dataclass(frozen=True)
class ModuleSummary:
    """One module across the trace: loads, frees, the net count and the last raw refcnt."""

    module: str
    loads: int
    frees: int
    net: int
    last_refcnt: Optional[int]
    loaded_by: tuple[tuple[str, int], ...]  # (comm, pid)
    freed_by: tuple[tuple[str, int], ...]
    dropped_at_free: int  # references still outstanding when it was freed
    present_at_end: Optional[bool]  # after its last load/free event; None: neither seen


@dataclass(frozen=True)
class TraceAnalysis:
    """The answer for a trace: per-task tallies, references held at the end, per module."""

    source: str
    format: str
    events: int
    skipped: int
    lost: tuple[str, ...]
    tasks: tuple[TaskTally, ...]
    held: tuple[HeldRef, ...]
    modules: tuple[ModuleSummary, ...]
    module_filter: Optional[str] = None
    unknown_comms: tuple[int, ...] = field(default=())  # pids seen only as <...>

    def only(self, module: Optional[str]) -> TraceAnalysis:
        """The same analysis restricted to ``module`` (events of others still drove it)."""
        if module is None:
            return self
        name = module_name(module)
        tasks = tuple(t for t in self.tasks if t.module == name)
        return TraceAnalysis(
            self.source, self.format, self.events, self.skipped, self.lost, tasks,
            tuple(h for h in self.held if h.module == name),
            tuple(m for m in self.modules if m.module == name), name,
            tuple(p for p in self.unknown_comms if any(t.pid == p for t in tasks)))


class _TallyBuilder:
    def __init__(self) -> None:
        self.loads = self.gets = self.puts = self.frees = self.requests = 0
        self.released_unknown = 0
        self.get_sites: Counter[str] = Counter()
        self.put_sites: Counter[str] = Counter()
        self.request_sites: Counter[str] = Counter()


def _comm_names(events: tuple[TraceEvent, ...]) -> dict[int, str]:
    names: dict[int, str] = {}
    for ev in events:
        if ev.comm != UNKNOWN_COMM:
            names[ev.pid] = ev.comm  # the last name wins: exec renames a task
    return names


def unknown_pids(parsed: ParsedTrace) -> list[int]:
    """Pids that appear only as ``<...>``."""
    names = _comm_names(parsed.events)
    return sorted({ev.pid for ev in parsed.events if ev.pid not in names})


def analyze(parsed: ParsedTrace, source: str = "", module: Optional[str] = None,
            names: Optional[Mapping[int, str]] = None) -> TraceAnalysis:
    """Replay ``parsed`` and attribute references (rules in the module docstring).

    ``names`` gives names for pids the trace only shows as ``<...>`` (a live trace reads
    them from /proc/PID/comm of the processes still running).
    """
    names = {**(names or {}), **_comm_names(parsed.events)}

    def comm(pid: int) -> str:
        return names.get(pid, UNKNOWN_COMM)

    tallies: dict[tuple[int, str], _TallyBuilder] = {}
    outstanding: dict[str, list[_Ref]] = {}
    pending: dict[int, list[_Ref]] = {}
    last_freed: dict[int, str] = {}
    mod_loads: Counter[str] = Counter()
    mod_frees: Counter[str] = Counter()
    last_refcnt: dict[str, int] = {}
    loaded_by: dict[str, list[tuple[str, int]]] = {}
    freed_by: dict[str, list[tuple[str, int]]] = {}
    dropped: Counter[str] = Counter()
    alive: dict[str, Optional[bool]] = {}  # module -> loaded after its last load/free event
    order: list[str] = []

    def tally(pid: int, mod: str) -> _TallyBuilder:
        if mod not in order:
            order.append(mod)
        return tallies.setdefault((pid, mod), _TallyBuilder())

    for ev in parsed.events:
        t = tally(ev.pid, ev.name)
        refs = outstanding.setdefault(ev.name, [])
        site = ev.call_site or "?"
        if ev.refcnt is not None:
            last_refcnt[ev.name] = ev.refcnt
            alive.setdefault(ev.name, None)
        if ev.event == "module_load":
            t.loads += 1
            t.get_sites[LOAD_SITE] += 1
            mod_loads[ev.name] += 1
            alive[ev.name] = True
            loaded_by.setdefault(ev.name, []).append((comm(ev.pid), ev.pid))
            refs.append(_Ref(ev.pid, LOAD_SITE, ev.timestamp))
            for ref in pending.pop(ev.pid, []):
                ref.by_module, ref.pending = ev.name, False
        elif ev.event == "module_get":
            t.gets += 1
            t.get_sites[site] += 1
            ref = _Ref(ev.pid, site, ev.timestamp)
            if site in DEPENDENCY_SITES:
                ref.pending = True
                pending.setdefault(ev.pid, []).append(ref)
            refs.append(ref)
        elif ev.event == "module_put":
            t.puts += 1
            t.put_sites[site] += 1
            if not _release(refs, ev.pid, site, last_freed.get(ev.pid)):
                t.released_unknown += 1
        elif ev.event == "module_free":
            t.frees += 1
            mod_frees[ev.name] += 1
            alive[ev.name] = False
            freed_by.setdefault(ev.name, []).append((comm(ev.pid), ev.pid))
            dropped[ev.name] += len(refs)
            refs.clear()
            last_freed[ev.pid] = ev.name
        elif ev.event == "module_request":
            t.requests += 1
            t.request_sites[site] += 1

    tasks = tuple(
        TaskTally(pid, comm(pid), mod, b.loads, b.gets, b.puts, b.frees, b.requests,
                  tuple((s, n) for s, n in b.get_sites.items()),
                  tuple((s, n) for s, n in b.put_sites.items()),
                  tuple((s, n) for s, n in b.request_sites.items()), b.released_unknown)
        for (pid, mod), b in tallies.items())
    held = _held(outstanding, comm, order)
    nets: Counter[str] = Counter()
    for task in tasks:
        nets[task.module] += task.net
    modules = tuple(
        ModuleSummary(mod, mod_loads[mod], mod_frees[mod], nets[mod], last_refcnt.get(mod),
                      tuple(loaded_by.get(mod, ())), tuple(freed_by.get(mod, ())),
                      dropped[mod], alive.get(mod))
        for mod in order if mod in alive or mod in last_refcnt)
    unknown = tuple(sorted({ev.pid for ev in parsed.events if ev.pid not in names}))
    result = TraceAnalysis(source, parsed.format, len(parsed.events), parsed.skipped,
                           parsed.lost, tasks, held, modules, None, unknown)
    return result.only(module)


def _release(refs: list[_Ref], pid: int, site: str, freed: Optional[str]) -> bool:
    """Remove the reference a put by ``pid`` at ``site`` gives back; False if none fits."""
    if site in UNLOAD_SITES:
        # the dependency references of a freed module, or of a load that failed
        for i in range(len(refs) - 1, -1, -1):
            ref = refs[i]
            if (freed is not None and ref.by_module == freed) or (
                    ref.pending and ref.holder_pid == pid):
                del refs[i]
                return True
    for i in range(len(refs) - 1, -1, -1):
        if refs[i].holder_pid == pid and refs[i].by_module is None and not refs[i].pending:
            del refs[i]
            return True
    return False


def _held(outstanding: dict[str, list[_Ref]], comm: Callable[[int], str],
          order: list[str]) -> tuple[HeldRef, ...]:
    held: list[HeldRef] = []
    for mod in order:
        groups: dict[tuple[int, Optional[str]], list[_Ref]] = {}
        for ref in outstanding.get(mod, []):
            groups.setdefault((ref.holder_pid, ref.by_module), []).append(ref)
        for (pid, by_module), refs in groups.items():
            sites = Counter(r.site for r in refs)
            held.append(HeldRef(mod, pid, comm(pid), by_module, len(refs),
                                tuple(sites.items()), refs[0].timestamp))
    return tuple(held)
