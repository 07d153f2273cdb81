"""Gather, from sysfs and procfs under ``root``, everything that tells who holds a module.

:func:`gather` reads (paths relative to ``root``, ``/`` on a live system):

==================  ===========================================  ==============================
source              files                                        proves
==================  ===========================================  ==============================
state, refcnt       /sys/module/M/initstate, refcnt              loaded?, the lsmod use count
holders             /sys/module/M/holders/*                      modules linked against M
processes (fd)      /proc/PID/fd/* (stat: st_rdev), comm         an open device file of M
processes (mmap)    /proc/PID/maps, map_files/*                  a device of M mapped (no fd)
mounts              /proc/PID/mountinfo (one per mount ns),      a superblock of a filesystem
                    else /proc/mounts                            type M provides, or on a
                                                                 block device of M
block devices       /sys/dev/block/*, /sys/block/N/loop/         a bound loop device, a
                    backing_file, /sys/class/block/N/holders/*,  stacked holder (dm, md), a
                    /proc/swaps                                  swap area on a device of M
sockets             /proc/net/protocols (module, sockets)        open sockets of M's protocol
interfaces          /sys/class/net/N/device/driver/module,       network interfaces M drives
                    tun_flags, bridge/, bonding/, uevent          (they go away with M; they
                    DEVTYPE, ethtool driver (live only)           hold no reference)
==================  ===========================================  ==============================

Which module owns a device is decided in :mod:`moddep.whouses.devices`. Filesystem types a
module provides: the type named like the module (``fuse``), or an ``alias fs-<type> M`` line
in ``modules.alias`` (``fs-fuseblk`` -> ``fuse``); ``fuse.sshfs`` counts as type ``fuse``.

Two seams touch the live kernel, both replaceable for tests: ``device_of`` (an fd or
map_files link -> device number; live: ``stat`` through the magic link) and ``driver_of``
(interface -> ethtool driver name; live only). With a ``root`` other than ``/``, links are
resolved under ``root`` and ethtool is not asked.

Not covered (use ``moddep who-uses --trace``): references taken by kernel code without a
file (timers, workqueues, other modules' ``try_module_get`` on callbacks), sockets of
protocol modules in other network namespaces, files in other processes' private trees that
are not devices (e.g. a binfmt_misc interpreter), and anything hidden by permissions.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import stat
import struct
from pathlib import Path
from typing import Callable, Optional

from moddep.whouses.aliases import ModuleTables, load_tables
from moddep.whouses.devices import DeviceOwners
from moddep.whouses.fs import Denied, listdir, pids, read_text, readlink, shown
from moddep.whouses.model import (
    BlockUse,
    DevNum,
    Evidence,
    HolderUse,
    MountUse,
    NetdevUse,
    ProcessUse,
    SocketUse,
    module_name,
)

DeviceOf = Callable[[Path], Optional[DevNum]]
DriverOf = Callable[[str], Optional[str]]


# -- seams to the live kernel -------------------------------------------------------------
def stat_device(link: Path) -> Optional[DevNum]:
    """Device number of the file behind ``link`` (followed), ``None`` if not a device."""
    try:
        st = os.stat(link)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        return DevNum("c", os.major(st.st_rdev), os.minor(st.st_rdev))
    if stat.S_ISBLK(st.st_mode):
        return DevNum("b", os.major(st.st_rdev), os.minor(st.st_rdev))
    return None


def device_under_root(root: Path) -> DeviceOf:
    """A ``device_of`` for a tree at ``root``: the link's absolute target is taken under root."""

    def device_of(link: Path) -> Optional[DevNum]:
        target = readlink(link)
        if not target or not target.startswith("/"):
            return None
        return stat_device(root / target.lstrip("/"))

    return device_of


# struct ethtool_drvinfo (include/uapi/linux/ethtool.h): u32 cmd; char driver[32]; ... 196 bytes
_SIOCETHTOOL = 0x8946
_ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO_SIZE = 196


