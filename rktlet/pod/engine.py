"""The pod engine: the one owner of runtime state, living on the reactor thread.

The CRI servicers call it and convert its answers to protobuf: mutating
calls through the bridge to the reactor thread, reads directly from the
snapshots the managers publish (``rktlet.pod.records``). It holds the
image, sandbox and container managers and answers for the runtime as a
whole: its version, its conditions, its runtime configuration.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool

from rktlet import __version__, debugpoints, logs
from rktlet.config import Config
from rktlet.errors import InvalidArgument
from rktlet.fsutil import PRIVATE_DIR, make_dir, read_json, write_json_atomic
from rktlet.network.cni_config import Readiness, check_readiness
from rktlet.deferutil import Shared
from rktlet.oci.handlers import DEFAULT_HANDLER
from rktlet.pod import versions

if TYPE_CHECKING:  # the engine composes these; they never import it
    from rktlet.image.manager import ImageManager
    from rktlet.pod.containers import ContainerManager
    from rktlet.pod.sandboxes import SandboxManager
    from rktlet.pod.stats import StatsCollector

log = logs.logger("rktlet.pod.engine")

RUNTIME_NAME = "rktlet"
RUNTIME_API_VERSION = "v1"
CGROUP_DRIVER = "cgroupfs"

RUNTIME_STATE_FILE = "runtime.json"

# The run dir is 0711, not 0700: the CRI socket (0660, for a group the
# operator grants) lives there by default and its clients must traverse it.
# Nobody but root may list it, and every directory in it is 0700 (the ids
# are no secret: mountinfo and conmon's command line show them).
RUN_DIR_MODE = 0o711


class SessionURLs(Protocol):
    """The streaming server as the engine hands it to the streaming RPCs:
    a request in, the URL the client must dial out."""

    def new_session(self, request: Any) -> str:
        """Validate and keep *request*; the URL that serves it."""


@dataclass(frozen=True)
class Condition:
    """One runtime condition as the CRI ``Status`` reports it."""

    type: str
    status: bool
    reason: str = ""
    message: str = ""


class Engine:
    """The runtime's state and operations.

    :param config: the effective configuration.
    :param reactor: the reactor whose thread owns this engine.
    :param threadpool: where blocking file-system work runs.
    :param images: the image manager (``rktlet.image.manager``), or ``None``
        where a test needs no images.
    :param sandboxes: the sandbox manager (``rktlet.pod.sandboxes``), or
        ``None`` where a test needs no pods.
    :param containers: the container manager (``rktlet.pod.containers``),
        or ``None`` where a test needs no containers.
    :param stats: the statistics collector (``rktlet.pod.stats``).
    :param streams: the streaming server (``new_session(request) -> url``).
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        threadpool: Any,
        images: ImageManager | None = None,
        sandboxes: SandboxManager | None = None,
        containers: ContainerManager | None = None,
        stats: StatsCollector | None = None,
        streams: SessionURLs | None = None,
    ) -> None:
        self.config = config
        self._reactor = reactor
        self._threadpool = threadpool
        self.images = images
        self.sandboxes = sandboxes
        self.containers = containers
        self.stats = stats
        self.streams = streams
        self._state_path = os.path.join(config.root, RUNTIME_STATE_FILE)
        # The engine composes the managers: no manager reaches into another.
        if images is not None and containers is not None:
            images.keep_layers_used_by(containers.layers_in_use)
        if sandboxes is not None and containers is not None:
            sandboxes.runtime_features = self._features_of
        self.pod_cidrs: tuple[str, ...] = ()
        #: Whether the runtimes said what they support (``runc features``).
        self.runtime_features_known = False
        self._features_probe: Shared | None = None
        self.versions: dict[str, Any] = {}

    def load(self) -> None:
        """Read persisted state (once, at start-up, before serving: blocking
        is fine here). Leftovers found are deleted in a thread afterwards."""
        # No host user but root may list or enter the state dir: root
        # filesystems, writable layers, unpacked layers and records are below.
        # The operator may name an existing, shared directory (``/run``):
        # only an empty one or rktlet's own (it has rktlet's "pods") is
        # narrowed; in another, every directory rktlet makes is 0700 anyway.
        for directory, mode in ((self.config.root, PRIVATE_DIR), (self.config.run_dir, RUN_DIR_MODE)):
            ours = not os.path.isdir(directory) or not os.listdir(directory) or \
                os.path.isdir(os.path.join(directory, "pods"))
            make_dir(directory, mode, narrow=ours)
            if not ours and os.stat(directory).st_mode & 0o077 & ~mode:
                log.warn("{dir} is mode {mode:o}, wider than rktlet makes it ({want:o}); what rktlet keeps in it "
                         "is private all the same", dir=directory, mode=os.stat(directory).st_mode & 0o7777, want=mode)
        debugpoints.warn_if_enabled()
        state = read_json(self._state_path, {}) or {}
        self.pod_cidrs = tuple(state.get("pod_cidrs", ()))
        if self.sandboxes is not None:
            half_made = self.sandboxes.load()
            if half_made:
                self._reactor.callWhenRunning(
                    lambda: Deferred.fromCoroutine(self.sandboxes.clean_up_half_made(half_made))
                )
        if self.containers is None:
            self.runtime_features_known = True  # no runtimes to ask
        else:
            self.containers.load()
            # What needs the runtime's word (rktlet.pod.recovery), before
            # the containers concerned take any request.
            self._reactor.callWhenRunning(self._reconcile_containers)
            # What each runtime supports: Status reports it per handler.
            self._reactor.callWhenRunning(self._probe_runtimes)
        if self.sandboxes is not None:
            # At start-up, then periodically: CNI DELs that failed before.
            self._reactor.callWhenRunning(self.sandboxes.retry_cni_deletes_every, self.config.cni_del_retry_interval)
        self._reactor.callWhenRunning(self._collect_versions)
        if self.images is not None:
            leftovers = self.images.load()
            if any(leftovers):
                self._reactor.callWhenRunning(self.images.delete_leftovers, leftovers)

    def _probe_runtimes(self) -> None:
        d = Deferred.fromCoroutine(self.containers.probe_runtimes())
        d.addErrback(lambda f: log.failure("asking the runtimes what they support failed", failure=f))

        def known(_: Any) -> None:
            self.runtime_features_known = True

        d.addBoth(known)
        self._features_probe = Shared(d, cancel_when_abandoned=False)

    async def runtime_features(self) -> None:
        """Fires once the runtimes said what they support (reactor thread)."""
        if self._features_probe is not None:
            await self._features_probe.wait()

    async def _features_of(self, handler: str) -> Any:
        """What handler *handler*'s runtime supports, once the runtimes said."""
        await self.runtime_features()
        return self.containers.handler_features(handler)

    def handler_features(self, name: str) -> Any:
        """What the runtime of handler *name* ('' for the default) supports,
        as known now (any thread)."""
        if self.containers is None:
            return None
        return self.containers.handler_features(name or DEFAULT_HANDLER)

    def _reconcile_containers(self) -> Deferred:
        d = Deferred.fromCoroutine(self.containers.reconcile())
        d.addErrback(lambda f: log.failure("start-up reconciliation of containers failed", failure=f))
        return d

    def _collect_versions(self) -> Deferred:
        async def collect() -> None:
            self.versions = await versions.collect(
                self._reactor, self.config.handlers, self.config.cni_bin_dir
            )

        d = Deferred.fromCoroutine(collect())
        d.addErrback(lambda f: log.failure("collecting program versions failed", failure=f))
        return d

    def close(self) -> Deferred | None:
        """Release what the engine holds open (pooled registry connections)
        and stop watching the containers' monitors, which keep running for
        the next daemon to adopt."""
        if self.containers is not None:
            self.containers.stop_watching()
        return self.images.close() if self.images is not None else None

    # -- pods as a whole: the sandbox and its containers -----------------------

    async def stop_pod(self, id_or_prefix: str) -> None:
        """StopPodSandbox: the pod's containers, then the pod itself."""
        await self.sandboxes.stop(id_or_prefix, self.containers)

    async def remove_pod(self, id_or_prefix: str) -> None:
        """RemovePodSandbox: the pod's containers removed, then the pod."""
        await self.sandboxes.remove(id_or_prefix, self.containers)

    def version(self) -> tuple[str, str, str]:
        """``(runtime_name, runtime_version, runtime_api_version)``."""
        return RUNTIME_NAME, __version__, RUNTIME_API_VERSION

    def _in_thread(self, fn: Any, *args: Any) -> Deferred:
        return deferToThreadPool(self._reactor, self._threadpool, fn, *args)

    def network_readiness(self) -> Deferred:
        """Fires with the :class:`Readiness` of pod networking (reads the CNI
        conf dir off the reactor thread)."""
        return self._in_thread(check_readiness, self.config.cni_conf_dir, self.config.cni_bin_dir)

    def conditions(self) -> list[Condition]:
        """The :class:`Condition` list the runtime reports. Blocking (it
        reads the CNI conf dir): called on a gRPC worker thread, which
        ``Status`` never leaves, never on the reactor."""
        network: Readiness = check_readiness(self.config.cni_conf_dir, self.config.cni_bin_dir)
        return [
            Condition("RuntimeReady", True),
            Condition("NetworkReady", network.ready, network.reason, network.message),
        ]

    async def status_info(self) -> dict[str, Any]:
        """What ``Status(verbose=true)`` adds, one JSON object per key: the
        effective configuration, what the kubelet told us at run time, the
        handlers, the CNI configuration in use, the versions of the programs
        rktlet runs, and the image pulls in flight with per-layer progress."""
        network: Readiness = await self.network_readiness()
        info: dict[str, Any] = {
            "cni": {
                "confDir": self.config.cni_conf_dir,
                "binDirs": list(self.config.cni_bin_dir),
                "path": network.network.path if network.network else None,
                "config": network.network.as_json() if network.network else None,
            },
            "config": self.config.as_dict(),
            "runtimeConfig": {"podCIDRs": list(self.pod_cidrs)},
            "runtimeHandlers": self.config.handlers,
            "versions": self.versions,
        }
        if self.sandboxes is not None:
            # Removed pods whose CNI DEL failed: retried until it succeeds.
            info["cni"]["pendingDeletes"] = self.sandboxes.pending_cni_deletes()
        if self.images is not None:
            info["imagePulls"] = self.images.pulls_info()
        return info

    def update_pod_cidr(self, pod_cidr: str) -> None:
        """Store the pod CIDR(s) the kubelet assigned to this node
        (comma-separated for dual stack); an empty value is ignored."""
        if not pod_cidr.strip():
            return
        cidrs = []
        for part in pod_cidr.split(","):
            try:
                cidrs.append(str(ipaddress.ip_network(part.strip(), strict=False)))
            except ValueError:
                raise InvalidArgument(
                    f"runtime_config.network_config.pod_cidr: {part.strip()!r} is not a CIDR"
                ) from None
        if tuple(cidrs) == self.pod_cidrs:
            return
        write_json_atomic(self._state_path, {"pod_cidrs": cidrs})
        self.pod_cidrs = tuple(cidrs)
        log.info("pod CIDR set to {cidrs}", cidrs=",".join(cidrs))

    def handler_names(self) -> list[str]:
        """The runtime handlers ``Status`` lists: the default (empty name) first."""
        if self.sandboxes is None:
            return []
        return [""] + self.sandboxes.handlers.names

    def cgroup_driver(self) -> str:
        """The cgroup driver rktlet uses (the kubelet must match it)."""
        return CGROUP_DRIVER
