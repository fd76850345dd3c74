"""The pod engine's side of the streaming server: exec, attach and
port-forward (:class:`rktlet.stream.session.Backend`).

The streaming server speaks SPDY/WebSocket and calls this backend with the
request a CRI RPC stored under a token; the backend finds the container or
pod and hands the I/O to the drivers — ``runc exec``
(:mod:`rktlet.oci.exec`), conmon's attach socket (:mod:`rktlet.oci.attach`),
a connection inside the pod's network namespace
(:mod:`rktlet.network.portforward`).

The request types (``ExecRequest``, ``AttachRequest``,
``PortForwardRequest``) and the ``Terminal``/``ProcessIO`` protocols are
defined in :mod:`rktlet.stream.session`; the pod layer does not import the
streaming layer (dependencies point down), so they are recognised here by
their fields: ``cmd`` (exec), ``container_id`` (attach), ``sandbox_id``
(port-forward).

Exec sessions are tied to their container: when it ends, its sessions are
terminated (their processes killed, their streams closed) — in a pod that
shares one PID namespace the kernel would not end them with the container,
and a frozen session of a removed container must not linger
(kubernetes#129144).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol

from rktlet.errors import FailedPrecondition, InvalidArgument
from rktlet.logs import logger
from rktlet.network.portforward import check_port, connect_in_netns
from rktlet.oci.attach import AttachSession, start_attach
from rktlet.oci.exec import ExecSession, start_exec
from rktlet.oci.namespaces import run_in_namespace
from rktlet.pod.container import Container
from rktlet.pod.sandbox import MODE_NODE, READY, Sandbox

if TYPE_CHECKING:
    from rktlet.pod.containers import ContainerManager
    from rktlet.pod.sandboxes import SandboxManager

__all__ = ["StreamingBackend"]

log = logger("rktlet.pod.streaming")


class StreamingBackend:
    """Exec, attach and port-forward over the pod engine's managers; used on
    the reactor thread only.

    :param reactor: processes, timers, sockets.
    :param threadpool: where port-forward connections are made inside pod
        network namespaces.
    :param containers: the :class:`~rktlet.pod.containers.ContainerManager`.
    :param sandboxes: the :class:`~rktlet.pod.sandboxes.SandboxManager`.
    """

    def __init__(self, reactor: Any, threadpool: Any, containers: ContainerManager,
                 sandboxes: SandboxManager) -> None:
        self._reactor = reactor
        self._threadpool = threadpool
        self._containers = containers
        self._sandboxes = sandboxes
        self._execs: dict[str, set[ExecSession]] = {}

    # -- validation ------------------------------------------------------------------

    def _container(self, container_id: str) -> Container:
        if not container_id:
            raise InvalidArgument("container_id: must not be empty")
        return self._containers.running(container_id)

    def _sandbox(self, sandbox_id: str) -> Sandbox:
        if not sandbox_id:
            raise InvalidArgument("pod_sandbox_id: must not be empty")
        sb = self._sandboxes.get(sandbox_id)
        if sb.state != READY:
            raise FailedPrecondition(f"pod sandbox {sb.id} is not ready (state {sb.state}): no port-forwarding")
        if sb.network_mode != MODE_NODE and not sb.netns:
            raise FailedPrecondition(f"pod sandbox {sb.id} has no network namespace: no port-forwarding")
        return sb

    @staticmethod
    def _check_streams(request: Any) -> None:
        if request.tty and request.stderr:
            raise InvalidArgument("tty and stderr cannot both be true: a terminal has one output stream")
        if not (request.stdin or request.stdout or request.stderr):
            raise InvalidArgument("one of stdin, stdout and stderr must be true")

    def validate(self, request: Any) -> None:
        """Check at RPC time that the target exists and can be streamed to.

        :raises NotFound: unknown container or pod sandbox.
        :raises FailedPrecondition: the container is not running; the pod is
            not ready or has no network namespace.
        :raises InvalidArgument: an empty id or command, tty with stderr, no
            stream at all, a port out of range.
        """
        if hasattr(request, "cmd"):  # ExecRequest
            if not request.cmd:
                raise InvalidArgument("cmd: the command to execute must not be empty")
            self._check_streams(request)
            self._container(request.container_id)
        elif hasattr(request, "container_id"):  # AttachRequest
            self._check_streams(request)
            self._container(request.container_id)
        elif hasattr(request, "sandbox_id"):  # PortForwardRequest
            self._sandbox(request.sandbox_id)
            for port in request.ports:
                check_port(port)
        else:
            raise InvalidArgument(f"not a streaming request: {type(request).__name__}")

    # -- exec -----------------------------------------------------------------------------

    def exec(self, request: Any, terminal: Any) -> ExecSession:
        """Start ``request.cmd`` in the container (see :func:`rktlet.oci.exec.start_exec`).

        :raises NotFound: unknown container.
        :raises FailedPrecondition: the container is not running.
        """
        c = self._container(request.container_id)
        session = start_exec(
            self._reactor, self._containers.runtime_of(c), c.id, c.bundle, request.cmd, terminal,
            tty=request.tty, stdin=request.stdin, stdout=request.stdout, stderr=request.stderr,
        )
        if session.done.called:
            return session  # it failed to start; nothing to track
        sessions = self._execs.setdefault(c.id, set())
        sessions.add(session)
        exited = self._containers.exit_of(c)

        def container_ended(_: Any) -> None:
            if not session.done.called:
                log.info("container {id} ended: its exec session is terminated", id=c.id)
                session.terminate()

        if exited is not None:
            exited.addCallbacks(container_ended, lambda f: None)

        def forget(result: Any) -> Any:
            sessions.discard(session)
            if not sessions and self._execs.get(c.id) is sessions:
                del self._execs[c.id]
            if exited is not None and not exited.called:
                exited.cancel()
            return result

        session.done.addBoth(forget)
        return session

    def exec_sessions(self, container_id: str) -> list[ExecSession]:
        """The container's exec sessions still running (for tests and status)."""
        return list(self._execs.get(container_id, ()))

    # -- attach ---------------------------------------------------------------------------

    def attach(self, request: Any, terminal: Any) -> AttachSession:
        """Attach to the container's main process through conmon.

        Like CRI-O, stdin is not refused when the container was made without
        one (kubectl warns the user itself): the input is dropped. Output
        and resizes follow the container's own tty setting.

        :raises NotFound: unknown container.
        :raises FailedPrecondition: the container is not running.
        """
        c = self._container(request.container_id)
        conmon = self._containers.conmon_of(c)
        paths = conmon.paths(c.id, c.bundle)
        session: AttachSession = start_attach(
            self._reactor, paths.attach_socket, terminal,
            stdin=request.stdin, stdout=request.stdout, stderr=request.stderr, tty=c.tty,
            container_stdin=c.stdin, stdin_once=c.stdin_once,
            resize=lambda height, width: conmon.resize(paths, height, width),
            exited=self._containers.exit_of(c),
        )
        return session

    # -- port-forward -----------------------------------------------------------------------

    def port_forward(self, sandbox_id: str, port: int, protocol: IProtocol) -> Deferred:
        """Connect *protocol* to localhost:*port* in the pod's network
        namespace (the host's for a host-network pod); fires with the
        protocol's transport. Failures are RktletErrors whose message names
        the port (nothing listening: Unavailable)."""
        try:
            sb = self._sandbox(sandbox_id)
            port = check_port(port)
        except Exception as e:
            d: Deferred = Deferred()
            d.errback(e)
            return d
        netns = "" if sb.network_mode == MODE_NODE else sb.netns
        return connect_in_netns(self._reactor, netns, port, protocol, self._threadpool, run_in_netns=_in_netns)


def _in_netns(path: str, fn: Any) -> Any:
    return run_in_namespace(path, "net", fn)
