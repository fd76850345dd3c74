"""Checks of the machine: privileges, cgroups, overlayfs, the kernel
features rktlet uses, and the file system under ``--root``."""

from __future__ import annotations

import os
import re

from rktlet.config import Config
from rktlet.errors import RktletError
from rktlet.mountinfo import unescape
from rktlet.oci import cgroups
from rktlet.preflight.host import Host
from rktlet.preflight.model import Result, fail, ok, warn

#: The oldest kernel: overlayfs with several lower layers (how image layers
#: are stacked into a container's root filesystem) came in Linux 4.0.
MIN_KERNEL = (4, 0)
#: pidfd_open came in 5.3; without it conmon monitors are watched by polling /proc.
PIDFD_KERNEL = (5, 3)

#: Namespaces every pod uses (pinned net/ipc/uts, pid and mount for runc).
NAMESPACES = ("net", "ipc", "uts", "pid", "mnt")

#: Controllers without which the kubelet's limits cannot be applied.
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")
#: Controllers whose absence loses one feature (cpusets, I/O limits and
#: statistics; on v1, CPU accounting, device rules, freezing).
WANTED_CONTROLLERS = {"v1": ("cpuacct", "cpuset", "devices", "freezer", "blkio"), "v2": ("cpuset", "io")}

#: Below this much free space under --root the daemon cannot keep its records.
MIN_FREE_BYTES = 64 << 20
MIN_FREE_INODES = 1000
#: Below this, image pulls are likely to fail.
LOW_FREE_BYTES = 1 << 30


def check_root(config: Config, host: Host) -> list[Result]:
    """The daemon runs as root."""
    if host.euid == 0:
        return [ok("root", "running as root")]
    return [fail("root", f"rktlet must run as root (it creates namespaces, mounts and cgroups); running as uid "
                 f"{host.euid}", "start it as root (sudo, or its systemd unit)")]


def check_cgroups(config: Config, host: Host) -> list[Result]:
    """A cgroup layout rktlet's cgroupfs driver handles, with the controllers
    the kubelet's limits need."""
    try:
        layout = cgroups.layout_from_mountinfo(host.read("self/mountinfo"))
    except RktletError as e:
        return [fail("cgroups", str(e), "mount cgroup2 on /sys/fs/cgroup (or the cgroup v1 hierarchies)")]
    if layout.mode == "v2":
        assert layout.unified is not None
        try:
            with open(os.path.join(layout.unified, "cgroup.controllers")) as f:
                controllers = set(f.read().split())
        except OSError as e:
            return [fail("cgroups", f"cannot read {layout.unified}/cgroup.controllers: {e.strerror}",
                         "check the cgroup2 mount")]
        where = f"v2 at {layout.unified}"
        wanted = WANTED_CONTROLLERS["v2"]
    else:
        controllers = {c for c in layout.v1 if not c.startswith("name=")}
        where = f"{layout.mode} (v1 controllers" + (f", cgroup2 at {layout.unified})" if layout.unified else ")")
        wanted = WANTED_CONTROLLERS["v1"]
    missing = [c for c in REQUIRED_CONTROLLERS if c not in controllers]
    if missing:
        return [fail("cgroups", f"{where}: controller(s) {', '.join(missing)} missing",
                     "enable them (kernel command line, or cgroup.subtree_control on v2)")]
    lacking = [c for c in wanted if c not in controllers]
    if lacking:
        return [warn("cgroups", f"{where}: controller(s) {', '.join(lacking)} missing",
                     "enable them; until then what they control is not applied or reported")]
    return [ok("cgroups", f"{where}, cgroupfs driver: {', '.join(sorted(controllers))}")]


def _release(text: str) -> tuple[int, int] | None:
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_kernel(config: Config, host: Host) -> list[Result]:
    """The kernel is new enough and has the features rktlet uses:
    namespaces, pidfds, seccomp."""
    release = _release(host.kernel_release)
    results: list[Result] = []
    if release is None:
        results.append(warn("kernel", f"cannot read the kernel release {host.kernel_release!r}",
                            f"rktlet needs Linux {_dotted(MIN_KERNEL)} or newer"))
    elif release < MIN_KERNEL:
        return [fail("kernel", f"Linux {host.kernel_release} is too old: rktlet needs {_dotted(MIN_KERNEL)} or "
                     "newer (overlayfs with several lower layers)", "upgrade the kernel")]
    else:
        results.append(ok("kernel", f"Linux {host.kernel_release}"))
    ns_dir = os.path.join(host.proc, "self", "ns")
    missing = [n for n in NAMESPACES if not os.path.lexists(os.path.join(ns_dir, n))]
    if missing:
        results.append(fail("namespaces", f"the kernel lacks {', '.join(missing)} namespaces (not in {ns_dir})",
                            "use a kernel built with them"))
    else:
        results.append(ok("namespaces", ", ".join(NAMESPACES)))
    if host.pidfd_supported():
        results.append(ok("pidfd", "pidfd_open works: monitors are watched without polling"))
    else:
        results.append(warn("pidfd", f"pidfd_open does not work (Linux {_dotted(PIDFD_KERNEL)} or newer has it)",
                            "container monitors are watched by polling /proc instead; upgrade the kernel"))
    status = host.read("self/status")
    if re.search(r"^Seccomp:", status, re.M):
        results.append(ok("seccomp", "supported"))
    else:
        results.append(warn("seccomp", "the kernel has no seccomp (no Seccomp: line in /proc/self/status)",
                            "containers asking for a seccomp profile fail; use a kernel built with seccomp"))
    return results


