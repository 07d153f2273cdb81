"""Rendering: the JSON keys tools rely on, and the short answer for "in use" errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moddep.whouses import short_answer
from moddep.whouses.evidence import gather
from moddep.whouses.model import DevNum, Evidence, HolderUse, MountUse, ProcessUse
from moddep.whouses.report import render_json, render_text, short_summary
from moddep.whouses.trace import analyze, parse_trace

FIXTURES = Path(__file__).parent / "fixtures" / "whouses"

EVIDENCE = Evidence(
    "drm", "live", 4,
    holders=(HolderUse("drm_kms_helper", "/sys/module/drm/holders/drm_kms_helper"),
             HolderUse("vkms", "/sys/module/drm/holders/vkms")),
    processes=(ProcessUse(545, "systemd-logind", "fd 12", "/dev/dri/card0",
                          DevNum("c", 226, 0), "via", "/proc/545/fd/12"),
               ProcessUse(545, "systemd-logind", "fd 13", "/dev/dri/card0",
                          DevNum("c", 226, 0), "via", "/proc/545/fd/13"),
               ProcessUse(900, "Xorg", "fd 3", "/dev/dri/card0",
                          DevNum("c", 226, 0), "via", "/proc/900/fd/3")),
    mounts=(MountUse("drm", "none", "/mnt/x", 1, "via", "/proc/1/mountinfo:3"),),
)


def test_json_keys_are_stable() -> None:
    an = analyze(parse_trace((FIXTURES / "testmod_trace.txt").read_text()), "t.txt")
    doc = json.loads(render_json("drm", EVIDENCE, an, ["note"]))
    assert list(doc) == ["version", "module", "evidence", "trace"]
    assert doc["version"] == 1
    assert list(doc["evidence"]) == [
        "module", "state", "refcnt", "unexplained_refs", "holders", "processes", "mounts",
        "block_devices", "sockets", "interfaces", "notes"]
    assert doc["evidence"]["unexplained_refs"] == 2
    assert doc["evidence"]["processes"][0] == {
        "pid": 545, "comm": "systemd-logind", "handle": "fd 12", "file": "/dev/dri/card0",
        "device": {"type": "c", "major": 226, "minor": 0}, "via": "via",
        "evidence": "/proc/545/fd/12"}
    assert list(doc["trace"]) == [
        "source", "format", "module_filter", "events", "skipped_lines", "lost", "held",
        "tasks", "modules", "unknown_comm_pids", "notes"]
    assert list(doc["trace"]["tasks"][0]) == [
        "pid", "comm", "module", "loads", "gets", "puts", "net", "frees", "requests",
        "released_unknown", "get_sites", "put_sites", "request_sites"]
    assert list(doc["trace"]["modules"][0]) == [
        "module", "loads", "frees", "net", "last_refcnt", "present_at_end",
        "dropped_at_free", "loaded_by", "freed_by"]
    assert doc["trace"]["unknown_comm_pids"] == [21137]
    assert doc["trace"]["notes"] == ["note"]


def test_json_empty_document() -> None:
    assert json.loads(render_json(None)) == {
        "version": 1, "module": None, "evidence": None, "trace": None}


def test_short_summary_groups_processes_by_pid() -> None:
    assert short_summary(EVIDENCE) == (
        "drm: refcnt 4; used by modules drm_kms_helper, vkms; open by systemd-logind"
        " (pid 545, /dev/dri/card0), Xorg (pid 900, /dev/dri/card0); mounted on /mnt/x.\n"
        "To see who takes its references: moddep who-uses --trace drm")


def test_short_summary_limits_the_list() -> None:
    many = Evidence("m", "live", 9, processes=tuple(
        ProcessUse(pid, f"p{pid}", "fd 3", "/dev/x", DevNum("c", 1, 1), "", "")
        for pid in range(1, 7)))
    assert "p4 (pid 4, /dev/x) and 2 more;" in short_summary(many, limit=4).replace(".\n", ";")


def test_short_answer_on_a_fake_tree(tmp_path: Path) -> None:
    for rel, text in {"sys/module/tun/initstate": "live\n", "sys/module/tun/refcnt": "0\n",
                      "proc/sys/kernel/osrelease": "6.1.0\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "sys/module/tun/holders").mkdir()
    assert short_answer("tun", tmp_path) == (
        "tun: refcnt 0; no holder module, process or mount found.\n"
        "To see who takes its references: moddep who-uses --trace tun")


def test_short_answer_never_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> Evidence:
        raise RuntimeError("sysfs exploded")

    monkeypatch.setattr("moddep.whouses.evidence.gather", broken)
    assert short_answer("vhost-net", tmp_path) == (
        "To see who holds vhost_net: moddep who-uses vhost_net (or --trace vhost_net)")


def test_text_for_not_loaded_and_builtin(tmp_path: Path) -> None:
    (tmp_path / "sys/module/8250/parameters").mkdir(parents=True)
    assert render_text("x", gather("x", tmp_path)).startswith(
        "x: not loaded (no /sys/module/x)\n")
    text = render_text("8250", gather("8250", tmp_path))
    assert text.startswith("8250: builtin\n\nNo holder module")
    assert "--trace" not in text  # nothing to unload, no trace hint
