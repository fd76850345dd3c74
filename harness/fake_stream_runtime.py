"""A tiny CRI runtime that only streams: exec/attach/port-forward against the
HOST, for driving rktlet's streaming server with the real crictl.

Run: ``python -m harness.fake_stream_runtime --socket PATH --events FILE
[--stream-address 127.0.0.1:0] [--token-ttl 60]``. It prints ``READY <base
url>`` once serving. gRPC (a thread pool) serves Version, Status, Exec,
Attach, PortForward, ContainerStatus, PodSandboxStatus, ListContainers and
ListPodSandbox; the streaming server runs on the reactor (main thread).

:class:`HostProcessBackend` is the Backend: exec runs the command as a host
process (on a pty for tty sessions); attach connects to a per-container
"main process" (``sh`` reading lines and answering ``got <line>``, exiting 7
on ``quit``); port_forward connects to 127.0.0.1:PORT. Everything the
streaming server asks of it is appended to the events file as JSON lines
(``exec``, ``resize``, ``close_stdin``, ``terminate``, ``exit`` ...), which
is how tests see resizes arrive and processes end.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import struct
import sys
import termios
from concurrent import futures

import grpc
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.threads import blockingCallFromThread
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from rktlet.cri.proto import pb, pb_grpc
from rktlet.errors import InvalidArgument, NotFound, RktletError, RuntimeFailure
from rktlet.stream.server import StreamService
from rktlet.stream.session import AttachRequest, ExecRequest, PortForwardRequest

ATTACH_SCRIPT = 'while read -r l; do echo "got $l"; echo "err $l" >&2; [ "$l" = quit ] && exit 7; done'


class Events:
    """JSON lines appended (and flushed) per event."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)

    def __call__(self, event: str, **fields) -> None:
        self._file.write(json.dumps({"event": event, **fields}) + "\n")


@implementer(IPushProducer)
class _StdinPressure:
    """Registered on a process's stdin: a full pipe pauses the client."""

    def __init__(self, terminal) -> None:
        self._terminal = terminal

    def pauseProducing(self) -> None:
        self._terminal.pause_input()

    def resumeProducing(self) -> None:
        self._terminal.resume_input()

    def stopProducing(self) -> None:
        self._terminal.resume_input()


class _ExecProcess(ProcessProtocol):
    """One exec: a host process wired to a Terminal (the ProcessIO too)."""

    def __init__(self, backend: HostProcessBackend, request: ExecRequest, terminal) -> None:
        self.backend = backend
        self.request = request
        self.terminal = terminal
        self.done: Deferred = Deferred()
        self.pid: int | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid
        self.terminal.set_output_producer(self.transport)
        self.transport.registerProducer(_StdinPressure(self.terminal), True)

    def childDataReceived(self, fd: int, data: bytes) -> None:
        if fd == 2 and not self.request.tty:
            self.terminal.stderr(data)
        else:
            self.terminal.stdout(data)

    def processEnded(self, reason) -> None:
        code = reason.value.exitCode
        if code is None and reason.value.signal is not None:
            code = 128 + reason.value.signal
        self.backend.events("exit", pid=self.pid, code=code)
        self.terminal.set_output_producer(None)
        self.done.callback(code)

    # ProcessIO
    def stdin(self, data: bytes) -> None:
        self.transport.write(data)

    def close_stdin(self) -> None:
        self.backend.events("close_stdin", pid=self.pid)
        if not self.request.tty:
            # Unregister first: a pipe whose producer is paused when it
            # drains resumes the producer instead of closing (Twisted's
            # FileDescriptor.loseConnection), and cat would never see EOF.
            self.transport.unregisterProducer()
            self.terminal.resume_input()
            self.transport.closeStdin()

    def resize(self, width: int, height: int) -> None:
        self.backend.events("resize", pid=self.pid, width=width, height=height)
        if self.request.tty:
            fcntl.ioctl(self.transport.fileno(), termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))

    def terminate(self) -> None:
        self.backend.events("terminate", pid=self.pid)
        try:
            self.transport.signalProcess("KILL")
        except ProcessExitedAlready:
            pass


