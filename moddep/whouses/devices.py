"""Which module a device number belongs to, with the files that say so.

An open device file holds a reference on the module that owns its file operations: for a
character device the ``cdev`` owner and the driver's ``fops->owner``, for a block device the
disk's ``fops->owner``. The kernel exports no "owner module" per device, so it is found from
what sysfs and depmod's tables do export, strongest first (:data:`SOURCES`):

1. ``driver``: ``/sys/dev/{char,block}/MAJ:MIN`` is a link to the device; the first directory
   from there up that has a ``driver`` link names the module in ``driver/module``
   (``/sys/devices/.../virtio1/driver/module -> virtio_blk``). A driver without ``module``
   link is built in: the walk stops there.
2. ``devname``: ``modules.devname`` lists the node a module creates (``tun net/tun c10:200``).
3. ``alias``: ``modules.alias`` ``char-major-M-N`` / ``block-major-M-*`` patterns, from the
   modules' ``MODULE_ALIAS_CHARDEV*``/``BLOCKDEV*`` (``block-major-7-*`` -> ``loop``).
4. ``major``: the name the major was registered under, from ``/proc/devices`` (``226 drm``,
   block ``7 loop``): by convention the module's name. Not used for major 10 (``misc``),
   shared by many modules.
5. ``name``: the device's own name or that of its ``device`` parent, matched against module
   names: misc devices (``/sys/devices/virtual/misc/tun``, also found through
   ``/sys/class/misc/*/dev``) and platform devices without a driver
   (``/sys/devices/platform/vkms/drm/card0``). Weakest: a name match, said so in ``via``.

A device can belong to several modules (a DRM card: ``drm`` by its major, the driver by its
device); all are returned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from moddep.whouses.aliases import ModuleTables
from moddep.whouses.fs import Denied, listdir, read_text, readlink, resolve_within, shown
from moddep.whouses.model import DevNum, Owner, module_name

MISC_MAJOR = 10  # include/uapi/linux/major.h
_KIND_DIR = {"c": "char", "b": "block"}
_PROC_DEVICES_SECTION = {"Character devices:": "c", "Block devices:": "b"}


def parse_proc_devices(text: str) -> dict[tuple[str, int], str]:
    """``/proc/devices`` as ``{(kind, major): name}``."""
    table: dict[tuple[str, int], str] = {}
    kind = ""
    for line in text.splitlines():
        line = line.strip()
        if line in _PROC_DEVICES_SECTION:
            kind = _PROC_DEVICES_SECTION[line]
            continue
        parts = line.split(None, 1)
        if kind and len(parts) == 2 and parts[0].isdigit():
            table.setdefault((kind, int(parts[0])), parts[1])
    return table


def parse_devnum(kind: str, text: str) -> Optional[DevNum]:
    """``"226:0"`` (a ``dev`` file or a /sys/dev link name) as a :class:`DevNum`."""
    majmin = text.strip().split(":")
    if len(majmin) != 2 or not all(p.isdigit() for p in majmin):
        return None
    return DevNum(kind, int(majmin[0]), int(majmin[1]))


class DeviceOwners:
    """Answers "which modules own device ``c 226:0``?" for one root, with a cache."""

    def __init__(self, root: Path, tables: ModuleTables) -> None:
        self.root = root
        self.tables = tables
        try:
            self._majors = parse_proc_devices(read_text(root / "proc/devices") or "")
        except Denied:
            self._majors = {}
        self._misc: Optional[dict[int, str]] = None
        self._cache: dict[DevNum, tuple[Owner, ...]] = {}

    # -- public -------------------------------------------------------------------------
    def owners(self, dev: DevNum) -> tuple[Owner, ...]:
        """Every module ``dev`` was tied to, strongest evidence first, one entry per module."""
        if dev not in self._cache:
            found: list[Owner] = []
            for source in SOURCES:
                try:
                    owners = source(self, dev)
                except Denied:
                    continue  # that source is unreadable for us; the others may answer
                for owner in owners:
                    if all(o.module != owner.module for o in found):
                        found.append(owner)
            self._cache[dev] = tuple(found)
        return self._cache[dev]

    def owner(self, dev: DevNum, module: str) -> Optional[Owner]:
        """How ``dev`` belongs to ``module``, or ``None``."""
        for owner in self.owners(dev):
            if owner.module == module:
                return owner
        return None

    def sysfs_link(self, dev: DevNum) -> Path:
        """``<root>/sys/dev/{char,block}/MAJ:MIN``."""
        return self.root / "sys/dev" / _KIND_DIR[dev.kind] / f"{dev.major}:{dev.minor}"

    def node(self, dev: DevNum) -> Optional[Path]:
        """The device's directory under ``/sys/devices``, if sysfs has it."""
        try:
            return resolve_within(self.root, self.sysfs_link(dev))
        except OSError:
            return None

    # -- sources ------------------------------------------------------------------------
    def _by_driver(self, dev: DevNum) -> list[Owner]:
        node = self.node(dev)
        if node is None:
            return []
        top = self.root / "sys/devices"
        top_real = resolve_within(self.root, top) or top
        d = node
        while d != top_real and top_real in d.parents:
            if (d / "driver").is_symlink():
                target = readlink(d / "driver" / "module")
                if not target:
                    return []  # a built-in driver: no module behind this device
                mod = module_name(target.rstrip("/").rsplit("/", 1)[-1])
                return [Owner(mod, f"{shown(self.root, self.sysfs_link(dev))} -> "
                                   f"{shown(self.root, node)}; "
                                   f"{shown(self.root, d)}/driver/module -> {mod}")]
            d = d.parent
        return []

    def _by_devname(self, dev: DevNum) -> list[Owner]:
        mod = self.tables.devnames.get(dev)
        if not mod:
            return []
        return [Owner(mod, f"modules.devname: {mod} owns {dev.kind}{dev.major}:{dev.minor}")]

    def _by_alias(self, dev: DevNum) -> list[Owner]:
        key = f"{_KIND_DIR[dev.kind]}-major-{dev.major}-{dev.minor}"
        return [Owner(mod, "modules.alias: " + "; ".join(self.tables.alias_lines(key, mod)))
                for mod in self.tables.modules_for(key)]

    def _by_major(self, dev: DevNum) -> list[Owner]:
        if dev.kind == "c" and dev.major == MISC_MAJOR:
            return []
        name = self._majors.get((dev.kind, dev.major))
        if not name or "/" in name or " " in name:
            return []
        word = "character" if dev.kind == "c" else "block"
        return [Owner(module_name(name),
                      f"/proc/devices: {word} major {dev.major} is registered as '{name}'")]

    def _by_name(self, dev: DevNum) -> list[Owner]:
        link = self.sysfs_link(dev)
        names: list[tuple[str, str]] = []
        node = self.node(dev)
        if node is not None:
            names.append((node.name, f"{shown(self.root, link)} -> {shown(self.root, node)}"))
            parent = readlink(node / "device")
            if parent:
                pname = parent.rstrip("/").rsplit("/", 1)[-1]
                names.append((pname, f"{shown(self.root, node)}/device -> {parent}"))
        elif dev.kind == "c" and dev.major == MISC_MAJOR:
            name = self._misc_names().get(dev.minor)
            if name:
                names.append((name, f"/sys/class/misc/{name}/dev is {dev.major}:{dev.minor}"))
        return [Owner(module_name(n), f"{why} (device name matches the module)")
                for n, why in names]

    def _misc_names(self) -> dict[int, str]:
        if self._misc is None:
            self._misc = {}
            base = self.root / "sys/class/misc"
            try:
                entries = listdir(base)
            except Denied:
                entries = []
            for name in entries:
                try:
                    num = parse_devnum("c", read_text(base / name / "dev") or "")
                except Denied:
                    num = None
                if num and num.major == MISC_MAJOR:
                    self._misc.setdefault(num.minor, name)
        return self._misc

    # -- enumeration --------------------------------------------------------------------
    def block_devices(self) -> list[tuple[DevNum, str]]:
        """All block devices in ``/sys/dev/block`` as ``(devnum, name)``."""
        found = []
        try:
            entries = listdir(self.root / "sys/dev/block")
        except Denied:
            entries = []
        for entry in entries:
            dev = parse_devnum("b", entry)
            if dev is None:
                continue
            node = self.node(dev)
            found.append((dev, node.name if node is not None else entry))
        return found


Source = Callable[[DeviceOwners, DevNum], list[Owner]]

#: Evidence sources, strongest first (see the module docstring).
SOURCES: tuple[Source, ...] = (
    DeviceOwners._by_driver,
    DeviceOwners._by_devname,
    DeviceOwners._by_alias,
    DeviceOwners._by_major,
    DeviceOwners._by_name,
)
