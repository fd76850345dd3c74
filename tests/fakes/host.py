"""An in-memory host: :class:`FakeHost` (the ``Host`` protocol of
:mod:`rktlet.pod.drivers`). Mounts are a dict, cgroups a set of paths with
the pids in them, pinned namespaces a set, infra processes a dict; removal
and unmounting are idempotent as on the real host, and path and sysctl
checks are the real ones. No root, no files, no processes."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.oci import cgroups, namespaces
from rktlet.oci.infra import InfraProcess
from rktlet.oci.userns import IDMappedRoot, UserNamespace

__all__ = ["FakeHost", "Mount"]

#: Where the fake's single cgroup hierarchy is "mounted".
CGROUP_ROOT = "/sys/fs/cgroup"


@dataclass(frozen=True)
class Mount:
    """One mount: its file system type and options."""

    fstype: str
    options: str


class FakeHost:
    """Mounts, namespaces, cgroups and infra processes, in memory.

    :ivar mounts: target → :class:`Mount`.
    :ivar cgroups: the cgroup dirs that exist (``/sys/fs/cgroup/<path>``).
    :ivar procs: cgroup dir → pids in it.
    :ivar pinned: namespace files with a live namespace.
    :ivar hostnames: UTS namespace file → hostname set in it.
    :ivar sysctls: namespace file → the sysctls written in it.
    :ivar loopback: network namespace files whose ``lo`` is up.
    :ivar infra: live infra processes, by pid, with their namespaces.
    :ivar resources: cgroup path → the resources written.
    :ivar owners: path → the (uid, gid) :meth:`give_to` gave it.
    :ivar user_namespaces: pinned user namespace file → its mappings.
    """

    def __init__(self) -> None:
        self.mounts: dict[str, Mount] = {}
        self.cgroups: set[str] = set()
        self.procs: dict[str, set[int]] = {}
        self.pinned: set[str] = set()
        self.hostnames: dict[str, str] = {}
        self.sysctls: dict[str, dict[str, str]] = {}
        self.loopback: set[str] = set()
        self.infra: dict[int, tuple[InfraProcess, dict[str, str]]] = {}
        self.resources: dict[str, dict[str, Any]] = {}
        self.owners: dict[str, tuple[int, int]] = {}
        self.user_namespaces: dict[str, UserNamespace] = {}
        self._pids = itertools.count(50000)
        self._ticks = itertools.count(1)

    # -- mounts ---------------------------------------------------------------------

    def _mount(self, target: str, fstype: str, options: str) -> None:
        if target in self.mounts:
            # The real mounts stack; the engine never mounts twice on one target.
            raise OSError(16, f"mount {fstype} on {target} ({options}): fake host: already mounted")
        self.mounts[target] = Mount(fstype, options)

    def mount_overlay(self, target: str, lowers: Sequence[str], upper: str, work: str,
                      idmap: IDMappedRoot | None = None) -> None:
        """Record an overlay on *target* (idmapped: ``idmap=<userns>`` in its options)."""
        options = f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}"
        if idmap is not None:
            if idmap.userns_path not in self.pinned:
                raise OSError(2, f"idmap {lowers[0]}: open {idmap.userns_path}: No such file or directory")
            options += f",idmap={idmap.userns_path}"
            self.owners[upper] = (idmap.uid, idmap.gid)
        self._mount(target, "overlay", options)

    def mount_readonly_overlay(self, target: str, lowers: Sequence[str]) -> None:
        """Record a read-only overlay on *target*; fewer than two lowers is
        EINVAL, as on the real host."""
        if len(lowers) < 2:
            raise OSError(22, f"mount overlay on {target}: fake host: a read-only overlay needs two lower dirs")
        self._mount(target, "overlay", f"lowerdir={':'.join(lowers)}")

    def mount_shm(self, target: str, size_bytes: int, owner: tuple[int, int] | None = None) -> None:
        """Record a tmpfs on *target*."""
        self._mount(target, "tmpfs", f"mode=1777,size={size_bytes}"
                    + (f",uid={owner[0]},gid={owner[1]}" if owner else ""))

    def give_to(self, paths: Sequence[str], uid: int, gid: int) -> None:
        """Record the owner of each path."""
        for path in paths:
            self.owners[path] = (uid, gid)

    def unmount(self, target: str) -> None:
        """Forget the mount at *target*; idempotent."""
        self.mounts.pop(target, None)

    def is_mounted(self, target: str) -> bool:
        """Whether something is mounted at *target*."""
        return target in self.mounts

    # -- pinned namespaces --------------------------------------------------------------

    def create_pinned_namespaces(self, paths: Mapping[str, str], hostname: str | None = None,
                                 sysctls: Mapping[str, str] = {}) -> None:  # noqa: B006 (read-only)
        """Pin new namespaces at *paths*; all or nothing."""
        unknown = [k for k in paths if k not in namespaces.KINDS]
        if unknown:
            raise ValueError(f"unknown namespace kinds {unknown}; expected some of {namespaces.KINDS}")
        for name in sysctls:
            namespaces.sysctl_path(name)  # a malformed name: InvalidArgument
            kind = namespaces.sysctl_namespace(name)
            if kind is None or kind not in paths:
                raise InvalidArgument(f"sysctl {name!r}: not in a namespace this pod has of its own")
        taken = [p for p in paths.values() if p in self.pinned]
        if taken:
            raise RuntimeFailure(f"create namespace file {taken[0]}: File exists")
        self.pinned |= set(paths.values())
        if hostname and "uts" in paths:
            self.hostnames[paths["uts"]] = hostname
        for kind, path in paths.items():
            self.sysctls[path] = {k: v for k, v in sysctls.items() if namespaces.sysctl_namespace(k) == kind}

    async def create_pinned_namespaces_in_userns(self, paths: Mapping[str, str], userns: UserNamespace,
                                                 hostname: str | None = None,
                                                 sysctls: Mapping[str, str] = {}) -> None:  # noqa: B006
        """Pin a user namespace and the others; all or nothing."""
        if "user" not in paths:
            raise ValueError("a user namespace file is required")
        if paths["user"] in self.pinned:
            raise RuntimeFailure(f"create user namespace file {paths['user']}: File exists")
        others = {k: v for k, v in paths.items() if k != "user"}
        self.create_pinned_namespaces(others, hostname, sysctls)
        self.pinned.add(paths["user"])
        self.user_namespaces[paths["user"]] = userns

    def remove_pinned_namespaces(self, paths: Iterable[str]) -> None:
        """Unpin; idempotent."""
        for path in paths:
            self.user_namespaces.pop(path, None)
            self.pinned.discard(path)
            self.hostnames.pop(path, None)
            self.sysctls.pop(path, None)
            self.loopback.discard(path)

    def namespace_pinned(self, path: str) -> bool:
        """Whether *path* is pinned."""
        return path in self.pinned

    def bring_up_loopback(self, netns: str) -> None:
        """``lo`` up in the pinned network namespace *netns*."""
        if netns not in self.pinned:
            raise RuntimeFailure(f"open network namespace {netns}: No such file or directory")
        self.loopback.add(netns)

    # -- cgroups --------------------------------------------------------------------------

    @staticmethod
    def _dir(path: str) -> str:
        return CGROUP_ROOT + cgroups.validate_path(path).rstrip("/")

    def ensure_cgroup(self, path: str) -> list[str]:
        """``mkdir -p``; returns the dirs made, parents first."""
        target = self._dir(path)
        created = []
        parts = target[len(CGROUP_ROOT):].strip("/").split("/")
        for i in range(1, len(parts) + 1):
            d = CGROUP_ROOT + "/" + "/".join(parts[:i])
            if d not in self.cgroups:
                self.cgroups.add(d)
                created.append(d)
        return created

    def existing_cgroups(self, path: str) -> list[str]:
        """The dir of *path*, if it exists."""
        d = self._dir(path)
        return [d] if d in self.cgroups else []

    def remove_cgroups(self, dirs: Sequence[str]) -> None:
        """Remove dirs and their children; processes in them are killed."""
        for d in dirs:
            doomed = {c for c in self.cgroups if c == d or c.startswith(d.rstrip("/") + "/")}
            for c in doomed:
                for pid in self.procs.pop(c, set()):
                    self.infra.pop(pid, None)
            self.cgroups -= doomed

    def add_to_cgroup(self, path: str, pid: int) -> None:
        """Move *pid* into cgroup *path* (out of any other)."""
        d = self._dir(path)
        if d not in self.cgroups:
            raise RuntimeFailure(f"add pid {pid} to {d}/cgroup.procs: No such file or directory")
        for pids in self.procs.values():
            pids.discard(pid)
        self.procs.setdefault(d, set()).add(pid)

    def set_cgroup_resources(self, path: str, resources: dict[str, Any]) -> list[str]:
        """Record *resources*; returns the (v2) files they would go to."""
        d = self._dir(path)
        cpu, memory = resources.get("cpu") or {}, resources.get("memory") or {}
        files = [f for f, wanted in (("cpu.weight", cpu.get("shares")),
                                     ("cpu.max", cpu.get("quota") or cpu.get("period")),
                                     ("cpuset.cpus", cpu.get("cpus")), ("cpuset.mems", cpu.get("mems")),
                                     ("memory.max", memory.get("limit"))) if wanted]
        self.resources[path] = resources
        return [f"{d}/{f}" for f in files]

    # -- the infra process --------------------------------------------------------------------

    async def start_infra(self, namespaces: Mapping[str, str]) -> InfraProcess:
        """A new infra process in the pinned *namespaces*."""
        missing = [p for p in namespaces.values() if p not in self.pinned]
        if missing:
            raise RuntimeFailure(f"infra process exited at start: nsenter: cannot open {missing[0]}: "
                                 "No such file or directory")
        process = InfraProcess(next(self._pids), next(self._ticks))
        self.infra[process.pid] = (process, dict(namespaces))
        return process

    async def stop_infra(self, process: InfraProcess) -> None:
        """Kill it; idempotent."""
        if self.infra_alive(process):
            del self.infra[process.pid]
            for pids in self.procs.values():
                pids.discard(process.pid)

    def infra_alive(self, process: InfraProcess) -> bool:
        """Whether that very process still runs."""
        live = self.infra.get(process.pid)
        return live is not None and live[0] == process
