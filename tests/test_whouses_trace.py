"""Trace parsing and reference attribution, on the seeds' real traces (tests/fixtures/whouses)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moddep.whouses.trace import (
    LOAD_SITE,
    UNKNOWN_COMM,
    HeldRef,
    TraceAnalysis,
    analyze,
    parse_line,
    parse_trace,
)

FIXTURES = Path(__file__).parent / "fixtures" / "whouses"


def load(name: str, module: str | None = None) -> TraceAnalysis:
    return analyze(parse_trace((FIXTURES / name).read_text()), name, module)


def held_by_tasks(an: TraceAnalysis) -> set[tuple[str, str, int, int, tuple[tuple[str, int], ...]]]:
    return {(h.module, h.comm, h.pid, h.count, h.call_sites)
            for h in an.held if h.by_module is None}


def tally(an: TraceAnalysis, pid: int, module: str):  # noqa: ANN201 - test helper
    (t,) = [t for t in an.tasks if t.pid == pid and t.module == module]
    return t


# -- the seed scenarios -------------------------------------------------------------------
def test_vkms_trace_systemd_logind_holds_vkms_via_drm_stub_open_and_drm() -> None:
    an = load("vkms_trace_cmd_report.txt")
    logind = {h for h in held_by_tasks(an) if h[2] == 545}
    assert logind == {
        ("vkms", "systemd-logind", 545, 1, (("drm_stub_open", 1),)),
        ("drm", "systemd-logind", 545, 1, (("cdev_get", 1),)),
    }
    t = tally(an, 545, "vkms")
    assert (t.comm, t.gets, t.puts, t.net, t.get_sites) == (
        "systemd-logind", 1, 0, 1, (("drm_stub_open", 1),))
    t = tally(an, 545, "drm")
    assert (t.gets, t.puts, t.net) == (2, 1, 1)
    assert t.get_sites == (("cdev_get", 1), ("chrdev_open", 1))
    assert t.put_sites == (("drm_stub_open", 1),)


def test_vkms_trace_filtered_on_vkms_names_only_logind_as_holder() -> None:
    an = load("vkms_trace_cmd_report.txt", "vkms")
    assert an.module_filter == "vkms"
    assert an.held == (HeldRef("vkms", 545, "systemd-logind", None, 1,
                               (("drm_stub_open", 1),), "102.168297"),)
    assert {(t.comm, t.pid, t.net) for t in an.tasks} == {
        ("modprobe", 1687, 0), ("systemd-logind", 545, 1)}


def test_vkms_trace_dependency_references_belong_to_the_module_loaded_next() -> None:
    an = load("vkms_trace_cmd_report.txt", "drm")
    by_module = {(h.by_module, h.comm, h.pid, h.call_sites)
                 for h in an.held if h.by_module is not None}
    assert by_module == {("drm_kms_helper", "modprobe", 1687, (("ref_module", 1),)),
                         ("vkms", "modprobe", 1687, (("ref_module", 1),))}
    # drm's own pseudo filesystem, mounted while vkms initialised
    assert ("drm", "modprobe", 1687, 1, (("get_filesystem", 1),)) in held_by_tasks(an)


def test_vkms_trace_use_counts_agree_with_the_seeds_lsmod() -> None:
    # the post's lsmod: vkms 1, drm_kms_helper 1 (vkms), drm 4 (drm_kms_helper,vkms)
    an = load("vkms_trace_cmd_report.txt")
    nets = {m.module: m.net for m in an.modules}
    assert (nets["vkms"], nets["drm_kms_helper"], nets["drm"]) == (1, 1, 4)
    assert sum(h.count for h in an.held if h.module == "drm") == 4
    # the raw refcnt field runs one above (base reference)
    assert {m.module: m.last_refcnt for m in an.modules}["drm"] == 5
    assert all(m.present_at_end for m in an.modules)


def test_vkms_after_reboot_nobody_but_modules_and_the_drm_fs_holds() -> None:
    # after switching to multi-user.target: lsmod shows vkms 0, drm 3
    an = load("vkms_after_reboot_trace_cmd_report.txt")
    assert not [h for h in an.held if h.module == "vkms"]
    assert {m.module: m.net for m in an.modules}["drm"] == 3
    assert {(h.comm, h.pid) for h in an.held} == {("modprobe", 1101)}


def test_vkms_logind_excerpt_single_space_format() -> None:
    an = load("vkms_logind_excerpt.txt")
    assert held_by_tasks(an) == {
        ("vkms", "systemd-logind", 545, 1, (("drm_stub_open", 1),)),
        ("drm", "systemd-logind", 545, 1, (("cdev_get", 1),)),
    }


def test_testmod_trace_pipe_insmod_put_and_rmmod_free() -> None:
    an = load("testmod_trace_pipe.txt")
    insmod = tally(an, 21137, "testmod")
    assert (insmod.comm, insmod.loads, insmod.gets, insmod.puts, insmod.net) == (
        "insmod", 1, 0, 1, 0)
    assert insmod.put_sites == (("sys_init_module", 1),)
    assert insmod.get_sites == ((LOAD_SITE, 1),)
    rmmod = tally(an, 21354, "testmod")
    assert (rmmod.comm, rmmod.frees, rmmod.gets, rmmod.puts) == ("rmmod", 1, 0, 0)
    (mod,) = an.modules
    assert (mod.loaded_by, mod.freed_by, mod.present_at_end) == (
        (("insmod", 21137),), (("rmmod", 21354),), False)
    assert an.held == ()
    assert an.unknown_comms == ()


def test_testmod_trace_exited_task_shows_as_unknown_comm() -> None:
    an = load("testmod_trace.txt")
    insmod = tally(an, 21137, "testmod")
    assert (insmod.comm, insmod.puts, insmod.put_sites) == (
        UNKNOWN_COMM, 1, (("sys_init_module", 1),))
    assert tally(an, 21354, "testmod").frees == 1
    assert an.unknown_comms == (21137,)
    assert an.held == ()


def test_unknown_comm_takes_the_name_from_another_line_of_the_same_pid() -> None:
    text = ((FIXTURES / "testmod_trace.txt").read_text()
            + "          insmod-21137 [001] 28038.200000: module_request: fs-foo wait=1"
              " call_site=do_mount\n")
    an = analyze(parse_trace(text))
    assert tally(an, 21137, "testmod").comm == "insmod"
    assert an.unknown_comms == ()


def test_binfmt_misc_puts_without_gets_are_counted_not_matched() -> None:
    an = load("binfmt_misc_unfiltered.txt")
    parsed = parse_trace((FIXTURES / "binfmt_misc_unfiltered.txt").read_text())
    assert (len(parsed.events), parsed.skipped) == (5, 0)  # "..." and ".." are elisions
    assert {(t.comm, t.net, t.released_unknown) for t in an.tasks} == {
        ("tr", -1, 1), ("grep", -1, 1), ("cut", -1, 1), ("sudo", -1, 1), ("tail", -1, 1)}
    assert an.held == ()


# -- line formats -------------------------------------------------------------------------
@pytest.mark.parametrize("line, comm, pid, event, name, site, refcnt", [
    ("        modprobe-1687  [000]   102.001519: module_put:  sysimgblt"
     " call_site=do_init_module refcnt=1", "modprobe", 1687, "module_put", "sysimgblt",
     "do_init_module", 1),
    ("   <...>-21137 [001] 28038.101509: module_load: testmod",
     UNKNOWN_COMM, 21137, "module_load", "testmod", None, None),
    # newer kernels: irq/preempt flags column
    ("           modprobe-812     [003] .....    54.211093: module_get: loop"
     " call_site=try_module_get refcnt=2", "modprobe", 812, "module_get", "loop",
     "try_module_get", 2),
    # record-tgid option, %pS call site with offset and module
    ("  Web Content-4242  (   4200) [001] d..2.  77.000001: module_get: drm"
     " call_site=drm_stub_open+0x5c/0x1a0 [drm] refcnt=7", "Web Content", 4242, "module_get",
     "drm", "drm_stub_open", 7),
    ("  kworker/u8:2-99 [000] 1.500000: module_put: vhost-net call_site=0xffffffffc0a01234"
     " refcnt=1", "kworker/u8:2", 99, "module_put", "vhost_net", "0xffffffffc0a01234", 1),
    ("  modprobe-5 [000] 2.000000: module_request: fs-nfs4 wait=1 call_site=get_fs_type",
     "modprobe", 5, "module_request", "fs-nfs4", "get_fs_type", None),
])
def test_parse_line_formats(line: str, comm: str, pid: int, event: str, name: str,
                            site: str | None, refcnt: int | None) -> None:
    ev = parse_line(line)
    assert ev is not None
    assert (ev.comm, ev.pid, ev.event, ev.name, ev.call_site, ev.refcnt) == (
        comm, pid, event, name, site, refcnt)


def test_parse_line_keeps_raw_call_site_and_taints() -> None:
    ev = parse_line("  x-1 [000] 1.0: module_get: drm call_site=drm_stub_open+0x5c/0x1a0 [drm]"
                    " refcnt=7")
    assert ev is not None and ev.raw_call_site == "drm_stub_open+0x5c/0x1a0 [drm]"
    ev = parse_line("  insmod-7 [000] 1.0: module_load: testmod (OE)")
    assert ev is not None and (ev.name, ev.taints) == ("testmod", "OE")


@pytest.mark.parametrize("line", [
    "             cat-7956    [000] .....   261.965589: sched_process_exec:"
    " filename=/usr/bin/cat pid=7956 old_pid=7956",
    "# tracer: nop",
    "garbage",
])
def test_parse_line_ignores_other_lines(line: str) -> None:
    assert parse_line(line) is None


def test_parse_trace_counts_skipped_and_lost() -> None:
    text = ("cpus=2\n"
            "  a-1 [000] 1.0: sched_switch: x\n"
            "CPU:1 [LOST 42 EVENTS]\n"
            "  a-1 [000] 1.1: module_get: loop call_site=lo_open refcnt=2\n")
    parsed = parse_trace(text)
    assert (parsed.format, len(parsed.events), parsed.skipped) == ("trace-cmd report", 1, 1)
    assert parsed.lost == ("CPU:1 [LOST 42 EVENTS]",)


# -- attribution rules --------------------------------------------------------------------
def test_module_free_returns_dependency_references_of_the_freed_module() -> None:
    text = "\n".join([
        "  modprobe-10 [000] 1.0: module_load: a ",
        "  modprobe-10 [000] 1.1: module_put: a call_site=do_init_module refcnt=1",
        "  modprobe-10 [000] 1.2: module_get: a call_site=ref_module refcnt=2",
        "  modprobe-10 [000] 1.3: module_load: b ",
        "  modprobe-10 [000] 1.4: module_put: b call_site=do_init_module refcnt=1",
        "  rmmod-20 [000] 2.0: module_free: b",
        "  rmmod-20 [000] 2.1: module_put: a call_site=module_unload_free refcnt=1",
    ])
    an = analyze(parse_trace(text))
    assert an.held == ()
    assert tally(an, 20, "a").released_unknown == 0
    before_free = analyze(parse_trace("\n".join(text.splitlines()[:5])))
    assert [(h.module, h.by_module) for h in before_free.held] == [("a", "b")]


def test_failed_load_gives_back_pending_dependency_references() -> None:
    text = "\n".join([
        "  modprobe-10 [000] 1.2: module_get: a call_site=ref_module refcnt=2",
        "  modprobe-10 [000] 1.3: module_put: a call_site=module_unload_free refcnt=1",
    ])
    an = analyze(parse_trace(text))
    assert an.held == () and tally(an, 10, "a").released_unknown == 0


def test_put_releases_the_latest_reference_of_the_same_task_only() -> None:
    text = "\n".join([
        "  a-1 [000] 1.0: module_get: tun call_site=misc_open refcnt=2",
        "  b-2 [000] 1.1: module_get: tun call_site=misc_open refcnt=3",
        "  b-2 [000] 1.2: module_put: tun call_site=__fput refcnt=2",
        "  c-3 [000] 1.3: module_put: tun call_site=__fput refcnt=1",
    ])
    an = analyze(parse_trace(text))
    assert [(h.comm, h.pid, h.count) for h in an.held] == [("a", 1, 1)]
    assert tally(an, 3, "tun").released_unknown == 1


def test_module_free_drops_what_is_still_outstanding() -> None:
    text = "\n".join([
        "  a-1 [000] 1.0: module_get: m call_site=x refcnt=2",
        "  rmmod-2 [000] 1.1: module_free: m",
    ])
    an = analyze(parse_trace(text))
    assert an.held == ()
    assert an.modules[0].dropped_at_free == 1 and an.modules[0].present_at_end is False


def test_module_request_is_tallied_under_the_requested_name() -> None:
    an = analyze(parse_trace("  mount-9 [000] 1.0: module_request: fs-fuseblk wait=1"
                             " call_site=get_fs_type\n"))
    t = tally(an, 9, "fs-fuseblk")
    assert (t.requests, t.request_sites, t.net) == (1, (("get_fs_type", 1),), 0)
    assert an.modules == ()
