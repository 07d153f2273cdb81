"""Live tracing against a fake tracefs: settings are put back byte for byte, whatever happens.

The fake is a tree of plain files plus :class:`KernelTraceFs`, which gives writes the
kernel's semantics (writing ``0`` to a filter makes it read ``none``; an event's ``enable``
updates the subsystem's derived ``enable``; ``mkdir instances/X`` creates a buffer with its
own events; a refused filter reads back with ``parse_error``). The file texts are those of a
real 6.x tracefs. One test, gated on ``MODDEP_TEST_REAL_TRACEFS=1`` and root, runs the same
session on the real kernel with the ``sched`` subsystem (kernels without modules have no
``module`` events).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import pytest

from moddep.whouses.trace import analyze, parse_trace
from moddep.whouses.tracefs import (
    ROOT_NEEDED,
    TraceFs,
    TracefsError,
    TraceSession,
    TracingPermissionError,
    module_filter,
    restore_value,
    trace_module,
)

FIXTURES = Path(__file__).parent / "fixtures" / "whouses"
MODULE_EVENTS = ("module_free", "module_get", "module_load", "module_put", "module_request")
SUBSYSTEM_FILTER = ("### global filter ###\n"
                    "# Use this to set filters for multiple events.\n"
                    "# Only events with the given fields will be affected.\n"
                    "# If no events are modified, an error message will be displayed here\n")
VALID_FILTER = re.compile(r'^\w+ (==|!=|~) "[^"]*"$')


def make_tracefs(path: Path, pipe: str = "", instances: bool = True) -> Path:
    """A tracefs tree as a fresh 6.x kernel shows it (module and sched subsystems)."""
    files = {
        "trace_pipe": pipe, "tracing_on": "1\n", "set_event": "", "current_tracer": "nop\n",
        "trace": "# tracer: nop\n#\n", "events/enable": "0\n",
        "events/module/enable": "0\n", "events/module/filter": SUBSYSTEM_FILTER,
        "events/sched/enable": "0\n", "events/sched/filter": SUBSYSTEM_FILTER,
        "events/sched/sched_process_exec/enable": "0\n",
        "events/sched/sched_process_exec/filter": "none\n",
    }
    for ev in MODULE_EVENTS:
        files[f"events/module/{ev}/enable"] = "0\n"
        files[f"events/module/{ev}/filter"] = "none\n"
        files[f"events/module/{ev}/format"] = f"name: {ev}\n"
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    if instances:
        (path / "instances").mkdir()
    return path


def snapshot(path: Path) -> dict[str, object]:
    """Every file's bytes, every directory and link under ``path``."""
    found: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(path))
            if full.is_symlink():
                found[rel] = ("link", os.readlink(full))
            elif full.is_dir():
                found[rel] = "dir"
            elif full.is_fifo():
                found[rel] = "fifo"
            else:
                found[rel] = full.read_bytes()
    return found


class KernelTraceFs(TraceFs):
    """Plain files with the kernel's write semantics; can fail the n-th write on purpose."""

    def __init__(self, path: Path, *, fail_at: Optional[int] = None,
                 fail_with: Callable[[], BaseException] = lambda: OSError(errno.EIO, "EIO"),
                 instances_work: bool = True, instance_pipe: str = "",
                 accept_filters: bool = True) -> None:
        super().__init__(path)
        self.fail_at = fail_at
        self.fail_with = fail_with
        self.instances_work = instances_work
        self.instance_pipe = instance_pipe
        self.accept_filters = accept_filters
        self.writes: list[tuple[str, str]] = []

    def write(self, rel: str, value: str) -> None:
        self.writes.append((rel, value))
        if self.fail_at is not None and len(self.writes) == self.fail_at:
            raise self.fail_with()
        path = self.path / rel
        if not path.exists():
            raise OSError(errno.ENOENT, "No such file or directory", str(path))
        if rel.endswith("/filter"):
            if value == "0":
                path.write_text("none\n")
            elif VALID_FILTER.match(value) and self.accept_filters:
                path.write_text(value + "\n")
            else:
                path.write_text(f"{value}\n^\nparse_error: Invalid value (did you forget"
                                " quotes)?\n")
                if self.accept_filters:
                    raise OSError(errno.EINVAL, "Invalid argument", str(path))
        elif rel.endswith("/enable") and rel.count("/") >= 3:
            if value not in ("0", "1"):
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            path.write_text(value + "\n")
            subsystem = path.parent.parent
            states = {(d / "enable").read_text().strip().rstrip("*")
                      for d in subsystem.iterdir() if (d / "enable").is_file() and d.is_dir()}
            (subsystem / "enable").write_text(
                (states.pop() if len(states) == 1 else "X") + "\n")
        elif rel.endswith("tracing_on"):
            if value not in ("0", "1"):
                raise OSError(errno.EINVAL, "Invalid argument", str(path))
            path.write_text(value + "\n")
        else:
            raise OSError(errno.EINVAL, f"fake tracefs: unexpected write to {rel}")

    def mkdir(self, rel: str) -> None:
        super().mkdir(rel)
        if self.instances_work:
            make_tracefs(self.path / rel, pipe=self.instance_pipe, instances=False)

    def rmdir(self, rel: str) -> None:
        shutil.rmtree(self.path / rel)  # tracefs removes the whole instance


