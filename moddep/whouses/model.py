"""Frozen records of the "what is using this module?" answer.

Every record names the file or link that proved it (``evidence``), written as the path the
running system would show (``/proc/545/fd/12``), never as the path inside a fake test root.
The pipeline that fills them lives in :mod:`moddep.whouses.evidence` (sysfs, procfs) and
:mod:`moddep.whouses.trace` (module trace events); :mod:`moddep.whouses.report` renders them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

from moddep.modinfo import path_to_modname


def module_name(name: str) -> str:
    """The kernel's spelling of a module name: ``-`` becomes ``_``, a ``.ko`` path its stem.

    The one normalisation of the project (:func:`moddep.modinfo.path_to_modname`, kmod's
    ``modname_normalize``), for text: the kernel keeps ``KBUILD_MODNAME`` with underscores,
    so ``vhost-net`` and ``vhost_net`` are one module.
    """
    return os.fsdecode(path_to_modname(os.fsencode(name)))


class DevNum(NamedTuple):
    """A device number: ``kind`` is ``"c"`` (character) or ``"b"`` (block)."""

    kind: str
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.kind} {self.major}:{self.minor}"


@dataclass(frozen=True)
class Owner:
    """One way a device was found to belong to ``module``; ``via`` says how, citing files."""

    module: str
    via: str


@dataclass(frozen=True)
class HolderUse:
    """Another module depends on this one: ``/sys/module/M/holders/<module>``."""

    module: str
    evidence: str


@dataclass(frozen=True)
class ProcessUse:
    """A process has a device file of the module open (``fd``) or mapped (``map``)."""

    pid: int
    comm: str
    handle: str  # "fd 12" or "map 7f12a000-7f12b000"
    file: str  # the link text: what the process sees, e.g. /dev/dri/card0
    device: DevNum
    via: str  # how the device was tied to the module
    evidence: str  # /proc/PID/fd/N or /proc/PID/map_files/RANGE


@dataclass(frozen=True)
class MountUse:
    """A mount of a filesystem the module provides, or on a block device it drives."""

    fstype: str
    source: str
    mountpoint: str
    pid: int  # one process in whose mount namespace the mount is visible
    via: str
    evidence: str  # /proc/PID/mountinfo:LINE


@dataclass(frozen=True)
class BlockUse:
    """A block device of the module kept busy: a bound loop device, a holder, a swap area."""

    device: str
    use: str
    evidence: str


@dataclass(frozen=True)
class SocketUse:
    """Open sockets of a protocol the module provides (``/proc/net/protocols``)."""

    protocol: str
    sockets: int
    evidence: str


@dataclass(frozen=True)
class NetdevUse:
    """A network interface the module drives (informational: it goes with the module)."""

    name: str
    via: str
    evidence: str


@dataclass(frozen=True)
class Evidence:
    """Everything the running system tells about who holds ``module``.

    ``state`` is the content of ``/sys/module/M/initstate`` (``live``, ``coming``,
    ``going``), ``builtin``, or ``not loaded``. ``refcnt`` is ``/sys/module/M/refcnt`` (the
    count lsmod shows), ``None`` when there is no such file. ``notes`` say what could not be
    examined and why (permissions, missing files), so an empty answer is never silent.
    """

    module: str
    state: str
    refcnt: Optional[int]
    holders: tuple[HolderUse, ...] = ()
    processes: tuple[ProcessUse, ...] = ()
    mounts: tuple[MountUse, ...] = ()
    block_devices: tuple[BlockUse, ...] = ()
    sockets: tuple[SocketUse, ...] = ()
    interfaces: tuple[NetdevUse, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def unexplained(self) -> Optional[int]:
        """References not accounted for by holder modules (each holder takes one)."""
        if self.refcnt is None:
            return None
        return max(self.refcnt - len(self.holders), 0)
