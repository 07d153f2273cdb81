"""Evidence from fake /sys, /proc and /lib/modules trees, one scenario per source.

The trees mirror real sysfs layouts (relative symlinks as the kernel makes them). The fd ->
device seam is faked with a table keyed by the path the running system would show; one
test runs the real seam on this process's own /proc.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import pytest

from moddep.whouses import evidence as evidence_mod
from moddep.whouses.aliases import load_tables
from moddep.whouses.devices import DeviceOwners, parse_proc_devices
from moddep.whouses.evidence import fs_provider_via, gather, stat_device
from moddep.whouses.fs import shown
from moddep.whouses.model import DevNum, module_name

Spec = dict[str, Union[str, tuple[str, str], None]]
RELEASE = "6.1.0-test"

PROC_DEVICES = """Character devices:
  1 mem
  4 tty
 10 misc
226 drm

Block devices:
  7 loop
254 virtblk
259 blkext
"""

MODULES_ALIAS = """alias fs-fuseblk fuse
alias fs-fusectl fuse
alias fs-fuse fuse
alias char-major-10-229 fuse
alias devname:fuse fuse
alias block-major-7-* loop
alias char-major-10-237 loop
alias rtnl-link-vlan 8021q
alias fs-nfs4 nfs
"""

MODULES_DEVNAME = """# Device nodes to trigger on-demand module loading.
fuse fuse c10:229
loop loop-control c10:237
"""


def build(root: Path, spec: Spec) -> None:
    """Files (str), symlinks (("link", target)) and empty directories (None) under root."""
    for rel, value in spec.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if value is None:
            path.mkdir(parents=True, exist_ok=True)
        elif isinstance(value, tuple):
            os.symlink(value[1], path)
        else:
            path.write_text(value)


def base_tree(root: Path) -> None:
    build(root, {
        "proc/sys/kernel/osrelease": RELEASE + "\n",
        "proc/devices": PROC_DEVICES,
        f"lib/modules/{RELEASE}/modules.alias": MODULES_ALIAS,
        f"lib/modules/{RELEASE}/modules.devname": MODULES_DEVNAME,
        f"lib/modules/{RELEASE}/modules.builtin": "kernel/drivers/block/virtio_blk.ko\n",
        "proc/1/comm": "systemd\n",
        "proc/1/fd": None,
        "proc/1/ns/mnt": ("link", "mnt:[4026531840]"),
        "proc/1/mountinfo": "22 1 0:21 / /proc rw,relatime - proc proc rw\n",
    })


def process(root: Path, pid: int, comm: str, fds: dict[str, str],
            mountinfo: Optional[str] = None, ns: str = "mnt:[4026531841]",
            maps: str = "") -> None:
    spec: Spec = {f"proc/{pid}/comm": comm + "\n", f"proc/{pid}/fd": None,
                  f"proc/{pid}/ns/mnt": ("link", ns), f"proc/{pid}/maps": maps}
    for fd, target in fds.items():
        spec[f"proc/{pid}/fd/{fd}"] = ("link", target)
    if mountinfo is not None:
        spec[f"proc/{pid}/mountinfo"] = mountinfo
    build(root, spec)


def fake_devices(root: Path, table: dict[str, DevNum]):  # noqa: ANN201 - returns the seam
    """A device_of seam: links named as the live system shows them -> device numbers."""
    def device_of(link: Path) -> Optional[DevNum]:
        return table.get(shown(root, link))
    return device_of


def loaded(root: Path, name: str, refcnt: int, holders: tuple[str, ...] = ()) -> None:
    spec: Spec = {f"sys/module/{name}/initstate": "live\n",
                  f"sys/module/{name}/refcnt": f"{refcnt}\n",
                  f"sys/module/{name}/holders": None}
    for h in holders:
        spec[f"sys/module/{name}/holders/{h}"] = ("link", f"../../{h}")
        spec[f"sys/module/{h}/initstate"] = "live\n"
    build(root, spec)


# -- the vkms seed, as a live system would show it ----------------------------------------
def vkms_tree(root: Path) -> dict[str, DevNum]:
    base_tree(root)
    loaded(root, "vkms", 1)
    loaded(root, "drm", 4, ("drm_kms_helper", "vkms"))
    build(root, {
        "sys/devices/platform/vkms/drm/card0/dev": "226:0\n",
        "sys/devices/platform/vkms/drm/card0/device": ("link", "../../../vkms"),
        "sys/dev/char/226:0": ("link", "../../devices/platform/vkms/drm/card0"),
    })
    process(root, 545, "systemd-logind", {"0": "/dev/null", "12": "/dev/dri/card0"})
    return {"/proc/545/fd/12": DevNum("c", 226, 0), "/proc/545/fd/0": DevNum("c", 1, 3)}


def test_vkms_process_holding_the_drm_card(tmp_path: Path) -> None:
    devices = vkms_tree(tmp_path)
    ev = gather("vkms", tmp_path, device_of=fake_devices(tmp_path, devices))
    assert (ev.module, ev.state, ev.refcnt, ev.holders, ev.unexplained) == (
        "vkms", "live", 1, (), 1)
    (p,) = ev.processes
    assert (p.pid, p.comm, p.handle, p.file, p.device, p.evidence) == (
        545, "systemd-logind", "fd 12", "/dev/dri/card0", DevNum("c", 226, 0),
        "/proc/545/fd/12")
    assert p.via == ("/sys/devices/platform/vkms/drm/card0/device -> ../../../vkms"
                     " (device name matches the module)")


def test_drm_holders_and_the_same_process_through_the_major(tmp_path: Path) -> None:
    devices = vkms_tree(tmp_path)
    ev = gather("drm", tmp_path, device_of=fake_devices(tmp_path, devices))
    assert [(h.module, h.evidence) for h in ev.holders] == [
        ("drm_kms_helper", "/sys/module/drm/holders/drm_kms_helper"),
        ("vkms", "/sys/module/drm/holders/vkms")]
    assert ev.unexplained == 2
    (p,) = ev.processes
    assert (p.pid, p.comm) == (545, "systemd-logind")
    assert p.via == "/proc/devices: character major 226 is registered as 'drm'"


def test_not_loaded_and_builtin(tmp_path: Path) -> None:
    base_tree(tmp_path)
    build(tmp_path, {"sys/module/8250/parameters/nr_uarts": "4\n"})
    assert gather("nosuch", tmp_path).state == "not loaded"
    assert (gather("8250", tmp_path).state, gather("8250", tmp_path).refcnt) == (
        "builtin", None)
    assert gather("virtio-blk", tmp_path).state == "builtin"  # from modules.builtin


# -- device ownership sources -------------------------------------------------------------
def test_driver_link_wins_and_walk_stops_at_the_first_driver(tmp_path: Path) -> None:
    base_tree(tmp_path)
    pci = "sys/devices/pci0000:00/0000:00:02.0"
    build(tmp_path, {
        f"{pci}/driver": ("link", "../../../bus/pci/drivers/virtio-pci"),
        "sys/bus/pci/drivers/virtio-pci/module": ("link", "../../../../module/virtio_pci"),
        f"{pci}/virtio1/driver": ("link", "../../../../bus/virtio/drivers/virtio_blk"),
        "sys/bus/virtio/drivers/virtio_blk/module": ("link", "../../../../module/virtio_blk"),
        f"{pci}/virtio1/block/vda/vda1/dev": "254:1\n",
        "sys/dev/block/254:1": ("link", "../../devices/pci0000:00/0000:00:02.0/virtio1/block/"
                                        "vda/vda1"),
    })
    owners = DeviceOwners(tmp_path, load_tables(tmp_path))
    found = owners.owners(DevNum("b", 254, 1))
    assert [o.module for o in found] == ["virtio_blk", "virtblk", "vda1"]
    assert found[0].via == ("/sys/dev/block/254:1 -> /sys/devices/pci0000:00/0000:00:02.0/"
                            "virtio1/block/vda/vda1; /sys/devices/pci0000:00/0000:00:02.0/"
                            "virtio1/driver/module -> virtio_blk")
    assert owners.owner(DevNum("b", 254, 1), "virtio_pci") is None


def test_builtin_driver_stops_the_walk(tmp_path: Path) -> None:
    base_tree(tmp_path)
    build(tmp_path, {
        "sys/devices/platform/serial8250/driver": ("link", "../../../bus/platform/drivers/x"),
        "sys/bus/platform/drivers/x": None,
        "sys/devices/platform/serial8250/tty/ttyS0/dev": "4:64\n",
        "sys/dev/char/4:64": ("link", "../../devices/platform/serial8250/tty/ttyS0"),
    })
    owners = DeviceOwners(tmp_path, load_tables(tmp_path))
    # no driver/module source: only the major's name and the device's own name remain
    assert [o.module for o in owners.owners(DevNum("c", 4, 64))] == ["tty", "ttyS0"]


def test_devname_alias_and_misc_class_sources(tmp_path: Path) -> None:
    base_tree(tmp_path)
    build(tmp_path, {"sys/class/misc/tun/dev": "10:200\n"})
    owners = DeviceOwners(tmp_path, load_tables(tmp_path))
    fuse = owners.owners(DevNum("c", 10, 229))
    assert [(o.module, o.via) for o in fuse] == [
        ("fuse", "modules.devname: fuse owns c10:229")]
    loopctl = owners.owners(DevNum("c", 10, 237))
    assert [o.module for o in loopctl] == ["loop"]
    loop0 = owners.owners(DevNum("b", 7, 3))
    assert [(o.module, o.via) for o in loop0] == [
        ("loop", "modules.alias: alias block-major-7-* loop")]
    tun = owners.owners(DevNum("c", 10, 200))  # no /sys/dev/char/10:200: via class/misc
    assert [(o.module, o.via) for o in tun] == [
        ("tun", "/sys/class/misc/tun/dev is 10:200 (device name matches the module)")]
    assert owners.owners(DevNum("c", 10, 99)) == ()  # misc major alone proves nothing


def test_parse_proc_devices() -> None:
    table = parse_proc_devices(PROC_DEVICES)
    assert table[("c", 226)] == "drm" and table[("b", 7)] == "loop"
    assert ("c", 7) not in table


# -- processes: fds and mappings, permissions ---------------------------------------------
def test_tun_fd_and_interface(tmp_path: Path) -> None:
    base_tree(tmp_path)
    loaded(tmp_path, "tun", 1)
    build(tmp_path, {
        "sys/devices/virtual/misc/tun/dev": "10:200\n",
        "sys/dev/char/10:200": ("link", "../../devices/virtual/misc/tun"),
        "sys/devices/virtual/net/tun0/tun_flags": "0x1002\n",
        "sys/devices/virtual/net/tun0/uevent": "INTERFACE=tun0\nIFINDEX=5\n",
        "sys/class/net/tun0": ("link", "../../devices/virtual/net/tun0"),
        "sys/devices/virtual/net/lo/uevent": "INTERFACE=lo\n",
        "sys/class/net/lo": ("link", "../../devices/virtual/net/lo"),
    })
    process(tmp_path, 4242, "openvpn", {"3": "/dev/net/tun"})
    ev = gather("tun", tmp_path,
                device_of=fake_devices(tmp_path, {"/proc/4242/fd/3": DevNum("c", 10, 200)}),
                driver_of=lambda ifname: None)
    (p,) = ev.processes
    assert (p.pid, p.comm, p.file, p.via) == (
        4242, "openvpn", "/dev/net/tun",
        "/sys/dev/char/10:200 -> /sys/devices/virtual/misc/tun (device name matches the module)")
    assert [(n.name, n.evidence) for n in ev.interfaces] == [
        ("tun0", "/sys/class/net/tun0/tun_flags")]


def test_device_mapping_without_fd(tmp_path: Path) -> None:
    devices = vkms_tree(tmp_path)
    maps = ("7f0000000000-7f0000001000 rw-s 00000000 00:05 123 /dev/dri/card0\n"
            "7f0000002000-7f0000003000 r-xp 00000000 fe:01 456 /usr/lib/libc.so.6\n")
    process(tmp_path, 700, "Xorg", {}, maps=maps)
    build(tmp_path, {"proc/700/map_files/7f0000000000-7f0000001000": ("link", "/dev/dri/card0")})
    devices["/proc/700/map_files/7f0000000000-7f0000001000"] = DevNum("c", 226, 0)
    ev = gather("vkms", tmp_path, device_of=fake_devices(tmp_path, devices))
    assert [(p.pid, p.handle, p.evidence) for p in ev.processes] == [
        (545, "fd 12", "/proc/545/fd/12"),
        (700, "map 7f0000000000-7f0000001000", "/proc/700/map_files/7f0000000000-7f0000001000")]


def test_unreadable_processes_become_a_note(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    devices = vkms_tree(tmp_path)
    process(tmp_path, 777, "secret", {"1": "/dev/dri/card0"})
    real_listdir = os.listdir

    def listdir(path: Union[str, Path]) -> list[str]:
        if str(path).endswith("/proc/777/fd"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", listdir)
    ev = gather("vkms", tmp_path, device_of=fake_devices(tmp_path, devices))
    assert [p.pid for p in ev.processes] == [545]
    assert ev.notes[0] == ("1 processes could not be examined (/proc/PID/fd: permission"
                           " denied); run as root to see all of them")


def test_real_stat_seam_on_our_own_fd() -> None:
    with open("/dev/null") as f:
        assert stat_device(Path(f"/proc/self/fd/{f.fileno()}")) == DevNum("c", 1, 3)
    assert stat_device(Path("/proc/self/exe")) is None  # a regular file


def test_device_under_root_never_looks_outside(tmp_path: Path) -> None:
    process(tmp_path, 5, "x", {"1": "/dev/null", "2": "relative"})
    seam = evidence_mod.device_under_root(tmp_path)
    assert seam(tmp_path / "proc/5/fd/1") is None  # <root>/dev/null does not exist
    assert seam(tmp_path / "proc/5/fd/2") is None


# -- mounts -------------------------------------------------------------------------------
FUSE_MOUNTINFO = (
    "22 1 0:21 / /proc rw,relatime - proc proc rw\n"
    "60 22 0:45 / /home/u/remote\\040dir rw,nosuid - fuse.sshfs u@host:/ rw,user_id=1000\n"
    "61 22 0:46 / /sys/fs/fuse/connections rw - fusectl fusectl rw\n"
    "62 22 8:17 / /media/usb rw - fuseblk /dev/sdb1 rw\n"
)


def test_fuse_mounts_by_name_and_alias_once_per_namespace(tmp_path: Path) -> None:
    base_tree(tmp_path)
    loaded(tmp_path, "fuse", 3)
    process(tmp_path, 900, "sshfs", {}, mountinfo=FUSE_MOUNTINFO)
    process(tmp_path, 901, "bash", {}, mountinfo=FUSE_MOUNTINFO)  # same namespace
    process(tmp_path, 950, "container-init", {}, mountinfo=FUSE_MOUNTINFO.splitlines()[1]
            + "\n", ns="mnt:[4026532000]")
    ev = gather("fuse", tmp_path)
    assert [(m.mountpoint, m.fstype, m.source, m.pid, m.evidence) for m in ev.mounts] == [
        ("/home/u/remote dir", "fuse.sshfs", "u@host:/", 900, "/proc/900/mountinfo:2"),
        ("/sys/fs/fuse/connections", "fusectl", "fusectl", 900, "/proc/900/mountinfo:3"),
        ("/media/usb", "fuseblk", "/dev/sdb1", 900, "/proc/900/mountinfo:4"),
        ("/home/u/remote dir", "fuse.sshfs", "u@host:/", 950, "/proc/950/mountinfo:1"),
    ]
    assert ev.mounts[0].via == "filesystem type 'fuse' is the module's name"
    assert ev.mounts[1].via == "modules.alias: alias fs-fusectl fuse"


def test_fs_provider_via() -> None:
    from moddep.whouses.aliases import ModuleTables

    tables = ModuleTables(aliases=(("fs-nfs4", "nfs"),))
    assert fs_provider_via("nfs", "nfs4", tables) == "modules.alias: alias fs-nfs4 nfs"
    assert fs_provider_via("ext4", "ext4", tables) is not None
    assert fs_provider_via("ext4", "ext3", tables) is None


def test_proc_mounts_fallback_without_mountinfo(tmp_path: Path) -> None:
    build(tmp_path, {"proc/mounts": "sshfs#x /mnt/x fuse rw 0 0\nproc /proc proc rw 0 0\n"})
    ev = gather("fuse", tmp_path)
    assert [(m.mountpoint, m.pid, m.evidence) for m in ev.mounts] == [
        ("/mnt/x", 0, "/proc/mounts:1")]


# -- block devices: loop binding, holders, mounts, swap -----------------------------------
def loop_tree(root: Path) -> None:
    base_tree(root)
    loaded(root, "loop", 4)
    build(root, {
        "sys/devices/virtual/block/loop0/dev": "7:0\n",
        "sys/devices/virtual/block/loop0/loop/backing_file": "/srv/disk.img\n",
        "sys/devices/virtual/block/loop0/holders/dm-0": ("link", "../../dm-0"),
        "sys/devices/virtual/block/loop1/dev": "7:1\n",
        "sys/devices/virtual/block/loop1/holders": None,
        "sys/dev/block/7:0": ("link", "../../devices/virtual/block/loop0"),
        "sys/dev/block/7:1": ("link", "../../devices/virtual/block/loop1"),
        "sys/block/loop0": ("link", "../devices/virtual/block/loop0"),
        "sys/block/loop1": ("link", "../devices/virtual/block/loop1"),
        "sys/class/block/loop0": ("link", "../../devices/virtual/block/loop0"),
        "sys/class/block/loop1": ("link", "../../devices/virtual/block/loop1"),
        "proc/swaps": "Filename\tType\tSize\tUsed\tPriority\n"
                      "/dev/loop1                              partition\t1024\t0\t-2\n",
    })
    process(root, 1200, "mount", {}, mountinfo="70 22 7:0 / /mnt/img rw - ext4 /dev/loop0 rw\n")
    process(root, 1300, "losetup", {"4": "/dev/loop0"})


def test_loop_binding_holders_mount_swap_and_fd(tmp_path: Path) -> None:
    loop_tree(tmp_path)
    ev = gather("loop", tmp_path, device_of=fake_devices(
        tmp_path, {"/proc/1300/fd/4": DevNum("b", 7, 0)}))
    assert [(b.device, b.use, b.evidence) for b in ev.block_devices] == [
        ("loop0", "bound to /srv/disk.img", "/sys/block/loop0/loop/backing_file"),
        ("loop0", "held open by dm-0", "/sys/class/block/loop0/holders/dm-0"),
        ("loop1", "swap area", "/proc/swaps:2"),
    ]
    (m,) = ev.mounts
    assert (m.mountpoint, m.fstype, m.source) == ("/mnt/img", "ext4", "/dev/loop0")
    assert m.via == "on block device b 7:0: modules.alias: alias block-major-7-* loop"
    (p,) = ev.processes
    assert (p.comm, p.pid, p.file, p.device) == ("losetup", 1300, "/dev/loop0",
                                                 DevNum("b", 7, 0))


# -- sockets, network interfaces ----------------------------------------------------------
def test_sockets_of_a_protocol_module(tmp_path: Path) -> None:
    build(tmp_path, {"proc/net/protocols":
                     "protocol  size sockets  memory press maxhdr  slab module     cl co\n"
                     "SCTPv6    1560      0       0   no     320   yes  sctp        y  y\n"
                     "SCTP      1400      3       0   no     320   yes  sctp        y  y\n"
                     "TCP       2400     12      10   no     320   yes  kernel      y  y\n"})
    ev = gather("sctp", tmp_path)
    assert [(s.protocol, s.sockets, s.evidence) for s in ev.sockets] == [
        ("SCTP", 3, "/proc/net/protocols:3")]


def test_interfaces_by_driver_devtype_and_ethtool(tmp_path: Path) -> None:
    base_tree(tmp_path)
    virtio2 = "sys/devices/pci0000:00/0000:00:03.0/virtio2"
    build(tmp_path, {
        f"{virtio2}/net/eth0/uevent": "INTERFACE=eth0\n",
        f"{virtio2}/net/eth0/device": ("link", "../../../virtio2"),
        f"{virtio2}/driver": ("link", "../../../../bus/virtio/drivers/virtio_net"),
        "sys/bus/virtio/drivers/virtio_net/module": ("link", "../../../../module/virtio_net"),
        "sys/class/net/eth0": ("link", "../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0"),
        "sys/devices/virtual/net/eth0.5/uevent": "DEVTYPE=vlan\nINTERFACE=eth0.5\n",
        "sys/class/net/eth0.5": ("link", "../../devices/virtual/net/eth0.5"),
        "sys/devices/virtual/net/veth0/uevent": "INTERFACE=veth0\n",
        "sys/class/net/veth0": ("link", "../../devices/virtual/net/veth0"),
    })
    drivers = {"veth0": "veth", "eth0": "virtio_net", "eth0.5": "802.1Q VLAN Support"}
    found = {}
    for mod in ("virtio_net", "8021q", "veth"):
        ev = gather(mod, tmp_path, driver_of=drivers.get)
        found[mod] = [(n.name, n.via, n.evidence) for n in ev.interfaces]
    assert found == {
        "virtio_net": [("eth0", "device/driver/module -> virtio_net",
                        "/sys/class/net/eth0/device/driver/module")],
        "8021q": [("eth0.5", "DEVTYPE=vlan, modules.alias: alias rtnl-link-vlan 8021q",
                   "/sys/class/net/eth0.5/uevent")],
        "veth": [("veth0", "ethtool driver 'veth'", "SIOCETHTOOL veth0")],
    }


def test_module_name_normalisation() -> None:
    assert module_name("vhost-net") == "vhost_net"
    assert module_name("/lib/modules/x/kernel/fs/fuse/fuse.ko.zst") == "fuse"
