"""map_files: every process takes batches from one queue; results come back in input order."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from moddep.parallel import _batches, map_files


def _tagged(path: bytes) -> tuple[bytes, int]:
    return path.upper(), os.getpid()


@pytest.mark.parametrize("jobs", [1, 2, 3])
@pytest.mark.parametrize("weighted", [False, True])
def test_results_in_input_order_for_any_jobs(jobs: int, weighted: bool) -> None:
    paths = [b"m%04d" % i for i in range(500)]
    weights = [(i * 7919) % 1000 for i in range(500)] if weighted else None
    out = map_files(_tagged, paths, jobs, weights=weights)
    assert [r for r, _pid in out] == [p.upper() for p in paths]
    # (which processes took batches depends on scheduling: a child may take them all)
    assert len({pid for _r, pid in out}) <= jobs


def test_a_slow_process_takes_fewer_batches() -> None:
    """The parent is made slow; the child takes over most of the batches."""
    parent = os.getpid()

    def slow_in_parent(path: bytes) -> int:
        if os.getpid() == parent:
            for _ in range(20000):
                pass
        return os.getpid()

    out = map_files(slow_in_parent, [b"x"] * 2000, 2)
    assert out.count(parent) < len(out) // 3


@pytest.mark.parametrize("jobs", [1, 2])
def test_side_work_runs_once_in_the_parent_during_the_map(jobs: int, tmp_path: Path) -> None:
    """``side`` runs in the calling process (its effects stay), once, whatever the jobs; while
    it runs, the other process goes on taking batches."""
    parent = os.getpid()
    ran: list[int] = []
    child_ran = tmp_path / "child-ran"

    def tagged(path: bytes) -> tuple[bytes, int]:
        if os.getpid() != parent:
            child_ran.touch()
        return _tagged(path)

    def side() -> None:
        ran.append(os.getpid())
        # busy until a child has taken a batch (however late it is scheduled), at most 10 s
        deadline = time.monotonic() + 10
        while jobs > 1 and not child_ran.exists() and time.monotonic() < deadline:
            time.sleep(0.001)

    out = map_files(tagged, [b"p%d" % i for i in range(400)], jobs, side=side)
    assert ran == [parent]
    assert [r for r, _pid in out] == [b"P%d" % i for i in range(400)]
    if jobs > 1:
        assert any(pid != parent for _r, pid in out)


def test_batches_cover_every_index_once() -> None:
    weights = [i % 97 * 1000 for i in range(4000)]
    batches = _batches(4000, 2, weights)
    assert sorted(i for b in batches for i in b) == list(range(4000))
    assert 2 < len(batches) <= 48
    assert weights[batches[0][0]] == max(weights)  # heaviest first


def test_child_error_reaches_the_parent() -> None:
    parent = os.getpid()

    def fail_in_child(path: bytes) -> bytes:
        if os.getpid() != parent:
            raise ValueError("boom in child")
        for _ in range(20000):  # leave batches for the child
            pass
        return path

    with pytest.raises(ValueError, match="boom in child"):
        map_files(fail_in_child, [b"x"] * 1000, 2)


@pytest.mark.parametrize("jobs", [1, 2])
def test_progress_rises_and_ends_at_the_total(jobs: int) -> None:
    seen: list[tuple[int, int]] = []

    def slow_upper(path: bytes) -> bytes:
        time.sleep(0.0002)  # (so that a busy machine cannot let one process take every batch)
        return path.upper()

    map_files(slow_upper, [b"m%d" % i for i in range(700)], jobs,
              progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (700, 700)
    counts = [done for done, _total in seen]
    assert counts == sorted(counts) and all(total == 700 for _d, total in seen)
    assert len(seen) > 2  # reported along the way, not only at the end


def test_progress_bar_draws_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from moddep.tools.depmod import progress_bar

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Tty()
    monkeypatch.setattr("sys.stderr", term)
    show = progress_bar("depmod", delay=0)
    assert show is not None
    show(50, 200)
    show(200, 200)
    out = term.getvalue()
    assert "\rdepmod: [" in out and "50/200 modules" in out and out.endswith("200/200 modules\n")
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_bar("depmod", delay=0) is None


def test_many_jobs_do_not_overfill_the_queue() -> None:
    """The batch numbers are written to a pipe before anyone reads: however many processes
    are asked for, they must fit in its buffer (64 KiB on Linux)."""
    assert len(_batches(100000, 100000, None)) * 4 <= 16384
    out = map_files(bytes.upper, [b"m%d" % i for i in range(70)], 100)  # 70 batches at most
    assert out == [b"M%d" % i for i in range(70)]


@pytest.mark.parametrize("jobs", [2, 3])
def test_results_larger_than_a_pipe_come_back_whole(jobs: int) -> None:
    """Workers send each batch as they finish it, through pipes far smaller than all the
    results: the parent takes them in between its own batches and at the end, in order."""
    parent = os.getpid()

    def big(path: bytes) -> bytes:
        if os.getpid() == parent:
            time.sleep(0.001)  # leave the others many batches
        return path * 5000

    paths = [b"%05d" % i for i in range(600)]
    out = map_files(big, paths, jobs)
    assert out == [p * 5000 for p in paths]
    assert sum(map(len, out)) > 8 * (1 << 20)


def test_a_worker_dying_without_results_is_an_error() -> None:
    parent = os.getpid()

    def die_in_child(path: bytes) -> bytes:
        if os.getpid() != parent:
            os._exit(3)
        time.sleep(0.0005)
        return path

    with pytest.raises(RuntimeError, match="ended without its results"):
        map_files(die_in_child, [b"x"] * 1000, 2)


def test_fork_join_then_runs_after_the_hand_over(tmp_path: Path) -> None:
    """``then`` work runs in the process that ran the task, after its result was handed
    over; as a library the children are waited for before fork_join returns."""
    from moddep.parallel import fork_join

    def mark(name: str) -> None:
        (tmp_path / f"{name}-{os.getpid()}").touch()

    out = fork_join([lambda: os.getpid(), lambda: os.getpid()], 2,
                    [lambda: mark("a"), lambda: mark("b")])
    assert out[0] == os.getpid() and out[1] != os.getpid()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"a-{out[0]}", f"b-{out[1]}"])
    assert fork_join([lambda: 1, lambda: 2], 1, [None, lambda: mark("c")]) == [1, 2]
    assert (tmp_path / f"c-{os.getpid()}").exists()


def test_fork_join_leaves_then_work_to_finish_before_exit(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         ) -> None:
    """In a process that leaves with os._exit, fork_join returns as soon as the results are
    in; the children's ``then`` work is waited for by reap_children (before leaving)."""
    from moddep import diag
    from moddep.parallel import fork_join

    monkeypatch.setattr(diag, "_kept_until_exit", [])
    done = tmp_path / "done"

    def slow_store() -> None:
        time.sleep(0.5)
        done.touch()

    start = time.monotonic()
    assert fork_join([lambda: 1, lambda: 2], 2, [None, slow_store]) == [1, 2]
    assert time.monotonic() - start < 0.45 and not done.exists()
    diag.reap_children()
    assert done.exists()


def test_fork_join_parent_failure_does_not_wait_on_a_blocked_child() -> None:
    """When this process's own task fails, a child whose result is larger than its pipe
    cannot stay blocked on writing it: fork_join raises (and has reaped the child)."""
    from moddep.parallel import fork_join

    def fail() -> bytes:
        raise ValueError("own task failed")

    start = time.monotonic()
    with pytest.raises(ValueError, match="own task failed"):
        fork_join([fail, lambda: b"x" * (8 << 20)], 2)
    assert time.monotonic() - start < 10
