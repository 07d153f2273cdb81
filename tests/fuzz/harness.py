"""Run one fuzz input against one target: allowed errors pass, anything else fails and is kept.

* **Allowed errors.** Each target (:mod:`fuzz.targets`) names the exceptions its code may
  raise on bad input (moddep's own :class:`~moddep.errors.ModdepError` children, or none at
  all for code that must never raise). Any other exception is a bug.
* **No hang.** Each input runs under a real-time alarm (``MODDEP_FUZZ_TIMEOUT`` seconds,
  default 10, far above the milliseconds an input takes); running out is a failure.
* **Kept failures.** A failing input is written to ``regressions/TARGET/<sha256>.bin`` at
  once; while Hypothesis shrinks, only the smallest input per distinct failure (exception type
  and the innermost moddep line raising it) is kept. Files committed before are never removed.
  ``MODDEP_FUZZ_SAVE=0`` turns saving off.
* **Counts.** Every input run is counted per target; the counts are printed in pytest's
  terminal summary (``fuzz: TARGET: N inputs``) and, with ``MODDEP_FUZZ_REPORT=FILE``,
  written there as JSON.
* **Size of a run.** ``examples(default)`` is the per-target number of Hypothesis examples,
  sized for CI (the whole fuzz suite in about a minute); ``MODDEP_FUZZ_EXAMPLES=N`` runs N
  per target instead, for long local runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from hypothesis import HealthCheck, settings

from fuzz.targets import TARGETS

REGRESSIONS = Path(__file__).resolve().parent / "regressions"
TIMEOUT = float(os.environ.get("MODDEP_FUZZ_TIMEOUT", "10"))

COUNTS: Counter[str] = Counter()
# (target, failure signature) -> (size, path) of the smallest input kept this session
_KEPT: dict[tuple[str, str], tuple[int, Path]] = {}


class Hang(BaseException):
    """Raised by the alarm: a BaseException so no ``except Exception`` under test eats it."""


def examples(default: int) -> int:
    """Examples per target: ``MODDEP_FUZZ_EXAMPLES`` if set, else ``default`` (CI size)."""
    value = os.environ.get("MODDEP_FUZZ_EXAMPLES")
    return int(value) if value else default


def fuzz_settings(default: int) -> settings:
    """Hypothesis settings for a fuzz test: no deadline (the alarm bounds each input), no
    health checks about slow or large inputs, derandomised in CI so CI is reproducible."""
    ci = os.environ.get("CI", "") not in ("", "0", "false")
    return settings(
        max_examples=examples(default),
        deadline=None,
        derandomize=ci,
        database=None if ci else settings.default.database,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


def _signature(exc: BaseException) -> str:
    """Exception type and the innermost frame in moddep (else the innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    inner = [f for f in frames if "/moddep/" in f.filename.replace(os.sep, "/")] or frames
    where = f"{Path(inner[-1].filename).name}:{inner[-1].lineno}" if inner else "?"
    return f"{type(exc).__name__}@{where}"


def keep(target: str, data: bytes, signature: str) -> Optional[Path]:
    """Write ``data`` as a regression input of ``target`` (smallest per signature)."""
    if os.environ.get("MODDEP_FUZZ_SAVE", "1") == "0":
        return None
    key = (target, signature)
    old = _KEPT.get(key)
    if old is not None and old[0] <= len(data):
        return old[1]
    directory = REGRESSIONS / target
    path = directory / (hashlib.sha256(data).hexdigest()[:20] + ".bin")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_bytes(data)
        if old is not None and old[1] != path:
            old[1].unlink(missing_ok=True)  # created by this session: a larger repro
    except OSError:
        return None
    _KEPT[key] = (len(data), path)
    return path


def run_one(name: str, data: bytes) -> None:
    """Run target ``name`` on ``data``; raise (after keeping the input) if it misbehaves."""
    target = TARGETS[name]
    COUNTS[name] += 1
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, TIMEOUT)
    try:
        target.fn(data)
    except target.allowed:
        pass
    except Hang:
        path = keep(name, data, "hang")
        raise AssertionError(f"fuzz target {name}: an input of {len(data)} bytes did not finish "
                             f"within {TIMEOUT:g} s (kept as {path})") from None
    except Exception as e:
        path = keep(name, data, _signature(e))
        if hasattr(e, "add_note"):  # Python >= 3.11
            e.add_note(f"fuzz target {name}: input kept as {path}")
        raise
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Summary:
    """A pytest plugin printing the counts at the end of the session."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not COUNTS:
            return
        terminalreporter.write_sep("-", "fuzzing: inputs run per target")
        for name in sorted(COUNTS):
            terminalreporter.write_line(f"fuzz: {name}: {COUNTS[name]} inputs")
        terminalreporter.write_line(f"fuzz: total: {sum(COUNTS.values())} inputs")
        report = os.environ.get("MODDEP_FUZZ_REPORT")
        if report:
            Path(report).write_text(json.dumps(dict(sorted(COUNTS.items())), indent=1) + "\n")


def register(config: Any) -> None:
    """Install the summary plugin once per session (called by the fuzz tests' fixture)."""
    if not config.pluginmanager.has_plugin("moddep-fuzz-summary"):
        config.pluginmanager.register(_Summary(), "moddep-fuzz-summary")
