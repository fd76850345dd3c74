"""Shared pieces for the exec / attach / port-forward integration tests (no
tests of its own; the other ``test_exec_*``, ``test_attach_*`` and
``test_portforward_*`` modules import from here).

A real daemon (own dirs, own CNI test network) makes real pods and
containers through its gRPC API; the code under test then runs *in the test
process*, on pytest-twisted's reactor, against those containers: an
:class:`OCIRuntime` and a :class:`Conmon` pointed at the daemon's runc root,
exit dir and socket dir, and a :class:`ContainerManager` /
:class:`StreamingBackend` holding records of the daemon's containers (their
conmons adopted, so that container exits are seen here too).

One daemon per test module (module-scoped :func:`make_world`): containers
are cheap, daemons are not. Everything is removed afterwards — pods through
the daemon, the daemon and the network by the helpers that made them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor

from rktlet.cri.proto import pb
from rktlet.oci import cgroups
from rktlet.oci.conmon import Conmon
from rktlet.oci.host import RealHost
from rktlet.oci.runtime import OCIRuntime
from rktlet.pod.container import RUNNING, Container
from rktlet.pod.containers import ContainerManager
from rktlet.pod.sandbox import MODE_NODE, MODE_POD, READY, Sandbox
from rktlet.pod.streaming import StreamingBackend
from harness.containers import container_config, create, start, status
from harness.daemon import Daemon
from harness.runc import test_runc
from harness.network import TestNetwork
from harness.pods import pod_config, pod_status, remove_all_pods, run_pod
from harness.processes import live_cmdlines

RUNC = test_runc()


def fd_target(fd: int) -> str | None:
    """What file descriptor *fd* of this process is (``pipe:[…]``,
    ``socket:[…]``, a path), or None when it is closed."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def open_fds() -> dict[int, str]:
    """This process's open file descriptors and what they are — except
    eventfds and sockets, which the test process's gRPC client opens and
    closes on its own (its fork handlers replace eventfds whenever a pty
    exec forks; its channel reconnects): tests check the sockets they care
    about one by one (:func:`fd_target`)."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        target = fd_target(int(name))
        if target is not None and target != "anon_inode:[eventfd]" and not target.startswith("socket:"):
            found[int(name)] = target
    return found


def leaked_fds(before: dict[int, str]) -> dict[int, str]:
    """The descriptors open now that were not open at *before*
    (:func:`open_fds`). Ones closed meanwhile do not count: the engine runs
    in the test's process, and a program it started before (a ``runc``
    still ending) may close its pipes at any moment."""
    return {fd: target for fd, target in open_fds().items() if before.get(fd) != target}


def pids_running(*argv_words: str) -> list[int]:
    """Live processes (not zombies) whose command line is exactly *argv_words*."""
    wanted = "\0".join(argv_words).encode() + b"\0"
    return [pid for pid, cmdline in live_cmdlines() if cmdline == wanted]


def alive(pid: int) -> bool:
    """Whether *pid* runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


class FakeTerminal:
    """The streaming side of a session, recording what reaches it.

    :ivar pause_output_at_start: pause the output producer as soon as one
        is registered (a slow client).
    """

    def __init__(self, pause_output_at_start: bool = False) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.producer: Any = None
        self.producers: list[Any] = []
        self.input_paused = False
        self._pause_at_start = pause_output_at_start

    def stdout(self, data: bytes) -> None:
        self.out += data

    def stderr(self, data: bytes) -> None:
        self.err += data

    def set_output_producer(self, producer: Any) -> None:
        self.producer = producer
        self.producers.append(producer)
        if producer is not None and self._pause_at_start:
            producer.pauseProducing()

    def pause_input(self) -> None:
        self.input_paused = True

    def resume_input(self) -> None:
        self.input_paused = False


@dataclass
class Target:
    """A container the daemon runs, as the in-process code needs it."""

    id: str
    sandbox_id: str
    bundle: str
    pid: int
    conmon_pid: int
    tty: bool = False
    stdin: bool = False
    stdin_once: bool = False


class _Store:
    """The in-process manager's records are not persisted."""

    def save(self, record: Any) -> None:
        pass

    def delete(self, record_id: str) -> None:
        pass


class _Sandboxes:
    """Just enough of a SandboxManager for ContainerManager and the backend:
    the daemon's pods, looked up by id."""

    def __init__(self) -> None:
        self.sandboxes: dict[str, Sandbox] = {}

    def find(self, id_or_prefix: str) -> Sandbox | None:
        return self.sandboxes.get(id_or_prefix)

    def get(self, id_or_prefix: str) -> Sandbox:
        from rktlet.errors import NotFound

        sb = self.find(id_or_prefix)
        if sb is None:
            raise NotFound(f"pod sandbox {id_or_prefix!r} not found")
        return sb


