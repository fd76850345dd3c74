"""rktlet.metrics without root: the collectors over fakes and the pod
engine's in-memory world, the wrappers of the network driver and the
streaming backend, the reactor-lag probe on a Clock, the endpoint's
resource and service on a memory reactor."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest
from zope.interface import implementer

from rktlet import config, errors
from rktlet.cri.proto import RUNTIME_SERVICE
from rktlet.errors import ConfigError, InvalidArgument, NotFound, StartupError
from rktlet.image.store import ImageRecord, LayerInfo
from rktlet.metrics import Metrics
from rktlet.metrics.images import ImageMetrics, ImageStoreCollector, failure_reason
from rktlet.metrics.network import NetworkMetrics, PendingDeletesCollector
from rktlet.metrics.pods import ContainerMetrics, PodCollector
from rktlet.metrics.process import ReactorLag, ThreadsCollector
from rktlet.metrics.rpc import RpcMetrics
from rktlet.metrics.server import MetricsService, _Scrapes
from rktlet.metrics.streams import StreamMetrics
from rktlet.pod.container import EXITED, RUNNING
from tests.unit.pod_world import PodWorld, done, pod_spec
from tests.unit.test_dispatch import call


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# -- the whole registry ------------------------------------------------------------------------


def test_every_family_is_named_rktlet_and_documented():
    metrics = Metrics(Clock())
    families = list(text_string_to_metric_families(generate_latest(metrics.registry).decode()))
    names = {f.name for f in families}
    assert all(name.startswith("rktlet_") for name in names), names
    assert all(f.documentation for f in families)
    for expected in ("rktlet_cri_requests", "rktlet_cri_request_duration_seconds", "rktlet_image_pulls_in_flight",
                     "rktlet_image_pull_bytes", "rktlet_image_pull_duration_seconds", "rktlet_image_pull_failures",
                     "rktlet_container_exits", "rktlet_monitor_readoptions", "rktlet_monitors_lost",
                     "rktlet_cni_operation_duration_seconds", "rktlet_cni_operation_failures",
                     "rktlet_streaming_sessions_open", "rktlet_streaming_sessions", "rktlet_streaming_bytes",
                     "rktlet_reactor_lag_seconds", "rktlet_process_resident_memory_bytes",
                     "rktlet_process_cpu_seconds", "rktlet_process_open_fds", "rktlet_process_threads"):
        assert expected in names, expected
    assert not any(s.name.endswith("_created") for f in families for s in f.samples)


def test_two_registries_do_not_share_families():
    one, two = Metrics(Clock()), Metrics(Clock())
    one.containers.exited("Completed")
    assert value(one.registry, "rktlet_container_exits_total", reason="Completed") == 1
    assert value(two.registry, "rktlet_container_exits_total", reason="Completed") == 0


# -- CRI calls -----------------------------------------------------------------------------------


def test_each_call_is_counted_by_method_and_code_and_timed():
    registry = CollectorRegistry()
    rpc = RpcMetrics(registry)

    class Impl:
        def Version(self, request, context):
            from rktlet.cri.proto import pb

            return pb.VersionResponse(version="0.1.0")

        def PodSandboxStatus(self, request, context):
            raise NotFound("pod sandbox 'x' not found")

    from rktlet.cri import dispatch

    original = dispatch.generic_handler
    dispatch.generic_handler = lambda s, i, m: original(s, i, m, rpc)  # test_dispatch's helper calls it so
    try:
        for _ in range(3):
            call(RUNTIME_SERVICE, Impl(), "Version")
        _, context = call(RUNTIME_SERVICE, Impl(), "PodSandboxStatus")
        _, unimplemented = call(RUNTIME_SERVICE, Impl(), "CheckpointContainer")
    finally:
        dispatch.generic_handler = original
    assert context.code == grpc.StatusCode.NOT_FOUND and unimplemented.code == grpc.StatusCode.UNIMPLEMENTED
    labels = {"service": "RuntimeService"}
    assert value(registry, "rktlet_cri_requests_total", method="Version", code="OK", **labels) == 3
    assert value(registry, "rktlet_cri_requests_total", method="PodSandboxStatus", code="NOT_FOUND", **labels) == 1
    assert value(registry, "rktlet_cri_requests_total", method="CheckpointContainer", code="UNIMPLEMENTED",
                 **labels) == 1
    assert value(registry, "rktlet_cri_request_duration_seconds_count", method="Version", **labels) == 3


def test_without_metrics_the_dispatcher_reports_nothing():
    class Impl:
        def Version(self, request, context):
            from rktlet.cri.proto import pb

            return pb.VersionResponse()

    result, context = call(RUNTIME_SERVICE, Impl(), "Version")
    assert result is not None and context.code is None


# -- pods and containers -------------------------------------------------------------------------


def watched_world(tmp_path) -> tuple[PodWorld, CollectorRegistry]:
    world = PodWorld(str(tmp_path)).start()
    registry = CollectorRegistry()
    world.containers.metrics = ContainerMetrics(registry)
    registry.register(PodCollector(world.sandboxes.snapshots, world.containers.snapshots))
    return world, registry


def test_pods_and_containers_by_state_follow_the_snapshots(tmp_path):
    world, registry = watched_world(tmp_path)
    assert value(registry, "rktlet_pods", state="ready") == 0
    pod = world.run_pod()
    c = world.started(pod)
    world.create(pod, "second")
    assert value(registry, "rktlet_pods", state="ready") == 1
    assert value(registry, "rktlet_containers", state="running") == 1
    assert value(registry, "rktlet_containers", state="created") == 1
    world.runtime.exit(c.id, 0)
    assert c.state == EXITED
    assert value(registry, "rktlet_containers", state="running") == 0
    assert value(registry, "rktlet_containers", state="exited") == 1
    done(world.sandboxes.stop(pod.id, world.containers))
    assert (value(registry, "rktlet_pods", state="ready"), value(registry, "rktlet_pods", state="notready")) == (0, 1)
    done(world.sandboxes.remove(pod.id, world.containers))
    assert value(registry, "rktlet_pods", state="notready") == 0
    assert value(registry, "rktlet_containers", state="created") == 0


def test_exits_are_counted_by_reason(tmp_path):
    world, registry = watched_world(tmp_path)
    pod = world.run_pod()
    for name, code in (("ok", 0), ("bad", 3)):
        c = world.started(pod, name)
        world.runtime.exit(c.id, code)
    c = world.create(pod, "broken")
    world.runtime.fail_next("start", "exec format error")
    with pytest.raises(errors.RuntimeFailure):
        done(world.containers.start(c.id))
    assert value(registry, "rktlet_container_exits_total", reason="Completed") == 1
    assert value(registry, "rktlet_container_exits_total", reason="Error") == 1
    assert value(registry, "rktlet_container_exits_total", reason="StartError") == 1
    assert value(registry, "rktlet_container_exits_total", reason="OOMKilled") == 0


def test_unknown_exit_reasons_count_as_errors():
    registry = CollectorRegistry()
    ContainerMetrics(registry).exited("Weird")
    assert value(registry, "rktlet_container_exits_total", reason="Error") == 1


def test_monitors_readopted_at_start_up_are_counted(tmp_path):
    world, _ = watched_world(tmp_path)
    pod = world.run_pod()
    c = world.started(pod)
    world.containers.stop_watching()
    again = PodWorld(world.base, previous=world)
    registry = CollectorRegistry()
    again.containers.metrics = ContainerMetrics(registry)
    again.start()
    assert again.containers.get(c.id).state == RUNNING
    assert value(registry, "rktlet_monitor_readoptions_total") == 1
    assert value(registry, "rktlet_monitors_lost_total") == 0


def test_monitors_lost_while_the_daemon_was_down_are_counted(tmp_path):
    world, _ = watched_world(tmp_path)
    pod = world.run_pod()
    c = world.started(pod)
    world.containers.stop_watching()
    world.monitors.files.live.pop(c.id)  # conmon killed, no exit file
    again = PodWorld(world.base, previous=world)
    registry = CollectorRegistry()
    again.containers.metrics = ContainerMetrics(registry)
    again.start()
    assert again.containers.get(c.id).state == EXITED
    assert value(registry, "rktlet_monitors_lost_total") == 1
    assert value(registry, "rktlet_monitor_readoptions_total") == 0
    assert value(registry, "rktlet_container_exits_total", reason="Error") == 1


# -- images --------------------------------------------------------------------------------------


def test_pull_failure_reasons_are_a_closed_set():
    assert failure_reason(errors.DigestMismatch("x")) == "digest_mismatch"
    assert failure_reason(errors.HostileContent("x")) == "hostile_content"
    assert failure_reason(errors.NotFound("x")) == "not_found"
    assert failure_reason(errors.DeadlineExceeded("x")) == "stalled"
    assert failure_reason(CancelledError()) == "cancelled"
    assert failure_reason(ValueError("x")) == "other"


def test_pulls_report_in_flight_bytes_duration_and_failures(tmp_path):
    from tests.unit.test_image_manager import Env, failure_of, result_of

    env = Env(tmp_path)
    registry = CollectorRegistry()
    env.manager.metrics = ImageMetrics(registry)
    registry.register(ImageStoreCollector(env.store))
    ref, image = env.image("a", "one", "two")
    slow = image.layers[1].digest
    env.registry.hold_digests.add(slow)
    pulling = env.manager.pull(ref)
    assert value(registry, "rktlet_image_pulls_in_flight") == 1
    (_, _, progress), = env.registry.held[slow]
    size = len(env.registry.blobs[slow])
    progress(size // 2, size)
    progress(size, size)
    env.registry.release(slow)
    result_of(pulling)
    assert value(registry, "rktlet_image_pulls_in_flight") == 0
    assert value(registry, "rktlet_image_pull_bytes_total") == size
    assert value(registry, "rktlet_image_pull_duration_seconds_count") == 1
    assert value(registry, "rktlet_images") == 1 and value(registry, "rktlet_image_layers") == 2
    assert value(registry, "rktlet_image_store_bytes") == sum(
        env.store.layer(chain).size for chain in env.chain(image))

    ref_b, image_b = env.image("b", "three")
    env.registry.fail_once.add(image_b.layers[0].digest)
    assert isinstance(failure_of(env.manager.pull(ref_b)), errors.Unavailable)
    assert value(registry, "rktlet_image_pull_failures_total", reason="unavailable") == 1
    assert value(registry, "rktlet_image_pulls_in_flight") == 0
    assert value(registry, "rktlet_image_pull_duration_seconds_count") == 1


def test_store_size_counts_shared_layers_once():
    layers = {"sha256:a": LayerInfo("sha256:a", "d", "", 100, 1), "sha256:b": LayerInfo("sha256:b", "d", "", 10, 1)}
    store = SimpleNamespace(
        images={"i1": ImageRecord("i1", chain_ids=["sha256:a"]), "i2": ImageRecord("i2", chain_ids=["sha256:a", "sha256:b"])},
        layer=layers.get,
    )
    registry = CollectorRegistry()
    registry.register(ImageStoreCollector(store))
    assert value(registry, "rktlet_images") == 2
    assert value(registry, "rktlet_image_layers") == 2
    assert value(registry, "rktlet_image_store_bytes") == 110


# -- CNI -------------------------------------------------------------------------------------------


def test_cni_add_and_del_are_timed_and_failures_counted(tmp_path):
    world = PodWorld(str(tmp_path)).start()
    registry = CollectorRegistry()
    network = NetworkMetrics(registry, world.clock)
    world.sandboxes._cni = network.wrap(world.network)
    registry.register(PendingDeletesCollector(world.network, world.sandboxes.snapshots))
    pod = world.run_pod()
    assert value(registry, "rktlet_cni_operation_duration_seconds_count", operation="add") == 1
    world.network.fail_next_add()
    with pytest.raises(errors.RuntimeFailure):
        world.run_pod(pod_spec("other"))
    assert value(registry, "rktlet_cni_operation_failures_total", operation="add") == 1
    assert value(registry, "rktlet_cni_pending_deletes") == 0
    world.network.fail_next_delete()
    done(world.sandboxes.remove(pod.id, world.containers))
    assert value(registry, "rktlet_cni_operation_failures_total", operation="del") == 1
    assert value(registry, "rktlet_cni_pending_deletes") == 1
    done(world.sandboxes.retry_cni_deletes())
    assert value(registry, "rktlet_cni_pending_deletes") == 0
    assert value(registry, "rktlet_cni_operation_failures_total", operation="del") == 1


def test_the_wrapped_network_measures_with_its_clock():
    clock = Clock()
    registry = CollectorRegistry()
    pending: Deferred = Deferred()
    driver = SimpleNamespace(add=lambda att: pending, delete=lambda att: fail(errors.RuntimeFailure("x")),
                             cached_ids=lambda: ["abc"])
    wrapped = NetworkMetrics(registry, clock).wrap(driver)
    d = wrapped.add(object())
    clock.advance(0.3)
    pending.callback("ok")
    assert d.result == "ok"
    assert value(registry, "rktlet_cni_operation_duration_seconds_sum", operation="add") == pytest.approx(0.3)
    wrapped.delete(object()).addErrback(lambda f: None)
    assert value(registry, "rktlet_cni_operation_failures_total", operation="del") == 1
    assert wrapped.cached_ids() == ["abc"]  # the rest is the driver's


# -- streaming -------------------------------------------------------------------------------------


class FakeIO:
    def __init__(self) -> None:
        self.done: Deferred = Deferred()
        self.received: list[bytes] = []

    def stdin(self, data: bytes) -> None:
        self.received.append(data)

    def resize(self, width: int, height: int) -> None:
        self.size = (width, height)


class FakeBackend:
    def __init__(self) -> None:
        self.io = FakeIO()
        self.terminal: Any = None
        self.protocol: Any = None

    def exec(self, request: Any, terminal: Any) -> FakeIO:
        self.terminal = terminal
        return self.io

    attach = exec

    def port_forward(self, sandbox_id: str, port: int, protocol: Any) -> Deferred:
        self.protocol = protocol
        return succeed(None)

    def validate(self, request: Any) -> str:
        return "validated"


class Output:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def stdout(self, data: bytes) -> None:
        self.out.append(data)

    def stderr(self, data: bytes) -> None:
        self.out.append(data)

    def pause_input(self) -> None:
        self.paused = True


def test_exec_sessions_and_their_bytes_are_counted():
    registry = CollectorRegistry()
    backend = FakeBackend()
    metered = StreamMetrics(registry).wrap(backend)
    output = Output()
    io = metered.exec(object(), output)
    assert value(registry, "rktlet_streaming_sessions_open", kind="exec") == 1
    backend.terminal.stdout(b"hello")
    backend.terminal.stderr(b"!!")
    backend.terminal.pause_input()  # the rest passes through
    io.stdin(b"abc")
    io.resize(80, 24)
    assert output.out == [b"hello", b"!!"] and output.paused and backend.io.received == [b"abc"]
    assert backend.io.size == (80, 24)
    assert value(registry, "rktlet_streaming_bytes_total", kind="exec", direction="out") == 7
    assert value(registry, "rktlet_streaming_bytes_total", kind="exec", direction="in") == 3
    backend.io.done.callback(0)
    assert value(registry, "rktlet_streaming_sessions_open", kind="exec") == 0
    assert value(registry, "rktlet_streaming_sessions_total", kind="exec") == 1
    assert metered.validate(object()) == "validated"


def test_an_attach_that_fails_still_closes_its_session():
    registry = CollectorRegistry()
    backend = FakeBackend()
    StreamMetrics(registry).wrap(backend).attach(object(), Output())
    backend.io.done.errback(errors.NotFound("gone"))
    backend.io.done.addErrback(lambda f: None)
    assert value(registry, "rktlet_streaming_sessions_open", kind="attach") == 0


@implementer(IHalfCloseableProtocol)
class PodSide(Protocol):
    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.events: list[str] = []

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def readConnectionLost(self) -> None:
        self.events.append("read lost")

    def writeConnectionLost(self) -> None:
        self.events.append("write lost")

    def connectionLost(self, reason: Any = None) -> None:
        self.events.append("lost")


def test_port_forwarded_connections_and_their_bytes_are_counted():
    registry = CollectorRegistry()
    backend = FakeBackend()
    pod_side = PodSide()
    StreamMetrics(registry).wrap(backend).port_forward("pod", 80, pod_side)
    wrapper = backend.protocol
    transport = StringTransport()
    wrapper.makeConnection(transport)
    assert value(registry, "rktlet_streaming_sessions_open", kind="port-forward") == 1
    pod_side.transport.write(b"GET /")  # towards the pod
    pod_side.transport.writeSequence([b"a", b"bc"])
    wrapper.dataReceived(b"200 OK")  # from the pod
    assert transport.value() == b"GET /abc" and pod_side.data == [b"200 OK"]
    assert value(registry, "rktlet_streaming_bytes_total", kind="port-forward", direction="in") == 8
    assert value(registry, "rktlet_streaming_bytes_total", kind="port-forward", direction="out") == 6
    assert IHalfCloseableProtocol.providedBy(wrapper)
    wrapper.readConnectionLost()
    wrapper.writeConnectionLost()
    wrapper.connectionLost(None)
    assert pod_side.events == ["read lost", "write lost", "lost"]
    assert value(registry, "rktlet_streaming_sessions_open", kind="port-forward") == 0


# -- the daemon process ----------------------------------------------------------------------------


def test_reactor_lag_is_how_late_the_probe_runs():
    clock = Clock()
    registry = CollectorRegistry()
    lag = ReactorLag(clock, registry, interval=1.0)
    lag.start()
    clock.advance(1.0)
    clock.advance(1.5)  # due at 2.0, ran at 2.5
    assert value(registry, "rktlet_reactor_lag_seconds_count") == 2
    assert value(registry, "rktlet_reactor_lag_seconds_sum") == pytest.approx(0.5)
    lag.stop()
    assert not clock.getDelayedCalls()


def test_threads_are_read_from_proc(tmp_path):
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "status").write_text("Name:\trktlet\nThreads:\t17\n")
    registry = CollectorRegistry()
    registry.register(ThreadsCollector(str(tmp_path)))
    assert value(registry, "rktlet_process_threads") == 17
    assert [f.name for f in ThreadsCollector(str(tmp_path / "none")).collect()] == []


# -- the endpoint ----------------------------------------------------------------------------------


class Exposition(Resource):
    isLeaf = True

    def render(self, request: Any) -> Any:
        return NOT_DONE_YET


def test_scrapes_are_get_only_and_bounded():
    scrapes = _Scrapes(Exposition(), limit=2)
    post = DummyRequest([b""])
    post.method = b"POST"
    assert scrapes.render(post) and post.responseCode == 405
    first, second, third = (DummyRequest([b""]) for _ in range(3))
    assert scrapes.render(first) is NOT_DONE_YET and scrapes.render(second) is NOT_DONE_YET
    assert b"in progress" in scrapes.render(third) and third.responseCode == 503
    first.finish()
    assert scrapes.render(DummyRequest([b""])) is NOT_DONE_YET


def test_the_service_listens_on_its_address_and_starts_its_probes():
    reactor = MemoryReactorClock()
    started = []
    probe = SimpleNamespace(start=lambda: started.append("start"), stop=lambda: started.append("stop"))
    service = MetricsService(reactor, "127.0.0.1:9090", CollectorRegistry(), probes=(probe,))
    service.startService()
    ((port, _factory, _backlog, interface),) = reactor.tcpServers
    assert (port, interface, service.scheme) == (9090, "127.0.0.1", "http")
    service.stopService()
    assert started == ["start", "stop"]


def test_tls_needs_both_files_that_can_be_read(tmp_path):
    with pytest.raises(InvalidArgument, match="both a certificate and a key"):
        MetricsService(MemoryReactorClock(), "127.0.0.1:0", CollectorRegistry(), tls_cert="/x.pem")
    service = MetricsService(MemoryReactorClock(), "127.0.0.1:0", CollectorRegistry(),
                             tls_cert=str(tmp_path / "missing.pem"), tls_key=str(tmp_path / "missing.key"))
    assert service.scheme == "https"
    with pytest.raises(StartupError, match="missing.pem"):
        service.startService()


def test_a_malformed_address_is_refused():
    with pytest.raises(InvalidArgument, match="not HOST:PORT"):
        MetricsService(MemoryReactorClock(), "localhost", CollectorRegistry())


# -- configuration ---------------------------------------------------------------------------------


def test_metrics_are_off_by_default_and_never_on_the_streaming_port():
    assert config.load({}).metrics_address == ""
    assert config.load({"metrics-address": "127.0.0.1:9090"}).metrics_address == "127.0.0.1:9090"
    with pytest.raises(ConfigError, match="streaming server"):
        config.load({"metrics-address": "0.0.0.0:10241"})
    with pytest.raises(ConfigError, match="metrics-tls-key"):
        config.load({"metrics-address": "127.0.0.1:9090", "metrics-tls-cert": "/c.pem"})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        config.load({"metrics-address": "9090"})

