"""The OCI runtime and the container monitor, fake or real, with what the
contract tests of both need: containers to create, a way to let one end by
itself, a daemon "restart" (a new monitor driver over the same machine).

Every container runs one program: it waits until it is told its exit code
(``/tmp/exit-code`` in its root file system), and it is PID 1 without
signal handlers, so it ignores TERM; KILL ends it with 137.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from rktlet.pod.drivers import Monitor, MonitorDriver, Runtime
from tests.fakes import FakeMonitorDriver, FakeRuntime

#: The program of every container (see the module's docstring).
WAITER = ["sh", "-c", "while [ ! -e /tmp/exit-code ]; do sleep 0.05; done; exit $(cat /tmp/exit-code)"]


class Started:
    """What both worlds offer on top of their own ``create``."""

    runtime: Runtime

    async def create(self) -> tuple[str, str, Monitor]:
        raise NotImplementedError

    async def started(self) -> tuple[str, str, Monitor]:
        """A container created and started: ``(id, bundle, monitor)``."""
        container_id, bundle, monitor = await self.create()
        await self.runtime.start(container_id)
        return container_id, bundle, monitor


class FakeOCI(Started):
    """:class:`FakeRuntime` and :class:`FakeMonitorDriver` on a Clock."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.clock = Clock()
        self.clock.advance(1_800_000_000)  # exit times in ns since the epoch, as the real ones
        self.fake_runtime = FakeRuntime(self.clock)
        self.runtime: Runtime = self.fake_runtime
        self.driver: MonitorDriver = FakeMonitorDriver(self.clock, self.fake_runtime)

    def bundle(self) -> tuple[str, str]:
        container_id = "c" + uuid.uuid4().hex[:12]
        return container_id, os.path.join(self.base, "b-" + container_id)

    def log_path(self, container_id: str) -> str:
        return os.path.join(self.base, container_id + ".log")

    def place(self, pid: int) -> None:
        """The cgroup callback (nothing to place)."""

    async def create(self) -> tuple[str, str, Monitor]:
        container_id, bundle = self.bundle()
        monitor = await self.driver.create(container_id, bundle, self.log_path(container_id), cgroup=self.place)
        self.fake_runtime.ignore(container_id, "TERM")  # the program is PID 1 without handlers
        return container_id, bundle, monitor

    def restart(self) -> MonitorDriver:
        self.driver.close()
        assert isinstance(self.driver, FakeMonitorDriver)
        self.driver = self.driver.restarted()
        return self.driver

    def let_exit(self, container_id: str, bundle: str, code: int) -> None:
        self.fake_runtime.exit(container_id, code)

    async def wait(self, d: Deferred, timeout: float = 10.0) -> Any:
        if not d.called:
            pytest.fail("the fake's Deferred has not fired")
        return await d

    async def teardown(self) -> None:
        self.driver.close()


class RealOCI(Started):
    """runc and conmon through the lab of ``harness/oci_lab.py``."""

    def __init__(self) -> None:
        from harness.oci_lab import Lab

        self.lab = Lab()
        self.runtime: Runtime = self.lab.runtime
        self.driver: MonitorDriver = self.lab.conmon

    def bundle(self) -> tuple[str, str]:
        container_id = "c" + uuid.uuid4().hex[:12]
        self.lab.ids.append(container_id)  # deleted at teardown
        return container_id, self.lab.bundle(container_id, WAITER)

    def log_path(self, container_id: str) -> str:
        return self.lab.log_path(container_id)

    def place(self, pid: int) -> None:
        self.lab.place_conmon(pid)

    async def create(self) -> tuple[str, str, Monitor]:
        container_id, bundle = self.bundle()
        monitor = await self.driver.create(container_id, bundle, self.log_path(container_id), cgroup=self.place)
        self.lab.monitors.append(monitor)
        return container_id, bundle, monitor

    def restart(self) -> MonitorDriver:
        self.driver.close()
        # The closed driver's monitors watch no more: the lab's teardown
        # must not wait for them to see their conmon end (it reaps them).
        self.lab.monitors.clear()
        self.driver = self.lab.new_conmon()
        return self.driver

    def let_exit(self, container_id: str, bundle: str, code: int) -> None:
        with open(os.path.join(bundle, "rootfs", "tmp", "exit-code"), "w") as f:
            f.write(str(code))

    async def wait(self, d: Deferred, timeout: float = 10.0) -> Any:
        return await d.addTimeout(timeout, reactor)

    async def teardown(self) -> None:
        await self.lab.teardown()
        self.lab.assert_clean()


def make_world(variant: str, tmp_path: Any) -> FakeOCI | RealOCI:
    """The world of *variant* (``fake`` or ``real``)."""
    return FakeOCI(str(tmp_path)) if variant == "fake" else RealOCI()
