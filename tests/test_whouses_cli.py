"""``moddep who-uses`` in-process: exact stdout, stderr and exit status.

Golden outputs live in tests/fixtures/whouses/expected/ and were produced by this tool from
the seeds' traces; a change to them is a change of the output format (review the diff).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moddep import cli
from moddep.tools import who_uses
from moddep.whouses import evidence as evidence_mod
from moddep.whouses.model import DevNum
from moddep.whouses.tracefs import ROOT_NEEDED, TracingPermissionError

FIXTURES = Path(__file__).parent / "fixtures" / "whouses"
EXPECTED = FIXTURES / "expected"


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = who_uses.main(argv, "who-uses")
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("trace, module", [
    ("vkms_trace_cmd_report", None),
    ("vkms_trace_cmd_report", "vkms"),
    ("vkms_trace_cmd_report", "drm"),
    ("vkms_after_reboot_trace_cmd_report", "vkms"),
    ("testmod_trace_pipe", None),
    ("testmod_trace", None),
])
def test_from_trace_golden(trace: str, module: str | None, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    argv = ["--from-trace", f"{trace}.txt"] + ([module] if module else [])
    rc, out, err = run(argv, capsys)
    expected = EXPECTED / (f"{trace}.{module}.txt" if module else f"{trace}.txt")
    assert (rc, err) == (0, "")
    assert out == expected.read_text()


def test_from_trace_golden_json(capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)
    rc, out, err = run(["--from-trace", "vkms_trace_cmd_report.txt", "--format", "json"],
                       capsys)
    assert (rc, err) == (0, "")
    assert out == (EXPECTED / "vkms_trace_cmd_report.json").read_text()
    doc = json.loads(out)
    held = [(h["module"], h["comm"], h["pid"], h["call_sites"][0]["site"])
            for h in doc["trace"]["held"] if h["by_module"] is None and h["pid"] == 545]
    assert held == [("drm", "systemd-logind", 545, "cdev_get"),
                    ("vkms", "systemd-logind", 545, "drm_stub_open")]


def test_through_the_moddep_dispatcher(capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["moddep", "who-uses", "--from-trace",
                   str(FIXTURES / "testmod_trace_pipe.txt"), "testmod"])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    assert ("  insmod (pid 21137)  testmod     1    0    1    0  get: (load);"
            " put: sys_init_module\n") in out
    assert "  rmmod (pid 21354)   testmod     0    0    0    0  freed it\n" in out


def test_from_trace_stdin(capsys: pytest.CaptureFixture[str],
                          monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO((FIXTURES / "testmod_trace.txt").read_text()))
    rc, out, _ = run(["--from-trace", "-"], capsys)
    assert rc == 0 and out.startswith("Trace - (ftrace text): 3 module events; 1 module,"
                                      " 2 tasks.\n")


@pytest.mark.parametrize("argv, message", [
    ([], "missing module name"),
    (["--save-trace", "x", "vkms"], "--save-trace needs --trace"),
    (["--trace", "soon", "vkms"], "--trace: 'soon' is not a number of seconds"),
    (["--format", "xml", "vkms"], "argument --format: invalid choice: 'xml'"),
    (["--trace", "--from-trace", "f", "vkms"],
     "argument --from-trace: not allowed with argument --trace"),
])
def test_usage_errors_exit_1(argv: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(argv, capsys)
    assert (rc, out) == (1, "")
    assert err.startswith(f"who-uses: ERROR: {message}") and err.count("\n") == 1


def test_unreadable_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nosuch.txt"
    rc, out, err = run(["--from-trace", str(missing)], capsys)
    assert (rc, out, err) == (
        1, "", f"who-uses: ERROR: {missing}: could not read trace: No such file or directory\n")


def test_not_loaded(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc, out, err = run(["--root", str(tmp_path), "nosuch"], capsys)
    assert (rc, out, err) == (1, "", "who-uses: ERROR: Module nosuch is not currently loaded\n")
    rc, out, err = run(["--root", str(tmp_path), "--format", "json", "nosuch"], capsys)
    assert rc == 1 and json.loads(out)["evidence"]["state"] == "not loaded"


def vkms_root(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import test_whouses_evidence as trees  # the fake trees of the evidence tests

    devices = trees.vkms_tree(root)
    monkeypatch.setattr(evidence_mod, "device_under_root",
                        lambda r: trees.fake_devices(r, devices))


VKMS_EVIDENCE = (
    "vkms: live, refcnt 1 (/sys/module/vkms/refcnt): 0 from holder modules, 1 other\n"
    "\n"
    "Processes with a device of vkms open:\n"
    "  systemd-logind (pid 545): fd 12 -> /dev/dri/card0 (c 226:0)\n"
    "    /proc/545/fd/12; /sys/devices/platform/vkms/drm/card0/device -> ../../../vkms"
    " (device name matches the module)\n")


def test_evidence_text(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    vkms_root(tmp_path, monkeypatch)
    rc, out, err = run(["--root", str(tmp_path), "vkms"], capsys)
    assert (rc, err) == (0, "")
    assert out == VKMS_EVIDENCE + ("\nTo see who takes references as it happens:"
                                   " moddep who-uses --trace vkms\n")


def test_live_trace(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    vkms_root(tmp_path, monkeypatch)
    text = (FIXTURES / "vkms_logind_excerpt.txt").read_text().replace(
        "systemd-logind-545", "<...>-545", 1)
    calls = []

    def fake_trace(module: str, seconds: float | None, root: Path):  # noqa: ANN202
        calls.append((module, seconds, root))
        return text, ["traced in a private instance"], True

    monkeypatch.setattr(who_uses, "trace_module", fake_trace)
    saved = tmp_path / "saved.txt"
    rc, out, err = run(["--root", str(tmp_path), "--trace", "2.5", "--save-trace", str(saved),
                        "vkms"], capsys)
    assert (rc, calls) == (0, [("vkms", 2.5, tmp_path)])
    assert err == "who-uses: tracing module events of vkms for 2.5 s...\n"
    assert saved.read_text() == text
    assert out.startswith(VKMS_EVIDENCE + "\nTrace live tracefs (ftrace text): 4 module"
                          " events; showing vkms.\n"
                          "  traced in a private instance\n"
                          "  stopped by Ctrl-C\n"
                          "\nHeld at the end of the trace:\n"
                          "  module  refs  held by                   taken at\n"
                          "  vkms       1  systemd-logind (pid 545)  drm_stub_open\n")

    calls.clear()
    rc, out, err = run(["--root", str(tmp_path), "--trace", "vkms"], capsys)
    assert (rc, calls) == (0, [("vkms", None, tmp_path)])
    assert err == "who-uses: tracing module events of vkms until Ctrl-C...\n"


def test_live_trace_not_root(capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(module: str, seconds: float | None, root: Path) -> None:
        raise TracingPermissionError(f"/sys/kernel/tracing: Permission denied: {ROOT_NEEDED}")

    monkeypatch.setattr(who_uses, "trace_module", refuse)
    rc, out, err = run(["--trace", "1", "vkms"], capsys)
    assert (rc, out) == (1, "")
    assert err.splitlines()[-1] == ("who-uses: ERROR: /sys/kernel/tracing: Permission denied:"
                                    f" {ROOT_NEEDED}")


def test_ctrl_c_before_tracing_exits_130(capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(module: str, seconds: float | None, root: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(who_uses, "trace_module", interrupted)
    rc, out, _ = run(["--trace", "1", "vkms"], capsys)
    assert (rc, out) == (130, "")


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["--help"], capsys)
    assert (rc, err) == (0, "")
    assert out.startswith("usage: who-uses [-h]") and "--from-trace FILE" in out


def test_devnum_str() -> None:
    assert str(DevNum("c", 226, 0)) == "c 226:0"