def ethtool_driver(ifname: str) -> Optional[str]:
    """The driver name ``ethtool -i IFNAME`` shows (SIOCETHTOOL/ETHTOOL_GDRVINFO), or None."""
    buf = ctypes.create_string_buffer(_DRVINFO_SIZE)
    struct.pack_into("I", buf, 0, _ETHTOOL_GDRVINFO)
    ifreq = struct.pack("16sP", ifname.encode("utf-8", "surrogateescape")[:15],
                        ctypes.addressof(buf))
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), _SIOCETHTOOL, ifreq)
    except OSError:
        return None
    name = buf.raw[4:36].split(b"\0", 1)[0].decode("utf-8", "replace")
    return name or None


# -- module state -------------------------------------------------------------------------
def _state(root: Path, name: str, tables: ModuleTables) -> tuple[str, Optional[int]]:
    moddir = root / "sys/module" / name
    initstate = read_text(moddir / "initstate")
    refcnt_text = read_text(moddir / "refcnt")
    refcnt = int(refcnt_text) if refcnt_text and refcnt_text.strip().isdigit() else None
    if initstate:
        return initstate.strip(), refcnt
    # kmod_module_get_initstate(): /sys/module/M without initstate is a built-in module
    if moddir.is_dir() or name in tables.builtin:
        return "builtin", refcnt
    return "not loaded", refcnt


def _holders(root: Path, name: str) -> list[HolderUse]:
    base = root / "sys/module" / name / "holders"
    return [HolderUse(module_name(h), shown(root, base / h)) for h in listdir(base)]


# -- processes ----------------------------------------------------------------------------
def _comm(root: Path, pid: int) -> str:
    try:
        text = read_text(root / "proc" / str(pid) / "comm")
    except Denied:
        text = None
    return (text or "?").rstrip("\n")


def process_names(root: Path, pids: list[int]) -> dict[int, str]:
    """``/proc/PID/comm`` of those of ``pids`` still running."""
    names = {}
    for pid in pids:
        try:
            text = read_text(root / "proc" / str(pid) / "comm")
        except Denied:
            text = None
        if text:
            names[pid] = text.rstrip("\n")
    return names


def _process_uses(root: Path, name: str, owners: DeviceOwners, device_of: DeviceOf,
                  notes: list[str]) -> list[ProcessUse]:
    found: list[ProcessUse] = []
    denied = 0
    for pid in pids(root):
        piddir = root / "proc" / str(pid)
        try:
            fds = listdir(piddir / "fd")
        except Denied:
            denied += 1
            continue
        links: list[tuple[str, Path]] = [
            (f"fd {fd}", piddir / "fd" / fd) for fd in sorted(fds, key=_fd_order)]
        try:
            maps = read_text(piddir / "maps") or ""
        except Denied:
            maps = ""
        seen_maps: set[str] = set()
        for line in maps.splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/dev/") and parts[0] not in seen_maps:
                seen_maps.add(parts[0])
                links.append((f"map {parts[0]}", piddir / "map_files" / parts[0]))
        comm: Optional[str] = None
        for handle, link in links:
            dev = device_of(link)
            if dev is None:
                continue
            owner = owners.owner(dev, name)
            if owner is None:
                continue
            if comm is None:
                comm = _comm(root, pid)
            try:
                target = readlink(link) or "?"
            except Denied:
                target = "?"
            found.append(ProcessUse(pid, comm, handle, target, dev, owner.via,
                                    shown(root, link)))
    if denied:
        notes.append(f"{denied} processes could not be examined (/proc/PID/fd: permission"
                     " denied); run as root to see all of them")
    return found


def _fd_order(name: str) -> tuple[int, str]:
    return (int(name), "") if name.isdigit() else (1 << 62, name)