def factory(**options: object) -> Callable[[Path], KernelTraceFs]:
    made: list[KernelTraceFs] = []

    def make(path: Path) -> KernelTraceFs:
        fs = KernelTraceFs(path, **options)  # type: ignore[arg-type]
        made.append(fs)
        return fs

    make.made = made  # type: ignore[attr-defined]
    return make


class FakeMounter:
    """Mounting copies a tracefs tree into the mount point; unmounting empties it."""

    def __init__(self, template: Path, error: Optional[OSError] = None) -> None:
        self.template = template
        self.error = error
        self.calls: list[str] = []

    def mount(self, target: Path) -> None:
        self.calls.append(f"mount {target}")
        if self.error:
            raise self.error
        shutil.copytree(self.template, target, dirs_exist_ok=True)

    def umount(self, target: Path) -> None:
        self.calls.append(f"umount {target}")
        for entry in target.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


LOGIND = (FIXTURES / "vkms_logind_excerpt.txt").read_text()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    make_tracefs(tmp_path / "sys/kernel/tracing", pipe=LOGIND, instances=False)
    return tmp_path


def tracing(root: Path) -> Path:
    return root / "sys/kernel/tracing"


# -- global buffer (no instances) ---------------------------------------------------------
def test_global_buffer_traced_and_restored_byte_for_byte(root: Path) -> None:
    before = snapshot(root)
    make = factory()
    text, notes, interrupted = trace_module("vkms", 0.2, root, tracefs_factory=make)
    assert text == LOGIND and not interrupted and notes == []
    assert snapshot(root) == before
    writes = make.made[0].writes  # type: ignore[attr-defined]
    assert ("events/module/module_get/filter", 'name == "vkms"') in writes
    assert ("events/module/module_get/enable", "1") in writes
    assert ("events/module/module_get/enable", "0") in writes  # put back
    assert not [w for w in writes if w[0] in ("events/module/filter", "events/module/enable",
                                               "trace", "tracing_on")]
    an = analyze(parse_trace(text), "live", "vkms")
    assert [(h.comm, h.pid, h.call_sites) for h in an.held] == [
        ("systemd-logind", 545, (("drm_stub_open", 1),))]


def test_prior_settings_survive_exactly(root: Path) -> None:
    t = tracing(root)
    (t / "tracing_on").write_text("0\n")
    (t / "events/module/module_get/filter").write_text('name == "other"\n')
    (t / "events/module/module_load/enable").write_text("1\n")
    (t / "events/module/enable").write_text("X\n")
    (t / "set_event").write_text("module:module_load\nsched:sched_switch\n")
    before = snapshot(root)
    session = TraceSession(root, "module", module_filter("vkms"), tracefs_factory=factory())
    with session:
        assert (t / "tracing_on").read_text() == "1\n"
        assert (t / "events/module/module_get/filter").read_text() == 'name == "vkms"\n'
        assert (t / "events/module/enable").read_text() == "1\n"
        session.read(0.05)
    assert snapshot(root) == before
    assert session.notes == ["used the global buffer of /sys/kernel/tracing: reading its"
                             " trace_pipe consumed entries of the tracer 'nop' and of 1 other"
                             " enabled events"]


# -- private instance ---------------------------------------------------------------------
def test_instance_used_and_removed_global_untouched(root: Path) -> None:
    (tracing(root) / "instances").mkdir()
    before = snapshot(root)
    make = factory(instance_pipe=LOGIND)
    text, notes, _ = trace_module("vkms", 0.1, root, tracefs_factory=make)
    assert text == LOGIND
    assert snapshot(root) == before
    name = f"moddep-who-uses-{os.getpid()}"
    assert notes == [f"traced in a private instance, /sys/kernel/tracing/instances/{name},"
                     " removed afterwards"]
    writes = make.made[0].writes  # type: ignore[attr-defined]
    assert writes and all(rel.startswith(f"instances/{name}/") for rel, _ in writes)


