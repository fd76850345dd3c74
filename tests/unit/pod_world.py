"""The pod engine on in-memory drivers, for the root-free unit tests of
the managers (``tests/unit/test_pod_*.py``).

A :class:`PodWorld` is a :class:`SandboxManager` and a
:class:`ContainerManager` over the fakes of ``tests/fakes``, all on one
:class:`ReactorClock`, with their records and files in a temp dir. "Thread"
work runs inline, so every operation that waits on nothing but the fakes is
done when its coroutine first returns; what waits on time (a stop's grace
period) goes on when the test advances the clock. :meth:`PodWorld.restarted`
is the daemon after a crash: new managers over the same records, host,
network, runtime and monitor files.
"""

from __future__ import annotations

import json
import os
from typing import Any, Coroutine

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from rktlet import config as config_module
from rktlet.image.manifest import ImageConfig
from rktlet.oci.container_config import ContainerConfig
from rktlet.oci.handlers import Handlers
from rktlet.pod.container import Container
from rktlet.pod.containers import ContainerManager
from rktlet.pod.sandbox import Sandbox
from rktlet.pod.sandboxes import SandboxManager
from rktlet.pod.spec import SandboxSpec
from rktlet.pod.store import ContainerStore, PodStore
from tests.fakes import FakeHost, FakeImages, FakeMonitorDriver, FakeNetwork, FakeRuntime

#: The image every container of these tests runs.
IMAGE = "busybox"

#: Where the clock starts: times are ns since the epoch, as the real ones.
EPOCH_START = 1_800_000_000


class ReactorClock(Clock):
    """A :class:`Clock` that is also the reactor thread handoff needs: work
    "from a thread" runs at once (the threads are inline)."""

    def callFromThread(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        fn(*args, **kwargs)


class InlineThreads:
    """A thread pool that runs its work inline (``deferToThreadPool`` needs
    only ``callInThreadWithCallback``) — or, while :meth:`hold` is in
    force, keeps it until :meth:`release`: an operation stops at its next
    blocking step, for a race to be played out."""

    def __init__(self) -> None:
        self.held: list[tuple[Any, ...]] = []
        self._holding = False

    def hold(self) -> None:
        """Keep the work handed over from now on."""
        self._holding = True

    def release(self) -> None:
        """Run the work kept, in order, and run new work inline again."""
        self._holding = False
        while self.held:
            self._run(*self.held.pop(0))

    def callInThreadWithCallback(self, onResult: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
        if self._holding:
            self.held.append((onResult, fn, args, kwargs))
        else:
            self._run(onResult, fn, args, kwargs)

    @staticmethod
    def _run(onResult: Any, fn: Any, args: tuple, kwargs: dict) -> None:
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)


def done(coroutine: Coroutine | Deferred) -> Any:
    """The result of an operation that must be finished at once (nothing
    in it waits on the clock); its exception raised."""
    result = outcome(ensureDeferred(coroutine))
    if isinstance(result, Failure):
        result.raiseException()
    return result


def pending(coroutine: Coroutine) -> Deferred:
    """Start an operation that waits (on the clock, a lock); its Deferred,
    whose outcome :func:`outcome` reads."""
    return ensureDeferred(coroutine)


def outcome(d: Deferred) -> Any:
    """What a Deferred fired with (a Failure for an error), or a failed test."""
    got: list[Any] = []
    d.addBoth(got.append)
    assert got, "still waiting"
    return got[0]


def pod_spec(name: str = "web", attempt: int = 0, **changes: Any) -> SandboxSpec:
    """A RunPodSandbox request; *changes* override fields (a different
    config should change the fingerprint too)."""
    fields: dict[str, Any] = dict(name=name, namespace="default", uid=f"uid-{name}", attempt=attempt,
                                  fingerprint=f"fp-{name}", hostname=name)
    fields.update(changes)
    return SandboxSpec(**fields)


class PodWorld:
    """The managers over fakes (see the module's docstring).

    :ivar clock: the one clock of the managers and the fakes.
    """

    def __init__(self, base: str, previous: "PodWorld | None" = None) -> None:
        self.base = base
        self.root, self.run_dir = os.path.join(base, "root"), os.path.join(base, "run")
        self.config = config_module.load({"root": self.root, "run-dir": self.run_dir,
                                          "cni-conf-dir": os.path.join(base, "net.d")})
        if previous is None:
            self.clock = ReactorClock()
            self.clock.advance(EPOCH_START)
            self.host, self.network, self.images = FakeHost(), FakeNetwork(), FakeImages(self.root)
            self.runtime = FakeRuntime(self.clock, state_root=os.path.join(self.run_dir, "runtime", "runc"))
            self.monitors = FakeMonitorDriver(self.clock, self.runtime, exits_dir=os.path.join(self.run_dir, "exits"),
                                              socket_dir=os.path.join(self.run_dir, "s"))
            self.images.add(IMAGE)
        else:
            self.clock, self.host, self.network, self.images = (previous.clock, previous.host, previous.network,
                                                                previous.images)
            self.runtime, self.monitors = previous.runtime, previous.monitors.restarted()
        self.threads = threads = InlineThreads()
        self.sandboxes = SandboxManager(self.clock, threads, self.config, PodStore(self.root), self.network,
                                        Handlers(self.config.handlers), self.host)
        self.containers = ContainerManager(self.clock, threads, self.run_dir, self.root, ContainerStore(self.root),
                                           self.sandboxes, self.images, {"runc": self.runtime},
                                           {"runc": self.monitors}, self.host)

    def start(self) -> "PodWorld":
        """Start-up as the engine does it: records read, half-made pods
        undone, containers reconciled with the runtime."""
        half_made = self.sandboxes.load()
        done(self.sandboxes.clean_up_half_made(half_made))
        self.containers.load()
        done(self.containers.reconcile())
        self.clock.advance(0)  # releases of exited containers (runc delete) run
        return self

    def restarted(self) -> "PodWorld":
        """The daemon after a crash: the managers stop watching (as a dead
        daemon does), new ones start over the same machine."""
        self.containers.stop_watching()
        return PodWorld(self.base, previous=self).start()

    # -- quick steps ------------------------------------------------------------------

    def run_pod(self, spec: SandboxSpec | None = None) -> Sandbox:
        """RunPodSandbox."""
        return done(self.sandboxes.run(spec or pod_spec()))

    def create(self, sb: Sandbox, name: str = "app", attempt: int = 0, fingerprint: str = "",
               config: ContainerConfig | None = None) -> Container:
        """CreateContainer of the test image."""
        return done(self.containers.create(sb.id, config or ContainerConfig(name=name), IMAGE, attempt,
                                           fingerprint or f"fp-{name}", {}, {}, ""))

    def started(self, sb: Sandbox, name: str = "app") -> Container:
        """A container created and started."""
        c = self.create(sb, name)
        return done(self.containers.start(c.id))

    def add_image(self, name: str, config: ImageConfig) -> None:
        """Another image, with its config."""
        self.images.add(name, config)

    # -- what is on disk ----------------------------------------------------------------

    def pod_record(self, sandbox_id: str) -> str:
        """The path of a pod's record."""
        return os.path.join(self.root, "pods", f"{sandbox_id}.json")

    def container_record(self, container_id: str) -> str:
        """The path of a container's record."""
        return os.path.join(self.root, "containers", f"{container_id}.json")

    def stored(self, path: str) -> dict | None:
        """A record's JSON document, or None."""
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
