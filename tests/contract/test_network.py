"""The ``Network`` contract (:mod:`rktlet.pod.drivers`): FakeNetwork and CNI
with the real plugins.

The real variant runs the plugins (bridge + host-local + portmap, the test
network of ``harness/network.py``: a private subnet, no
masquerading, no default route) from a network namespace of the test's own
(``harness/netns.py``), so the bridge, its addresses and portmap's
rules exist only there and vanish with it; pods get namespaces pinned in a
temporary dir. The plugins are reached through a bin dir of links, so that
a test can take one away to make an ADD or a DEL fail."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets

import pytest
import pytest_twisted
from twisted.internet import reactor

from rktlet.errors import RktletError
from rktlet.network.cni import Attachment
from rktlet.pod.drivers import Network
from tests.contract.variants import VARIANTS, require_real
from tests.fakes import FakeNetwork

PLUGINS_DIR = "/usr/lib/cni"
PLUGINS = ("bridge", "host-local", "portmap")


class FakeWorld:
    def __init__(self, base: str) -> None:
        self.fake = FakeNetwork("10.89.0.0/29")
        self.network: Network = self.fake
        self.subnet = self.fake.network
        self.base = base

    def netns(self) -> str:
        return os.path.join(self.base, "netns-" + secrets.token_hex(3))

    def break_next_add(self) -> None:
        self.fake.fail_next_add()

    def break_next_delete(self) -> None:
        self.fake.fail_next_delete()

    def repair(self) -> None:
        """Nothing to do: a fake failure is for one call."""

    def close(self) -> None:
        pass


class RealWorld:
    def __init__(self, base: str) -> None:
        from rktlet.network.cni import CNI
        from harness.netns import private_network
        from harness.network import TestNetwork

        self.base = base
        self.bin_dir = os.path.join(base, "bin")
        os.mkdir(self.bin_dir)
        self.repair()
        self.pinned: list[str] = []
        self._private = contextlib.ExitStack()
        self._private.enter_context(private_network())  # the plugins' side of the network: ours alone
        self.test_network = TestNetwork(os.path.join(base, "net.d"))
        self.test_network.write()
        self.subnet = ipaddress.ip_network(self.test_network.subnet)
        self.network: Network = CNI(reactor, self.test_network.conf_dir, [self.bin_dir],
                                    os.path.join(base, "cache"), timeout=20)

    def netns(self) -> str:
        from rktlet.oci import namespaces

        path = os.path.join(self.base, "netns-" + secrets.token_hex(3))
        namespaces.create_pinned({"net": path})
        self.pinned.append(path)
        return path

    def break_next_add(self) -> None:
        os.unlink(os.path.join(self.bin_dir, "bridge"))

    def break_next_delete(self) -> None:
        os.unlink(os.path.join(self.bin_dir, "bridge"))

    def repair(self) -> None:
        for plugin in PLUGINS:
            link = os.path.join(self.bin_dir, plugin)
            if not os.path.lexists(link):
                os.symlink(os.path.join(PLUGINS_DIR, plugin), link)

    def close(self) -> None:
        from rktlet.oci import namespaces

        try:
            namespaces.remove_pinned(self.pinned)
            self.test_network.cleanup()
        finally:
            self._private.close()


@pytest.fixture(params=VARIANTS)
def world(request, tmp_path):
    if request.param == "fake":
        w = FakeWorld(str(tmp_path))
    else:
        require_real("ip")
        missing = [p for p in PLUGINS if not os.access(os.path.join(PLUGINS_DIR, p), os.X_OK)]
        if missing:
            pytest.skip(f"the real driver needs the CNI plugins {', '.join(missing)} in {PLUGINS_DIR}")
        w = RealWorld(str(tmp_path))
    try:
        yield w
    finally:
        w.close()


def attachment(world) -> Attachment:
    return Attachment(container_id=secrets.token_hex(32), netns=world.netns(), pod_name="contract",
                      pod_namespace="default", pod_uid="uid-" + secrets.token_hex(4))


@pytest_twisted.ensureDeferred
async def test_add_gives_addresses_and_is_cached_until_deleted(world):
    first, second = attachment(world), attachment(world)
    result = await world.network.add(first)
    other = await world.network.add(second)
    assert result.ips and all(ipaddress.ip_address(ip) in world.subnet for ip in result.ips)
    assert set(result.ips).isdisjoint(other.ips)
    assert world.network.cached_ids() == sorted([first.container_id, second.container_id])
    assert world.network.cached(first.container_id)["result"] == result.result
    assert world.network.cached_attachments()[first.container_id] == first

    await world.network.delete(first)
    await world.network.delete(first)  # idempotent
    assert world.network.cached_ids() == [second.container_id]
    assert world.network.cached(first.container_id) is None
    await world.network.delete(second)
    assert world.network.cached_ids() == []


@pytest_twisted.ensureDeferred
async def test_delete_of_a_sandbox_never_added_is_fine(world):
    await world.network.delete(attachment(world))
    assert world.network.cached_ids() == []


@pytest_twisted.ensureDeferred
async def test_a_failed_add_leaves_nothing(world):
    att = attachment(world)
    world.break_next_add()
    with pytest.raises(RktletError):
        await world.network.add(att)
    assert world.network.cached_ids() == [] and world.network.cached(att.container_id) is None
    world.repair()
    assert (await world.network.add(att)).ips
    await world.network.delete(att)


@pytest_twisted.ensureDeferred
async def test_a_failed_delete_keeps_the_cache_for_a_retry(world):
    att = attachment(world)
    await world.network.add(att)
    world.break_next_delete()
    with pytest.raises(RktletError):
        await world.network.delete(att)
    assert world.network.cached_ids() == [att.container_id]
    assert world.network.cached_attachments() == {att.container_id: att}
    world.repair()
    await world.network.delete(att)
    assert world.network.cached_ids() == []