def test_instance_without_events_falls_back_to_global(root: Path) -> None:
    (tracing(root) / "instances").mkdir()
    before = snapshot(root)
    make = factory(instances_work=False)
    text, notes, _ = trace_module("vkms", 0.05, root, tracefs_factory=make)
    assert text == LOGIND and notes == []
    assert snapshot(root) == before


# -- failures at every step ---------------------------------------------------------------
@pytest.mark.parametrize("fail_at", [1, 2, 3, 6, 10])
def test_error_midway_restores_everything(root: Path, fail_at: int) -> None:
    (tracing(root) / "tracing_on").write_text("0\n")
    before = snapshot(root)
    with pytest.raises(TracefsError, match="Input/output error|EIO"):
        trace_module("vkms", 0.05, root, tracefs_factory=factory(fail_at=fail_at))
    assert snapshot(root) == before


@pytest.mark.parametrize("fail_at", [1, 4, 10])
def test_ctrl_c_during_setup_restores_everything(root: Path, fail_at: int) -> None:
    (tracing(root) / "instances").mkdir()
    before = snapshot(root)
    with pytest.raises(KeyboardInterrupt):
        trace_module("vkms", 0.05, root,
                     tracefs_factory=factory(fail_at=fail_at, fail_with=KeyboardInterrupt))
    assert snapshot(root) == before


def test_ctrl_c_during_capture_ends_it_and_restores(root: Path) -> None:
    before = snapshot(root)

    def sleep(seconds: float) -> None:
        raise KeyboardInterrupt

    text, _, interrupted = trace_module("vkms", None, root, tracefs_factory=factory(),
                                        sleep=sleep)
    assert interrupted and text == LOGIND
    assert snapshot(root) == before


def test_error_in_the_caller_restores(root: Path) -> None:
    before = snapshot(root)
    with pytest.raises(RuntimeError, match="boom"):
        with TraceSession(root, "module", module_filter("vkms"), tracefs_factory=factory()):
            raise RuntimeError("boom")
    assert snapshot(root) == before


def test_failed_restore_is_reported(root: Path) -> None:
    # 10 setup writes (5 filters, 5 enables); the 11th is the first write back
    with pytest.raises(TracefsError, match="could not put tracefs back as it was: events/"
                       "module/module_request/enable: could not write back '0'"):
        trace_module("vkms", 0.01, root, tracefs_factory=factory(fail_at=11))


def test_failed_restore_inside_a_removed_instance_is_moot(root: Path) -> None:
    (tracing(root) / "instances").mkdir()
    before = snapshot(root)
    text, _, _ = trace_module("vkms", 0.01, root, tracefs_factory=factory(fail_at=11))
    assert text == "" and snapshot(root) == before


def test_refused_filter_is_an_error_and_restored(root: Path) -> None:
    before = snapshot(root)
    with pytest.raises(TracefsError, match="did not take filter 'name == \"vkms\"'"):
        trace_module("vkms", 0.01, root, tracefs_factory=factory(accept_filters=False))
    assert snapshot(root) == before


# -- finding and mounting tracefs ---------------------------------------------------------
def test_mounts_tracefs_when_needed_and_unmounts(tmp_path: Path) -> None:
    template = make_tracefs(tmp_path / "template", pipe=LOGIND, instances=False)
    root = tmp_path / "root"
    (root / "sys/kernel/tracing").mkdir(parents=True)
    (root / "sys/kernel/debug").mkdir(parents=True)
    mounter = FakeMounter(template)
    text, notes, _ = trace_module("vkms", 0.05, root, tracefs_factory=factory(),
                                  mounter=mounter)
    target = root / "sys/kernel/tracing"
    assert text == LOGIND
    assert mounter.calls == [f"mount {target}", f"umount {target}"]
    assert list(target.iterdir()) == []
    assert notes[0] == ("tracefs was not mounted: mounted it on /sys/kernel/tracing and"
                        " unmounted it afterwards")


def test_unmounts_also_on_error(tmp_path: Path) -> None:
    template = tmp_path / "template"
    template.mkdir()
    (template / "trace_pipe").write_text("")  # tracefs without events/module
    root = tmp_path / "root"
    (root / "sys/kernel/tracing").mkdir(parents=True)
    mounter = FakeMounter(template)
    with pytest.raises(TracefsError, match="this kernel has no module trace events"):
        trace_module("vkms", 0.05, root, tracefs_factory=factory(), mounter=mounter)
    assert mounter.calls[-1] == f"umount {root / 'sys/kernel/tracing'}"
    assert list((root / "sys/kernel/tracing").iterdir()) == []