class _MainProcess(ProcessProtocol):
    """A fake container's main process; attach sessions share it."""

    def __init__(self, backend: HostProcessBackend, container_id: str) -> None:
        self.backend = backend
        self.container_id = container_id
        self.attached: list[_Attachment] = []
        self.exit_code: int | None = None
        self.ended = False

    def childDataReceived(self, fd: int, data: bytes) -> None:
        for a in list(self.attached):
            (a.terminal.stderr if fd == 2 else a.terminal.stdout)(data)

    def processEnded(self, reason) -> None:
        self.ended = True
        self.exit_code = reason.value.exitCode
        self.backend.events("container_exit", container=self.container_id, code=self.exit_code)
        for a in list(self.attached):
            a.finish(self.exit_code)


class _Attachment:
    def __init__(self, main: _MainProcess, terminal) -> None:
        self.main = main
        self.terminal = terminal
        self.done: Deferred = Deferred()

    def finish(self, code) -> None:
        if self in self.main.attached:
            self.main.attached.remove(self)
        if not self.done.called:
            self.done.callback(code)

    def stdin(self, data: bytes) -> None:
        self.main.transport.write(data)

    def close_stdin(self) -> None:
        self.main.backend.events("close_stdin", container=self.main.container_id)

    def resize(self, width: int, height: int) -> None:
        self.main.backend.events("resize", container=self.main.container_id, width=width, height=height)

    def terminate(self) -> None:
        self.main.backend.events("detach", container=self.main.container_id)
        self.finish(None)


class _OneProtocol(Factory):
    def __init__(self, protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr):
        return self._protocol


class HostProcessBackend:
    """The streaming Backend on the host (see the module docstring)."""

    def __init__(self, reactor, events: Events) -> None:
        self.reactor = reactor
        self.events = events
        self.containers: dict[str, _MainProcess] = {}
        self.execs: set[_ExecProcess] = set()

    def validate(self, request) -> None:
        target = getattr(request, "container_id", None) or getattr(request, "sandbox_id", "")
        if target.startswith("missing"):
            raise NotFound(f"{target} not found")

    def exec(self, request: ExecRequest, terminal) -> _ExecProcess:
        self.validate(request)
        proc = _ExecProcess(self, request, terminal)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TERM": "xterm"}
        try:
            self.reactor.spawnProcess(proc, request.cmd[0], list(request.cmd), env=env, usePTY=request.tty)
        except OSError as e:
            raise RuntimeFailure(f"cannot run {request.cmd[0]}: {e}") from None
        self.events("exec", pid=proc.pid, cmd=list(request.cmd), tty=request.tty)
        self.execs.add(proc)
        proc.done.addBoth(lambda result: (self.execs.discard(proc), result)[1])
        return proc

    def attach(self, request: AttachRequest, terminal) -> _Attachment:
        self.validate(request)
        main = self.containers.get(request.container_id)
        if main is None or main.ended:
            main = _MainProcess(self, request.container_id)
            self.reactor.spawnProcess(main, "/bin/sh", ["sh", "-c", ATTACH_SCRIPT], env={"PATH": "/usr/bin:/bin"})
            self.containers[request.container_id] = main
            self.events("container_start", container=request.container_id, pid=main.transport.pid)
        attachment = _Attachment(main, terminal)
        main.attached.append(attachment)
        self.events("attach", container=request.container_id)
        return attachment

    def port_forward(self, sandbox_id: str, port: int, protocol) -> Deferred:
        self.events("port_forward", sandbox=sandbox_id, port=port)
        d = TCP4ClientEndpoint(self.reactor, "127.0.0.1", port, timeout=5).connect(_OneProtocol(protocol))
        d.addCallback(lambda p: p.transport)

        def failed(failure):
            raise RuntimeFailure(f"dial tcp 127.0.0.1:{port}: {failure.getErrorMessage()}")

        d.addErrback(failed)
        return d

    def stop(self) -> Deferred:
        """Kill every process still running (the runtime is stopping); fires
        once the execs are reaped."""
        waiting = [p.done for p in self.execs]
        live = [p.transport for p in self.execs] + [m.transport for m in self.containers.values() if not m.ended]
        for transport in live:
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass
        return DeferredList(waiting)