#: The device nodes every container gets (runc's defaults) with their
#: (major, minor): in a user namespace runc cannot make them and binds the
#: host's instead, so each must exist on the host.
STANDARD_DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
                    "tty": (5, 0)}


def check_devices(config: Config, host: Host) -> list[Result]:
    """The host has the standard device nodes containers get."""
    missing = [name for name in STANDARD_DEVICES if not host.char_device(os.path.join(host.dev, name))]
    if not missing:
        return [ok("devices", f"{', '.join(STANDARD_DEVICES)} in {host.dev}")]
    makes = "; ".join(f"mknod -m 666 {host.dev}/{n} c {STANDARD_DEVICES[n][0]} {STANDARD_DEVICES[n][1]}"
                      for n in missing)
    return [warn("devices", f"{', '.join(os.path.join(host.dev, n) for n in missing)} missing or not a character "
                 "device: containers of pods with user namespaces fail (runc binds the host's nodes there)",
                 f"make it: {makes}")]


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(str(n) for n in version)


def check_overlay(config: Config, host: Host) -> list[Result]:
    """The kernel mounts overlayfs, and ``--root`` is on a file system that
    can hold overlayfs upper directories."""
    results: list[Result] = []
    filesystems = host.read("filesystems").split()
    module_dir = os.path.join(host.modules, host.kernel_release, "kernel", "fs", "overlayfs")
    if "overlay" in filesystems:
        results.append(ok("overlayfs", "supported by the kernel"))
    elif os.path.isdir(module_dir) and any(n.startswith("overlay.ko") for n in os.listdir(module_dir)):
        results.append(ok("overlayfs", f"module in {module_dir}, loaded on the first mount"))
    else:
        results.append(fail("overlayfs", "the kernel has no overlayfs (not in /proc/filesystems, no overlay module)",
                            "load it (modprobe overlay) or use a kernel built with CONFIG_OVERLAY_FS"))
    mount = _mount_of(host.read("self/mountinfo"), _existing(config.root))
    if mount is not None and mount[1] == "overlay":
        results.append(fail("root filesystem", f"--root {config.root} is on overlayfs ({mount[0]}), which cannot "
                            "hold the containers' writable layers", "put --root on ext4, xfs, btrfs or tmpfs"))
    elif mount is not None:
        results.append(ok("root filesystem", f"{config.root} is on {mount[1]} ({mount[0]})"))
    return results


def _existing(path: str) -> str:
    """*path*, or its nearest ancestor that exists (what will hold it)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != os.path.dirname(path):
        path = os.path.dirname(path)
    return path


def _mount_of(mountinfo: str, path: str) -> tuple[str, str] | None:
    """``(mount point, fstype)`` of the mount holding *path*."""
    best: tuple[str, str] | None = None
    real = os.path.realpath(path)
    for line in mountinfo.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
            point, fstype = unescape(fields[4]), fields[sep + 1]
        except (ValueError, IndexError):
            continue
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        # The last mount at the longest matching point is the one on top.
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def check_disk(config: Config, host: Host) -> list[Result]:
    """Free space and inodes on the file system under ``--root``."""
    where = _existing(config.root)
    try:
        st = host.statvfs(where)
    except OSError as e:
        return [fail("disk", f"cannot stat the file system of {where}: {e.strerror}", "check --root")]
    free = st.f_bavail * st.f_frsize
    # Some file systems (btrfs) report no inode counts: nothing to check.
    inodes = st.f_favail if st.f_files else None
    about = f"{_size(free)} free" + (f", {inodes} inodes" if inodes is not None else "") + f" under {where}"
    if free < MIN_FREE_BYTES or (inodes is not None and inodes < MIN_FREE_INODES):
        return [fail("disk", f"only {about}: rktlet needs at least {_size(MIN_FREE_BYTES)} and "
                     f"{MIN_FREE_INODES} inodes to keep its records", "free space there or move --root")]
    if free < LOW_FREE_BYTES:
        return [warn("disk", f"only {about}", "image pulls may fail for lack of space; free space or move --root")]
    return [ok("disk", about)]
