"""The OCI runtime spec (``config.json``) of a container, for runc 1.1.

:func:`build_spec` turns a CreateContainer request (:mod:`container_config`
records), the image's defaults, the pod it joins and the resolved user into
an OCI runtime-spec 1.0.2 document, plus notes: things the caller should log
because the spec differs from what was asked (an ``oom_score_adj`` raised to
what this host allows, a cgroup v2 setting dropped on a v1 host, ...).

What it reads from the host (capability numbers, cgroup layout, AppArmor,
the mount table) comes in a :class:`HostInfo`, probed once by default, so
the logic can be tested with any host.  It also stats the host paths of
mounts and devices and may read a Localhost seccomp profile: call it from a
worker thread, not the reactor thread.
"""

from __future__ import annotations

import os
import platform
import posixpath
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rktlet.errors import InvalidArgument
from rktlet.oci import cgroups
from rktlet.oci.container_config import (
    PROPAGATIONS,
    ContainerConfig,
    ImageDefaults,
    PodContext,
    Profile,
    ResolvedUser,
    Resources,
)
from rktlet.oci.namespaces import sysctl_namespace
from rktlet.oci.seccomp import default_profile, load_localhost
from rktlet.mountinfo import unescape as unescape_mountinfo

__all__ = [
    "OCI_VERSION",
    "CAPABILITIES",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_READONLY_PATHS",
    "DEFAULT_PATH",
    "DEFAULT_APPARMOR_PROFILE",
    "HostInfo",
    "command_line",
    "build_spec",
]

OCI_VERSION = "1.0.2"

#: Linux capabilities by number (<linux/capability.h>); index = bit.
CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID",
    "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK",
    "CAP_IPC_OWNER", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE", "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
_CAP_NUMBERS = {name: number for number, name in enumerate(CAPABILITIES)}

#: What an unprivileged container gets unless told otherwise: what ordinary
#: images expect of root (file ownership, binding low ports, ping, changing
#: user, chroot, signals), nothing that reaches beyond the container.
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
)

#: Paths hidden from unprivileged containers (a /dev/null or empty tmpfs on
#: top): host hardware and kernel internals that leak information or are
#: dangerous to touch.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi", "/proc/asound", "/proc/interrupts", "/proc/kcore", "/proc/keys",
    "/proc/latency_stats", "/proc/sched_debug", "/proc/scsi", "/proc/timer_list",
    "/proc/timer_stats", "/sys/devices/virtual/powercap", "/sys/firmware",
)

#: Paths made read-only in unprivileged containers: host-wide kernel knobs
#: under /proc that a root process could otherwise write.
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
)

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

#: The AppArmor profile RuntimeDefault maps to, when loaded on the host.
DEFAULT_APPARMOR_PROFILE = "rktlet-default"

# The pod's files rktlet binds into each container.
_POD_FILES = ("/etc/resolv.conf", "/etc/hosts", "/etc/hostname")

# Device nodes every container may use (runc creates these nodes itself):
# (type, major, minor or None for all, access).
_DEFAULT_DEVICE_RULES: tuple[tuple[str, int | None, int | None, str], ...] = (
    ("c", None, None, "m"),  # mknod of any char device; using it is still denied
    ("b", None, None, "m"),  # the same for block devices
    ("c", 1, 3, "rwm"),      # /dev/null
    ("c", 1, 5, "rwm"),      # /dev/zero
    ("c", 1, 7, "rwm"),      # /dev/full
    ("c", 1, 8, "rwm"),      # /dev/random
    ("c", 1, 9, "rwm"),      # /dev/urandom
    ("c", 5, 0, "rwm"),      # /dev/tty
    ("c", 5, 2, "rwm"),      # /dev/ptmx
    ("c", 136, None, "rwm"),  # /dev/pts/* (the container's terminal)
)

_PROPAGATION_OPTION = {"private": "rprivate", "rslave": "rslave", "rshared": "rshared"}


# ---------------------------------------------------------------------------
# The host
# ---------------------------------------------------------------------------

def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _own_bounding_set() -> frozenset[int]:
    text = _read_text("/proc/self/status") or ""
    for line in text.splitlines():
        if line.startswith("CapBnd:"):
            mask = int(line.split()[1], 16)
            return frozenset(bit for bit in range(64) if mask >> bit & 1)
    return frozenset(range(len(CAPABILITIES)))


