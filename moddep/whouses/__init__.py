"""What is using this module? Answered from sysfs, procfs and the kernel's module events.

The pipeline, one file per concern:

``evidence.py``  sysfs/procfs under a root -> :class:`~moddep.whouses.model.Evidence`
``devices.py``   device number -> owning module(s), with the files that say so
``aliases.py``   the depmod tables consulted (modules.alias, modules.devname, modules.builtin)
``trace.py``     trace text (trace-cmd report, trace, trace_pipe) -> per-task attribution
``tracefs.py``   live tracing of module events, tracefs put back exactly as found
``report.py``    text and JSON rendering; :func:`short_answer` for "in use" errors

Nothing here prints or exits: ``moddep/tools/who_uses.py`` is the command-line edge.
"""

from __future__ import annotations

from moddep.whouses.evidence import gather
from moddep.whouses.report import short_answer
from moddep.whouses.trace import analyze, parse_trace

__all__ = ["analyze", "gather", "parse_trace", "short_answer"]
