"""NRI: the framing, the multiplexer, and the runtime with a fake plugin
speaking the wire protocol over a real unix socket."""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace
from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import UNIXClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater

from rktlet.errors import FailedPrecondition, RuntimeFailure
from rktlet.nri import wire
from rktlet.nri.api import nri_pb2, ttrpc_pb2
from rktlet.nri.runtime import ALL_EVENTS, NRI
from rktlet.nri.ttrpc import PLUGIN_SERVICE, RUNTIME_SERVICE

E = nri_pb2.Event


# -- framing ---------------------------------------------------------------------------


def test_mux_frames_round_trip_byte_by_byte():
    data = wire.mux_frames(2, b"hello") + wire.mux_frames(1, b"") + wire.mux_frames(1, b"world")
    decoder = wire.MuxDecoder()
    frames = []
    for i in range(len(data)):
        frames += decoder.feed(data[i:i + 1])
    assert frames == [(2, b"hello"), (1, b""), (1, b"world")]


def test_a_long_write_is_split_in_frames_of_the_upstream_limit():
    payload = b"x" * (wire.MUX_PAYLOAD_MAX + 100)
    frames = wire.MuxDecoder().feed(wire.mux_frames(1, payload))
    assert [len(p) for _, p in frames] == [wire.MUX_PAYLOAD_MAX, 100]


def test_an_oversized_mux_frame_is_refused_before_it_is_buffered():
    decoder = wire.MuxDecoder(max_payload=16)
    with pytest.raises(wire.FramingError):
        decoder.feed(wire.MUX_HEADER.pack(1, 17))


def test_ttrpc_messages_round_trip_and_are_bounded():
    data = wire.ttrpc_message(1, wire.MESSAGE_REQUEST, wire.FLAG_REMOTE_CLOSED, b"abc")
    assert data[:10] == bytes([0, 0, 0, 3, 0, 0, 0, 1, 1, 1])
    decoder = wire.TtrpcDecoder()
    assert decoder.feed(data[:5]) == []
    assert decoder.feed(data[5:]) == [wire.Message(1, wire.MESSAGE_REQUEST, wire.FLAG_REMOTE_CLOSED, b"abc")]
    with pytest.raises(wire.FramingError):
        wire.TtrpcDecoder(max_message=2).feed(data)
    with pytest.raises(wire.FramingError):
        wire.ttrpc_message(1, 1, 0, b"x" * (wire.TTRPC_MESSAGE_MAX + 1))


# -- a fake plugin ------------------------------------------------------------------------


class FakePlugin(Protocol):
    """A plugin as containerd/nri's stub behaves on the wire: registers on
    the runtime's service, serves Configure, Synchronize and the events."""

    def __init__(self, name: str = "test", idx: str = "10", events: int = 0) -> None:
        self.name, self.idx, self.events = name, idx, events
        self.calls: list[tuple[str, Any]] = []
        self.errors: dict[str, str] = {}  # method → error message answered
        self.silent: set[str] = set()  # methods never answered
        self.replies: dict[str, Any] = {}  # method → response message
        self.register_answer: Deferred = Deferred()
        self.synchronized: Deferred = Deferred()
        self.lost: Deferred = Deferred()
        self._mux = wire.MuxDecoder()
        self._streams = {1: wire.TtrpcDecoder(), 2: wire.TtrpcDecoder()}

    def connectionMade(self) -> None:
        request = nri_pb2.RegisterPluginRequest(plugin_name=self.name, plugin_idx=self.idx, NRI_version="v0.12.2")
        envelope = ttrpc_pb2.Request(service=RUNTIME_SERVICE, method="RegisterPlugin",
                                     payload=request.SerializeToString())
        self.transport.write(wire.mux_frames(2, wire.ttrpc_message(1, wire.MESSAGE_REQUEST, wire.FLAG_REMOTE_CLOSED,
                                                                   envelope.SerializeToString())))

    def dataReceived(self, data: bytes) -> None:
        for conn_id, payload in self._mux.feed(data):
            for message in self._streams[conn_id].feed(payload):
                if conn_id == 2:
                    self.register_answer.callback(ttrpc_pb2.Response.FromString(message.payload))
                else:
                    self._serve(message)

    def _serve(self, message: wire.Message) -> None:
        request = ttrpc_pb2.Request.FromString(message.payload)
        assert request.service == PLUGIN_SERVICE and message.type == wire.MESSAGE_REQUEST
        types = {"Configure": (nri_pb2.ConfigureRequest, nri_pb2.ConfigureResponse(events=self.events))}
        request_type, reply = types.get(request.method, (None, None))
        if request_type is None:
            request_type = getattr(nri_pb2, request.method + "Request")
            reply = self.replies.get(request.method) or getattr(nri_pb2, request.method + "Response")()
        self.calls.append((request.method, request_type.FromString(request.payload)))
        if request.method in self.silent:
            return
        response = ttrpc_pb2.Response(payload=reply.SerializeToString())
        if request.method in self.errors:
            response.status.code, response.status.message = 2, self.errors[request.method]
        self.transport.write(wire.mux_frames(1, wire.ttrpc_message(message.stream_id, wire.MESSAGE_RESPONSE, 0,
                                                                   response.SerializeToString())))
        if request.method == "Synchronize" and not self.synchronized.called:
            self.synchronized.callback(None)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