# -- mounts -------------------------------------------------------------------------------
def _unescape(field: str) -> str:
    """Undo the octal escapes (``\\040``) /proc uses for spaces and the like in paths."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def fs_provider_via(name: str, fstype: str, tables: ModuleTables) -> Optional[str]:
    """Why filesystem type ``fstype`` belongs to module ``name``, or ``None`` if it does not."""
    base = fstype.split(".", 1)[0]  # fuse.sshfs: type fuse, subtype sshfs
    if module_name(base) == name:
        return f"filesystem type '{base}' is the module's name"
    lines = tables.alias_lines(f"fs-{base}", name)
    if lines:
        return "modules.alias: " + "; ".join(lines)
    return None


def _mount_uses(root: Path, name: str, owners: DeviceOwners, tables: ModuleTables,
                ) -> list[MountUse]:
    found: list[MountUse] = []
    namespaces: set[str] = set()
    for pid in pids(root):
        piddir = root / "proc" / str(pid)
        try:
            ns = readlink(piddir / "ns" / "mnt") or f"pid {pid}"
            text = read_text(piddir / "mountinfo")
        except Denied:
            continue
        if text is None or ns in namespaces:
            continue
        namespaces.add(ns)
        for lineno, line in enumerate(text.splitlines(), 1):
            use = _mountinfo_use(line, name, owners, tables)
            if use:
                fstype, source, mountpoint, via = use
                found.append(MountUse(fstype, source, mountpoint, pid, via,
                                      f"{shown(root, piddir / 'mountinfo')}:{lineno}"))
    if not namespaces:  # no per-process mountinfo: fall back to the system-wide table
        try:
            text = read_text(root / "proc/mounts") or ""
        except Denied:
            text = ""
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if len(parts) >= 3:
                fs_via = fs_provider_via(name, parts[2], tables)
                if fs_via:
                    found.append(MountUse(parts[2], _unescape(parts[0]), _unescape(parts[1]),
                                          0, fs_via, f"/proc/mounts:{lineno}"))
    return found


def _mountinfo_use(line: str, name: str, owners: DeviceOwners, tables: ModuleTables,
                   ) -> Optional[tuple[str, str, str, str]]:
    # 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    left, sep, right = line.partition(" - ")
    lparts, rparts = left.split(), right.split()
    if not sep or len(lparts) < 5 or len(rparts) < 2:
        return None
    fstype, source, mountpoint = rparts[0], _unescape(rparts[1]), _unescape(lparts[4])
    via = fs_provider_via(name, fstype, tables)
    if via is None:
        maj, _, minor = lparts[2].partition(":")
        if maj.isdigit() and minor.isdigit() and int(maj) != 0:
            dev = DevNum("b", int(maj), int(minor))
            owner = owners.owner(dev, name)
            if owner:
                via = f"on block device {dev}: {owner.via}"
    if via is None:
        return None
    return fstype, source, mountpoint, via


# -- block devices ------------------------------------------------------------------------
def _block_uses(root: Path, name: str, owners: DeviceOwners) -> list[BlockUse]:
    found: list[BlockUse] = []
    mine: set[str] = set()
    for dev, bname in owners.block_devices():
        if owners.owner(dev, name) is None:
            continue
        mine.add(bname)
        # loop_configure() takes a module reference while a file is bound (drivers/block/loop.c)
        backing = root / "sys/block" / bname / "loop/backing_file"
        try:
            text = read_text(backing)
        except Denied:
            text = None
        if text and text.strip():
            found.append(BlockUse(bname, f"bound to {text.strip()}", shown(root, backing)))
        holders = root / "sys/class/block" / bname / "holders"
        try:
            names = listdir(holders)
        except Denied:
            names = []
        for holder in names:
            found.append(BlockUse(bname, f"held open by {holder}", shown(root, holders / holder)))
    if mine:
        try:
            swaps = read_text(root / "proc/swaps") or ""
        except Denied:
            swaps = ""
        for lineno, line in enumerate(swaps.splitlines(), 1):
            parts = line.split()
            if lineno > 1 and parts and parts[0].startswith("/dev/"):
                bname = parts[0].rsplit("/", 1)[-1]
                if bname in mine:
                    found.append(BlockUse(bname, "swap area", f"/proc/swaps:{lineno}"))
    return found


# -- sockets ------------------------------------------------------------------------------
def _socket_uses(root: Path, name: str) -> list[SocketUse]:
    try:
        text = read_text(root / "proc/net/protocols") or ""
    except Denied:
        return []
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split()
    if "module" not in header or "sockets" not in header:
        return []
    i_mod, i_sock = header.index("module"), header.index("sockets")
    found = []
    for lineno, line in enumerate(lines[1:], 2):
        parts = line.split()
        if len(parts) <= max(i_mod, i_sock) or module_name(parts[i_mod]) != name:
            continue
        count = int(parts[i_sock]) if parts[i_sock].isdigit() else 0
        if count > 0:
            found.append(SocketUse(parts[0], count, f"/proc/net/protocols:{lineno}"))
    return found


# -- network interfaces -------------------------------------------------------------------
# sysfs entries only one driver creates: (entry, module). tun: tun_flags (drivers/net/tun.c);
# bridge: bridge/ (net/bridge/br_sysfs_br.c); bonding: bonding/ (drivers/net/bonding).
_NETDEV_MARKERS = (("tun_flags", "tun"), ("bridge", "bridge"), ("bonding", "bonding"))


def _netdev_via(root: Path, ifname: str, name: str, tables: ModuleTables,
                driver_of: Optional[DriverOf]) -> Optional[tuple[str, str]]:
    base = root / "sys/class/net" / ifname
    link = readlink(base / "device/driver/module")
    if link and module_name(link.rsplit("/", 1)[-1]) == name:
        path = base / "device/driver/module"
        return f"device/driver/module -> {name}", shown(root, path)
    for entry, mod in _NETDEV_MARKERS:
        if mod == name and os.path.lexists(base / entry):
            return f"{entry} exists only for {mod} interfaces", shown(root, base / entry)
    uevent = read_text(base / "uevent") or ""
    for line in uevent.splitlines():
        if line.startswith("DEVTYPE="):
            kind = line.split("=", 1)[1].strip()
            if module_name(kind) == name:
                return f"DEVTYPE={kind}", shown(root, base / "uevent")
            lines = tables.alias_lines(f"rtnl-link-{kind}", name)
            if lines:
                return f"DEVTYPE={kind}, modules.alias: {lines[0]}", shown(root, base / "uevent")
    if driver_of is not None:
        driver = driver_of(ifname)
        if driver and module_name(driver) == name:
            return f"ethtool driver '{driver}'", f"SIOCETHTOOL {ifname}"
    return None


def _netdev_uses(root: Path, name: str, tables: ModuleTables,
                 driver_of: Optional[DriverOf]) -> list[NetdevUse]:
    found = []
    for ifname in listdir(root / "sys/class/net"):
        try:
            hit = _netdev_via(root, ifname, name, tables, driver_of)
        except Denied:
            continue
        if hit:
            found.append(NetdevUse(ifname, hit[0], hit[1]))
    return found


# -- all together -------------------------------------------------------------------------
def gather(module: str, root: Path = Path("/"), *, device_of: Optional[DeviceOf] = None,
           driver_of: Optional[DriverOf] = None, tables: Optional[ModuleTables] = None,
           ) -> Evidence:
    """Everything ``root``'s /sys and /proc tell about who holds ``module``.

    ``device_of`` and ``driver_of`` default to the live kernel when ``root`` is ``/``
    (see the module docstring); ``tables`` default to the running release's depmod output.
    Never raises for missing or unreadable files: they become ``notes``.
    """
    name = module_name(module)
    live = root == Path("/")
    if device_of is None:
        device_of = stat_device if live else device_under_root(root)
    if driver_of is None and live:
        driver_of = ethtool_driver
    if tables is None:
        tables = load_tables(root)
    notes: list[str] = []
    owners = DeviceOwners(root, tables)
    try:
        state, refcnt = _state(root, name, tables)
    except Denied as exc:
        state, refcnt = "unknown", None
        notes.append(f"{exc}: permission denied")
    holders: tuple[HolderUse, ...] = ()
    processes: tuple[ProcessUse, ...] = ()
    blocks: tuple[BlockUse, ...] = ()
    interfaces: tuple[NetdevUse, ...] = ()
    try:
        holders = tuple(_holders(root, name))
    except Denied as exc:
        notes.append(f"{shown(root, Path(str(exc)))}: permission denied")
    try:
        processes = tuple(_process_uses(root, name, owners, device_of, notes))
    except Denied as exc:
        notes.append(f"{shown(root, Path(str(exc)))}: permission denied")
    mounts = tuple(_mount_uses(root, name, owners, tables))
    try:
        blocks = tuple(_block_uses(root, name, owners))
    except Denied as exc:
        notes.append(f"{shown(root, Path(str(exc)))}: permission denied")
    sockets = tuple(_socket_uses(root, name))
    try:
        interfaces = tuple(_netdev_uses(root, name, tables, driver_of))
    except Denied as exc:
        notes.append(f"{shown(root, Path(str(exc)))}: permission denied")
    notes.extend(tables.notes)
    return Evidence(name, state, refcnt, holders, processes, mounts, blocks, sockets,
                    interfaces, tuple(notes))
