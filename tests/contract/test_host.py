"""The ``Host`` contract (:mod:`rktlet.pod.drivers`): FakeHost and RealHost.

The real variant mounts in a temporary dir, makes cgroups under a test-only
parent ``/rktlet-contract-<random>`` and pins namespaces in a temporary
dir; all of it is removed afterwards."""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.pod.drivers import Host
from tests.contract.variants import VARIANTS, require_real
from tests.fakes import FakeHost


class HostWorld:
    """A Host of one variant, with a scratch dir and a cgroup parent of its own."""

    def __init__(self, host: Host, base: str) -> None:
        self.host = host
        self.base = base
        self.cgroup = f"/rktlet-contract-{uuid.uuid4().hex[:10]}"
        self.made: list[str] = []
        self.namespace_files: list[str] = []
        self.infra: list[Any] = []  # infra processes started (stopped at teardown)

    def namespaces(self, *kinds: str) -> dict[str, str]:
        """Files to pin namespaces of *kinds* at (removed at teardown)."""
        directory = os.path.join(self.base, "ns-" + uuid.uuid4().hex[:6])
        os.makedirs(directory)
        paths = {k: os.path.join(directory, k) for k in kinds}
        self.namespace_files += paths.values()
        return paths

    async def teardown(self) -> None:
        for process in self.infra:
            await self.host.stop_infra(process)
        self.host.remove_pinned_namespaces(self.namespace_files)
        self.host.remove_cgroups(self.host.existing_cgroups(self.cgroup))
        for root, dirs, _ in os.walk(self.base):
            for d in dirs:
                self.host.unmount(os.path.join(root, d))


@pytest.fixture(params=VARIANTS)
def host_variant(request) -> str:
    """The variant; the real one skipped without root (here: a skip inside
    an async fixture upsets pytest-twisted)."""
    if request.param == "real":
        require_real()
    return request.param


@pytest_twisted.async_yield_fixture
async def world(host_variant, tmp_path):
    if host_variant == "fake":
        host: Host = FakeHost()
    else:
        from rktlet.oci import cgroups
        from rktlet.oci.host import RealHost

        host = RealHost(reactor, cgroups.detect())
    w = HostWorld(host, str(tmp_path))
    try:
        yield w
    finally:
        await w.teardown()
        assert not host.existing_cgroups(w.cgroup)


def test_shm_mount_and_idempotent_unmount(world):
    pod_dir = os.path.join(world.base, "pod")
    os.mkdir(pod_dir, 0o700)
    shm = os.path.join(pod_dir, "shm")
    world.host.mount_shm(shm, 1 << 20)
    assert world.host.is_mounted(shm)
    world.host.unmount(shm)
    assert not world.host.is_mounted(shm)
    world.host.unmount(shm)
    world.host.unmount(os.path.join(world.base, "never-there"))


def test_overlay_mount(world):
    dirs = {n: os.path.join(world.base, n) for n in ("lower1", "lower2", "upper", "work", "rootfs")}
    for d in dirs.values():
        os.mkdir(d)
    world.host.mount_overlay(dirs["rootfs"], [dirs["lower2"], dirs["lower1"]], dirs["upper"], dirs["work"])
    assert world.host.is_mounted(dirs["rootfs"])
    world.host.unmount(dirs["rootfs"])
    assert not world.host.is_mounted(dirs["rootfs"])


def test_readonly_overlay_mount_needs_two_lowers(world):
    dirs = {n: os.path.join(world.base, n) for n in ("lower1", "lower2", "volume")}
    for d in dirs.values():
        os.mkdir(d)
    with pytest.raises(OSError) as e:
        world.host.mount_readonly_overlay(dirs["volume"], [dirs["lower1"]])
    assert e.value.errno == 22 and dirs["volume"] in str(e.value)
    assert not world.host.is_mounted(dirs["volume"])
    world.host.mount_readonly_overlay(dirs["volume"], [dirs["lower2"], dirs["lower1"]])
    assert world.host.is_mounted(dirs["volume"])
    world.host.unmount(dirs["volume"])
    assert not world.host.is_mounted(dirs["volume"])


def test_cgroups_ensure_is_idempotent_and_remove_too(world):
    pod = world.cgroup + "/pod"
    created = world.host.ensure_cgroup(pod)
    assert created and created[-1].endswith(pod)
    assert any(d.endswith(world.cgroup) for d in created)  # parents first, made on the way
    assert world.host.ensure_cgroup(pod) == []
    assert world.host.existing_cgroups(pod)
    world.host.remove_cgroups(created)
    assert world.host.existing_cgroups(pod) == [] and world.host.existing_cgroups(world.cgroup) == []
    world.host.remove_cgroups(created)


