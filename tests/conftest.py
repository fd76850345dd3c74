"""Fixtures shared by every test tier.

* ``daemon``: a real rktlet process in temporary dirs (integration, e2e).
* ``crictl``: the real crictl bound to that daemon (e2e).
* ``registry`` / ``pushed_images``: a real local registry with real images
  (see ``harness/fixtures.py``).
"""

from __future__ import annotations

import os

import pytest

from harness.crictl import Crictl, find_crictl
from harness.daemon import Daemon, serve
from harness.pods import remove_all_pods
from harness.fixtures import *  # noqa: F401,F403  (registry, pushed_images)


def pytest_addoption(parser):
    parser.addoption("--runc", default="", metavar="PATH",
                     help="the runc the daemon's default handler and the runc-driving tests use "
                          "(sets RKTLET_TEST_RUNC; default: runc from PATH)")


def pytest_configure(config):
    if config.getoption("--runc", default=""):
        os.environ["RKTLET_TEST_RUNC"] = os.path.abspath(config.getoption("--runc"))


def pytest_collection_modifyitems(config, items):
    """Integration and e2e tests need root: skip them, saying so, without it."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, mounts, cgroups, iptables)")
    for item in items:
        if "/integration/" in str(item.fspath) or "/e2e/" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def subreaper():
    """The test process is a child subreaper, as the daemon is: conmon
    monitors (they daemonize) of in-process tests and of daemons the tests
    killed become its children, are reaped, and never linger as zombies
    under a PID 1 that does not reap."""
    if os.geteuid() != 0:
        yield
        return
    from rktlet.oci.procwatch import become_subreaper
    from harness.processes import reap_orphans

    become_subreaper()
    try:
        yield
    finally:
        reap_orphans()


@pytest.fixture(scope="session", autouse=True)
def host_network_state():
    """Puts back what CNI plugins change host-wide (ip_forward, portmap's
    shared chains) once the tests are done."""
    if os.geteuid() != 0:
        yield
        return
    from harness.network import HostNetworkState

    state = HostNetworkState()
    try:
        yield
    finally:
        state.restore()


@pytest.fixture
def daemon():
    """A started rktlet; stopped by PID and its dirs removed afterwards."""
    yield from serve(Daemon())


@pytest.fixture
def crictl(daemon):
    """The real crictl bound to the ``daemon`` fixture's socket."""
    binary = find_crictl()
    if binary is None:
        pytest.skip("crictl not installed (go install sigs.k8s.io/cri-tools/cmd/crictl@v1.37.0)")
    return Crictl(binary, daemon.socket, os.path.join(daemon.base, "crictl.yaml"))


@pytest.fixture
def test_network(daemon):
    """A private CNI network in the daemon's conf dir (replacing rktlet's
    default network there); its bridge and IPAM state are removed afterwards."""
    from harness.network import TestNetwork

    network = TestNetwork(daemon.cni_conf_dir)
    for name in os.listdir(daemon.cni_conf_dir):
        os.unlink(os.path.join(daemon.cni_conf_dir, name))
    network.write()
    try:
        yield network
    finally:
        remove_all_pods(daemon)
        network.cleanup()
