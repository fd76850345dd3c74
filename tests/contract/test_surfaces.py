"""Every driver, real and fake, has each member of its protocol in
:mod:`rktlet.pod.drivers`, with the protocol's parameter names (callers
pass some by keyword)."""

from __future__ import annotations

import inspect

import pytest

from rktlet.image.manager import ImageManager
from rktlet.network.cni import CNI
from rktlet.oci.conmon import Conmon, Monitor
from rktlet.oci.host import RealHost
from rktlet.oci.runtime import OCIRuntime
from rktlet.pod import drivers
from tests.fakes import FakeHost, FakeImages, FakeMonitor, FakeMonitorDriver, FakeNetwork, FakeRuntime

IMPLEMENTATIONS = [
    (drivers.Runtime, OCIRuntime), (drivers.Runtime, FakeRuntime),
    (drivers.MonitorDriver, Conmon), (drivers.MonitorDriver, FakeMonitorDriver),
    (drivers.Monitor, Monitor), (drivers.Monitor, FakeMonitor),
    (drivers.Network, CNI), (drivers.Network, FakeNetwork),
    (drivers.ImageLookup, ImageManager), (drivers.ImageLookup, FakeImages),
    (drivers.Host, RealHost), (drivers.Host, FakeHost),
]

# Instance attributes set in __init__ (not visible on the class).
INSTANCE_ATTRIBUTES = {"binary", "state_root", "features", "exits_dir", "socket_dir", "comm", "store", "conmon_pid", "container_pid"}


def members(protocol: type) -> dict[str, object]:
    return {name: value for name, value in vars(protocol).items()
            if not name.startswith("_") and (callable(value) or isinstance(value, property))}


@pytest.mark.parametrize("protocol, implementation", IMPLEMENTATIONS,
                         ids=[f"{p.__name__}-{i.__name__}" for p, i in IMPLEMENTATIONS])
def test_the_protocol_surface_is_there(protocol, implementation):
    wanted = set(members(protocol)) | set(getattr(protocol, "__annotations__", {}))
    missing = [n for n in sorted(wanted) if not hasattr(implementation, n) and n not in INSTANCE_ATTRIBUTES]
    assert not missing, f"{implementation.__name__} lacks {missing}"
    for name, member in members(protocol).items():
        if isinstance(member, property) or isinstance(getattr(implementation, name), property):
            continue
        expected = list(inspect.signature(member).parameters)
        actual = list(inspect.signature(getattr(implementation, name)).parameters)
        assert actual == expected, f"{implementation.__name__}.{name}{actual} is not the protocol's {expected}"