def test_a_bad_cgroup_path_is_refused(world):
    with pytest.raises(InvalidArgument):
        world.host.ensure_cgroup(world.cgroup + "/../escape")


def test_adding_to_a_missing_cgroup_fails(world):
    with pytest.raises(RuntimeFailure):
        world.host.add_to_cgroup(world.cgroup + "/missing", os.getpid())


def test_pinned_namespaces_created_once_and_removed_idempotently(world):
    paths = world.namespaces("net", "ipc", "uts")
    world.host.create_pinned_namespaces(paths, hostname="contract-pod", sysctls={"net.ipv4.ip_unprivileged_port_start": "80"})
    assert all(world.host.namespace_pinned(p) for p in paths.values())
    world.host.bring_up_loopback(paths["net"])
    with pytest.raises(RuntimeFailure):
        world.host.create_pinned_namespaces(paths)  # the files are taken
    assert all(world.host.namespace_pinned(p) for p in paths.values())
    world.host.remove_pinned_namespaces(paths.values())
    assert not any(world.host.namespace_pinned(p) for p in paths.values())
    world.host.remove_pinned_namespaces(paths.values())


def test_a_sysctl_outside_the_pods_namespaces_is_refused_and_nothing_pinned(world):
    paths = world.namespaces("net")
    with pytest.raises(InvalidArgument):
        world.host.create_pinned_namespaces(paths, sysctls={"kernel.shmmax": "1024"})  # IPC: not made here
    with pytest.raises(InvalidArgument):
        world.host.create_pinned_namespaces(paths, sysctls={"vm.swappiness": "1"})  # host-wide
    assert not world.host.namespace_pinned(paths["net"])


@pytest_twisted.ensureDeferred
async def test_infra_process_lives_in_the_pod_until_stopped(world):
    if not isinstance(world.host, FakeHost):
        require_real("catatonit", "nsenter", "unshare", "setsid")
    paths = world.namespaces("net", "ipc", "uts")
    world.host.create_pinned_namespaces(paths, hostname="contract-pod")
    world.host.ensure_cgroup(world.cgroup)
    process = await world.host.start_infra(paths)
    world.infra.append(process)
    assert world.host.infra_alive(process)
    world.host.add_to_cgroup(world.cgroup, process.pid)
    await world.host.stop_infra(process)
    assert not world.host.infra_alive(process)
    await world.host.stop_infra(process)


@pytest_twisted.ensureDeferred
async def test_infra_needs_pinned_namespaces(world):
    if not isinstance(world.host, FakeHost):
        require_real("catatonit", "nsenter", "unshare", "setsid")
    paths = world.namespaces("net")  # never pinned
    with pytest.raises(RuntimeFailure):
        await world.host.start_infra(paths)


@pytest_twisted.ensureDeferred
async def test_namespaces_in_a_user_namespace_pinned_all_or_nothing(world):
    from rktlet.oci.userns import IDMapping, UserNamespace

    if not isinstance(world.host, FakeHost):
        require_real("unshare", "catatonit", "nsenter", "setsid")
    userns = UserNamespace((IDMapping(0, 9 * 65536, 65536),), (IDMapping(0, 9 * 65536, 65536),))
    paths = world.namespaces("user", "net", "ipc", "uts")
    await world.host.create_pinned_namespaces_in_userns(
        paths, userns, hostname="contract-pod",
        sysctls={"net.ipv4.ip_unprivileged_port_start": "80", "kernel.shm_rmid_forced": "1"})
    assert all(world.host.namespace_pinned(p) for p in paths.values())
    world.host.bring_up_loopback(paths["net"])
    process = await world.host.start_infra(paths)  # catatonit inside the user namespace
    world.infra.append(process)
    assert world.host.infra_alive(process)
    with pytest.raises(RuntimeFailure):
        await world.host.create_pinned_namespaces_in_userns(paths, userns)  # the files are taken
    await world.host.stop_infra(process)
    world.host.remove_pinned_namespaces(paths.values())
    assert not any(world.host.namespace_pinned(p) for p in paths.values())
    # A bad sysctl: refused before anything is made.
    again = world.namespaces("user", "net")
    with pytest.raises(InvalidArgument):
        await world.host.create_pinned_namespaces_in_userns(again, userns, sysctls={"kernel.shmmax": "1024"})
    assert not any(world.host.namespace_pinned(p) for p in again.values())
