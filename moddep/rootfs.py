"""The staged root: target paths joined under it, with every symlink followed *inside* it.

With ``-b ROOT``, depmod reads a system image that is not running. Its paths mean what they
will mean when the image boots, so a symlink is followed the way the target will follow it: an
absolute link target starts again at ROOT, a relative one from the link's directory. The host
kernel would instead send an absolute link (``lib/modules/6.1.0/extra/x.ko ->
/lib/modules/...``, ``etc/depmod.d -> /etc/depmod.d``) to the *build host's* files, so
:meth:`Root.resolve` walks the path one component at a time (``lstat`` and ``readlink``) and
returns a host path that holds no symlink below ROOT. This is the chroot view of the image
(systemd's ``chase()`` with a root prefix does the same).

Refused, with :class:`EscapeError` (a :class:`~moddep.errors.ModdepError`): a ``..`` that
climbs above ROOT (in the path or in a link target), a path that is not absolute (a relative
target path has no meaning), link chains longer than the kernel's limit (40, ``ELOOP``; a link
``etc/depmod.d -> /etc/depmod.d`` taken inside the root points at itself), and a path that does
not exist inside the root while the host, following the same links, finds something (a link
made for the build host: ``extra -> /home/me/build/extra``). Callers report the path and skip
it.

The check is done before the path is used, so something that swaps a directory for a symlink
in between could still win that race; an image being staged is not expected to change under
depmod. ``Root(b"")`` and ``Root(b"/")`` are the running system: paths are used as given.
"""

from __future__ import annotations

import os
import stat

from moddep.errors import ModdepError

#: Linux follows at most this many symlinks while resolving one path (MAXSYMLINKS).
MAX_SYMLINKS = 40


class EscapeError(ModdepError):
    """A target path cannot be resolved inside the root (``..`` above it, a relative path, a
    symlink loop). ``path`` is the target path concerned."""


class Root:
    """A staged root directory on this machine (``basedir``, absolute, no trailing slash)."""

    def __init__(self, basedir: bytes) -> None:
        self.basedir = basedir.rstrip(b"/")

    @property
    def confined(self) -> bool:
        """Whether this is a staged root (not the running system's ``/``)."""
        return bool(self.basedir)

    def __repr__(self) -> str:
        return f"Root({self.basedir!r})"

    def join(self, target: bytes) -> bytes:
        """``target`` placed under the root lexically (no symlink followed, nothing checked)."""
        return self.basedir + b"/" + target.lstrip(b"/") if self.confined else target

    def contains(self, hostpath: bytes) -> bool:
        """Whether host path ``hostpath`` is the root or lies below it (lexically)."""
        if not self.confined:
            return True
        return hostpath == self.basedir or hostpath.startswith(self.basedir + b"/")

    def target_of(self, hostpath: bytes) -> bytes:
        """The target path of a host path below the root (``ROOT/lib/x`` -> ``/lib/x``)."""
        if not self.confined:
            return hostpath
        if not self.contains(hostpath):
            raise EscapeError(f"{os.fsdecode(hostpath)} is not inside the root "
                              f"{os.fsdecode(self.basedir)}", os.fsdecode(hostpath))
        return hostpath[len(self.basedir):] or b"/"

    def resolve(self, target: bytes, follow_last: bool = True) -> bytes:
        """The host path of target path ``target``, every symlink followed inside the root.

        Components that do not exist are kept as written (the caller's open or mkdir then
        fails or creates them inside the root). ``follow_last=False`` leaves a final symlink
        itself (as ``lstat``). Raises :class:`EscapeError` as the module documentation says.
        """
        if not self.confined:
            return target
        path = self._resolve(target, follow_last)
        if not os.path.lexists(path) and os.path.lexists(self.join(target)):
            raise EscapeError(f"{os.fsdecode(target)}: a symbolic link leads out of the root "
                              f"{os.fsdecode(self.basedir)}", os.fsdecode(target))
        return path

    def _resolve(self, target: bytes, follow_last: bool) -> bytes:
        what = os.fsdecode(target)
        if not target.startswith(b"/"):
            raise EscapeError(f"{what}: not an absolute path inside the root", what)
        done: list[bytes] = []  # resolved components below the root, none a symlink
        todo = [c for c in reversed(target.split(b"/")) if c and c != b"."]
        links = 0
        missing = False  # a component did not exist: the rest is taken as written
        while todo:
            name = todo.pop()
            if name == b"..":
                if not done:
                    raise EscapeError(f"{what}: '..' leads out of the root", what)
                done.pop()
                continue
            if missing:
                done.append(name)
                continue
            host = self.basedir + b"/" + b"/".join(done + [name])
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                missing = True
                done.append(name)
                continue
            except NotADirectoryError:
                missing = True  # below a file: opening it fails as it would on the target
                done.append(name)
                continue
            if not stat.S_ISLNK(st.st_mode) or (not todo and not follow_last):
                done.append(name)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise EscapeError(f"{what}: too many levels of symbolic links (absolute links "
                              "are followed inside the root)", what)
            link = os.readlink(host)
            if link.startswith(b"/"):
                done = []  # absolute: from the root of the image, not of this machine
            todo.extend(c for c in reversed(link.split(b"/")) if c and c != b".")
        return self.basedir + (b"/" + b"/".join(done) if done else b"")

    def resolve_host(self, hostpath: bytes, follow_last: bool = True) -> bytes:
        """:meth:`resolve` for a host path below the root (e.g. a directory entry found while
        walking a resolved directory)."""
        if not self.confined:
            return hostpath
        return self.resolve(self.target_of(hostpath), follow_last)
