"""Atomic publication of an index set (the only place depmod writes).

Each file is written to a temporary file in the output directory, flushed and fsynced; only
when every file of the set is on disk are they renamed into place. To make the *set* atomic
across a crash (SIGKILL or power loss between two renames), the list of pending renames is
first committed as a journal (itself written atomically); whoever runs next — another depmod,
verify — finishes the journal (roll forward) before reading or writing. So after any crash
the directory holds either the complete previous set or, once recovered, the complete new one;
a crash before the journal is committed leaves only stray temporary files, removed on recovery.

kmod (30..34.2) renames each file right after writing it and does not fsync (KMOD_NOTES §11).
File mode follows kmod: 0644 reduced by the umask.
"""

from __future__ import annotations

import _thread
import errno
import fcntl
import os
from typing import Iterator, Mapping

from moddep.errors import PublishError

JOURNAL = ".moddep-journal"
TMP_MARK = ".moddep-tmp."


def _fsync_dir(dfd: int) -> None:
    try:
        os.fsync(dfd)
    except OSError as e:  # some filesystems refuse fsync on directories
        if e.errno not in (errno.EINVAL, errno.EBADF):
            raise


def _write_file(dfd: int, name: str, data: bytes) -> int:
    """Create ``name`` with ``data``; returns its open descriptor, not yet fsynced."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except BaseException:
        os.close(fd)
        raise
    return fd


def _fsync_all(fds: list[int]) -> None:
    """fsync every descriptor, all at once: one thread each (fsync releases the GIL), so the
    filesystem can commit them together rather than one journal commit per file (a third of
    the time here). Raises the first failure."""
    errors: list[OSError] = []

    def sync(fd: int, done: _thread.LockType) -> None:
        try:
            os.fsync(fd)
        except OSError as e:
            errors.append(e)
        finally:
            done.release()

    waits = []
    for fd in fds:
        done = _thread.allocate_lock()
        done.acquire()  # released when this file is synced
        try:
            _thread.start_new_thread(sync, (fd, done))
        except RuntimeError:  # no more threads: this one does it
            sync(fd, done)
        waits.append(done)
    for done in waits:
        done.acquire()
    if errors:
        raise errors[0]


def _plain(name: str) -> bool:
    """A file name of this directory: no path separator, not ``.``/``..``, not hidden."""
    return bool(name) and "/" not in name and "\0" not in name and not name.startswith(".")


def _journal_entries(dfd: int) -> list[tuple[str, str]]:
    """The pending renames. The journal comes from the directory, which a staged image
    controls, so only renames of our own temporary files to plain names in this directory are
    taken (never a path elsewhere), and a journal that is a symlink is not followed."""
    try:
        fd = os.open(JOURNAL, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dfd)
    except OSError:  # none, or a symlink (ELOOP)
        return []
    with os.fdopen(fd, "rb") as f:
        raw = f.read()
    out = []
    for line in raw.decode("utf-8", "surrogateescape").splitlines():
        tmp, _, final = line.partition("\t")
        if tmp.startswith(TMP_MARK) and _plain(tmp[1:]) and _plain(final):
            out.append((tmp, final))
    return out


def recover(directory: str) -> list[str]:
    """Finish an interrupted publication in ``directory``; returns the files completed."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return []
    try:
        with _locked(dfd):
            return _recover(dfd)
    finally:
        os.close(dfd)


def _recover(dfd: int) -> list[str]:
    done = []
    for tmp, final in _journal_entries(dfd):
        try:
            os.rename(tmp, final, src_dir_fd=dfd, dst_dir_fd=dfd)
            done.append(final)
        except FileNotFoundError:
            pass  # already renamed before the crash
    if done:
        _fsync_dir(dfd)
    try:
        os.unlink(JOURNAL, dir_fd=dfd)
        _fsync_dir(dfd)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
    for name in os.listdir(dfd):
        if name.startswith(TMP_MARK):
            try:
                os.unlink(name, dir_fd=dfd)
            except FileNotFoundError:
                pass
    return done


class _locked:
    """An exclusive flock on the directory itself, so concurrent runs serialise (no lock file
    is left behind in the module directory)."""

    def __init__(self, dfd: int) -> None:
        self.dfd = dfd

    def __enter__(self) -> _locked:
        fcntl.flock(self.dfd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.dfd, fcntl.LOCK_UN)


def publish(directory: str, files: Mapping[str, bytes]) -> None:
    """Replace ``files`` in ``directory`` as one set (created with mode 0755 if missing)."""
    try:
        os.makedirs(directory, 0o755, exist_ok=True)
    except OSError as e:
        raise PublishError(f"could not create directory {directory}: {e.strerror}") from None
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise PublishError(f"could not open directory {directory}: {e.strerror}") from None
    try:
        with _locked(dfd):
            _recover(dfd)
            _publish(dfd, directory, files)
    finally:
        os.close(dfd)


def _tmpnames(files: Mapping[str, bytes]) -> Iterator[tuple[str, str, bytes]]:
    pid = os.getpid()
    for name, data in files.items():
        yield f"{TMP_MARK}{name}.{pid}", name, data


def _unchanged(dfd: int, files: Mapping[str, bytes]) -> bool:
    """Whether every file already holds exactly this content (then nothing is written)."""
    for name, data in files.items():
        try:
            fd = os.open(name, os.O_RDONLY, dir_fd=dfd)
        except OSError:
            return False
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size != len(data) or f.read() != data:
                return False
    return True


def _publish(dfd: int, directory: str, files: Mapping[str, bytes]) -> None:
    if _unchanged(dfd, files):
        return
    pending = list(_tmpnames(files))
    journal = "".join(f"{tmp}\t{name}\n" for tmp, name, _ in pending).encode(
        "utf-8", "surrogateescape")
    jtmp = f"{TMP_MARK}{JOURNAL}.{os.getpid()}"
    written = []
    fds: list[int] = []
    try:
        try:
            for tmp, data in [(tmp, data) for tmp, _name, data in pending] + [(jtmp, journal)]:
                fds.append(_write_file(dfd, tmp, data))
                written.append(tmp)
            _fsync_all(fds)  # every file and the journal on disk before the commit
        finally:
            for fd in fds:
                os.close(fd)
        _fsync_dir(dfd)
        os.rename(jtmp, JOURNAL, src_dir_fd=dfd, dst_dir_fd=dfd)  # the commit point
        _fsync_dir(dfd)
    except OSError as e:
        for tmp in written:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
        raise PublishError(f"could not write index files in {directory}: {e.strerror}") from None
    try:
        _recover(dfd)
    except OSError as e:
        raise PublishError(f"could not rename index files in {directory}: {e.strerror}; "
                           f"the next run completes them") from None