class FakeRuntime(pb_grpc.RuntimeServiceServicer):
    """The CRI RPCs crictl calls around streaming."""

    def __init__(self, reactor, service: StreamService) -> None:
        self._reactor = reactor
        self._service = service

    def _session(self, request, context):
        try:
            return blockingCallFromThread(self._reactor, self._service.new_session, request)
        except NotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except InvalidArgument as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RktletError as e:
            context.abort(grpc.StatusCode.UNKNOWN, str(e))

    def Version(self, request, context):
        return pb.VersionResponse(
            version="0.1.0", runtime_name="fake-stream", runtime_version="0.1", runtime_api_version="v1"
        )

    def Status(self, request, context):
        conditions = [pb.RuntimeCondition(type=t, status=True) for t in ("RuntimeReady", "NetworkReady")]
        return pb.StatusResponse(status=pb.RuntimeStatus(conditions=conditions))

    def Exec(self, request, context):
        r = request
        req = ExecRequest(r.container_id, tuple(r.cmd), r.tty, r.stdin, r.stdout, r.stderr)
        return pb.ExecResponse(url=self._session(req, context))

    def Attach(self, request, context):
        req = AttachRequest(request.container_id, request.tty, request.stdin, request.stdout, request.stderr)
        return pb.AttachResponse(url=self._session(req, context))

    def PortForward(self, request, context):
        req = PortForwardRequest(request.pod_sandbox_id, tuple(request.port))
        return pb.PortForwardResponse(url=self._session(req, context))

    def ContainerStatus(self, request, context):
        status = pb.ContainerStatus(
            id=request.container_id,
            metadata=pb.ContainerMetadata(name=request.container_id),
            state=pb.CONTAINER_RUNNING,
        )
        return pb.ContainerStatusResponse(status=status)

    def PodSandboxStatus(self, request, context):
        status = pb.PodSandboxStatus(
            id=request.pod_sandbox_id,
            metadata=pb.PodSandboxMetadata(name="pod", namespace="default", uid="u"),
            state=pb.SANDBOX_READY,
        )
        return pb.PodSandboxStatusResponse(status=status)

    def ListContainers(self, request, context):
        return pb.ListContainersResponse()

    def ListPodSandbox(self, request, context):
        return pb.ListPodSandboxResponse()


class FakeImages(pb_grpc.ImageServiceServicer):
    """crictl validates the image endpoint (ImageFsInfo) before exec."""

    def ImageFsInfo(self, request, context):
        return pb.ImageFsInfoResponse()

    def ListImages(self, request, context):
        return pb.ListImagesResponse()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--events", required=True)
    parser.add_argument("--stream-address", default="127.0.0.1:0")
    parser.add_argument("--token-ttl", type=float, default=60.0)
    parser.add_argument("--idle-timeout", type=float, default=4 * 3600.0)
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args(argv)

    reactor = global_reactor
    backend = HostProcessBackend(reactor, Events(args.events))
    service = StreamService(
        reactor,
        args.stream_address,
        backend,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        idle_timeout=args.idle_timeout,
        token_ttl=args.token_ttl,
    )
    service.startService()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_RuntimeServiceServicer_to_server(FakeRuntime(reactor, service), server)
    pb_grpc.add_ImageServiceServicer_to_server(FakeImages(), server)
    if os.path.exists(args.socket):
        os.unlink(args.socket)
    server.add_insecure_port(f"unix://{args.socket}")
    server.start()

    def shutdown():
        # SIGTERM/SIGINT stop the reactor (Twisted's own handlers, which also
        # reap children); this runs before it stops.
        server.stop(0)
        return gatherResults([backend.stop(), service.stopService()])

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    print(f"READY {service.base_url}", flush=True)
    reactor.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