def _pod(pod_id: str = "p1") -> SimpleNamespace:
    return SimpleNamespace(id=pod_id, name="web", uid="u1", namespace="default", labels={"a": "b"}, annotations={},
                           handler="runc", infra_pid=0, ips=["10.88.0.2"], cgroup_parent="/rktlet/p1",
                           namespaces={"net": "/run/rktlet/pods/p1/ns/net"})


def _container(cid: str = "c1", state: str = "running") -> SimpleNamespace:
    return SimpleNamespace(id=cid, sandbox_id="p1", name="app", state=state, labels={}, annotations={},
                           container_pid=42, created_at=1, started_at=2, finished_at=0, exit_code=0, reason="",
                           message="", image="busybox", image_name="docker.io/library/busybox:latest",
                           image_ref="sha256:abc", image_digest_ref="")


async def _runtime(tmp_path, snapshot: Callable[[], Any] = lambda: ([], []), **kw: Any) -> NRI:
    nri = NRI(reactor, str(tmp_path / "nri" / "nri.sock"), snapshot, runtime_version="test", **kw)
    nri.startService()
    return nri


async def _connect(nri: NRI, plugin: FakePlugin, synchronized: bool = True) -> FakePlugin:
    await connectProtocol(UNIXClientEndpoint(reactor, nri.socket_path), plugin)
    if synchronized:
        await plugin.synchronized
        for _ in range(200):  # the answer is on its way back to the runtime
            if any(p.label == f"{plugin.idx}-{plugin.name}" for p in nri.plugins):
                break
            await deferLater(reactor, 0.005, lambda: None)
    return plugin


async def _stop(nri: NRI, *plugins: FakePlugin) -> None:
    nri.stopService()
    for plugin in plugins:
        if not plugin.lost.called:
            await plugin.lost


# -- registration, Configure, Synchronize ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_plugin_registers_is_configured_and_synchronized(tmp_path):
    nri = await _runtime(tmp_path, snapshot=lambda: ([_pod()], [_container()]))
    assert stat.S_IMODE(os.stat(tmp_path / "nri").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(nri.socket_path).st_mode) == 0o600
    plugin = await _connect(nri, FakePlugin())
    answer = await plugin.register_answer
    assert answer.status.code == 0
    assert plugin.methods() == ["Configure", "Synchronize"]
    configure, sync = plugin.calls[0][1], plugin.calls[1][1]
    assert (configure.runtime_name, configure.runtime_version, configure.request_timeout) == ("rktlet", "test", 2000)
    assert [p.id for p in sync.pods] == ["p1"] and [c.id for c in sync.containers] == ["c1"]
    assert sync.pods[0].linux.namespaces[0].type == "network"
    assert sync.containers[0].state == nri_pb2.CONTAINER_RUNNING
    assert [p.label for p in nri.plugins] == ["10-test"]
    assert nri.plugins[0].events == ALL_EVENTS  # subscribed to nothing in particular: everything
    await _stop(nri, plugin)


@pytest_twisted.ensureDeferred
async def test_an_invalid_index_is_refused(tmp_path):
    nri = await _runtime(tmp_path)
    plugin = await _connect(nri, FakePlugin(idx="1"), synchronized=False)
    answer = await plugin.register_answer
    assert answer.status.code == 3 and "index" in answer.status.message
    await deferLater(reactor, 0.05, lambda: None)
    assert nri.plugins == [] and plugin.calls == []
    await _stop(nri, plugin)


@pytest_twisted.ensureDeferred
async def test_a_plugin_that_never_registers_is_dropped(tmp_path):
    nri = await _runtime(tmp_path, registration_timeout=0.1)

    class Mute(FakePlugin):
        def connectionMade(self) -> None:
            pass

    plugin = await _connect(nri, Mute(), synchronized=False)
    await plugin.lost
    assert nri.plugins == []
    nri.stopService()


