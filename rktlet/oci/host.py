"""The host operations of the pod engine, on the real host: a thin adapter
over :mod:`rktlet.oci.mounts`, :mod:`~rktlet.oci.cgroups`,
:mod:`~rktlet.oci.namespaces` and :mod:`~rktlet.oci.infra` (the ``Host``
protocol of :mod:`rktlet.pod.drivers`).

Blocking methods do system calls and file work: call them from a worker
thread. :meth:`RealHost.start_infra` and :meth:`RealHost.stop_infra` are
async (they spawn and wait on the reactor).
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from typing import Any, Iterable, Mapping, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from rktlet.oci import cgroups, infra, mounts, namespaces
from rktlet.oci import userns as user_namespaces
from rktlet.oci.infra import InfraProcess
from rktlet.oci.userns import IDMappedRoot, UserNamespace

__all__ = ["RealHost", "loopback_up"]

# ioctl numbers and the flag of <linux/sockios.h> and <net/if.h>.
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1


def loopback_up() -> None:
    """Bring up ``lo`` in the calling thread's network namespace (what the
    CNI loopback plugin does, without starting a process)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


class RealHost:
    """Mounts, pinned namespaces, cgroups and infra processes on this host.

    :param reactor: spawns and times the infra process.
    :param layout: the host's cgroup layout (:func:`rktlet.oci.cgroups.detect`).
    :param threadpool: where the blocking parts of its asynchronous calls
        run (default: the reactor's).
    """

    def __init__(self, reactor: Any, layout: cgroups.Layout, threadpool: Any = None) -> None:
        self._reactor = reactor
        self.layout = layout
        self._threadpool = threadpool

    # -- mounts (blocking) --------------------------------------------------

    def mount_overlay(self, target: str, lowers: Sequence[str], upper: str, work: str,
                      idmap: IDMappedRoot | None = None) -> None:
        """Blocking: an overlay of *lowers* (top first), *upper* and *work*
        on *target*; with *idmap*, see :func:`rktlet.oci.userns.mount_overlay_idmapped`."""
        if idmap is not None:
            user_namespaces.mount_overlay_idmapped(target, lowers, upper, work, idmap.scratch, idmap.userns_path,
                                          idmap.uid, idmap.gid)
            return
        mounts.mount("overlay", target, "overlay", 0, f"lowerdir={':'.join(lowers)},upperdir={upper},workdir={work}")

    def mount_readonly_overlay(self, target: str, lowers: Sequence[str]) -> None:
        """Blocking: see :func:`rktlet.oci.mounts.mount_readonly_overlay`."""
        mounts.mount_readonly_overlay(target, lowers)

    def mount_shm(self, target: str, size_bytes: int, owner: tuple[int, int] | None = None) -> None:
        """Blocking: see :func:`rktlet.oci.mounts.mount_shm`."""
        mounts.mount_shm(target, size_bytes, owner)

    def give_to(self, paths: Sequence[str], uid: int, gid: int) -> None:
        """Blocking: chown each of *paths* (not following a symlink)."""
        for path in paths:
            os.lchown(path, uid, gid)

    def unmount(self, target: str) -> None:
        """Blocking, idempotent: see :func:`rktlet.oci.mounts.unmount`."""
        mounts.unmount(target)

    def is_mounted(self, target: str) -> bool:
        """Blocking: whether *target* is a mount point."""
        return os.path.ismount(target)

    # -- pinned namespaces (blocking) ---------------------------------------

    def create_pinned_namespaces(self, paths: Mapping[str, str], hostname: str | None = None,
                                 sysctls: Mapping[str, str] = {}) -> None:  # noqa: B006 (read-only)
        """Blocking: see :func:`rktlet.oci.namespaces.create_pinned`."""
        namespaces.create_pinned(paths, hostname=hostname, sysctls=sysctls)

    async def create_pinned_namespaces_in_userns(self, paths: Mapping[str, str], userns: UserNamespace,
                                                 hostname: str | None = None,
                                                 sysctls: Mapping[str, str] = {}) -> None:  # noqa: B006
        """Async: see :func:`rktlet.oci.userns.create_pinned`, then
        :func:`rktlet.oci.namespaces.configure_pinned` for the hostname and
        sysctls (checked first: nothing is made for a bad one)."""
        others = {k: v for k, v in paths.items() if k != "user"}
        namespaces.check_settings(others, hostname, sysctls)
        await user_namespaces.create_pinned(self._reactor, paths, userns, self._in_thread)
        try:
            await self._in_thread(namespaces.configure_pinned, others, hostname, sysctls, userns.root_uid)
        except BaseException:
            await self._in_thread(namespaces.remove_pinned, list(reversed(list(paths.values()))))
            raise

    def _in_thread(self, fn: Any, *args: Any) -> Deferred:
        pool = self._threadpool if self._threadpool is not None else self._reactor.getThreadPool()
        return deferToThreadPool(self._reactor, pool, fn, *args)

    def remove_pinned_namespaces(self, paths: Iterable[str]) -> None:
        """Blocking, idempotent: see :func:`rktlet.oci.namespaces.remove_pinned`."""
        namespaces.remove_pinned(paths)

    def namespace_pinned(self, path: str) -> bool:
        """Blocking: see :func:`rktlet.oci.namespaces.is_pinned`."""
        return namespaces.is_pinned(path)

    def bring_up_loopback(self, netns: str) -> None:
        """Blocking: ``lo`` up in the network namespace pinned at *netns*."""
        namespaces.run_in_namespace(netns, "net", loopback_up)

    # -- cgroups (blocking) -------------------------------------------------

    def ensure_cgroup(self, path: str) -> list[str]:
        """Blocking, idempotent: see :func:`rktlet.oci.cgroups.ensure`."""
        return cgroups.ensure(self.layout, path)

    def existing_cgroups(self, path: str) -> list[str]:
        """Blocking: see :func:`rktlet.oci.cgroups.existing`."""
        return cgroups.existing(self.layout, path)

    def remove_cgroups(self, dirs: Sequence[str]) -> None:
        """Blocking, idempotent: see :func:`rktlet.oci.cgroups.remove`."""
        cgroups.remove(dirs)

    def add_to_cgroup(self, path: str, pid: int) -> None:
        """Blocking: see :func:`rktlet.oci.cgroups.add_process`."""
        cgroups.add_process(self.layout, path, pid)

    def set_cgroup_resources(self, path: str, resources: dict[str, Any]) -> list[str]:
        """Blocking: see :func:`rktlet.oci.cgroups.apply_resources`."""
        return cgroups.apply_resources(self.layout, path, resources)

    # -- the infra process ----------------------------------------------------

    async def start_infra(self, namespaces: Mapping[str, str]) -> InfraProcess:
        """Async: see :func:`rktlet.oci.infra.start`."""
        return await infra.start(self._reactor, namespaces)

    async def stop_infra(self, process: InfraProcess) -> None:
        """Async, idempotent: see :func:`rktlet.oci.infra.stop`."""
        await infra.stop(self._reactor, process)

    def infra_alive(self, process: InfraProcess) -> bool:
        """Blocking (one /proc read): see :func:`rktlet.oci.infra.alive`."""
        return infra.alive(process)
