"""who-uses on a real kernel (Debian bookworm's 6.1 under QEMU, x86_64): a process holds
/dev/net/tun open; ``modprobe -r tun`` fails and names it; ``who-uses`` finds it from procfs
and sysfs; ``who-uses --trace`` running while the process opens the device attributes the
module reference to that process; tracefs is exactly as before afterwards."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "guest"))

import debcache  # noqa: E402
import harness  # noqa: E402
from test_guest_runtime import stage_modules  # noqa: E402

pytestmark = pytest.mark.qemu

GUEST_SCRIPT = r'''
import json, os, subprocess, sys, time
import guestlib

T = "/sys/kernel/tracing"


def tracefs_state():
    """Every setting who-uses may touch: module event enables and filters, tracing_on,
    the tracer, the instances, the global event enable."""
    state = {}
    for rel in ("tracing_on", "current_tracer", "events/enable", "events/module/enable",
                "events/module/filter"):
        try:
            state[rel] = open(os.path.join(T, rel)).read()
        except OSError as e:
            state[rel] = f"error {e.errno}"
    for ev in sorted(os.listdir(os.path.join(T, "events/module"))):
        d = os.path.join(T, "events/module", ev)
        if os.path.isdir(d):
            for f in ("enable", "filter"):
                state[f"events/module/{ev}/{f}"] = open(os.path.join(d, f)).read()
    state["instances"] = sorted(os.listdir(os.path.join(T, "instances")))
    return state


def run(*argv, timeout=180):
    rc, out, err = guestlib.run(list(argv), timeout=timeout)
    return {"rc": rc, "out": out, "err": err}


R = {}
R["modprobe"] = run("modprobe", "tun")
R["before"] = tracefs_state()
tracer = subprocess.Popen(["moddep", "who-uses", "--trace", "25", "--format", "json", "tun"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
# wait until tracing is armed: the module events of a moddep instance are enabled
deadline = time.monotonic() + 60
armed = False
while time.monotonic() < deadline and not armed:
    time.sleep(0.5)
    inst = os.path.join(T, "instances")
    for name in os.listdir(inst):
        try:
            armed = open(os.path.join(inst, name, "events/module/module_get/enable")).read() \
                .strip() == "1" or armed
        except OSError:
            pass
R["armed"] = armed
holder = subprocess.Popen([sys.executable, "-c",
                           "import os, time\n"
                           "fd = os.open('/dev/net/tun', os.O_RDWR)\n"
                           "print('ready', flush=True)\n"
                           "time.sleep(600)\n"], stdout=subprocess.PIPE, text=True)
R["holder_ready"] = holder.stdout.readline().strip()
R["holder_pid"] = holder.pid
out, err = tracer.communicate(timeout=240)
R["trace_rc"] = tracer.returncode
R["trace_err"] = err
try:
    R["trace"] = json.loads(out)
except ValueError:
    R["trace"] = None
    R["trace_out"] = out
R["after"] = tracefs_state()
R["evidence"] = run("moddep", "who-uses", "--format", "json", "tun")
R["remove"] = run("modprobe", "-r", "tun")
holder.kill()
holder.wait()
guestlib.report(**R)
'''


def test_who_uses_on_a_real_kernel(tmp_path: Path) -> None:
    arch = "amd64"
    reason = harness.qemu_available(arch)
    if reason:
        pytest.skip(reason)
    try:
        tree = debcache.kernel_tree(arch)
        stage_modules(tree, tmp_path / "root", ("tun",))
        initramfs = harness.build_initramfs(arch, modules_root=tmp_path / "root")
    except debcache.Unavailable as exc:
        pytest.skip(f"Debian packages for the {arch} guest unavailable: {exc}")
    res = harness.run_guest(arch, GUEST_SCRIPT, initramfs=initramfs, timeout=600)
    r = res.results
    print(json.dumps(r, indent=1)[:6000])
    assert res.rc == 0, res.output[-4000:]
    assert r["modprobe"]["rc"] == 0 and r["armed"] and r["holder_ready"] == "ready"
    pid = r["holder_pid"]
    # live tracing attributes the open's reference to the holder
    assert r["trace_rc"] == 0, r["trace_err"]
    trace = r["trace"]["trace"]
    held = [h for h in trace["held"] if h["module"] == "tun"]
    assert any(h["pid"] == pid and h["count"] >= 1 for h in held), held
    tasks = [t for t in trace["tasks"] if t["pid"] == pid and t["module"] == "tun"]
    assert tasks and tasks[0]["gets"] >= 1 and tasks[0]["net"] >= 1, trace["tasks"]
    # tracefs is exactly as it was
    assert r["after"] == r["before"]
    # sysfs/procfs evidence names the process and the device
    ev = json.loads(r["evidence"]["out"])["evidence"]
    procs = [p for p in ev["processes"] if p["pid"] == pid]
    assert procs and procs[0]["file"] == "/dev/net/tun", ev
    # modprobe -r says why, naming the holder
    assert r["remove"]["rc"] == 1
    err = r["remove"]["err"]
    assert err.startswith("modprobe: FATAL: Module tun is in use.")
    assert f"pid {pid}" in err
