"""What the pod engine needs of its drivers, as :class:`typing.Protocol`\\ s.

The managers (:mod:`rktlet.pod.sandboxes`, :mod:`rktlet.pod.containers`)
drive an OCI runtime, a container monitor, a CNI network, the image store
and a handful of host operations (mounts, cgroups, pinned namespaces, the
infra process). Each protocol here names exactly the part the pod layer
uses, with its contract: what is idempotent, what is raised, what blocks.

The real drivers satisfy them structurally: :class:`rktlet.oci.runtime.OCIRuntime`
(:class:`Runtime`), :class:`rktlet.oci.conmon.Conmon` and its
:class:`~rktlet.oci.conmon.Monitor` (:class:`MonitorDriver`, :class:`Monitor`),
:class:`rktlet.network.cni.CNI` (:class:`Network`),
:class:`rktlet.image.manager.ImageManager` (:class:`ImageLookup`) and
:class:`rktlet.oci.host.RealHost` (:class:`Host`). In-memory fakes of each,
checked against the same contract tests as the real ones, are in the tests
(``tests/fakes``, ``tests/contract``).

"Blocking" methods do file-system or system-call work: call them from a
worker thread. "Async" methods return an awaitable and must be called on
the reactor thread. The rest are quick and may be called anywhere the
engine runs (the reactor thread).
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Iterable, Mapping, Protocol, Sequence

from twisted.internet.defer import Deferred

from rktlet.image.manifest import ImageConfig
from rktlet.image.store import ImageRecord
from rktlet.oci.runtime import RuntimeFeatures
from rktlet.network.cni import Attachment, NetworkResult
from rktlet.oci.conmon import MonitorPaths
from rktlet.oci.infra import InfraProcess
from rktlet.oci.userns import IDMappedRoot, UserNamespace

__all__ = ["Host", "ImageLookup", "LayerDirs", "Monitor", "MonitorDriver", "Network", "Runtime"]


class Runtime(Protocol):
    """The OCI runtime (runc's command line) for one state directory.

    Containers are created by the :class:`MonitorDriver` (conmon runs the
    runtime's ``create``); this side starts, signals, inspects, updates and
    deletes them. Every method is async; a failure of the runtime is a
    :class:`~rktlet.errors.RuntimeFailure` naming the command and carrying
    the runtime's own words.
    """

    @property
    def state_root(self) -> str:
        """The runtime's state directory (made 0700 by the engine at start-up)."""

    @property
    def binary(self) -> str:
        """The runtime program; :mod:`rktlet.oci.exec` spawns it itself for
        exec, with :attr:`global_args`."""

    @property
    def global_args(self) -> list[str]:
        """Flags placed before every subcommand (``--root=…``)."""

    @property
    def features(self) -> RuntimeFeatures:
        """What it supports, once :meth:`probe_features` asked; nothing before."""

    async def probe_features(self) -> RuntimeFeatures:
        """Ask the runtime what it supports; kept in :attr:`features`."""

    async def start(self, container_id: str) -> None:
        """Let a created container's process run.

        :raises RuntimeFailure: the container does not exist or is not in
            state ``created``.
        """

    async def kill(self, container_id: str, signal: str = "KILL", all_processes: bool = False) -> None:
        """Send *signal* (``KILL``, ``TERM``, … or a number) to the
        container's init, or to all its processes. A container that does not
        exist or no longer runs is fine (no error). The process ends (or not)
        after the call: its end is learnt from the :class:`Monitor`.

        :raises RuntimeFailure: any other refusal (an unknown signal).
        """

    async def delete(self, container_id: str, force: bool = True) -> None:
        """Delete the container's state; with *force*, kill it first when it
        still runs. Idempotent: an absent container is fine.

        :raises RuntimeFailure: the container runs and *force* is false, or
            the runtime failed.
        """

    async def state(self, container_id: str) -> dict[str, Any] | None:
        """The runtime's state document (``status``: created, running,
        paused, stopped; ``pid``, ``bundle``, ``created``), or None when the
        container does not exist."""

    async def list_ids(self) -> list[str]:
        """The ids of every container in the state directory (in no order)."""

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources`` to a running container.

        :raises RuntimeFailure: with the runtime's words (the pod layer maps
            the kernel's refusals of a value to InvalidArgument).
        """


class Monitor(Protocol):
    """One container's monitor (conmon), as :class:`MonitorDriver` hands it out."""

    conmon_pid: int
    container_pid: int

    @property
    def exited(self) -> Deferred:
        """A new Deferred at each access, firing with ``(exit_code,
        finished_at_ns, oom_killed)`` once the container has ended (at once,
        ``.called``, when it has). Cancelling one wait affects no other.
        A process killed by signal N ends with 128+N."""


class MonitorDriver(Protocol):
    """Starts and watches container monitors (conmon), and owns their files.

    Monitors outlive the daemon: a driver made after a restart
    :meth:`adopt`\\ s the running ones and reads the end of the others from
    their exit files (:meth:`read_exit`).
    """

    @property
    def exits_dir(self) -> str:
        """Where exit files are written (made 0700 by the engine)."""

    @property
    def socket_dir(self) -> str:
        """Where attach-socket links are made (made 0700 by the engine)."""

    @property
    def comm(self) -> str:
        """The monitor's process name, to recognise a recorded pid as a monitor."""

    def paths(self, container_id: str, bundle: str) -> MonitorPaths:
        """The files the monitor makes for a container (pure; no I/O).

        :raises InvalidArgument: *container_id* is not a valid id.
        """

    async def create(self, container_id: str, bundle: str, log_path: str, tty: bool = False,
                     stdin: bool = False, stdin_once: bool = False,
                     cgroup: Callable[[int], None | Awaitable[None]] | None = None,
                     name: str | None = None) -> Monitor:
        """Start a monitor that creates the container from *bundle*: on
        return the container exists in the runtime in state ``created``
        (:meth:`Runtime.start` lets it run). *cgroup* is called with the
        monitor's pid before it goes on (the pod's cgroup).

        :raises InvalidArgument: *log_path* is not absolute.
        :raises RuntimeFailure: the runtime's or the monitor's words; nothing
            is left behind (no monitor, no container in the runtime).
        :raises DeadlineExceeded: no answer in time (then as above).
        """

    def adopt(self, container_id: str, bundle: str, conmon_pid: int, container_pid: int) -> Monitor:
        """Watch the monitor an earlier daemon started. When its exit file
        is there, the returned monitor's :attr:`Monitor.exited` has fired
        with it already."""

    def read_exit(self, container_id: str, bundle: str) -> tuple[int, int, bool] | None:
        """Blocking (one small file): ``(exit_code, finished_at_ns,
        oom_killed)`` from the container's exit file, or None without one."""

    def cleanup(self, paths: MonitorPaths) -> None:
        """Blocking: remove every file the monitor made (exit files, socket,
        FIFOs). Idempotent; call it once the monitor is gone."""

    def kill_leftover(self, container_id: str, bundle: str, timeout: float = 5.0) -> int | None:
        """Blocking: SIGKILL a monitor of an earlier daemon that nothing will
        adopt, and wait until it is gone; returns its pid, or None when no
        such monitor runs (idempotent). The container itself is not touched
        (delete it from the runtime)."""

    def leftover_pid(self, container_id: str, bundle: str) -> int | None:
        """Blocking (a few small files): the pid of the container's monitor
        when one still runs (started by this daemon or an earlier one, as
        its pid file in the bundle names it), or None."""

    def forget(self, container_id: str) -> None:
        """Stop watching a removed container's monitor. Idempotent."""

    def close(self) -> None:
        """Stop watching every monitor (daemon shutdown): monitors and
        containers keep running for the next daemon to adopt."""

    def reopen_log(self, paths: MonitorPaths) -> None:
        """Ask the monitor to reopen the log file (it makes the new file a
        moment later; this does not wait).

        :raises RuntimeFailure: ``container is not running`` without a monitor.
        """

    def resize(self, paths: MonitorPaths, height: int, width: int) -> None:
        """Resize the container's terminal.

        :raises RuntimeFailure: ``container is not running`` without a monitor.
        """


class Network(Protocol):
    """The pod network (CNI): attaches pod network namespaces."""

    def add(self, attachment: Attachment) -> Deferred[NetworkResult]:
        """Async: attach the sandbox; fires with its addresses. A failure
        undoes what was made (nothing stays cached).

        :raises FailedPrecondition: no usable network configuration or plugin.
        :raises RuntimeFailure: a plugin failed.
        """

    def delete(self, attachment: Attachment) -> Deferred[None]:
        """Async: detach the sandbox and release its addresses. Idempotent.

        :raises RuntimeFailure: a plugin failed; the cached ADD is then kept
            (:meth:`cached_ids`) so that a retry can finish the job.
        """

    def cached(self, container_id: str) -> dict | None:
        """The cached ADD of a sandbox (``network``, ``result``,
        ``attachment``), or None."""

    def cached_ids(self) -> list[str]:
        """Sandbox ids with a cached ADD (attached, or whose DEL failed), sorted."""

    def cached_attachments(self) -> dict[str, Attachment]:
        """Blocking: the attachment of every cached ADD, by sandbox id."""


class LayerDirs(Protocol):
    """Where the unpacked layers are."""

    def layer_diff_dir(self, chain_id: str) -> str:
        """The directory of layer *chain_id*'s files (an overlay lower dir)."""


class ImageLookup(Protocol):
    """What CreateContainer needs of the images: pulled images, their
    configs and the directories of their layers."""

    @property
    def store(self) -> LayerDirs:
        """The layer directories."""

    def find(self, name: str) -> ImageRecord | None:
        """The image *name* refers to (an id, a unique id prefix of at
        least 12 hex digits, a tag or a digest reference), or None."""

    def config(self, record: ImageRecord) -> ImageConfig:
        """The image's parsed config (entrypoint, cmd, env, user, …)."""


class Host(Protocol):
    """The host operations of the managers: mounts, pinned namespaces,
    cgroups and the pod's infra process.

    Cgroup *paths* are cgroupfs paths (``/rktlet/<id>``); cgroup *dirs* are
    what :meth:`ensure_cgroup` returns, for :meth:`remove_cgroups`.
    Failures are :class:`~rktlet.errors.RuntimeFailure` (or
    :class:`OSError` for a mount) naming the path;
    :class:`~rktlet.errors.InvalidArgument` when the request is at fault.
    """

    # -- mounts (blocking) --------------------------------------------------

    def mount_overlay(self, target: str, lowers: Sequence[str], upper: str, work: str,
                      idmap: IDMappedRoot | None = None) -> None:
        """Blocking: mount an overlay of *lowers* (top first) with *upper*
        and *work* on *target* (a directory that exists).  With *idmap*
        (a pod with its own user namespace), the lowers appear through
        that namespace and *upper* belongs to the pod's root.

        :raises OSError: naming the target (or the idmapping step).
        """

    def mount_readonly_overlay(self, target: str, lowers: Sequence[str]) -> None:
        """Blocking: a read-only overlay of *lowers* alone (top first; at
        least two, as overlayfs wants without an upper dir) on *target* (a
        directory that exists).

        :raises OSError: naming the target (EINVAL for fewer than two lowers).
        """

    def mount_shm(self, target: str, size_bytes: int, owner: tuple[int, int] | None = None) -> None:
        """Blocking: a pod's /dev/shm, a size-limited tmpfs (mode 1777) at
        *target*, made if missing (its parent must exist); its root
        directory belongs to *owner* (host uid, gid) when given.

        :raises OSError: naming the target.
        """

    def give_to(self, paths: Sequence[str], uid: int, gid: int) -> None:
        """Blocking: make *paths* (files rktlet made) belong to *uid*:*gid*."""

    def unmount(self, target: str) -> None:
        """Blocking: detach the mount at *target*. Idempotent: nothing
        mounted, or no such path, is fine."""

    def is_mounted(self, target: str) -> bool:
        """Blocking: whether something is mounted at *target*."""

    # -- pinned namespaces (blocking) ---------------------------------------

    def create_pinned_namespaces(self, paths: Mapping[str, str], hostname: str | None = None,
                                 sysctls: Mapping[str, str] = {}) -> None:  # noqa: B006 (read-only)
        """Blocking: new namespaces of the kinds in *paths* (kind → file to
        create: ``net``, ``ipc``, ``uts``, …), each pinned at its file, with
        the *hostname* (UTS) and *sysctls* set inside. All or nothing.

        :raises InvalidArgument: a sysctl that is not namespaced, or whose
            namespace is not made here; a bad hostname.
        :raises RuntimeFailure: a file exists already, or a system call failed.
        """

    def create_pinned_namespaces_in_userns(self, paths: Mapping[str, str], userns: UserNamespace,
                                           hostname: str | None = None,
                                           sysctls: Mapping[str, str] = {}) -> Awaitable[None]:  # noqa: B006
        """Async: a new user namespace with *userns*'s mappings pinned at
        ``paths["user"]`` and, owned by it, new namespaces of the other
        kinds in *paths*, pinned, with *hostname* and *sysctls* set inside.
        All or nothing.

        :raises InvalidArgument: as :meth:`create_pinned_namespaces`.
        :raises RuntimeFailure: a file exists already, or a step failed.
        """

    def remove_pinned_namespaces(self, paths: Iterable[str]) -> None:
        """Blocking: unpin and delete each namespace file. Idempotent; every
        path is tried, the first failure raised at the end."""

    def namespace_pinned(self, path: str) -> bool:
        """Blocking: whether a live namespace is pinned at *path*."""

    def bring_up_loopback(self, netns: str) -> None:
        """Blocking: set ``lo`` up in the network namespace pinned at *netns*.

        :raises RuntimeFailure: the namespace cannot be entered.
        """

    # -- cgroups (blocking) -------------------------------------------------

    def ensure_cgroup(self, path: str) -> list[str]:
        """Blocking: make cgroup *path* (``mkdir -p``) in every managed
        hierarchy; returns the dirs this call created, parents first (none
        when it existed: idempotent).

        :raises InvalidArgument: a bad path.
        """

    def existing_cgroups(self, path: str) -> list[str]:
        """Blocking: the dirs of cgroup *path* that exist (for undoing an
        :meth:`ensure_cgroup` whose answer a crash lost)."""

    def remove_cgroups(self, dirs: Sequence[str]) -> None:
        """Blocking: remove cgroup dirs, deepest first, with their child
        cgroups, killing processes left in them. Idempotent: absent dirs
        are fine."""

    def add_to_cgroup(self, path: str, pid: int) -> None:
        """Blocking: move process *pid* into cgroup *path*.

        :raises RuntimeFailure: the cgroup refused it (it does not exist).
        """

    def set_cgroup_resources(self, path: str, resources: dict[str, Any]) -> list[str]:
        """Blocking: write OCI ``linux.resources`` (cpu, memory) into cgroup
        *path*; returns the files written.

        :raises InvalidArgument: the kernel refused a value.
        """

    # -- the infra process (async, except the check) ------------------------

    def start_infra(self, namespaces: Mapping[str, str]) -> Awaitable[InfraProcess]:
        """Async: start the pod's infra process (PID 1 of a new PID
        namespace) in the pinned *namespaces* (kind → path).

        :raises RuntimeFailure: it did not come up (a namespace is not pinned).
        """

    def stop_infra(self, process: InfraProcess) -> Awaitable[None]:
        """Async: kill the infra process and wait until it is gone.
        Idempotent: a process already gone is fine."""

    def infra_alive(self, process: InfraProcess) -> bool:
        """Blocking (one /proc read): whether that very process still runs."""


class ContainerReports(Protocol):
    """Where the container manager reports what metrics count
    (``rktlet.metrics.pods.ContainerMetrics``)."""

    def exited(self, reason: str) -> None:
        """A container exited with *reason* (``Completed``, ``Error`` ...)."""

    def monitor_readopted(self) -> None:
        """A running container's monitor was adopted again at start-up."""

    def monitor_lost(self) -> None:
        """A running container's monitor was found gone at start-up."""
