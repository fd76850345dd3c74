"""Port-forwarding: a TCP connection to ``localhost:<port>`` inside a pod's
network namespace, handed to a Twisted protocol.

``setns(2)`` changes the calling *thread*, so the reactor thread never
enters a pod's namespace: a worker thread of the pool asks the caller's
namespace runner (the pod layer passes
:func:`rktlet.oci.namespaces.run_in_namespace`; drivers do not import each
other) for a fresh thread that joins the namespace and makes a blocking
connect there (bounded by :data:`CONNECT_TIMEOUT`). A socket keeps the namespace it was created in,
so the connected fd is then adopted by the reactor like any other
connection. Pods on the host network are reached with an ordinary
connection from the reactor.

``localhost`` means 127.0.0.1, then ::1 if nothing listens on 127.0.0.1
(a server bound to the IPv6 loopback only), as Go's dialer does for CRI-O.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectError, ConnectionRefusedError, TimeoutError as TxTimeoutError
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure

from rktlet.errors import DeadlineExceeded, InvalidArgument, RktletError, RuntimeFailure, Unavailable
from rktlet.logs import logger

__all__ = ["CONNECT_TIMEOUT", "connect_in_netns", "check_port"]

log = logger("rktlet.network.portforward")

#: Seconds a connection attempt may take.
CONNECT_TIMEOUT = 5.0

T = TypeVar("T")

#: ``run_in_netns(netns_path, fn)``: call *fn* in a thread that has joined the
#: network namespace pinned at *netns_path* and return its result (blocking).
NetnsRunner = Callable[[str, Callable[[], T]], T]


def check_port(port: Any) -> int:
    """*port* as a TCP port number.

    :raises InvalidArgument: it is not an integer in 1–65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidArgument(f"port: {port!r} is not a TCP port number (1-65535)")
    return port


class _OneProtocol(Factory):
    """Builds the one protocol instance it was given."""

    def __init__(self, protocol: IProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> IProtocol:
        return self._protocol


def _refused(port: int, where: str) -> Unavailable:
    return Unavailable(f"port-forward: connection to port {port} {where} refused: nothing listens on localhost:{port}")


def _connect_blocking(port: int, where: str, timeout: float) -> tuple[int, int]:
    """Connect to localhost:*port* from the calling thread's network
    namespace; returns ``(fd, address family)``. The caller owns the fd."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        except OSError:  # no IPv6 in this namespace
            continue
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except socket.timeout:
            sock.close()
            raise DeadlineExceeded(
                f"port-forward: connection to port {port} {where} timed out after {timeout:g}s"
            ) from None
        except OSError as e:
            sock.close()
            if e.errno in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EAFNOSUPPORT):
                continue  # try the other loopback
            raise Unavailable(f"port-forward: connection to port {port} {where}: {e.strerror or e}") from e
        sock.setblocking(False)
        return sock.detach(), family
    # Refused on 127.0.0.1 and on ::1 (or no IPv6 here): nothing listens.
    raise _refused(port, where)


def connect_in_netns(reactor: Any, netns_path: str, port: int, protocol: IProtocol, threadpool: Any, *,
                     run_in_netns: NetnsRunner, timeout: float = CONNECT_TIMEOUT) -> Deferred:
    """Connect *protocol* to localhost:*port* in the network namespace
    pinned at *netns_path* (``""``: the host's, for host-network pods).

    :param threadpool: where the blocking *run_in_netns* call waits.
    :param run_in_netns: enters the namespace (see :data:`NetnsRunner`),
        e.g. ``lambda path, fn: run_in_namespace(path, "net", fn)``.

    :returns: a Deferred firing with the protocol's transport once
        connected; it fails with :class:`~rktlet.errors.Unavailable` naming
        the port when nothing listens there,
        :class:`~rktlet.errors.DeadlineExceeded` when the connect takes longer
        than *timeout*, :class:`~rktlet.errors.InvalidArgument` for a bad
        port, :class:`~rktlet.errors.RuntimeFailure` when the namespace
        cannot be entered. Cancelling it closes the connection when it comes.
    """
    try:
        port = check_port(port)
    except RktletError as e:
        return _failed(e)
    if not netns_path:
        return _connect_host(reactor, port, protocol, timeout)

    where = f"in network namespace {os.path.basename(netns_path)}"
    result: Deferred = Deferred()

    def connect() -> tuple[int, int]:
        return _connect_blocking(port, where, timeout)

    working = deferToThreadPool(reactor, threadpool, run_in_netns, netns_path, connect)

    def connected(fd_family: tuple[int, int]) -> None:
        fd, family = fd_family
        try:
            if result.called:  # the caller gave up meanwhile
                return
            try:
                reactor.adoptStreamConnection(fd, family, _OneProtocol(protocol))
            except OSError as e:
                result.errback(Failure(RuntimeFailure(f"port-forward: adopt connection to port {port}: {e}")))
                return
            result.callback(protocol.transport)
        finally:
            # The reactor has its own duplicate of the fd now.
            os.close(fd)

    def failed(failure: Failure) -> None:
        if result.called:
            return
        if not failure.check(RktletError):
            log.failure("port-forward to port {port} failed", failure=failure, port=port)
            failure = Failure(RuntimeFailure(f"port-forward: connection to port {port} {where}: {failure.value}"))
        result.errback(failure)

    working.addCallbacks(connected, failed)
    return result


def _failed(error: RktletError) -> Deferred:
    d: Deferred = Deferred()
    d.errback(Failure(error))
    return d


def _connect_host(reactor: Any, port: int, protocol: IProtocol, timeout: float) -> Deferred:
    """A host-network pod: an ordinary connection from the reactor."""
    endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=timeout)
    connecting = endpoint.connect(_OneProtocol(protocol))

    def translate(failure: Failure) -> Failure:
        if failure.check(ConnectionRefusedError):
            return Failure(_refused(port, "on the host network"))
        if failure.check(TxTimeoutError):
            return Failure(DeadlineExceeded(
                f"port-forward: connection to port {port} on the host network timed out after {timeout:g}s"))
        if failure.check(ConnectError):
            return Failure(Unavailable(f"port-forward: connection to port {port} on the host network: {failure.value}"))
        return failure

    return connecting.addCallbacks(lambda p: p.transport, translate)
