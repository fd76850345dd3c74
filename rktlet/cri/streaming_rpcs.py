"""ExecSync and the three RPCs that prepare streaming sessions.

Exec, Attach and PortForward only validate and store the request under a
one-time token; the client then dials the returned URL on the streaming
server, which runs the session (``rktlet.stream``).
"""

from __future__ import annotations

import grpc

from rktlet.cri.proto import pb
from rktlet.errors import InvalidArgument
from rktlet.stream.session import AttachRequest, ExecRequest, PortForwardRequest


def _streams(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true: a terminal has one output stream")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout and stderr must be true")


class StreamingRPCs:
    """Mixed into the RuntimeService servicer."""

    def ExecSync(self, request: pb.ExecSyncRequest, context: grpc.ServicerContext) -> pb.ExecSyncResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        code, out, err = self._on_reactor(
            context, self._engine.containers.exec_sync, request.container_id, list(request.cmd), request.timeout
        )
        return pb.ExecSyncResponse(stdout=out, stderr=err, exit_code=code)

    def Exec(self, request: pb.ExecRequest, context: grpc.ServicerContext) -> pb.ExecResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        if not request.cmd:
            raise InvalidArgument("cmd is required")
        _streams(request.tty, request.stdin, request.stdout, request.stderr)
        session = ExecRequest(request.container_id, tuple(request.cmd), request.tty, request.stdin,
                              request.stdout, request.stderr)
        return pb.ExecResponse(url=self._on_reactor(context, self._engine.streams.new_session, session))

    def Attach(self, request: pb.AttachRequest, context: grpc.ServicerContext) -> pb.AttachResponse:
        if not request.container_id:
            raise InvalidArgument("container_id is required")
        _streams(request.tty, request.stdin, request.stdout, request.stderr)
        session = AttachRequest(request.container_id, request.tty, request.stdin, request.stdout, request.stderr)
        return pb.AttachResponse(url=self._on_reactor(context, self._engine.streams.new_session, session))

    def PortForward(self, request: pb.PortForwardRequest, context: grpc.ServicerContext) -> pb.PortForwardResponse:
        if not request.pod_sandbox_id:
            raise InvalidArgument("pod_sandbox_id is required")
        for port in request.port:
            if not 0 < port < 65536:
                raise InvalidArgument(f"port {port} is not a port number")
        session = PortForwardRequest(request.pod_sandbox_id, tuple(request.port))
        return pb.PortForwardResponse(url=self._on_reactor(context, self._engine.streams.new_session, session))
