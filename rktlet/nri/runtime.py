"""The runtime side of NRI: the plugin socket, registration, Configure and
Synchronize, and the pod and container lifecycle events the engine sends.

What rktlet does, following containerd/nri ``pkg/adaptation``:

* External plugins connect to ``--nri-socket`` (mode 0600; its directory is
  made 0700 when missing). A plugin must call ``RegisterPlugin`` (valid name,
  two-digit index) within the registration timeout; rktlet then calls
  ``Configure`` (the plugin answers with the events it subscribes to) and
  ``Synchronize`` with every existing pod and container. Only then does it
  get lifecycle events, in index order.
* Events and synchronization are serialized by one lock: a plugin's
  Synchronize and the lifecycle events cannot interleave, so a pod or
  container made around a plugin's connection reaches the plugin exactly
  one way — in its Synchronize set, or as an event after it.
* A plugin answering RunPodSandbox, CreateContainer or StartContainer with an
  error fails that CRI call (the engine undoes what it made). Errors from
  the other events are logged. A plugin that times out or whose connection
  breaks is closed and dropped, and the event goes on without it.
* Container adjustments and updates (CreateContainer's ``adjust``,
  ``update`` and ``evict``; UpdateContainers) are not supported: a plugin
  asking for one fails the CreateContainer with a message saying so; updates
  answered to Synchronize or StopContainer are logged and ignored.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable, Iterable

from google.protobuf.message import Message
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredLock, ensureDeferred
from twisted.internet.protocol import Factory

from rktlet import logs
from rktlet.errors import FailedPrecondition, RuntimeFailure
from rktlet.nri import convert
from rktlet.nri.convert import ContainerRecord, PodRecord
from rktlet.nri.api import nri_pb2
from rktlet.nri.ttrpc import (
    INVALID_ARGUMENT,
    UNIMPLEMENTED,
    PluginCallError,
    PluginConnection,
    PluginError,
    empty,
)

log = logs.logger("rktlet.nri")

# The NRI version rktlet implements the protocol of.
NRI_VERSION = "v0.12.2"

# Upstream's defaults (api.DefaultPluginRegistrationTimeout, ...RequestTimeout).
DEFAULT_REGISTRATION_TIMEOUT = 5.0
DEFAULT_REQUEST_TIMEOUT = 2.0
DEFAULT_SYNC_TIMEOUT = 10.0

E = nri_pb2.Event
# Events a plugin gets when it subscribes to none in particular (upstream's
# ValidEvents: every event below LAST).
ALL_EVENTS = (1 << (E.LAST - 1)) - 1

# Events whose plugin error fails the CRI call (the others are logged).
_BLOCKING = {E.RUN_POD_SANDBOX, E.CREATE_CONTAINER, E.START_CONTAINER}


def _valid_name(name: str) -> bool:
    return bool(name) and all(ch.isascii() and (ch.isalnum() or ch in "-_.+") for ch in name)


def _valid_index(idx: str) -> bool:
    return len(idx) == 2 and idx.isascii() and idx.isdigit()


class Plugin:
    """One connected plugin and where it is in its life."""

    def __init__(self, conn: PluginConnection) -> None:
        self.conn = conn
        self.name = ""
        self.idx = ""
        self.nri_version = ""
        self.events = 0
        self.registered: Deferred = Deferred()

    @property
    def label(self) -> str:
        return f"{self.idx}-{self.name}" if self.name else "unregistered plugin"

    def subscribed(self, event: int) -> bool:
        return bool(self.events & (1 << (event - 1)))


class NRI(Service):
    """The NRI runtime: a service listening on the plugin socket, and the
    event calls the pod engine makes on the reactor thread.

    :param reactor: listens, times out, runs the connections.
    :param socket_path: the plugin socket.
    :param snapshot: ``() -> (sandboxes, containers)``: the records a newly
        connected plugin is synchronized with (only made, visible ones).
    :param runtime_version: sent to plugins in Configure.
    """

    def __init__(self, reactor: Any, socket_path: str,
                 snapshot: Callable[[], tuple[Iterable[PodRecord], Iterable[ContainerRecord]]],
                 runtime_version: str = "", runtime_name: str = "rktlet",
                 registration_timeout: float = DEFAULT_REGISTRATION_TIMEOUT,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT, sync_timeout: float = DEFAULT_SYNC_TIMEOUT) -> None:
        self._reactor = reactor
        self.socket_path = socket_path
        self._snapshot = snapshot
        self._runtime_name = runtime_name
        self._runtime_version = runtime_version
        self._registration_timeout = registration_timeout
        self._request_timeout = request_timeout
        self._sync_timeout = sync_timeout
        self._lock = DeferredLock()
        self._port: Any = None
        self._connections: dict[PluginConnection, Plugin] = {}
        # Plugins synchronized and receiving events, in invocation order.
        self.plugins: list[Plugin] = []

    # -- the socket ---------------------------------------------------------------------

    def startService(self) -> None:
        Service.startService(self)
        self._port = self.listen()

    def stopService(self) -> None:
        Service.stopService(self)
        if self._port is not None:
            self._port.stopListening()
            self._port = None
        for conn in list(self._connections):
            conn.close()

    def listen(self) -> Any:
        """Listen on the plugin socket; returns the listening port."""
        directory = os.path.dirname(self.socket_path) or "."
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o700)
        try:
            if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                os.unlink(self.socket_path)  # left by an earlier daemon
        except FileNotFoundError:
            pass
        factory = Factory.forProtocol(self._new_connection)
        port = self._reactor.listenUNIX(self.socket_path, factory, mode=0o600)
        log.info("NRI: plugins may connect to {path}", path=self.socket_path)
        return port

    def _new_connection(self) -> PluginConnection:
        conn = PluginConnection(self._reactor, {"RegisterPlugin": self._register,
                                                "UpdateContainers": self._update_containers}, self._lost)
        plugin = Plugin(conn)
        self._connections[conn] = plugin
        self._reactor.callLater(0, lambda: ensureDeferred(self._set_up(plugin)).addErrback(
            lambda f: log.failure("NRI: setting up {plugin} failed", failure=f, plugin=plugin.label)))
        return conn

    def _lost(self, conn: PluginConnection) -> None:
        plugin = self._connections.pop(conn, None)
        if plugin is None:
            return
        if plugin in self.plugins:
            self.plugins.remove(plugin)
        if not plugin.registered.called:
            plugin.registered.errback(PluginCallError("connection closed before the plugin registered"))
        log.info("NRI: connection to {plugin} closed", plugin=plugin.label)

    # -- the runtime service plugins call ------------------------------------------------

    def _register(self, conn: PluginConnection, payload: bytes) -> Message:
        plugin = self._connections.get(conn)
        request = nri_pb2.RegisterPluginRequest.FromString(payload)
        if plugin is None or plugin.registered.called:
            raise PluginError(INVALID_ARGUMENT, "plugin already registered")
        if not _valid_name(request.plugin_name):
            raise PluginError(INVALID_ARGUMENT, f"invalid plugin name {request.plugin_name!r} (want [a-zA-Z0-9_.+-]+)")
        if not _valid_index(request.plugin_idx):
            raise PluginError(INVALID_ARGUMENT, f"invalid plugin index {request.plugin_idx!r} (want two digits)")
        plugin.name, plugin.idx, plugin.nri_version = request.plugin_name, request.plugin_idx, request.NRI_version
        conn.peer = f"plugin {plugin.label}"
        log.info("NRI: plugin {plugin} registered (NRI {version})", plugin=plugin.label,
                 version=request.NRI_version or "unknown")
        # Configure goes out after this answer (the plugin waits for it first).
        self._reactor.callLater(0, lambda: plugin.registered.called or plugin.registered.callback(None))
        return empty()

    def _update_containers(self, conn: PluginConnection, payload: bytes) -> Message:
        raise PluginError(UNIMPLEMENTED, "rktlet does not apply container updates or evictions from NRI plugins")

    # -- registration, Configure, Synchronize ------------------------------------------------

    async def _set_up(self, plugin: Plugin) -> None:
        conn = plugin.conn
        timer = self._reactor.callLater(self._registration_timeout, lambda: plugin.registered.called or
                                        plugin.registered.errback(PluginCallError("registration timed out")))
        try:
            await plugin.registered
        except PluginCallError as e:
            log.warn("NRI: dropping a plugin connection: {error}", error=str(e))
            conn.close()
            return
        finally:
            if timer.active():
                timer.cancel()
        try:
            reply = await conn.call("Configure", nri_pb2.ConfigureRequest(
                runtime_name=self._runtime_name, runtime_version=self._runtime_version,
                registration_timeout=int(self._registration_timeout * 1000),
                request_timeout=int(self._request_timeout * 1000), NRI_version=NRI_VERSION,
            ), nri_pb2.ConfigureResponse, self._request_timeout)
        except PluginCallError as e:
            log.error("NRI: configuring {plugin} failed: {error}; closing it", plugin=plugin.label, error=str(e))
            conn.close()
            return
        events = reply.events & 0xFFFFFFFF
        if events & ~ALL_EVENTS:
            log.error("NRI: {plugin} subscribed to unknown events 0x{extra:x}; closing it",
                      plugin=plugin.label, extra=events & ~ALL_EVENTS)
            conn.close()
            return
        plugin.events = events or ALL_EVENTS
        await self._lock.acquire()
        try:
            if conn.closed:
                return
            sandboxes, containers = self._snapshot()
            request = nri_pb2.SynchronizeRequest(pods=[convert.pod_sandbox(sb) for sb in sandboxes],
                                                 containers=[convert.container(c) for c in containers])
            try:
                reply = await conn.call("Synchronize", request, nri_pb2.SynchronizeResponse, self._sync_timeout)
            except PluginCallError as e:
                log.error("NRI: synchronizing {plugin} failed: {error}; closing it", plugin=plugin.label, error=str(e))
                conn.close()
                return
            if len(reply.update):
                log.warn("NRI: {plugin} answered Synchronize with {n} container updates; rktlet does not apply "
                         "NRI updates, ignored", plugin=plugin.label, n=len(reply.update))
            if conn.closed:
                return
            self.plugins.append(plugin)
            self.plugins.sort(key=lambda p: (p.idx, p.name))
            log.info("NRI: plugin {plugin} synchronized ({pods} pods, {ctrs} containers); invocation order {order}",
                     plugin=plugin.label, pods=len(request.pods), ctrs=len(request.containers),
                     order=", ".join(p.label for p in self.plugins))
        finally:
            self._lock.release()

    # -- lifecycle events ------------------------------------------------------------------

    async def _event(self, event: int, method: str, request: Message, response_type: type,
                     commit: Callable[[], None] | None = None,
                     check: Callable[[list[tuple[Plugin, Any]]], None] | None = None) -> list[tuple[Plugin, Any]]:
        """Send one event to every subscribed plugin, in order. *check* (may
        raise) sees the answers; *commit* runs after it, before the next
        event or synchronization may start (it makes the object visible)."""
        await self._lock.acquire()
        try:
            answers = []
            for plugin in list(self.plugins):
                if not plugin.subscribed(event) or plugin.conn.closed:
                    continue
                try:
                    answers.append((plugin, await plugin.conn.call(method, request, response_type,
                                                                   self._request_timeout)))
                except PluginError as e:
                    if event in _BLOCKING:
                        raise RuntimeFailure(f"NRI plugin {plugin.label} failed {method}: {e}") from None
                    log.warn("NRI: plugin {plugin} failed {method}: {error}", plugin=plugin.label, method=method,
                             error=str(e))
                except PluginCallError as e:
                    log.error("NRI: closing plugin {plugin}: {method}: {error}", plugin=plugin.label, method=method,
                              error=str(e))
                    if plugin in self.plugins:
                        self.plugins.remove(plugin)
                    plugin.conn.close()
            if check is not None:
                check(answers)
            if commit is not None:
                commit()
            return answers
        finally:
            self._lock.release()

    async def run_pod_sandbox(self, sb: PodRecord, commit: Callable[[], None] | None = None) -> None:
        """RunPodSandbox, before the sandbox is visible; a plugin error raises."""
        await self._event(E.RUN_POD_SANDBOX, "RunPodSandbox",
                          nri_pb2.RunPodSandboxRequest(pod=convert.pod_sandbox(sb)), nri_pb2.RunPodSandboxResponse,
                          commit)

    async def stop_pod_sandbox(self, sb: PodRecord) -> None:
        """StopPodSandbox: its containers are stopped, the pod still there."""
        await self._event(E.STOP_POD_SANDBOX, "StopPodSandbox",
                          nri_pb2.StopPodSandboxRequest(pod=convert.pod_sandbox(sb)), nri_pb2.StopPodSandboxResponse)

    async def remove_pod_sandbox(self, sb: PodRecord) -> None:
        """RemovePodSandbox: the pod is gone."""
        await self._event(E.REMOVE_POD_SANDBOX, "RemovePodSandbox",
                          nri_pb2.RemovePodSandboxRequest(pod=convert.pod_sandbox(sb)),
                          nri_pb2.RemovePodSandboxResponse)

    async def create_container(self, sb: PodRecord, c: ContainerRecord, spec: dict[str, Any] | None = None,
                               commit: Callable[[], None] | None = None) -> None:
        """CreateContainer, before the container is visible; a plugin error
        or a requested adjustment, update or eviction (not supported) raises."""

        def refuse_adjustments(answers: list[tuple[Plugin, Any]]) -> None:
            for plugin, reply in answers:
                if (reply.HasField("adjust") and reply.adjust.ByteSize()) or len(reply.update) or len(reply.evict):
                    raise FailedPrecondition(
                        f"NRI plugin {plugin.label} asked to adjust, update or evict containers in CreateContainer; "
                        "rktlet does not support NRI container adjustments")

        request = nri_pb2.CreateContainerRequest(pod=convert.pod_sandbox(sb), container=convert.container(c, spec))
        await self._event(E.CREATE_CONTAINER, "CreateContainer", request, nri_pb2.CreateContainerResponse, commit,
                          check=refuse_adjustments)

    async def post_create_container(self, sb: PodRecord, c: ContainerRecord) -> None:
        await self._event(E.POST_CREATE_CONTAINER, "PostCreateContainer",
                          nri_pb2.PostCreateContainerRequest(pod=convert.pod_sandbox(sb), container=convert.container(c)),
                          nri_pb2.PostCreateContainerResponse)

    async def start_container(self, sb: PodRecord, c: ContainerRecord) -> None:
        """StartContainer, before the process starts; a plugin error raises."""
        await self._event(E.START_CONTAINER, "StartContainer",
                          nri_pb2.StartContainerRequest(pod=convert.pod_sandbox(sb), container=convert.container(c)),
                          nri_pb2.StartContainerResponse)

    async def post_start_container(self, sb: PodRecord, c: ContainerRecord) -> None:
        await self._event(E.POST_START_CONTAINER, "PostStartContainer",
                          nri_pb2.PostStartContainerRequest(pod=convert.pod_sandbox(sb), container=convert.container(c)),
                          nri_pb2.PostStartContainerResponse)

    async def stop_container(self, sb: PodRecord, c: ContainerRecord) -> None:
        """StopContainer: the container's process ended (asked or not)."""
        answers = await self._event(E.STOP_CONTAINER, "StopContainer",
                                    nri_pb2.StopContainerRequest(pod=convert.pod_sandbox(sb),
                                                                 container=convert.container(c)),
                                    nri_pb2.StopContainerResponse)
        for plugin, reply in answers:
            if len(reply.update):
                log.warn("NRI: {plugin} answered StopContainer with updates; rktlet does not apply NRI updates, "
                         "ignored", plugin=plugin.label)

    async def remove_container(self, sb: PodRecord, c: ContainerRecord) -> None:
        await self._event(E.REMOVE_CONTAINER, "RemoveContainer",
                          nri_pb2.RemoveContainerRequest(pod=convert.pod_sandbox(sb), container=convert.container(c)),
                          nri_pb2.RemoveContainerResponse)

    def notify(self, call: Any) -> None:
        """Run an event call whose outcome nobody waits for (a container's
        exit); failures are logged."""
        ensureDeferred(call).addErrback(lambda f: log.failure("NRI event failed", failure=f))
