"""An in-memory OCI runtime and container monitor: :class:`FakeRuntime`
(the ``Runtime`` protocol of :mod:`rktlet.pod.drivers`) and
:class:`FakeMonitorDriver` with its :class:`FakeMonitor`\\ s (``MonitorDriver``,
``Monitor``).

The two share one model of the machine, as runc and conmon share the
kernel: the runtime holds the containers (their runc state and their
process), the monitor driver creates them and learns their ends. A
container "runs" until it is killed (exit code 128+signal), or until the
test ends it (:meth:`FakeRuntime.exit`, :meth:`FakeRuntime.exit_after`).
Exit files and live monitors live in a :class:`MonitorFiles` that outlives
the driver, so that a driver re-made after a "daemon restart"
(:meth:`FakeMonitorDriver.restarted`) adopts running monitors and reads the
exits of the others, as the real one does. Time is the injected
:class:`~twisted.internet.task.Clock`'s; nothing needs root or touches files.
"""

from __future__ import annotations

import inspect
import itertools
import os
import signal as signals
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from twisted.internet.task import Clock

from rktlet.errors import InvalidArgument, RuntimeFailure
from rktlet.oci.conmon import ExitStatus, Monitor, MonitorPaths, monitor_paths
from rktlet.oci.runtime import RuntimeFeatures

__all__ = ["FakeContainer", "FakeMonitor", "FakeMonitorDriver", "FakeRuntime", "MonitorFiles"]

# runc's statuses.
CREATED, RUNNING, STOPPED = "created", "running", "stopped"


def _signal_number(signal: str) -> int:
    """The number of a signal given as runc takes it (``KILL``, ``SIGTERM``, ``9``)."""
    if signal.isdigit():
        return int(signal)
    name = signal.upper()
    try:
        return int(signals.Signals[name if name.startswith("SIG") else "SIG" + name])
    except KeyError:
        raise RuntimeFailure(f"fake-runc kill: invalid signal {signal!r}") from None


@dataclass
class FakeContainer:
    """One container as the runtime knows it.

    :ivar ignored: signal numbers its process ignores (a PID 1 without
        handlers ignores TERM); KILL cannot be ignored.
    """

    id: str
    bundle: str
    pid: int
    created_ns: int
    status: str = CREATED
    exit_code: int | None = None
    ignored: set[int] = field(default_factory=set)
    resources: dict[str, Any] = field(default_factory=dict)
    signals: list[int] = field(default_factory=list)
    on_exit: list[Callable[["FakeContainer"], None]] = field(default_factory=list)