def _apparmor_profiles() -> frozenset[str] | None:
    text = _read_text("/sys/kernel/security/apparmor/profiles")
    if text is None:
        return None
    # Lines read "name (mode)"; names may contain spaces.
    return frozenset(line.rsplit(" (", 1)[0] for line in text.splitlines() if line.strip())


@dataclass(frozen=True)
class HostInfo:
    """What :func:`build_spec` needs to know about the host (probe once,
    reuse: capabilities, cgroups and AppArmor do not change under a daemon).

    :ivar cap_last_cap: the highest capability number the kernel knows.
    :ivar bounding: capability numbers in rktlet's own bounding set.  A
        container cannot get more: runc would fail.  (Here CAP_SYS_RESOURCE
        is missing, see the machine notes.)
    :ivar cgroups: the cgroup layout ("v1", "hybrid" or "v2").
    :ivar apparmor_enabled: AppArmor is enabled in the kernel.
    :ivar apparmor_profiles: names of the loaded AppArmor profiles; None
        (what :meth:`probe` leaves) lists the live ones at each check, since
        profiles can be loaded after the daemon started.  When they cannot
        be listed (securityfs not mounted) a named profile is trusted to
        exist and runc reports it if not.
    :ivar machine: ``uname -m``.
    :ivar kernel_release: ``uname -r``.
    :ivar mountinfo: a mount table in /proc/self/mountinfo format for the
        propagation checks; None (what :meth:`probe` leaves) reads the live
        one at each check, so a HostInfo probed once stays right as mounts
        come and go.
    """

    cap_last_cap: int
    bounding: frozenset[int]
    cgroups: cgroups.Layout
    apparmor_enabled: bool = False
    apparmor_profiles: frozenset[str] | None = None
    machine: str = field(default_factory=platform.machine)
    kernel_release: str = field(default_factory=lambda: os.uname().release)
    mountinfo: str | None = None

    @classmethod
    def probe(cls) -> HostInfo:
        """This host, as it is now."""
        last = (_read_text("/proc/sys/kernel/cap_last_cap") or "").strip()
        enabled = (_read_text("/sys/module/apparmor/parameters/enabled") or "").strip() == "Y"
        return cls(
            cap_last_cap=int(last) if last.isdigit() else len(CAPABILITIES) - 1,
            bounding=_own_bounding_set(),
            cgroups=cgroups.detect(),
            apparmor_enabled=enabled,
        )


# ---------------------------------------------------------------------------
# Command line and environment
# ---------------------------------------------------------------------------

def command_line(config: ContainerConfig, image: ImageDefaults) -> list[str]:
    """The process's argv, with the kubelet's rules: a command replaces the
    image's Entrypoint and Cmd; args alone replace Cmd; neither keeps both.

    :raises InvalidArgument: the result is empty.
    """
    if config.command:
        argv = [*config.command, *config.args]
    elif config.args:
        argv = [*image.entrypoint, *config.args]
    else:
        argv = [*image.entrypoint, *image.cmd]
    if not argv:
        raise InvalidArgument("no command specified: the image has no Entrypoint or Cmd and the container config none")
    return argv


def _environment(config: ContainerConfig, image: ImageDefaults, hostname: str) -> list[str]:
    """Image env, then the config's (which wins per key, keeping the image's
    position), then PATH, HOSTNAME and (with a tty) TERM when not given."""
    env: dict[str, str] = {}
    for item in image.env:
        key, sep, value = item.partition("=")
        if key and sep:
            env[key] = value  # an entry without '=' is not a variable: skipped
    for index, (key, value) in enumerate(config.envs):
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidArgument(f"envs[{index}]: invalid variable name {key!r}")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    if hostname:
        env.setdefault("HOSTNAME", hostname)
    if config.tty:
        env.setdefault("TERM", "xterm")
    return [f"{key}={value}" for key, value in env.items()]


# ---------------------------------------------------------------------------
# Capabilities
# ---------------------------------------------------------------------------

def _cap_number(name: str, what: str) -> int:
    canonical = name.strip().upper()
    if not canonical.startswith("CAP_"):
        canonical = "CAP_" + canonical
    number = _CAP_NUMBERS.get(canonical)
    if number is None:
        raise InvalidArgument(f"{what}: unknown capability {name!r}")
    return number


def _is_all(name: str) -> bool:
    return name.strip().upper() in ("ALL", "CAP_ALL")


