"""Port-forwarding into real pods made by a real daemon: a connection made
inside the pod's network namespace (from a worker thread) and adopted by the
reactor; refused ports; host-network pods."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol

from rktlet.cri.proto import pb
from rktlet.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from rktlet.network.portforward import connect_in_netns
from rktlet.oci.namespaces import run_in_namespace
from rktlet.stream.session import PortForwardRequest
from tests.integration.test_exec_support import fd_target, leaked_fds, make_world, open_fds
from harness.waiting import sleep, within
from harness.daemon import free_port
from harness.images import WEB_INDEX_HTML

pytestmark = pytest.mark.root


class Collect(Protocol):
    """Keeps what arrives; ``closed`` fires when the connection ends."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed: Deferred = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(None)


@pytest.fixture(scope="module")
def world(pushed_images):
    yield from make_world(pushed_images)


@pytest.fixture(scope="module")
def web(world, pushed_images):
    """A pod whose container serves HTTP on port 80 in the pod's namespace."""
    image = world.pull(pushed_images["web"].ref)
    world.container("web", [], image=image)
    return world.pod_id


async def get(transport, proto: Collect) -> bytes:
    transport.write(b"GET /index.html HTTP/1.0\r\n\r\n")
    await within(proto.closed, 10)
    return bytes(proto.data)


@pytest_twisted.ensureDeferred
async def test_get_a_page_through_the_pods_namespace(world, web):
    before = open_fds()
    before_sockets = [fd for fd in range(1024) if (fd_target(fd) or "").startswith("socket:")]
    proto = Collect()
    transport = await within(world.backend.port_forward(web, 80, proto))
    assert transport is proto.transport
    connection = transport.fileno(), fd_target(transport.fileno())
    response = await get(transport, proto)
    assert response.startswith(b"HTTP/1.") and response.endswith(WEB_INDEX_HTML)
    # Our copy of the connected fd was closed at once, the reactor's with the connection.
    assert leaked_fds(before) == {} and fd_target(connection[0]) != connection[1]
    sockets = [fd for fd in range(1024) if (fd_target(fd) or "").startswith("socket:")]
    assert len(sockets) <= len(before_sockets)


@pytest_twisted.ensureDeferred
async def test_connect_in_netns_directly_and_in_parallel(world, web):
    netns = world.netns(web)
    assert netns
    protos = [Collect() for _ in range(5)]
    connecting = [connect_in_netns(reactor, netns, 80, p, reactor.getThreadPool(),
                                   run_in_netns=lambda path, fn: run_in_namespace(path, "net", fn))
                  for p in protos]
    for d, p in zip(connecting, protos):
        response = await get(await within(d), p)
        assert response.endswith(WEB_INDEX_HTML)


@pytest_twisted.ensureDeferred
async def test_refused_port_is_an_error_naming_the_port(world, web):
    with pytest.raises(Unavailable) as e:
        await within(world.backend.port_forward(web, 81, Collect()))
    assert "port 81" in str(e.value) and "refused" in str(e.value)
    # The host's listeners are not the pod's.
    host_port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", host_port))
        listener.listen()
        with pytest.raises(Unavailable):
            await within(world.backend.port_forward(web, host_port, Collect()))


@pytest_twisted.ensureDeferred
async def test_host_network_pod(world, pushed_images):
    image = world.pull(pushed_images["web"].ref)
    pod_id, pod = world.run_pod(network=pb.NODE)
    port = free_port()
    world.container("hostweb", ["httpd", "-f", "-p", f"127.0.0.1:{port}", "-h", "/www"], image=image,
                    pod_id=pod_id, pod=pod)
    proto = Collect()
    transport = None
    for _ in range(100):  # httpd needs a moment to listen
        try:
            transport = await within(world.backend.port_forward(pod_id, port, proto))
            break
        except Unavailable:
            await sleep(0.05)
    assert transport is not None
    assert (await get(transport, proto)).endswith(WEB_INDEX_HTML)
    with pytest.raises(Unavailable) as e:
        await within(world.backend.port_forward(pod_id, free_port(), Collect()))
    assert "refused" in str(e.value) and "host network" in str(e.value)


@pytest_twisted.ensureDeferred
async def test_validation(world, web):
    backend = world.backend
    backend.validate(PortForwardRequest(sandbox_id=web, ports=(80,)))
    with pytest.raises(NotFound):
        backend.validate(PortForwardRequest(sandbox_id="ef" * 32))
    with pytest.raises(InvalidArgument):
        backend.validate(PortForwardRequest(sandbox_id=web, ports=(0,)))
    with pytest.raises(InvalidArgument):
        await within(backend.port_forward(web, 70000, Collect()))
    sb = world.sandboxes.get(web)
    sb.state = "notready"
    try:
        with pytest.raises(FailedPrecondition) as e:
            backend.validate(PortForwardRequest(sandbox_id=web))
        assert web in str(e.value)
    finally:
        sb.state = "ready"