def test_debugfs_location_is_used(tmp_path: Path) -> None:
    make_tracefs(tmp_path / "sys/kernel/debug/tracing", pipe=LOGIND, instances=False)
    (tmp_path / "sys/kernel/tracing").mkdir(parents=True)
    mounter = FakeMounter(tmp_path)
    text, _, _ = trace_module("vkms", 0.05, tmp_path, tracefs_factory=factory(),
                              mounter=mounter)
    assert text == LOGIND and mounter.calls == []


def test_no_tracefs_at_all(tmp_path: Path) -> None:
    with pytest.raises(TracefsError, match="no tracefs"):
        trace_module("vkms", 0.05, tmp_path)


def test_not_root_mount_refused(tmp_path: Path) -> None:
    (tmp_path / "sys/kernel/tracing").mkdir(parents=True)
    mounter = FakeMounter(tmp_path, OSError(errno.EPERM, "Operation not permitted"))
    with pytest.raises(TracingPermissionError) as info:
        trace_module("vkms", 0.05, tmp_path, mounter=mounter)
    assert str(info.value) == ("mount -t tracefs tracefs /sys/kernel/tracing: Operation not"
                               f" permitted: {ROOT_NEEDED}")


def test_not_root_write_refused(root: Path) -> None:
    before = snapshot(root)
    with pytest.raises(TracingPermissionError, match="tracing needs root"):
        trace_module("vkms", 0.05, root, tracefs_factory=factory(
            fail_at=1, fail_with=lambda: PermissionError(errno.EACCES, "Permission denied")))
    assert snapshot(root) == before


# -- trace_pipe as a FIFO fed while we read -----------------------------------------------
def test_fifo_trace_pipe_read_until_deadline(tmp_path: Path) -> None:
    t = make_tracefs(tmp_path / "sys/kernel/tracing", instances=False)
    (t / "trace_pipe").unlink()
    os.mkfifo(t / "trace_pipe")
    lines = LOGIND.splitlines(keepends=True)

    def feed() -> None:
        with open(t / "trace_pipe", "w") as pipe:  # blocks until the session opens it
            for line in lines:
                time.sleep(0.05)
                pipe.write(line)
                pipe.flush()

    writer = threading.Thread(target=feed)
    writer.start()
    before = snapshot(tmp_path)
    text, _, interrupted = trace_module("vkms", 1.0, tmp_path, tracefs_factory=factory())
    writer.join()
    assert text == LOGIND and not interrupted
    assert snapshot(tmp_path) == before


# -- restore forms ------------------------------------------------------------------------
@pytest.mark.parametrize("rel, old, value", [
    ("events/module/module_get/filter", "none\n", "0"),
    ("events/module/module_get/filter", 'name == "drm"\n', 'name == "drm"'),
    ("events/module/module_get/filter",
     "name == drm\n        ^\nparse_error: Invalid value (did you forget quotes)?\n", "0"),
    ("events/module/module_get/enable", "0*\n", "0"),
    ("tracing_on", "0\n", "0"),
])
def test_restore_value(rel: str, old: str, value: str) -> None:
    assert restore_value(rel, old) == value


def test_module_filter_is_quoted() -> None:
    assert module_filter("testmod") == 'name == "testmod"'


# -- the real kernel ----------------------------------------------------------------------
REAL = os.environ.get("MODDEP_TEST_REAL_TRACEFS") == "1" and os.geteuid() == 0


def _real_state() -> dict[str, str]:
    state = {"mounts": "\n".join(sorted(
        line.split(" - ")[0].split()[4] for line in Path("/proc/self/mountinfo").read_text()
        .splitlines() if " - tracefs " in line))}
    for place in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        t = Path(place)
        if (t / "trace_pipe").exists():
            for rel in ("tracing_on", "events/sched/enable", "events/sched/filter",
                        "events/sched/sched_process_exec/enable",
                        "events/sched/sched_process_exec/filter", "set_event"):
                state[f"{place}/{rel}"] = (t / rel).read_text()
            state[f"{place}/instances"] = " ".join(sorted(os.listdir(t / "instances")))
    return state


@pytest.mark.skipif(not REAL, reason="real tracefs test: set MODDEP_TEST_REAL_TRACEFS=1, as root")
@pytest.mark.parametrize("use_instance", [True, False])
def test_real_tracefs_capture_and_restore(use_instance: bool) -> None:
    before = _real_state()
    session = TraceSession(Path("/"), "sched", 'filename ~ "*/true"', ["sched_process_exec"],
                           use_instance=use_instance)
    with session:
        threading.Timer(0.2, lambda: subprocess.run(["true"], check=True)).start()
        text = session.read(1.0)
    # the task may show as <...> even live: its name was not in the comm cache
    assert re.search(r"-\d+ .*sched_process_exec: filename=\S*/true ", text)
    assert _real_state() == before