def _capabilities(config: ContainerConfig, host: HostInfo, notes: list[str]) -> list[str]:
    """The capability names of the container's bounding, effective and
    permitted sets.

    Unprivileged: the defaults (every known capability if ``add`` has
    "ALL"), emptied if ``drop`` has "ALL", plus ``add``, minus ``drop`` (a
    capability both added and dropped is dropped).  Privileged: every
    capability.  Either way limited to the kernel's capabilities and to
    rktlet's own bounding set, with a note for what had to go.
    """
    security = config.security
    kernel_caps = set(range(min(host.cap_last_cap, len(CAPABILITIES) - 1) + 1))
    if security.privileged:
        wanted = set(kernel_caps)
    else:
        add = [n for n in security.capabilities_add if not _is_all(n)]
        drop = [n for n in security.capabilities_drop if not _is_all(n)]
        add_numbers = [_cap_number(n, "capabilities_add") for n in add]
        drop_numbers = [_cap_number(n, "capabilities_drop") for n in drop]
        if any(_is_all(n) for n in security.capabilities_add):
            wanted = set(kernel_caps)
        else:
            wanted = {_CAP_NUMBERS[n] for n in DEFAULT_CAPABILITIES}
        if any(_is_all(n) for n in security.capabilities_drop):
            wanted = set()
        wanted |= set(add_numbers)
        wanted -= set(drop_numbers)
    unknown = sorted(n for n in wanted if n not in kernel_caps)
    if unknown:
        notes.append("capabilities not known to this kernel left out: " + ", ".join(CAPABILITIES[n] for n in unknown))
    missing = sorted(n for n in wanted if n in kernel_caps and n not in host.bounding)
    if missing:
        notes.append(
            "capabilities not in rktlet's own bounding set left out (the container cannot have them): "
            + ", ".join(CAPABILITIES[n] for n in missing)
        )
    return [CAPABILITIES[n] for n in sorted(wanted) if n in kernel_caps and n in host.bounding]


# ---------------------------------------------------------------------------
# Mounts
# ---------------------------------------------------------------------------

def _container_path(path: str, what: str) -> str:
    if not path or not path.startswith("/") or "\0" in path:
        raise InvalidArgument(f"{what}: {path!r} must be an absolute path")
    if ".." in path.split("/"):
        raise InvalidArgument(f"{what}: {path!r} must not contain '..'")
    return posixpath.normpath(path)


def _mount_of(path: str, mountinfo: str) -> tuple[str, list[str]] | None:
    """The mount point holding *path* (already resolved) and its optional
    fields (``shared:N``, ``master:N``), the topmost one where stacked."""
    best: tuple[str, list[str]] | None = None
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) < 7 or "-" not in fields[6:]:
            continue
        point = unescape_mountinfo(fields[4])
        inside = path == point or point == "/" or path.startswith(point.rstrip("/") + "/")
        # Later lines are newer mounts: at the same point they are on top.
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fields[6:fields.index("-", 6)])
    return best


def _check_propagation(host_path: str, propagation: str, host: HostInfo, notes: list[str]) -> None:
    """Leave a note when the host side of an rshared/rslave mount cannot
    propagate: rshared needs a shared mount, rslave a shared or slave one."""
    if propagation == "private":
        return
    mountinfo = host.mountinfo if host.mountinfo is not None else _read_text("/proc/self/mountinfo") or ""
    found = _mount_of(os.path.realpath(host_path), mountinfo)
    if found is None:
        return
    point, optional = found
    shared = any(o.startswith("shared:") for o in optional)
    slave = any(o.startswith("master:") for o in optional)
    if propagation == "rshared" and not shared:
        notes.append(
            f"mount {host_path} asks for rshared propagation but its host mount {point} is not shared: "
            "mounts made on either side will not propagate"
        )
    elif propagation == "rslave" and not (shared or slave):
        notes.append(
            f"mount {host_path} asks for rslave propagation but its host mount {point} is neither shared "
            "nor a slave: host mounts will not propagate into the container"
        )


def _system_mounts(privileged: bool, cgroups_rw: bool) -> list[dict[str, Any]]:
    """/proc, /dev, /dev/pts, /dev/mqueue, /sys and /sys/fs/cgroup."""
    sys_mode = "rw" if privileged else "ro"
    cgroup_mode = "rw" if cgroups_rw else "ro"
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", sys_mode]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", cgroup_mode]},
    ]