@dataclass
class World:
    """A daemon with one pod (busybox pulled), plus in-process drivers
    pointed at the daemon's runc and conmon state."""

    daemon: Daemon
    network: TestNetwork
    image: str
    pod_id: str
    pod: pb.PodSandboxConfig
    runtime: OCIRuntime
    conmon: Conmon
    sandboxes: _Sandboxes = field(default_factory=_Sandboxes)
    manager: ContainerManager | None = None
    backend: StreamingBackend | None = None

    def container(self, name: str, command: list[str], pod_id: str | None = None,
                  pod: pb.PodSandboxConfig | None = None, image: str | None = None, **fields: Any) -> Target:
        """Create and start a container through the daemon; it is also
        known to :attr:`manager` (its conmon adopted, so its exit is seen)."""
        pod_id = pod_id or self.pod_id
        config = container_config(f"{name}-{uuid.uuid4().hex[:6]}", image or self.image, command=command, **fields)
        cid = create(self.daemon, pod_id, pod or self.pod, config)
        start(self.daemon, cid)
        info = json.loads(status(self.daemon, cid, verbose=True).info["info"])
        target = Target(id=cid, sandbox_id=pod_id, bundle=info["bundle"], pid=info["pid"],
                        conmon_pid=info["conmonPid"], tty=config.tty, stdin=config.stdin,
                        stdin_once=config.stdin_once)
        self._adopt(target)
        return target

    def _adopt(self, t: Target) -> None:
        self._know_pod(t.sandbox_id)
        record = Container(id=t.id, sandbox_id=t.sandbox_id, name=t.id[:12], attempt=0, fingerprint="",
                           created_at=time.time_ns(), image=self.image, image_ref="", state=RUNNING,
                           bundle=t.bundle, tty=t.tty, stdin=t.stdin, stdin_once=t.stdin_once,
                           conmon_pid=t.conmon_pid, container_pid=t.pid)
        self.manager.containers[t.id] = record
        monitor = self.conmon.adopt(t.id, t.bundle, t.conmon_pid, t.pid)
        self.manager._watch(record, monitor)  # what ContainerManager.load does for a live container

    def _know_pod(self, pod_id: str) -> Sandbox:
        if pod_id in self.sandboxes.sandboxes:
            return self.sandboxes.sandboxes[pod_id]
        info = json.loads(pod_status(self.daemon, pod_id, verbose=True).info["info"])
        sb = Sandbox(id=pod_id, name="p", namespace="default", uid=pod_id, attempt=0, fingerprint="",
                     created_at=0, handler="runc", state=READY,
                     network_mode=MODE_POD if info["netns"] else MODE_NODE,
                     namespaces=dict(info.get("namespaces") or {}))
        self.sandboxes.sandboxes[pod_id] = sb
        return sb

    def run_pod(self, **fields: Any) -> tuple[str, pb.PodSandboxConfig]:
        """Another pod in this daemon (e.g. ``network=pb.NODE``)."""
        config = pod_config(name=f"p{uuid.uuid4().hex[:6]}", log_directory=os.path.join(self.daemon.base, "logs"),
                            **fields)
        pod_id = run_pod(self.daemon, config)
        self._know_pod(pod_id)
        return pod_id, config

    def pull(self, image: str) -> str:
        self.daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        return image

    def netns(self, pod_id: str) -> str:
        return self._know_pod(pod_id).netns

    def stop_watching(self) -> None:
        for c in list(self.manager.containers):
            monitor = self.conmon.monitor(c)
            if monitor is not None:
                monitor.stop_watching()


def make_world(pushed_images: dict[str, Any]) -> Any:
    """A generator for a module-scoped fixture: yields a :class:`World`,
    then removes everything it made."""
    daemon = Daemon()
    network = None
    try:
        daemon.start()
        network = TestNetwork(daemon.cni_conf_dir)
        for name in os.listdir(daemon.cni_conf_dir):
            os.unlink(os.path.join(daemon.cni_conf_dir, name))
        network.write()
        image = pushed_images["busybox"].ref
        daemon.images().PullImage(pb.PullImageRequest(image=pb.ImageSpec(image=image)), timeout=60)
        pod = pod_config(log_directory=os.path.join(daemon.base, "logs"))
        pod_id = run_pod(daemon, pod)
        runtime = OCIRuntime(reactor, RUNC, os.path.join(daemon.run_dir, "runtime", "runc"))
        conmon = Conmon(reactor, runtime, exits_dir=os.path.join(daemon.run_dir, "exits"),
                        socket_dir=os.path.join(daemon.run_dir, "s"))
        world = World(daemon=daemon, network=network, image=image, pod_id=pod_id, pod=pod, runtime=runtime,
                      conmon=conmon)
        world.manager = ContainerManager(
            reactor, None, os.path.join(daemon.base, "inproc-run"), os.path.join(daemon.base, "inproc-root"),
            store=_Store(), sandboxes=world.sandboxes, images=None, runtimes={"runc": runtime},
            monitors={"runc": conmon}, host=RealHost(reactor, cgroups.detect()),
        )
        world.backend = StreamingBackend(reactor, reactor.getThreadPool(), world.manager, world.sandboxes)
        yield world
        world.stop_watching()
    finally:
        remove_all_pods(daemon)
        daemon.cleanup()
        if network is not None:
            network.cleanup()