class FakeRuntime:
    """runc in memory.

    :param clock: the time (a :class:`Clock`); container creation times and
        delayed exits use it.
    :param state_root: what :attr:`state_root` says (never touched).
    :param exit_delay: seconds of the clock between a fatal signal and the
        process's end (0: the end is seen before :meth:`kill` returns).
    """

    binary = "fake-runc"  # no such program: exec through it fails, saying so

    def __init__(self, clock: Clock, state_root: str = "/fake/runc", exit_delay: float = 0.0) -> None:
        self.clock = clock
        self.state_root = state_root
        self.exit_delay = exit_delay
        self.containers: dict[str, FakeContainer] = {}
        self.calls: list[tuple[str, ...]] = []
        self._pids = itertools.count(1000)
        self._failures: dict[str, str] = {}
        #: What :meth:`probe_features` finds (tests may change it first).
        self.supported = RuntimeFeatures(recursive_read_only_mounts=True, mount_options=frozenset({"rro", "ro"}))
        self.features = RuntimeFeatures()

    async def probe_features(self) -> RuntimeFeatures:
        """runc features: what :attr:`supported` says."""
        self._check("features")
        self.features = self.supported
        return self.features

    @property
    def global_args(self) -> list[str]:
        """The flags runc would get before every subcommand."""
        return [f"--root={self.state_root}"]

    # -- what tests steer -------------------------------------------------------

    def new_pid(self) -> int:
        """A host pid for a new fake process (the monitor's or a container's)."""
        return next(self._pids)

    def fail_next(self, operation: str, message: str = "injected failure") -> None:
        """Make the next call of *operation* (``start``, ``kill``, ``delete``,
        ``state``, ``list``, ``update``) fail with RuntimeFailure(*message*)."""
        self._failures[operation] = message

    def ignore(self, container_id: str, *signal_names: str) -> None:
        """The container's process ignores these signals (KILL excepted)."""
        self.containers[container_id].ignored |= {_signal_number(s) for s in signal_names} - {signals.SIGKILL}

    def exit(self, container_id: str, code: int) -> None:
        """The container's process ends by itself with *code*."""
        c = self.containers[container_id]
        if c.status in (CREATED, RUNNING):
            c.status, c.exit_code, c.pid = STOPPED, code, 0
            for callback in list(c.on_exit):
                callback(c)

    def exit_after(self, container_id: str, seconds: float, code: int = 0) -> None:
        """The container's process ends with *code* after *seconds* of the clock."""
        self.clock.callLater(seconds, self.exit, container_id, code)

    def make(self, container_id: str, bundle: str) -> FakeContainer:
        """``runc create`` (what the monitor driver runs): a container in
        state created, its process waiting."""
        if container_id in self.containers:
            raise RuntimeFailure(f"fake-runc create {container_id}: container with given ID already exists")
        c = FakeContainer(container_id, bundle, self.new_pid(), int(self.clock.seconds() * 1e9))
        self.containers[container_id] = c
        return c

    def _check(self, operation: str, *args: str) -> None:
        self.calls.append((operation, *args))
        message = self._failures.pop(operation, None)
        if message is not None:
            raise RuntimeFailure(f"fake-runc {operation} {' '.join(args)}: {message}")

    def _absent(self, operation: str, container_id: str) -> RuntimeFailure:
        return RuntimeFailure(f"fake-runc {operation} {container_id}: container does not exist")

    # -- the Runtime protocol -----------------------------------------------------

    async def start(self, container_id: str) -> None:
        """``runc start``: a created container's process runs."""
        self._check("start", container_id)
        c = self.containers.get(container_id)
        if c is None:
            raise self._absent("start", container_id)
        if c.status != CREATED:
            raise RuntimeFailure(f"fake-runc start {container_id}: cannot start a container in state {c.status}")
        c.status = RUNNING

    async def kill(self, container_id: str, signal: str = "KILL", all_processes: bool = False) -> None:
        """Signal the container; absent or stopped is fine."""
        self._check("kill", container_id, signal)
        number = _signal_number(signal)
        c = self.containers.get(container_id)
        if c is None or c.status == STOPPED:
            return
        c.signals.append(number)
        if number in c.ignored:
            return
        if self.exit_delay > 0:
            self.clock.callLater(self.exit_delay, self.exit, container_id, 128 + number)
        else:
            self.exit(container_id, 128 + number)

    async def delete(self, container_id: str, force: bool = True) -> None:
        """Forget the container (killing it first with *force*); absent is fine."""
        self._check("delete", container_id)
        c = self.containers.get(container_id)
        if c is None:
            return
        if c.status == RUNNING and not force:
            raise RuntimeFailure(f"fake-runc delete {container_id}: cannot delete container that is not stopped: "
                                 "running")
        self.exit(container_id, 128 + signals.SIGKILL)  # a created one's init is killed too
        del self.containers[container_id]

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """runc's state document, or None when absent."""
        self._check("state", container_id)
        c = self.containers.get(container_id)
        if c is None:
            return None
        created = datetime.fromtimestamp(c.created_ns // 1_000_000_000, timezone.utc)
        stamp = created.strftime("%Y-%m-%dT%H:%M:%S") + f".{c.created_ns % 1_000_000_000:09d}Z"
        return {"ociVersion": "1.0.2", "id": c.id, "pid": c.pid, "status": c.status, "bundle": c.bundle,
                "rootfs": os.path.join(c.bundle, "rootfs"), "created": stamp, "owner": ""}

    async def list_ids(self) -> list[str]:
        """Every container's id."""
        self._check("list")
        return sorted(self.containers)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Record *resources* for a container that exists."""
        self._check("update", container_id)
        c = self.containers.get(container_id)
        if c is None:
            raise self._absent("update", container_id)
        c.resources.update(resources)


@dataclass
class MonitorFiles:
    """What outlives a daemon: exit files (id → ExitStatus) and the live
    monitors (id → the monitor's pid)."""

    exits: dict[str, ExitStatus] = field(default_factory=dict)
    live: dict[str, int] = field(default_factory=dict)
    ctl: list[tuple[str, str]] = field(default_factory=list)


class FakeMonitor(Monitor):
    """A container's monitor: the real :class:`~rktlet.oci.conmon.Monitor`
    (its waits, its status, its ``stop_watching``), told of the end by the
    fake driver instead of by watching a process."""

    def finish(self, status: ExitStatus, lost: bool = False) -> None:
        """Report the end (once; not after :meth:`stop_watching`)."""
        self._finish(status, lost)


class FakeMonitorDriver:
    """conmon in memory, over a :class:`FakeRuntime`.

    :param clock: the time (exit times are its ``seconds()``).
    :param runtime: the runtime the monitors create containers in.
    :param files: exit files and live monitors; share them with a driver
        made after a restart (:meth:`restarted` does).
    """

    comm = "conmon"

    def __init__(self, clock: Clock, runtime: FakeRuntime, files: MonitorFiles | None = None,
                 exits_dir: str = "/fake/conmon/exits", socket_dir: str = "/fake/conmon/sockets") -> None:
        self.clock = clock
        self.runtime = runtime
        self.files = files if files is not None else MonitorFiles()
        self.exits_dir = exits_dir
        self.socket_dir = socket_dir
        self._monitors: dict[str, FakeMonitor] = {}
        self._create_failure: str | None = None

    def restarted(self) -> "FakeMonitorDriver":
        """The driver a restarted daemon makes: same runtime, same files,
        no monitors watched."""
        return FakeMonitorDriver(self.clock, self.runtime, self.files, self.exits_dir, self.socket_dir)

    def fail_next_create(self, message: str = "injected failure") -> None:
        """Make the next :meth:`create` fail as a failed ``runc create`` does."""
        self._create_failure = message

    def _now_ns(self) -> int:
        return int(self.clock.seconds() * 1_000_000_000)

    # -- the MonitorDriver protocol ------------------------------------------------

    def paths(self, container_id: str, bundle: str) -> MonitorPaths:
        """The files conmon would make (pure)."""
        return monitor_paths(bundle, self.exits_dir, self.socket_dir, container_id)

    def _container_ended(self, container_id: str, c: FakeContainer) -> None:
        """conmon writes the exit file and exits; its monitor reports."""
        if self.files.live.get(container_id) is None:
            return  # no monitor (killed): no exit file
        status = ExitStatus(c.exit_code if c.exit_code is not None else 255, self._now_ns(), False)
        self.files.exits[container_id] = status
        del self.files.live[container_id]

    def _watch(self, monitor: FakeMonitor, c: FakeContainer) -> None:
        def ended(_: FakeContainer) -> None:
            status = self.files.exits.get(monitor.container_id)
            if status is not None:
                monitor.finish(status)

        c.on_exit.append(ended)

    async def create(self, container_id: str, bundle: str, log_path: str, tty: bool = False,
                     stdin: bool = False, stdin_once: bool = False,
                     cgroup: Callable[[int], None | Awaitable[None]] | None = None,
                     name: str | None = None) -> FakeMonitor:
        """A monitor runs ``runc create``: the container is created."""
        paths = self.paths(container_id, bundle)
        if not os.path.isabs(log_path):
            raise InvalidArgument(f"log path {log_path!r} must be absolute")
        conmon_pid = self.runtime.new_pid()
        if cgroup is not None:
            result = cgroup(conmon_pid)
            if inspect.isawaitable(result):
                await result
        failure, self._create_failure = self._create_failure, None
        if failure is not None:
            raise RuntimeFailure(f"create container {container_id}: {failure}")
        c = self.runtime.make(container_id, bundle)
        self.files.live[container_id] = conmon_pid
        c.on_exit.append(lambda c: self._container_ended(container_id, c))
        monitor = FakeMonitor(container_id, paths, conmon_pid, c.pid, adopted=False)
        self._watch(monitor, c)
        self._monitors[container_id] = monitor
        return monitor

    def adopt(self, container_id: str, bundle: str, conmon_pid: int, container_pid: int) -> FakeMonitor:
        """Watch an earlier driver's monitor; its exit file answers at once."""
        monitor = FakeMonitor(container_id, self.paths(container_id, bundle), conmon_pid, container_pid, adopted=True)
        self._monitors[container_id] = monitor
        status = self.files.exits.get(container_id)
        c = self.runtime.containers.get(container_id)
        if status is not None:
            monitor.finish(status)
        elif self.files.live.get(container_id) == conmon_pid and c is not None:
            self._watch(monitor, c)
        else:
            # conmon gone without an exit file: the real driver waits for the
            # container process, then reports the status as unknown.
            if c is not None and c.status != STOPPED:
                c.on_exit.append(lambda _: monitor.finish(ExitStatus(255, self._now_ns(), False), lost=True))
            else:
                monitor.finish(ExitStatus(255, self._now_ns(), False), lost=True)
        return monitor

    def read_exit(self, container_id: str, bundle: str) -> tuple[int, int, bool] | None:
        """The exit file's status, if any."""
        self.paths(container_id, bundle)  # the id check
        return self.files.exits.get(container_id)

    def cleanup(self, paths: MonitorPaths) -> None:
        """Remove the exit file; idempotent."""
        self.files.exits.pop(os.path.basename(paths.exit_file), None)

    def kill_leftover(self, container_id: str, bundle: str, timeout: float = 5.0) -> int | None:
        """Kill the live monitor of *container_id*, if any (its container runs on)."""
        return self.files.live.pop(container_id, None)

    def leftover_pid(self, container_id: str, bundle: str) -> int | None:
        """The pid of the container's monitor while one runs."""
        self.paths(container_id, bundle)  # the id check
        return self.files.live.get(container_id)

    def forget(self, container_id: str) -> None:
        """Stop watching the container's monitor."""
        monitor = self._monitors.pop(container_id, None)
        if monitor is not None:
            monitor.stop_watching()

    def close(self) -> None:
        """Stop watching every monitor."""
        for monitor in self._monitors.values():
            monitor.stop_watching()
        self._monitors.clear()

    def monitor(self, container_id: str) -> FakeMonitor | None:
        """The latest monitor made for *container_id*."""
        return self._monitors.get(container_id)

    def _ctl(self, paths: MonitorPaths, what: str) -> None:
        container_id = os.path.basename(paths.exit_file)
        if container_id not in self.files.live:
            raise RuntimeFailure("container is not running")
        self.files.ctl.append((container_id, what))

    def reopen_log(self, paths: MonitorPaths) -> None:
        """Record a log reopen; fails without a live monitor."""
        self._ctl(paths, "reopen-log")

    def resize(self, paths: MonitorPaths, height: int, width: int) -> None:
        """Record a resize; fails without a live monitor."""
        self._ctl(paths, f"resize {height}x{width}")