# -- events --------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_reach_subscribed_plugins_in_index_order_and_commit_runs(tmp_path):
    nri = await _runtime(tmp_path)
    late = await _connect(nri, FakePlugin("late", "90"))
    early = await _connect(nri, FakePlugin("early", "05", events=1 << (E.RUN_POD_SANDBOX - 1)))
    committed = []
    await nri.run_pod_sandbox(_pod(), commit=lambda: committed.append(True))
    await nri.start_container(_pod(), _container())
    assert committed == [True]
    assert [p.label for p in nri.plugins] == ["05-early", "90-late"]
    assert early.methods()[2:] == ["RunPodSandbox"]  # not subscribed to StartContainer
    assert late.methods()[2:] == ["RunPodSandbox", "StartContainer"]
    run = late.calls[2][1]
    assert (run.pod.id, run.pod.name, run.pod.namespace, run.pod.uid) == ("p1", "web", "default", "u1")
    await _stop(nri, early, late)


@pytest_twisted.ensureDeferred
async def test_a_plugin_error_fails_blocking_events_only(tmp_path):
    nri = await _runtime(tmp_path)
    plugin = await _connect(nri, FakePlugin())
    plugin.errors.update(RunPodSandbox="no", StopPodSandbox="no")
    committed = []
    with pytest.raises(RuntimeFailure, match="10-test failed RunPodSandbox: no"):
        await nri.run_pod_sandbox(_pod(), commit=lambda: committed.append(True))
    assert committed == []
    await nri.stop_pod_sandbox(_pod())  # logged, not raised
    assert [p.label for p in nri.plugins] == ["10-test"]  # an error is not a reason to close the plugin
    await _stop(nri, plugin)


@pytest_twisted.ensureDeferred
async def test_a_plugin_that_times_out_is_closed_and_the_event_goes_on(tmp_path):
    nri = await _runtime(tmp_path, request_timeout=0.1)
    plugin = await _connect(nri, FakePlugin())
    plugin.silent.add("CreateContainer")
    committed = []
    await nri.create_container(_pod(), _container(state="created"), commit=lambda: committed.append(True))
    assert committed == [True]
    await plugin.lost
    assert nri.plugins == []
    await nri.start_container(_pod(), _container())  # no plugin: nothing to wait for
    nri.stopService()


@pytest_twisted.ensureDeferred
async def test_container_adjustments_are_refused_with_a_clear_error(tmp_path):
    nri = await _runtime(tmp_path)
    plugin = await _connect(nri, FakePlugin())
    reply = nri_pb2.CreateContainerResponse()
    reply.adjust.ParseFromString(b"\x0a\x03abc")  # upstream's ContainerAdjustment field 1 (annotations)
    plugin.replies["CreateContainer"] = reply
    spec = {"process": {"args": ["sh"], "env": ["A=1"]}, "mounts": [{"destination": "/proc", "type": "proc"}]}
    with pytest.raises(FailedPrecondition, match="does not support NRI container adjustments"):
        await nri.create_container(_pod(), _container(state="created"), spec)
    create = plugin.calls[-1][1]
    assert list(create.container.args) == ["sh"] and create.container.mounts[0].destination == "/proc"
    await _stop(nri, plugin)


@pytest_twisted.ensureDeferred
async def test_a_plugin_that_disconnects_is_forgotten(tmp_path):
    nri = await _runtime(tmp_path)
    plugin = await _connect(nri, FakePlugin())
    plugin.transport.loseConnection()
    await plugin.lost
    await deferLater(reactor, 0.05, lambda: None)
    assert nri.plugins == []
    await nri.remove_pod_sandbox(_pod())
    nri.stopService()


@pytest_twisted.ensureDeferred
async def test_synchronize_and_events_do_not_interleave(tmp_path):
    """A pod made while a plugin synchronizes reaches it after its Synchronize."""
    pods: list[Any] = []
    nri = await _runtime(tmp_path, snapshot=lambda: (list(pods), []))
    plugin = FakePlugin()
    plugin.silent.add("Synchronize")
    await _connect(nri, plugin, synchronized=False)
    while plugin.methods() != ["Configure", "Synchronize"]:
        await deferLater(reactor, 0.01, lambda: None)
    event = Deferred.fromCoroutine(nri.run_pod_sandbox(_pod(), commit=lambda: pods.append(_pod())))
    await deferLater(reactor, 0.05, lambda: None)
    assert not event.called  # waits for the Synchronize in progress
    plugin.silent.discard("Synchronize")
    # answer the held Synchronize now (stream id 3: Configure was 1)
    response = ttrpc_pb2.Response(payload=nri_pb2.SynchronizeResponse().SerializeToString())
    plugin.transport.write(wire.mux_frames(1, wire.ttrpc_message(3, wire.MESSAGE_RESPONSE, 0,
                                                                 response.SerializeToString())))
    await event
    assert plugin.methods() == ["Configure", "Synchronize", "RunPodSandbox"]
    await _stop(nri, plugin)
