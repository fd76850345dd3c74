"""In-memory fakes of the pod engine's drivers (the protocols of
:mod:`rktlet.pod.drivers`), for testing the managers without root or real
programs. Each is held to the same contract tests as the real driver
(``tests/contract``); where a fake cannot behave as the real one, its
docstring says so."""

from tests.fakes.host import FakeHost
from tests.fakes.images import FakeImages
from tests.fakes.network import FakeNetwork
from tests.fakes.oci import FakeMonitor, FakeMonitorDriver, FakeRuntime, MonitorFiles

__all__ = ["FakeHost", "FakeImages", "FakeMonitor", "FakeMonitorDriver", "FakeNetwork", "FakeRuntime", "MonitorFiles"]