def _shm_mount(pod: PodContext) -> dict[str, Any]:
    """/dev/shm: the pod's, the host's for a host-IPC pod, else a private one."""
    options = ["rbind", "nosuid", "nodev", "noexec"]
    if pod.shm:
        return {"destination": "/dev/shm", "type": "bind", "source": pod.shm, "options": options}
    if "ipc" in pod.host:
        return {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": options}
    return {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}


def _mounts(config: ContainerConfig, pod: PodContext, host: HostInfo,
            notes: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Every mount in order, and the root's propagation ("" for runc's default).

    System mounts first, then /dev/shm and the pod's files, then the
    config's binds, parents before children.  A config mount replaces a
    default one at the same place.
    """
    security = config.security
    user_mounts = []
    for index, mount in enumerate(config.mounts):
        destination = _container_path(mount.container_path, f"mounts[{index}].container_path")
        if not mount.host_path or not mount.host_path.startswith("/"):
            raise InvalidArgument(f"mounts[{index}].host_path: {mount.host_path!r} must be an absolute path")
        if not os.path.exists(mount.host_path):
            raise InvalidArgument(f"mounts[{index}].host_path: {mount.host_path} does not exist")
        if mount.propagation not in PROPAGATIONS:
            raise InvalidArgument(
                f"mounts[{index}].propagation: {mount.propagation!r} is not one of {', '.join(PROPAGATIONS)}"
            )
        _check_propagation(mount.host_path, mount.propagation, host, notes)
        options = ["rbind", _PROPAGATION_OPTION[mount.propagation], "ro" if mount.readonly else "rw"]
        if mount.recursive_read_only:
            if not mount.readonly or mount.propagation != "private":
                raise InvalidArgument(f"mounts[{index}].recursive_read_only needs readonly and private propagation")
            options.append("rro")  # runc makes every mount below read-only too (mount_setattr)
        oci_mount: dict[str, Any] = {"destination": destination, "type": "bind", "source": mount.host_path,
                                     "options": options}
        if mount.uid_mappings or mount.gid_mappings:
            # An idmapped bind (runc 1.2+): host ids appear through these ranges.
            oci_mount["uidMappings"] = [m.to_oci() for m in mount.uid_mappings]
            oci_mount["gidMappings"] = [m.to_oci() for m in mount.gid_mappings]
        user_mounts.append((destination, mount.propagation, oci_mount))
    taken = {destination for destination, _, _ in user_mounts}

    defaults = _system_mounts(security.privileged, security.privileged)
    defaults.append(_shm_mount(pod))
    pod_file_mode = "ro" if security.readonly_rootfs else "rw"
    for path in _POD_FILES:
        source = pod.files.get(path)
        if source:
            defaults.append({"destination": path, "type": "bind", "source": source,
                             "options": ["rbind", "rprivate", pod_file_mode]})
    mounts = [m for m in defaults if m["destination"] not in taken]
    # Stable sort by depth: /data before /data/cache whatever the order given,
    # so a child mount is not hidden by its parent mounted after it.
    user_mounts.sort(key=lambda item: 0 if item[0] == "/" else item[0].count("/"))
    mounts += [m for _, _, m in user_mounts]

    propagations = {p for _, p, _ in user_mounts}
    # The container's root mount must itself be shared (or a slave) for
    # rshared (rslave) binds to carry mount events across.
    root_propagation = "rshared" if "rshared" in propagations else "rslave" if "rslave" in propagations else ""
    return mounts, root_propagation


# ---------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------

def _device_rule(allow: bool, kind: str | None, major: int | None, minor: int | None, access: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"allow": allow}
    if kind is not None:
        rule["type"] = kind
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    rule["access"] = access
    return rule


def _devices(config: ContainerConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The config's device nodes (linux.devices) and the cgroup rules
    (linux.resources.devices): deny all, allow the defaults and those."""
    nodes = []
    rules = [_device_rule(False, None, None, None, "rwm")]
    if config.security.privileged:
        rules = [_device_rule(True, None, None, None, "rwm")]
    else:
        rules += [_device_rule(True, *rule) for rule in _DEFAULT_DEVICE_RULES]
    for index, device in enumerate(config.devices):
        path = _container_path(device.container_path, f"devices[{index}].container_path")
        permissions = device.permissions or "rwm"
        if not set(permissions) <= set("rwm"):
            raise InvalidArgument(f"devices[{index}].permissions: {device.permissions!r} must be letters of 'rwm'")
        try:
            info = os.stat(device.host_path)
        except (OSError, ValueError):
            raise InvalidArgument(f"devices[{index}].host_path: {device.host_path} does not exist") from None
        if stat.S_ISCHR(info.st_mode):
            kind = "c"
        elif stat.S_ISBLK(info.st_mode):
            kind = "b"
        else:
            raise InvalidArgument(f"devices[{index}].host_path: {device.host_path} is not a device node")
        major, minor = os.major(info.st_rdev), os.minor(info.st_rdev)
        nodes.append({
            "path": path, "type": kind, "major": major, "minor": minor,
            "fileMode": stat.S_IMODE(info.st_mode), "uid": info.st_uid, "gid": info.st_gid,
        })
        if not config.security.privileged:
            rules.append(_device_rule(True, kind, major, minor, "".join(sorted(set(permissions), key="rwm".index))))
    return nodes, rules


# ---------------------------------------------------------------------------
# Namespaces
# ---------------------------------------------------------------------------

def _namespaces(pod: PodContext, host: HostInfo) -> tuple[list[dict[str, str]], bool]:
    """linux.namespaces, and whether the container has a UTS namespace of its
    own (only then does runc set the hostname)."""
    namespaces: list[dict[str, str]] = [{"type": "mount"}]
    if pod.namespaces.get("user"):
        # The pod's user namespace, joined first (runc does): every
        # namespace the container makes (mount, PID) is owned by it.  No
        # uid/gid mappings beside the path: runc reads them from it.
        namespaces.insert(0, {"type": "user", "path": pod.namespaces["user"]})
    own_uts = False
    for kind, oci in (("net", "network"), ("ipc", "ipc"), ("uts", "uts")):
        shared_with_host = kind in pod.host or (kind == "uts" and "uts" not in pod.namespaces and "net" in pod.host)
        if shared_with_host:
            continue  # omitted: the host's
        path = pod.namespaces.get(kind)
        if path:
            namespaces.append({"type": oci, "path": path})
        else:
            namespaces.append({"type": oci})
            own_uts = own_uts or kind == "uts"
    if pod.pid_mode == "pod" and "pid" not in pod.host:
        if pod.infra_pid <= 0:
            raise InvalidArgument("pid_mode 'pod' needs the pod's infra process, and the pod has none")
        namespaces.append({"type": "pid", "path": f"/proc/{pod.infra_pid}/ns/pid"})
    elif pod.pid_mode == "container" and "pid" not in pod.host:
        namespaces.append({"type": "pid"})
    elif pod.pid_mode not in ("pod", "container", "node"):
        raise InvalidArgument(f"pid_mode {pod.pid_mode!r} is not one of pod, container, node")
    # A private cgroup namespace only on pure v2 (as containerd does): on
    # v1/hybrid runc would still show the full v1 paths, and tools there
    # expect the host's view.
    if host.cgroups.mode == "v2":
        namespaces.append({"type": "cgroup"})
    return namespaces, own_uts


# ---------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------

def _resources(config: ContainerConfig, host: HostInfo, notes: list[str]) -> dict[str, Any]:
    r = config.resources
    resources: dict[str, Any] = {}
    cpu: dict[str, Any] = {}
    if r.cpu_shares > 0:
        cpu["shares"] = r.cpu_shares
    if r.cpu_quota > 0 or r.cpu_quota == -1:
        cpu["quota"] = r.cpu_quota
    if r.cpu_period > 0:
        cpu["period"] = r.cpu_period
    if r.cpuset_cpus:
        cpu["cpus"] = r.cpuset_cpus
    if r.cpuset_mems:
        cpu["mems"] = r.cpuset_mems
    if cpu:
        resources["cpu"] = cpu
    memory: dict[str, Any] = {}
    if r.memory_limit > 0:
        memory["limit"] = r.memory_limit
    # The kubelet decides swap (it sends swap == limit on nodes without swap
    # when the swap controller exists); pass it through as given.  Without a
    # memory limit a memory+swap limit is meaningless (and rejected by v1).
    if r.memory_swap_limit > 0 or r.memory_swap_limit == -1:
        if r.memory_limit > 0:
            memory["swap"] = r.memory_swap_limit
        else:
            notes.append(f"memory_swap_limit {r.memory_swap_limit} ignored: no memory limit is set")
    if memory:
        resources["memory"] = memory
    if r.hugepage_limits:
        if host.cgroups.mode != "v2" and "hugetlb" not in host.cgroups.v1:
            notes.append(
                "hugepage limits dropped: this host has no cgroup v1 hugetlb controller "
                f"(cgroup layout {host.cgroups.mode})"
            )
        else:
            resources["hugepageLimits"] = [{"pageSize": size, "limit": limit} for size, limit in r.hugepage_limits]
    if r.unified:
        if host.cgroups.mode == "v2":
            resources["unified"] = dict(r.unified)
        else:
            notes.append(
                f"unified (cgroup v2) resources dropped: this host's cgroup layout is {host.cgroups.mode}: "
                + ", ".join(key for key, _ in r.unified)
            )
    return resources


# ---------------------------------------------------------------------------
# Sysctls, seccomp, AppArmor
# ---------------------------------------------------------------------------

def _sysctls(config: ContainerConfig, pod: PodContext, namespaces: list[dict[str, str]]) -> dict[str, str]:
    """The pod's and the container's sysctls (the container's win), each
    checked to belong to a namespace the container does not share with the
    host (runc refuses the others)."""
    merged = {**pod.sysctls, **dict(config.sysctls)}
    present = {ns["type"] for ns in namespaces}
    for name in merged:
        kind = sysctl_namespace(name)
        if kind is None:
            raise InvalidArgument(f"sysctl {name!r} is not namespaced: setting it would change the host")
        oci = {"net": "network"}.get(kind, kind)
        if oci not in present:
            raise InvalidArgument(f"sysctl {name!r} is not allowed: the container shares the host's {kind} namespace")
    return merged


def _seccomp(config: ContainerConfig, host: HostInfo, notes: list[str]) -> dict[str, Any] | None:
    profile = config.security.seccomp
    if profile is None or profile.kind == "unconfined":
        return None
    if config.security.privileged:
        notes.append(f"seccomp profile {profile.kind} not applied: the container is privileged")
        return None
    if profile.kind == "runtime_default":
        return default_profile(host.machine, host.kernel_release)
    if profile.kind == "localhost":
        return load_localhost(profile.localhost_ref)
    raise InvalidArgument(f"seccomp: unknown profile type {profile.kind!r}")


def _apparmor(config: ContainerConfig, host: HostInfo, notes: list[str]) -> str:
    """process.apparmorProfile ("" for none)."""
    profile: Profile | None = config.security.apparmor
    loaded = host.apparmor_profiles
    if loaded is None and host.apparmor_enabled and profile is not None:
        loaded = _apparmor_profiles()
    if profile is None or profile.kind == "unconfined":
        return ""
    if profile.kind == "localhost":
        name = profile.localhost_ref
        if name.startswith("localhost/"):
            name = name[len("localhost/"):]
        if not name:
            raise InvalidArgument("apparmor: a localhost profile needs its name in localhost_ref")
        if not host.apparmor_enabled:
            raise InvalidArgument(f"AppArmor profile {name} requested but AppArmor is not enabled on this host")
        if loaded is not None and name not in loaded:
            raise InvalidArgument(f"AppArmor profile {name} requested but it is not loaded on this host")
        return name
    if profile.kind == "runtime_default":
        if not host.apparmor_enabled:
            notes.append("AppArmor runtime/default requested but AppArmor is not enabled on this host: no profile")
            return ""
        if config.security.privileged:
            return ""  # privileged containers run unconfined unless a profile is named
        if loaded is not None and DEFAULT_APPARMOR_PROFILE in loaded:
            return DEFAULT_APPARMOR_PROFILE
        notes.append(
            f"AppArmor profile {DEFAULT_APPARMOR_PROFILE} is not loaded (or the loaded profiles cannot be listed): "
            "the container runs unconfined"
        )
        return ""
    raise InvalidArgument(f"apparmor: unknown profile type {profile.kind!r}")


def _paths(given: tuple[str, ...] | None, default: Iterable[str], privileged: bool, what: str) -> list[str]:
    if privileged:
        return []
    paths = list(default) if given is None else list(given)
    for path in paths:
        if not path.startswith("/"):
            raise InvalidArgument(f"{what}: {path!r} must be an absolute path")
    return paths


# ---------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------

def build_spec(
    container_id: str,
    config: ContainerConfig,
    image: ImageDefaults,
    pod: PodContext,
    rootfs: str,
    user: ResolvedUser,
    daemon_oom_score_adj: int,
    host: HostInfo | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """The OCI runtime spec of a container, and notes for the log.

    :param container_id: also the leaf of ``linux.cgroupsPath``
        (``<pod.cgroup_parent>/<container_id>``, cgroupfs style).
    :param rootfs: the container's root file system (its overlay mount).
    :param user: from :func:`rktlet.oci.users.resolve_user`.
    :param daemon_oom_score_adj: rktlet's own oom_score_adj; without
        CAP_SYS_RESOURCE no process can go below it, so a lower request is
        raised to it (and noted) rather than making runc fail.
    :param host: the host's facts; probed when not given.
    :returns: (spec, notes): notes say where the spec differs from the
        request and why.
    :raises InvalidArgument: naming the field that cannot be honoured.
    """
    if not container_id or "/" in container_id or container_id in (".", ".."):
        raise InvalidArgument(f"container id {container_id!r} is not usable as a cgroup name")
    host = host or HostInfo.probe()
    notes: list[str] = []
    security = config.security

    argv = command_line(config, image)
    namespaces, own_uts = _namespaces(pod, host)
    if config.working_dir:
        cwd = _container_path(config.working_dir, "working_dir")
    elif image.working_dir:
        cwd = posixpath.normpath(posixpath.join("/", image.working_dir))
    else:
        cwd = "/"

    requested_oom = config.resources.oom_score_adj
    if not -1000 <= requested_oom <= 1000:
        raise InvalidArgument(f"oom_score_adj {requested_oom} is outside -1000..1000")
    oom_score_adj = max(requested_oom, daemon_oom_score_adj)
    if oom_score_adj != requested_oom:
        notes.append(
            f"oom_score_adj {requested_oom} raised to {oom_score_adj}: rktlet's own value, the lowest this host "
            "allows without CAP_SYS_RESOURCE"
        )

    caps = _capabilities(config, host, notes)
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": {"uid": user.uid, "gid": user.gid},
        "args": argv,
        "env": _environment(config, image, pod.hostname),
        "cwd": cwd,
        "capabilities": {
            "bounding": list(caps),
            "effective": list(caps),
            "permitted": list(caps),
            "inheritable": [],
            "ambient": [],
        },
        "noNewPrivileges": security.no_new_privs,
        "oomScoreAdj": oom_score_adj,
    }
    if user.additional_gids:
        process["user"]["additionalGids"] = list(user.additional_gids)
    apparmor = _apparmor(config, host, notes)
    if apparmor:
        process["apparmorProfile"] = apparmor

    mounts, root_propagation = _mounts(config, pod, host, notes)
    device_nodes, device_rules = _devices(config)
    resources = _resources(config, host, notes)
    resources["devices"] = device_rules

    parent = pod.cgroup_parent.rstrip("/") or ""
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "cgroupsPath": f"{parent}/{container_id}",
        "resources": resources,
    }
    if device_nodes:
        linux["devices"] = device_nodes
    sysctls = _sysctls(config, pod, namespaces)
    if sysctls:
        linux["sysctl"] = sysctls
    masked = _paths(security.masked_paths, DEFAULT_MASKED_PATHS, security.privileged, "masked_paths")
    readonly = _paths(security.readonly_paths, DEFAULT_READONLY_PATHS, security.privileged, "readonly_paths")
    if masked:
        linux["maskedPaths"] = masked
    if readonly:
        linux["readonlyPaths"] = readonly
    if root_propagation:
        linux["rootfsPropagation"] = root_propagation
    seccomp = _seccomp(config, host, notes)
    if seccomp is not None:
        linux["seccomp"] = seccomp

    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": rootfs, "readonly": security.readonly_rootfs},
        "mounts": mounts,
        "linux": linux,
    }
    # runc sets the hostname only in a UTS namespace of the container's own;
    # a joined (pod) namespace already has the pod's name, and the host's
    # must not be touched.
    if own_uts and pod.hostname:
        spec["hostname"] = pod.hostname
    if config.annotations:
        spec["annotations"] = dict(config.annotations)
    return spec, notes


def linux_resources(resources: Resources, host: HostInfo | None = None) -> tuple[dict[str, Any], list[str]]:
    """``linux.resources`` for *resources* alone (what ``runc update`` takes),
    with the same rules and notes as :func:`build_spec`."""
    notes: list[str] = []
    return _resources(ContainerConfig(name="update", resources=resources), host or HostInfo.probe(), notes), notes
